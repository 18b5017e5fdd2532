"""Field checks shared by the gateway (public edge) and the services that own the data."""

from __future__ import annotations

import math
import time

from recmesh.common.errors import InvalidArgument
from recmesh.v1 import common_pb2

ET = common_pb2.EventType
KNOWN_EVENT_TYPES = frozenset(v for v in ET.values() if v != ET.EVENT_TYPE_UNSPECIFIED)
MAX_ID_CHARS = 128
MAX_QUERY_CHARS = 1000
# Clocks drift; a day ahead is a bug in the caller, not skew.
MAX_FUTURE_MS = 24 * 3600 * 1000


def check_id(value: str, field: str) -> str:
    if not value or not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(field, f"longer than {MAX_ID_CHARS} characters")
    return value


def check_query(value: str, field: str = "query", max_chars: int = MAX_QUERY_CHARS) -> str:
    if len(value) > max_chars:
        raise InvalidArgument(field, f"longer than {max_chars} characters ({len(value)})")
    return value.strip()


def check_event(event: common_pb2.Event, field: str, now_ms: int | None = None) -> None:
    check_id(event.event_id, f"{field}.event_id")
    check_id(event.user_id, f"{field}.user_id")
    if event.type not in KNOWN_EVENT_TYPES:
        raise InvalidArgument(f"{field}.type", f"unknown event type {event.type}")
    if event.type == ET.EVENT_TYPE_SEARCH:
        if not event.query.strip():
            raise InvalidArgument(f"{field}.query", "required for a SEARCH event")
    else:
        check_id(event.item_id, f"{field}.item_id")
    check_query(event.query, f"{field}.query")
    if not math.isfinite(event.value):
        raise InvalidArgument(f"{field}.value", "must be a finite number")
    if event.type == ET.EVENT_TYPE_RATE and not 0.0 <= event.value <= 5.0:
        raise InvalidArgument(f"{field}.value", f"a rating must be in 0..5, got {event.value}")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if event.timestamp_ms < 0 or event.timestamp_ms > now_ms + MAX_FUTURE_MS:
        raise InvalidArgument(f"{field}.timestamp_ms", "must be >= 0 and not more than a day in the future")
    if len(event.request_id) > MAX_ID_CHARS:
        raise InvalidArgument(f"{field}.request_id", f"longer than {MAX_ID_CHARS} characters")


def check_events(events, field: str, max_events: int) -> None:
    if not events:
        raise InvalidArgument(field, "at least one event is required")
    if len(events) > max_events:
        raise InvalidArgument(field, f"at most {max_events} events per call, got {len(events)}")
    now_ms = int(time.time() * 1000)
    for i, event in enumerate(events):
        check_event(event, f"{field}[{i}]", now_ms)
