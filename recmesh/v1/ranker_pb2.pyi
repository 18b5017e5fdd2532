from recmesh.v1 import common_pb2 as _common_pb2
from recmesh.v1 import retrieval_pb2 as _retrieval_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecentItem(_message.Message):
    __slots__ = ("item_id", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("candidates", "candidate_vectors", "interest", "query_vector", "category_affinity", "recent", "recent_vectors", "k", "candidate_text_vectors", "session", "diversity", "skipped", "query_similarity", "exploration", "parameters_version")
    class CategoryAffinityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    INTEREST_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_AFFINITY_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    RECENT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    QUERY_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_VERSION_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[_retrieval_pb2.Candidate]
    candidate_vectors: _common_pb2.Matrix
    interest: _common_pb2.Matrix
    query_vector: _common_pb2.Matrix
    category_affinity: _containers.ScalarMap[str, float]
    recent: _containers.RepeatedCompositeFieldContainer[RecentItem]
    recent_vectors: _common_pb2.Matrix
    k: int
    candidate_text_vectors: _common_pb2.Matrix
    session: _common_pb2.Matrix
    diversity: float
    skipped: _containers.ScalarMap[str, int]
    query_similarity: _containers.RepeatedScalarFieldContainer[float]
    exploration: float
    parameters_version: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[_retrieval_pb2.Candidate, _Mapping]]] = ..., candidate_vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., interest: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., query_vector: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., category_affinity: _Optional[_Mapping[str, float]] = ..., recent: _Optional[_Iterable[_Union[RecentItem, _Mapping]]] = ..., recent_vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., k: _Optional[int] = ..., candidate_text_vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., session: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., diversity: _Optional[float] = ..., skipped: _Optional[_Mapping[str, int]] = ..., query_similarity: _Optional[_Iterable[float]] = ..., exploration: _Optional[float] = ..., parameters_version: _Optional[str] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "score", "reasons", "features", "propensity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedScalarFieldContainer[float]
    propensity: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[float]] = ..., propensity: _Optional[float] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "model_version", "feature_names")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    model_version: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ...) -> None: ...
