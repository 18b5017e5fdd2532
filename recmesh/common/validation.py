"""Field checks shared by the gateway (public edge) and the services that own the data.

Sizes come from recmesh/common/limits.py, so every stage accepts what the gateway accepts.
Text is judged by what is visible in it (`visible_text`): a value of only invisible characters
is empty, and free text blank in that sense is absent."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime

import regex

from recmesh.common import clock, limits
from recmesh.common.errors import InvalidArgument
from recmesh.v1 import common_pb2

ET = common_pb2.EventType
KNOWN_EVENT_TYPES = frozenset(v for v in ET.values() if v != ET.EVENT_TYPE_UNSPECIFIED)


def is_item_event(event) -> bool:
    """An event about an item (view, click, purchase, rating...): it enters the user's history
    and seen items. A SEARCH names no item (its query is what it carries). `event`: anything
    with `type` and `item_id` (common_pb2.Event, a logged event)."""
    return event.type != ET.EVENT_TYPE_SEARCH and bool(event.item_id)


# The event types that hide their item from the user for good, on every answer path, whatever
# filters.exclude_seen says (common.proto). They are item events too (history, seen items).
HIDING_TYPES = frozenset({ET.EVENT_TYPE_HIDE, ET.EVENT_TYPE_DISLIKE})


def hides_item(event) -> bool:
    """A HIDE or DISLIKE of an item: never shown to that user again. `event` as is_item_event's."""
    return event.type in HIDING_TYPES and bool(event.item_id)


# Clocks drift; a day ahead is a bug in the caller, not skew.
MAX_FUTURE_MS = 24 * 3600 * 1000
# The earliest event time accepted: 1980-01-01T00:00:00Z. Real interaction logs are younger
# (MovieLens starts in 1995), and every timestamp in seconds up to the year 2286 (< 1e10) read
# as milliseconds falls in early 1970, far below it: seconds are always caught.
MIN_EVENT_MS = 315_532_800_000
_MS_PER_YEAR = 365.2425 * 24 * 3600 * 1000


def strip_invisible(value: str) -> str:
    """The text without its invisible characters, decided by Unicode property, not by a list:
    control characters other than whitespace (category Cc: NUL, ESC, ...), format characters
    (Cf: zero-width spaces and joiners, BOM, word joiner, bidi marks, soft hyphen, ...), lone
    surrogates (Cs), unassigned code points and noncharacters (Cn), and whatever Unicode
    declares Default_Ignorable_Code_Point (Hangul fillers, variation selectors, tag
    characters, ...: rendered as nothing). The `regex` library's Unicode tables are used: they
    know that property, and newer characters than Python's own. Whitespace is kept."""
    return _INVISIBLE.sub("", value) if _INVISIBLE.search(value) else value


_INVISIBLE = regex.compile(r"[\p{Cf}\p{Cs}\p{Cn}\p{Default_Ignorable_Code_Point}]|(?!\s)\p{Cc}")


def visible_text(value: str) -> str:
    """strip_invisible(value) with separators (Unicode Z*, and whitespace) stripped at either
    end; "" when nothing visible is left - only invisible characters, separators, or combining
    marks with nothing to combine with (M*): such a text is no text."""
    kept = strip_invisible(value)
    start, end = 0, len(kept)
    while start < end and _separator(kept[start]):
        start += 1
    while end > start and _separator(kept[end - 1]):
        end -= 1
    kept = kept[start:end]
    # Stops at the first visible character: at once, for all but mark-only text.
    return kept if any(unicodedata.category(ch)[0] not in "MZ" and not ch.isspace() for ch in kept) else ""


def _separator(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch)[0] == "Z"


def check_id(value: str, field: str) -> str:
    """An id: 1..ID_CHARS characters, not only invisible ones (such an id is empty). Returned as
    given: ids are opaque, the caller's id stays the caller's id."""
    if not visible_text(value):
        raise InvalidArgument(field, "must not be empty")
    if len(value) > limits.ID_CHARS:
        raise InvalidArgument(field, f"longer than {limits.ID_CHARS} characters ({len(value)})")
    return value


def check_text(value: str, field: str, max_chars: int) -> str:
    """Free text of at most max_chars characters (as sent); returns its visible_text, "" for
    no text."""
    if len(value) > max_chars:
        raise InvalidArgument(field, f"longer than {max_chars} characters ({len(value)})")
    return visible_text(value)


def check_query(value: str, field: str = "query", max_chars: int = limits.QUERY_CHARS) -> str:
    """A typed query: its visible text ("" = no query); max_chars may narrow QUERY_CHARS."""
    return check_text(value, field, min(max_chars, limits.QUERY_CHARS))


def check_labels(values, field: str, max_values: int, max_chars: int = limits.LABEL_CHARS) -> list[str]:
    """Categories, tags, filter values: at most max_values, each a non-empty id-like value."""
    if len(values) > max_values:
        raise InvalidArgument(field, f"at most {max_values} values, got {len(values)}")
    for i, value in enumerate(values):
        if not visible_text(value):
            raise InvalidArgument(f"{field}[{i}]", "must not be empty")
        if len(value) > max_chars:
            raise InvalidArgument(f"{field}[{i}]", f"longer than {max_chars} characters ({len(value)})")
    return list(values)


def check_item(item: common_pb2.Item, field: str) -> None:
    """One catalog item, as every stage checks it (gateway, encoder, retrieval): the id, a
    visible title, and every field within recmesh/common/limits.py. Fields are stored whole."""
    check_id(item.item_id, f"{field}.item_id")
    if not check_text(item.title, f"{field}.title", limits.TITLE_CHARS):
        raise InvalidArgument(f"{field}.title", "must not be empty")
    check_text(item.description, f"{field}.description", limits.DESCRIPTION_CHARS)
    check_labels(item.categories, f"{field}.categories", limits.LABELS_PER_ITEM)
    check_labels(item.tags, f"{field}.tags", limits.LABELS_PER_ITEM)
    check_attributes(item.attributes, f"{field}.attributes")


_ATTRIBUTE_NAME = re.compile(f"[A-Za-z0-9_]{{1,{limits.ATTRIBUTE_NAME_CHARS}}}")


def check_name(name: str, field: str, pattern: re.Pattern, max_chars: int, allowed: str) -> str:
    """A name that must fully match `pattern` (1..max_chars of the characters `allowed` says):
    INVALID_ARGUMENT naming the field says which of empty, too long or a wrong character."""
    if pattern.fullmatch(name):
        return name
    if not name:
        raise InvalidArgument(field, "must not be empty")
    if len(name) > max_chars:
        raise InvalidArgument(field, f"longer than {max_chars} characters ({len(name)})")
    raise InvalidArgument(field, f"{_quoted(name)} may hold only {allowed}")


def check_attribute_name(name: str, field: str) -> str:
    """An attribute's name: 1..ATTRIBUTE_NAME_CHARS of A-Z, a-z, 0-9 and _ (filters address it
    as a payload path, "attributes.<name>": no dot or bracket may reshape that path)."""
    return check_name(name, field, _ATTRIBUTE_NAME, limits.ATTRIBUTE_NAME_CHARS, "A-Z, a-z, 0-9 and _")


def _quoted(name: str) -> str:
    """A name as an error shows it: quoted, invisible characters escaped, cut when very long."""
    shown = name if len(name) <= 2 * limits.ATTRIBUTE_NAME_CHARS else name[:limits.ATTRIBUTE_NAME_CHARS] + "..."
    return json.dumps(shown)


def check_attributes(attributes, field: str) -> None:
    """An item's attributes (map of name -> common_pb2.AttributeValue; `field` names the map,
    errors name the entry: `items[3].attributes["price"]`): at most ATTRIBUTES_PER_ITEM, each
    named by the name rule (check_attribute_name) and set to one kind - a visible text of at most
    LABEL_CHARS characters, a finite number, or a flag."""
    if len(attributes) > limits.ATTRIBUTES_PER_ITEM:
        raise InvalidArgument(field, f"at most {limits.ATTRIBUTES_PER_ITEM} attributes, got {len(attributes)}")
    for name in sorted(attributes):  # the first bad one in name order: the same error every time
        entry = f"{field}[{_quoted(name)}]"
        check_attribute_name(name, entry)
        value = attributes[name]
        kind = value.WhichOneof("kind")
        if kind is None:
            raise InvalidArgument(entry, "no value set: one of text, number or flag")
        if kind == "text":
            if not visible_text(value.text):
                raise InvalidArgument(entry, "a text value must not be empty")
            if len(value.text) > limits.LABEL_CHARS:
                raise InvalidArgument(entry, f"text longer than {limits.LABEL_CHARS} characters ({len(value.text)})")
        elif kind == "number" and not math.isfinite(value.number):
            raise InvalidArgument(entry, f"must be a finite number, got {value.number}")


def check_attribute_filters(filters, field: str, max_values: int = limits.FILTER_VALUES) -> None:
    """Recommend's filters.attributes (common_pb2.AttributeFilter each; `field` names the list):
    at most ATTRIBUTE_FILTERS; each names an attribute (check_attribute_name) and sets one test -
    any_of: 1..max_values values (check_labels: visible, at most LABEL_CHARS); range: min, max or
    both, finite, min <= max; equals: a flag."""
    if len(filters) > limits.ATTRIBUTE_FILTERS:
        raise InvalidArgument(field, f"at most {limits.ATTRIBUTE_FILTERS} attribute filters, got {len(filters)}")
    for i, f in enumerate(filters):
        where = f"{field}[{i}]"
        check_attribute_name(f.name, f"{where}.name")
        test = f.WhichOneof("test")
        if test is None:
            raise InvalidArgument(where, "set one test: any_of, range or equals")
        if test == "any_of":
            if not f.any_of.values:
                raise InvalidArgument(f"{where}.any_of.values", "at least one value is required")
            check_labels(f.any_of.values, f"{where}.any_of.values", max_values)
        elif test == "range":
            bounds = {b: getattr(f.range, b) for b in ("min", "max") if f.range.HasField(b)}
            if not bounds:
                raise InvalidArgument(f"{where}.range", "set min, max or both (a bound left out is open)")
            for bound, value in bounds.items():
                if not math.isfinite(value):
                    raise InvalidArgument(f"{where}.range.{bound}", f"must be a finite number, got {value}")
            if len(bounds) == 2 and bounds["min"] > bounds["max"]:
                raise InvalidArgument(f"{where}.range", f"min {bounds['min']} is greater than max {bounds['max']}")


def check_timestamp(timestamp_ms: int, field: str, now_ms: int) -> None:
    """Milliseconds since the Unix epoch, from MIN_EVENT_MS to a day ahead of now_ms (0 = now,
    not checked here). A value in another unit is refused with the value it should have been."""
    if timestamp_ms == 0:
        return
    unit = "timestamps are milliseconds since the Unix epoch"
    if timestamp_ms < 0:
        raise InvalidArgument(field, f"{timestamp_ms} is before 1970; {unit} (0 = now)")

    def plausible(ms: int) -> bool:
        return MIN_EVENT_MS <= ms <= now_ms + MAX_FUTURE_MS

    if timestamp_ms < MIN_EVENT_MS:
        hint = f"seconds? send {timestamp_ms * 1000}" if plausible(timestamp_ms * 1000) else "the earliest is 1980"
        raise InvalidArgument(field, f"{timestamp_ms} is in {_year(timestamp_ms)}; {unit} ({hint})")
    if timestamp_ms > now_ms + MAX_FUTURE_MS:
        hints = [f"{name}? send {timestamp_ms // div}" for name, div in (("microseconds", 1000),
                                                                         ("nanoseconds", 1_000_000))
                 if plausible(timestamp_ms // div)]
        hint = hints[0] if hints else "at most a day ahead of the server's clock"
        raise InvalidArgument(field, f"{timestamp_ms} is in {_year(timestamp_ms)}, in the future; {unit} ({hint})")


def _year(timestamp_ms: int) -> int:
    if timestamp_ms < 253_402_300_800_000:  # datetime stops at the year 9999
        return datetime.fromtimestamp(timestamp_ms / 1000, UTC).year
    return 1970 + int(timestamp_ms / _MS_PER_YEAR)


def check_event_content(event_type: int, item_id: str, query: str, value: float, field: str,
                        check_item_id: Callable[[str, str], object] = check_id) -> None:
    """What an event of a known type must carry: a query for SEARCH (an item for every other
    type, checked by check_item_id - the importer's remembers ids it checked), a finite value,
    a rating in 0..5 for RATE. InvalidArgument names `field`.query / .item_id / .value."""
    query = check_query(query, f"{field}.query")
    if event_type == ET.EVENT_TYPE_SEARCH:
        if not query:
            raise InvalidArgument(f"{field}.query", "required for a SEARCH event")
    else:
        check_item_id(item_id, f"{field}.item_id")
    if not math.isfinite(value):
        raise InvalidArgument(f"{field}.value", "must be a finite number")
    if event_type == ET.EVENT_TYPE_RATE and not 0.0 <= value <= 5.0:
        raise InvalidArgument(f"{field}.value", f"a rating must be in 0..5, got {value}")


def check_event(event: common_pb2.Event, field: str, now_ms: int | None = None) -> None:
    check_id(event.event_id, f"{field}.event_id")
    check_id(event.user_id, f"{field}.user_id")
    check_event_fields(event, field, now_ms)


def check_event_fields(event: common_pb2.Event, field: str, now_ms: int | None = None) -> None:
    """Everything of an event but its ids: a known type, what that type must carry
    (check_event_content), its time (check_timestamp against now_ms, default the clock's) and
    request_id's length. InvalidArgument names `field`.type / .item_id / ...."""
    if event.type not in KNOWN_EVENT_TYPES:
        raise InvalidArgument(f"{field}.type", f"unknown event type {event.type}")
    check_event_content(event.type, event.item_id, event.query, event.value, field)
    now_ms = clock.now_ms() if now_ms is None else now_ms
    check_timestamp(event.timestamp_ms, f"{field}.timestamp_ms", now_ms)
    if len(event.request_id) > limits.ID_CHARS:
        raise InvalidArgument(f"{field}.request_id", f"longer than {limits.ID_CHARS} characters")


def check_events(events, field: str, max_events: int) -> None:
    if not events:
        raise InvalidArgument(field, "at least one event is required")
    if len(events) > max_events:
        raise InvalidArgument(field, f"at most {max_events} events per call, got {len(events)}")
    now_ms = clock.now_ms()
    for i, event in enumerate(events):
        check_event(event, f"{field}[{i}]", now_ms)
