"""Checks on public requests; every failure names its field."""

from __future__ import annotations

from recmesh.common.errors import InvalidArgument
from recmesh.common.validation import MAX_ID_CHARS, check_id, check_query
from services.gateway.config import GatewaySettings


def _check_values(values, field: str, limit: int) -> None:
    if len(values) > limit:
        raise InvalidArgument(field, f"at most {limit} values, got {len(values)}")
    for i, value in enumerate(values):
        if not value or len(value) > MAX_ID_CHARS:
            raise InvalidArgument(f"{field}[{i}]", f"must be 1..{MAX_ID_CHARS} characters")


def check_recommend(request, settings: GatewaySettings) -> tuple[int, str]:
    """Returns (k, query) normalised."""
    check_id(request.user_id, "user_id")
    k = request.k if request.HasField("k") else settings.default_k
    if not 1 <= k <= settings.max_k:
        raise InvalidArgument("k", f"must be in 1..{settings.max_k}, got {k}")
    query = check_query(request.query, "query", settings.max_query_chars)
    f = request.filters
    _check_values(f.include_categories, "filters.include_categories", settings.max_filter_values)
    _check_values(f.exclude_categories, "filters.exclude_categories", settings.max_filter_values)
    _check_values(f.exclude_item_ids, "filters.exclude_item_ids", settings.max_filter_values)
    if len(request.context.surface) > MAX_ID_CHARS or len(request.context.locale) > MAX_ID_CHARS:
        raise InvalidArgument("context", f"surface and locale are at most {MAX_ID_CHARS} characters")
    if not 0.0 <= request.diversity <= 1.0:  # NaN fails this too
        raise InvalidArgument("diversity", f"must be in 0..1, got {request.diversity}")
    return k, query


def check_items(items, settings: GatewaySettings) -> None:
    if not items:
        raise InvalidArgument("items", "at least one item is required")
    if len(items) > settings.max_items_per_upsert:
        raise InvalidArgument("items", f"at most {settings.max_items_per_upsert} per call, got {len(items)}")
    seen: set[str] = set()
    for i, item in enumerate(items):
        check_id(item.item_id, f"items[{i}].item_id")
        if item.item_id in seen:
            raise InvalidArgument(f"items[{i}].item_id", f"duplicate id {item.item_id!r} in this call")
        seen.add(item.item_id)
        if not item.title.strip():
            raise InvalidArgument(f"items[{i}].title", "must not be empty")
        check_query(item.title, f"items[{i}].title", settings.max_query_chars)
        check_query(item.description, f"items[{i}].description", 4 * settings.max_query_chars)
        _check_values(item.categories, f"items[{i}].categories", 64)
        _check_values(item.tags, f"items[{i}].tags", 64)


def check_item_ids(ids, settings: GatewaySettings) -> list[str]:
    if not ids:
        raise InvalidArgument("item_ids", "at least one id is required")
    _check_values(ids, "item_ids", settings.max_filter_values)
    return list(ids)
