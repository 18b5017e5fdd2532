from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_ADD_TO_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_RATE: _ClassVar[EventType]
    EVENT_TYPE_SEARCH: _ClassVar[EventType]
    EVENT_TYPE_HIDE: _ClassVar[EventType]
    EVENT_TYPE_DISLIKE: _ClassVar[EventType]

class ExperimentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERIMENT_STATE_UNSPECIFIED: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_RUNNING: _ClassVar[ExperimentState]
    EXPERIMENT_STATE_STOPPED: _ClassVar[ExperimentState]

class RankingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANKING_MODE_UNSPECIFIED: _ClassVar[RankingMode]
    RANKING_MODE_MODEL: _ClassVar[RankingMode]
    RANKING_MODE_RETRIEVAL_ORDER: _ClassVar[RankingMode]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_ADD_TO_CART: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_RATE: EventType
EVENT_TYPE_SEARCH: EventType
EVENT_TYPE_HIDE: EventType
EVENT_TYPE_DISLIKE: EventType
EXPERIMENT_STATE_UNSPECIFIED: ExperimentState
EXPERIMENT_STATE_RUNNING: ExperimentState
EXPERIMENT_STATE_STOPPED: ExperimentState
RANKING_MODE_UNSPECIFIED: RankingMode
RANKING_MODE_MODEL: RankingMode
RANKING_MODE_RETRIEVAL_ORDER: RankingMode

class Event(_message.Message):
    __slots__ = ("event_id", "user_id", "item_id", "type", "query", "value", "timestamp_ms", "request_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    query: str
    value: float
    timestamp_ms: int
    request_id: str
    def __init__(self, event_id: _Optional[str] = ..., user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., query: _Optional[str] = ..., value: _Optional[float] = ..., timestamp_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "title", "categories", "description", "tags", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: AttributeValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[AttributeValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    title: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.MessageMap[str, AttributeValue]
    def __init__(self, item_id: _Optional[str] = ..., title: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Mapping[str, AttributeValue]] = ...) -> None: ...

class AttributeValue(_message.Message):
    __slots__ = ("text", "number", "flag")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    text: str
    number: float
    flag: bool
    def __init__(self, text: _Optional[str] = ..., number: _Optional[float] = ..., flag: _Optional[bool] = ...) -> None: ...

class AttributeFilter(_message.Message):
    __slots__ = ("name", "any_of", "range", "equals", "exclude")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    name: str
    any_of: StringSet
    range: NumberRange
    equals: bool
    exclude: bool
    def __init__(self, name: _Optional[str] = ..., any_of: _Optional[_Union[StringSet, _Mapping]] = ..., range: _Optional[_Union[NumberRange, _Mapping]] = ..., equals: _Optional[bool] = ..., exclude: _Optional[bool] = ...) -> None: ...

class StringSet(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class NumberRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Filters(_message.Message):
    __slots__ = ("include_categories", "exclude_categories", "exclude_item_ids", "exclude_seen", "attributes")
    INCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    include_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    exclude_seen: bool
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    def __init__(self, include_categories: _Optional[_Iterable[str]] = ..., exclude_categories: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., exclude_seen: _Optional[bool] = ..., attributes: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("surface", "locale")
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    surface: str
    locale: str
    def __init__(self, surface: _Optional[str] = ..., locale: _Optional[str] = ...) -> None: ...

class Matrix(_message.Message):
    __slots__ = ("rows", "dim", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class StageLatency(_message.Message):
    __slots__ = ("stage", "ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    ms: float
    def __init__(self, stage: _Optional[str] = ..., ms: _Optional[float] = ...) -> None: ...

class ItemMatch(_message.Message):
    __slots__ = ("item_ids", "categories", "attributes")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeFilter]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Iterable[_Union[AttributeFilter, _Mapping]]] = ...) -> None: ...

class Pin(_message.Message):
    __slots__ = ("item_id", "position")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("name", "match", "boost", "pin", "promote_share", "exclude")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    BOOST_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_SHARE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    name: str
    match: ItemMatch
    boost: float
    pin: Pin
    promote_share: float
    exclude: bool
    def __init__(self, name: _Optional[str] = ..., match: _Optional[_Union[ItemMatch, _Mapping]] = ..., boost: _Optional[float] = ..., pin: _Optional[_Union[Pin, _Mapping]] = ..., promote_share: _Optional[float] = ..., exclude: _Optional[bool] = ...) -> None: ...

class StoredRule(_message.Message):
    __slots__ = ("rule", "surfaces", "updated_ms")
    RULE_FIELD_NUMBER: _ClassVar[int]
    SURFACES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    rule: Rule
    surfaces: _containers.RepeatedScalarFieldContainer[str]
    updated_ms: int
    def __init__(self, rule: _Optional[_Union[Rule, _Mapping]] = ..., surfaces: _Optional[_Iterable[str]] = ..., updated_ms: _Optional[int] = ...) -> None: ...

class MergeUsersRequest(_message.Message):
    __slots__ = ("from_user_id", "into_user_id")
    FROM_USER_ID_FIELD_NUMBER: _ClassVar[int]
    INTO_USER_ID_FIELD_NUMBER: _ClassVar[int]
    from_user_id: str
    into_user_id: str
    def __init__(self, from_user_id: _Optional[str] = ..., into_user_id: _Optional[str] = ...) -> None: ...

class MergeUsersResponse(_message.Message):
    __slots__ = ("events_moved",)
    EVENTS_MOVED_FIELD_NUMBER: _ClassVar[int]
    events_moved: int
    def __init__(self, events_moved: _Optional[int] = ...) -> None: ...

class PutRuleRequest(_message.Message):
    __slots__ = ("rule",)
    RULE_FIELD_NUMBER: _ClassVar[int]
    rule: StoredRule
    def __init__(self, rule: _Optional[_Union[StoredRule, _Mapping]] = ...) -> None: ...

class ListRulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRulesResponse(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[StoredRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[StoredRule, _Mapping]]] = ...) -> None: ...

class DeleteRuleRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRuleResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class VariantOverrides(_message.Message):
    __slots__ = ("diversity", "exploration", "ranking", "ranker_version", "interest_model_version")
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    RANKING_FIELD_NUMBER: _ClassVar[int]
    RANKER_VERSION_FIELD_NUMBER: _ClassVar[int]
    INTEREST_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    diversity: float
    exploration: float
    ranking: RankingMode
    ranker_version: str
    interest_model_version: str
    def __init__(self, diversity: _Optional[float] = ..., exploration: _Optional[float] = ..., ranking: _Optional[_Union[RankingMode, str]] = ..., ranker_version: _Optional[str] = ..., interest_model_version: _Optional[str] = ...) -> None: ...

class ExperimentVariant(_message.Message):
    __slots__ = ("name", "share", "overrides")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    name: str
    share: float
    overrides: VariantOverrides
    def __init__(self, name: _Optional[str] = ..., share: _Optional[float] = ..., overrides: _Optional[_Union[VariantOverrides, _Mapping]] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "variants", "control", "primary_metric", "state", "stopped_reason", "created_ms", "stopped_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_METRIC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STOPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    STOPPED_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    variants: _containers.RepeatedCompositeFieldContainer[ExperimentVariant]
    control: str
    primary_metric: str
    state: ExperimentState
    stopped_reason: str
    created_ms: int
    stopped_ms: int
    def __init__(self, name: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[ExperimentVariant, _Mapping]]] = ..., control: _Optional[str] = ..., primary_metric: _Optional[str] = ..., state: _Optional[_Union[ExperimentState, str]] = ..., stopped_reason: _Optional[str] = ..., created_ms: _Optional[int] = ..., stopped_ms: _Optional[int] = ...) -> None: ...

class PutExperimentRequest(_message.Message):
    __slots__ = ("experiment",)
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class StopExperimentRequest(_message.Message):
    __slots__ = ("name", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetExperimentReportRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetExperimentReportResponse(_message.Message):
    __slots__ = ("report_json",)
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    report_json: str
    def __init__(self, report_json: _Optional[str] = ...) -> None: ...
