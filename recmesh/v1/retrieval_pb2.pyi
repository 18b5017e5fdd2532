from recmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Candidate(_message.Message):
    __slots__ = ("item_id", "title", "categories", "score", "popularity", "query_similarity", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.AttributeValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.AttributeValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_FIELD_NUMBER: _ClassVar[int]
    QUERY_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    score: float
    popularity: float
    query_similarity: float
    attributes: _containers.MessageMap[str, _common_pb2.AttributeValue]
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., score: _Optional[float] = ..., popularity: _Optional[float] = ..., query_similarity: _Optional[float] = ..., attributes: _Optional[_Mapping[str, _common_pb2.AttributeValue]] = ...) -> None: ...

class CandidateList(_message.Message):
    __slots__ = ("candidates", "vectors", "index_version", "text_vectors")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    vectors: _common_pb2.Matrix
    index_version: str
    text_vectors: _common_pb2.Matrix
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., index_version: _Optional[str] = ..., text_vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("interest", "limit", "filters", "with_vectors", "session", "query", "with_text_vectors")
    INTEREST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    WITH_TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    interest: _common_pb2.Matrix
    limit: int
    filters: _common_pb2.Filters
    with_vectors: bool
    session: _common_pb2.Matrix
    query: _common_pb2.Matrix
    with_text_vectors: bool
    def __init__(self, interest: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., limit: _Optional[int] = ..., filters: _Optional[_Union[_common_pb2.Filters, _Mapping]] = ..., with_vectors: _Optional[bool] = ..., session: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., query: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., with_text_vectors: _Optional[bool] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("item_ids", "with_vectors", "catalog_vectors_only")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_VECTORS_ONLY_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    with_vectors: bool
    catalog_vectors_only: bool
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., with_vectors: _Optional[bool] = ..., catalog_vectors_only: _Optional[bool] = ...) -> None: ...

class TopPopularRequest(_message.Message):
    __slots__ = ("limit", "with_vectors", "filters")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WITH_VECTORS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    limit: int
    with_vectors: bool
    filters: _common_pb2.Filters
    def __init__(self, limit: _Optional[int] = ..., with_vectors: _Optional[bool] = ..., filters: _Optional[_Union[_common_pb2.Filters, _Mapping]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("items", "vectors", "popularity", "text_vectors")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    vectors: _common_pb2.Matrix
    popularity: _containers.RepeatedScalarFieldContainer[float]
    text_vectors: _common_pb2.Matrix
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ..., vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., popularity: _Optional[_Iterable[float]] = ..., text_vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...
