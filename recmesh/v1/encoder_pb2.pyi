from recmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncodeItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[_common_pb2.Item]
    def __init__(self, items: _Optional[_Iterable[_Union[_common_pb2.Item, _Mapping]]] = ...) -> None: ...

class EncodeItemsResponse(_message.Message):
    __slots__ = ("vectors", "model_version", "text_vectors")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    vectors: _common_pb2.Matrix
    model_version: str
    text_vectors: _common_pb2.Matrix
    def __init__(self, vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., model_version: _Optional[str] = ..., text_vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ...) -> None: ...

class EncodeTextsRequest(_message.Message):
    __slots__ = ("texts",)
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, texts: _Optional[_Iterable[str]] = ...) -> None: ...

class EncodeTextsResponse(_message.Message):
    __slots__ = ("vectors", "model_version")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    vectors: _common_pb2.Matrix
    model_version: str
    def __init__(self, vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("item_id", "type", "value", "timestamp_ms")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    type: _common_pb2.EventType
    value: float
    timestamp_ms: int
    def __init__(self, item_id: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.EventType, str]] = ..., value: _Optional[float] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...

class EncodeInterestRequest(_message.Message):
    __slots__ = ("history", "item_vectors", "query", "now_ms", "interest_model_version")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ITEM_VECTORS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    INTEREST_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    history: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    item_vectors: _common_pb2.Matrix
    query: str
    now_ms: int
    interest_model_version: str
    def __init__(self, history: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., item_vectors: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., query: _Optional[str] = ..., now_ms: _Optional[int] = ..., interest_model_version: _Optional[str] = ...) -> None: ...

class EncodeInterestResponse(_message.Message):
    __slots__ = ("interest", "query_vector", "model_version")
    INTEREST_FIELD_NUMBER: _ClassVar[int]
    QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    interest: _common_pb2.Matrix
    query_vector: _common_pb2.Matrix
    model_version: str
    def __init__(self, interest: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., query_vector: _Optional[_Union[_common_pb2.Matrix, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListInterestModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InterestModel(_message.Message):
    __slots__ = ("version", "default", "item_space", "catalog_compatible", "fuses_queries")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    ITEM_SPACE_FIELD_NUMBER: _ClassVar[int]
    CATALOG_COMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    FUSES_QUERIES_FIELD_NUMBER: _ClassVar[int]
    version: str
    default: bool
    item_space: str
    catalog_compatible: bool
    fuses_queries: bool
    def __init__(self, version: _Optional[str] = ..., default: _Optional[bool] = ..., item_space: _Optional[str] = ..., catalog_compatible: _Optional[bool] = ..., fuses_queries: _Optional[bool] = ...) -> None: ...

class ListInterestModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[InterestModel]
    def __init__(self, models: _Optional[_Iterable[_Union[InterestModel, _Mapping]]] = ...) -> None: ...
