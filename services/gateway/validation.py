"""Checks on public requests; every failure names its field. Sizes are recmesh/common/limits.py's
(settings may only narrow them), so what passes here passes every later stage."""

from __future__ import annotations

from recmesh.common import clock, limits
from recmesh.common.errors import InvalidArgument
from recmesh.common.rules import check_rules
from recmesh.common.validation import (
    check_attribute_filters,
    check_event_fields,
    check_id,
    check_item,
    check_labels,
    check_query,
    check_text,
)
from services.gateway.config import GatewaySettings


def check_recommend(request, settings: GatewaySettings) -> tuple[int, str]:
    """Returns (k, query) normalised: the query's visible text, "" for none. user_id may be
    empty only for a guest, who sends session_events."""
    if request.user_id or not request.session_events:
        check_id(request.user_id, "user_id")
    check_session_events(request.session_events, request.user_id, settings.max_session_events)
    k = _check_k(request, settings)
    query = check_query(request.query, "query", settings.max_query_chars)
    _check_filters(request.filters, settings)
    _check_context(request.context)
    if not 0.0 <= request.diversity <= 1.0:  # NaN fails this too
        raise InvalidArgument("diversity", f"must be in 0..1, got {request.diversity}")
    check_rules(request.rules, "rules", settings.max_k)
    return k, query


def check_similar(request, settings: GatewaySettings) -> tuple[int, str]:
    """A SimilarItemsRequest: returns (k, text) normalised - text the visible text of a
    free-text anchor, "" for an item anchor. user_id is optional ("" for none)."""
    anchor = request.WhichOneof("anchor")
    if anchor is None:
        raise InvalidArgument("anchor", "set item_id or text")
    text = ""
    if anchor == "item_id":
        check_id(request.item_id, "item_id")
    else:
        text = check_text(request.text, "text", min(settings.max_query_chars, limits.QUERY_CHARS))
        if not text:
            raise InvalidArgument("text", "must not be empty")
    if request.user_id:
        check_id(request.user_id, "user_id")
    k = _check_k(request, settings)
    _check_filters(request.filters, settings)
    _check_context(request.context)
    check_rules(request.rules, "rules", settings.max_k)
    return k, text


def _check_k(request, settings: GatewaySettings) -> int:
    k = request.k if request.HasField("k") else settings.default_k
    if not 1 <= k <= settings.max_k:
        raise InvalidArgument("k", f"must be in 1..{settings.max_k}, got {k}")
    return k


def _check_filters(f, settings: GatewaySettings) -> None:
    check_labels(f.include_categories, "filters.include_categories", settings.max_filter_values)
    check_labels(f.exclude_categories, "filters.exclude_categories", settings.max_filter_values)
    check_labels(f.exclude_item_ids, "filters.exclude_item_ids", settings.max_filter_values, limits.ID_CHARS)
    check_attribute_filters(f.attributes, "filters.attributes", settings.max_filter_values)


def _check_context(context) -> None:
    for name in ("surface", "locale"):
        if len(getattr(context, name)) > limits.ID_CHARS:
            raise InvalidArgument(f"context.{name}", f"longer than {limits.ID_CHARS} characters")


def check_session_events(events, user_id: str, max_events: int) -> None:
    """RecommendRequest.session_events: at most max_events, each a valid event
    (check_event_fields) whose event_id may be empty (else an id) and whose user_id is empty or
    the request's. InvalidArgument names the event and field, e.g. "session_events[2].item_id"."""
    if len(events) > max_events:
        raise InvalidArgument("session_events", f"at most {max_events} events, got {len(events)}")
    now_ms = clock.now_ms()
    for i, event in enumerate(events):
        at = f"session_events[{i}]"
        if event.event_id:
            check_id(event.event_id, f"{at}.event_id")
        if event.user_id and event.user_id != user_id:
            raise InvalidArgument(f"{at}.user_id", "must be empty or the request's user_id")
        check_event_fields(event, at, now_ms)


def check_merge(request) -> tuple[str, str]:
    """MergeUsersRequest: (from_user_id, into_user_id), two different ids."""
    from_user = check_id(request.from_user_id, "from_user_id")
    into_user = check_id(request.into_user_id, "into_user_id")
    if from_user == into_user:
        raise InvalidArgument("into_user_id", "must differ from from_user_id")
    return from_user, into_user


def check_items(items, settings: GatewaySettings) -> None:
    if not items:
        raise InvalidArgument("items", "at least one item is required")
    if len(items) > settings.max_items_per_upsert:
        raise InvalidArgument("items", f"at most {settings.max_items_per_upsert} per call, got {len(items)}")
    size = sum(item.ByteSize() for item in items)
    if size > limits.UPSERT_BYTES:
        raise InvalidArgument("items", f"at most {limits.UPSERT_BYTES} bytes per call, got {size}: send fewer items")
    seen: set[str] = set()
    for i, item in enumerate(items):
        check_item(item, f"items[{i}]")  # the same check as the encoder's and retrieval's
        if item.item_id in seen:
            raise InvalidArgument(f"items[{i}].item_id", f"duplicate id {item.item_id!r} in this call")
        seen.add(item.item_id)


def check_item_ids(ids, settings: GatewaySettings) -> list[str]:
    if not ids:
        raise InvalidArgument("item_ids", "at least one id is required")
    return check_labels(ids, "item_ids", settings.max_filter_values, limits.ID_CHARS)
