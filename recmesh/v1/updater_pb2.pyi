from recmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImpressedItem(_message.Message):
    __slots__ = ("item_id", "position", "features", "propensity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    features: _containers.RepeatedScalarFieldContainer[float]
    propensity: float
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ..., features: _Optional[_Iterable[float]] = ..., propensity: _Optional[float] = ...) -> None: ...

class Impression(_message.Message):
    __slots__ = ("request_id", "user_id", "timestamp_ms", "ranker_version", "feature_names", "items", "experiment", "variant", "latency_ms", "degraded", "encoder_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    RANKER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    timestamp_ms: int
    ranker_version: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    items: _containers.RepeatedCompositeFieldContainer[ImpressedItem]
    experiment: str
    variant: str
    latency_ms: float
    degraded: bool
    encoder_version: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., ranker_version: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., items: _Optional[_Iterable[_Union[ImpressedItem, _Mapping]]] = ..., experiment: _Optional[str] = ..., variant: _Optional[str] = ..., latency_ms: _Optional[float] = ..., degraded: _Optional[bool] = ..., encoder_version: _Optional[str] = ...) -> None: ...

class LogImpressionsRequest(_message.Message):
    __slots__ = ("impressions",)
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    impressions: _containers.RepeatedCompositeFieldContainer[Impression]
    def __init__(self, impressions: _Optional[_Iterable[_Union[Impression, _Mapping]]] = ...) -> None: ...

class LogImpressionsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchParametersRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: str
    def __init__(self, known_version: _Optional[str] = ...) -> None: ...

class GetParametersRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class RankerParameters(_message.Message):
    __slots__ = ("version", "spec_json", "trained_through_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    TRAINED_THROUGH_MS_FIELD_NUMBER: _ClassVar[int]
    version: str
    spec_json: str
    trained_through_ms: int
    def __init__(self, version: _Optional[str] = ..., spec_json: _Optional[str] = ..., trained_through_ms: _Optional[int] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    def __init__(self, events: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("accepted", "duplicates")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class GetUserStateRequest(_message.Message):
    __slots__ = ("user_id", "max_recent")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RECENT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    max_recent: int
    def __init__(self, user_id: _Optional[str] = ..., max_recent: _Optional[int] = ...) -> None: ...

class UserState(_message.Message):
    __slots__ = ("user_id", "recent", "seen_item_ids", "recent_queries", "event_count", "skipped", "hidden_item_ids", "disliked_item_ids")
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    SEEN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_QUERIES_FIELD_NUMBER: _ClassVar[int]
    EVENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DISLIKED_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    recent: _containers.RepeatedCompositeFieldContainer[_common_pb2.Event]
    seen_item_ids: _containers.RepeatedScalarFieldContainer[str]
    recent_queries: _containers.RepeatedScalarFieldContainer[str]
    event_count: int
    skipped: _containers.ScalarMap[str, int]
    hidden_item_ids: _containers.RepeatedScalarFieldContainer[str]
    disliked_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., recent: _Optional[_Iterable[_Union[_common_pb2.Event, _Mapping]]] = ..., seen_item_ids: _Optional[_Iterable[str]] = ..., recent_queries: _Optional[_Iterable[str]] = ..., event_count: _Optional[int] = ..., skipped: _Optional[_Mapping[str, int]] = ..., hidden_item_ids: _Optional[_Iterable[str]] = ..., disliked_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteUserStateRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class DeleteUserStateResponse(_message.Message):
    __slots__ = ("events_deleted",)
    EVENTS_DELETED_FIELD_NUMBER: _ClassVar[int]
    events_deleted: int
    def __init__(self, events_deleted: _Optional[int] = ...) -> None: ...
