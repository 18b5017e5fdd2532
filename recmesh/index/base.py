"""The item index's declared interface: what retrieval serves from and what the catalog tooling
writes to, whichever backend holds the items.

- `ItemIndex`: the abstract base every backend subclasses (one module per backend:
  `recmesh.index.edge.EdgeItemStore`, `recmesh.index.qdrant_server.QdrantServerStore`);
- the result types `StoredItem`, `Found`, and the request's `SearchFilter`;
- the filter's meaning, written once (`SearchFilter.conditions`): each backend only translates
  the conditions into its client's types, and `Conditions.admits` decides them in Python, the
  same way, for what holds candidates outside an index (the gateway's popular pool);
- the write rules every backend's `upsert` follows (`last_rows`, `with_popularity`).

Vectors are float32 numpy arrays; `dim` is the catalog space's size (INTEREST, SESSION),
`text_dim` the language model's (QUERY). Vector names and the payload are in
`recmesh.index.layout`."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Self

import numpy as np

from recmesh.index.layout import point_id
from recmesh.v1 import common_pb2

# The payload field holding an item's attributes ({name: str | float | bool}, layout.item_payload);
# a filter addresses one of them as "attributes.<name>".
ATTRIBUTES = "attributes"
# Attribute keys a backend gives a payload index as upsert first meets them (beyond these,
# filtered all the same by reading payloads; an index lets Qdrant plan a narrow filter so that
# it still fills a page).
INDEXED_ATTRIBUTES = 64


def attribute_key(name: str) -> str:
    """The payload key of attribute `name` (names are [A-Za-z0-9_]: no dot to split the path)."""
    return f"{ATTRIBUTES}.{name}"


@dataclass
class StoredItem:
    item_id: str
    title: str
    categories: list[str]
    popularity: float
    score: float = 0.0
    # {name: str | float | bool}: shared with the stored payload, not copied - never mutated.
    attributes: dict[str, str | float | bool] = field(default_factory=dict)


def stored_item(payload: dict) -> StoredItem:
    """A stored payload (all fields, or at least PAYLOAD_FIELDS) as an item, score 0."""
    return StoredItem(
        item_id=payload["item_id"],
        title=payload.get("title", ""),
        categories=list(payload.get("categories", [])),
        popularity=float(payload.get("popularity", 0.0)),
        attributes=dict(payload.get(ATTRIBUTES) or {}),
    )


@dataclass
class Found:
    """Items and, when asked for, their vectors as matrices with one row per item (columnar:
    the reply carries matrices, and per-item arrays cost more to build than the search)."""

    items: list[StoredItem]
    vectors: np.ndarray | None = None  # the catalog's space
    text_vectors: np.ndarray | None = None  # the language model's

    def __len__(self) -> int:
        return len(self.items)

    def ids(self) -> list[str]:
        return [it.item_id for it in self.items]


# Conditions on one payload field, `key` a dotted path ("categories", "attributes.price"). As in
# Qdrant: a field holding a list meets a condition when one of its elements does; a field that is
# missing, or holds a value of another kind (a number for AnyOf, a text or a bool for InRange),
# does not meet it. Booleans are not numbers.

@dataclass(frozen=True)
class AnyOf:
    """The payload field `key` is a text equal to one of `values` (a list: holds one of them)."""

    key: str
    values: tuple[str, ...]

    @functools.cached_property
    def _value_set(self) -> frozenset[str]:  # membership in O(1) for the Python evaluator
        return frozenset(self.values)


@dataclass(frozen=True)
class InRange:
    """The payload field `key` is a number in [min, max], bounds included; None: that side open."""

    key: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class FlagIs:
    """The payload field `key` is the boolean `value`."""

    key: str
    value: bool


@dataclass(frozen=True)
class HasPoint:
    """The item's point id (`layout.point_id`) is one of `point_ids`."""

    point_ids: tuple[int, ...]


Condition = AnyOf | InRange | FlagIs | HasPoint

_MISSING = object()


def payload_value(payload: Mapping[str, Any], key: str) -> Any:
    """The value at the dotted path `key` in a payload, or _MISSING."""
    value: Any = payload
    for part in key.split("."):
        if not isinstance(value, Mapping):
            return _MISSING
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def holds(condition: Condition, payload: Mapping[str, Any]) -> bool:
    """Whether a payload (item_id, and the fields the condition names) meets one condition, as
    the backends decide it (see the note above AnyOf)."""
    if isinstance(condition, HasPoint):
        return point_id(payload["item_id"]) in condition.point_ids
    return value_holds(condition, payload_value(payload, condition.key))


def value_holds(condition: AnyOf | InRange | FlagIs, value: Any) -> bool:
    """Whether the value of the payload field condition.key meets the condition (a list: one of
    its elements does; a missing field - None or _MISSING - never does), as `holds` decides it:
    for a caller that holds the field's value already (the gateway's business rules)."""
    values = value if isinstance(value, list) else (value,)
    if isinstance(condition, AnyOf):
        wanted = condition._value_set
        return any(isinstance(v, str) and v in wanted for v in values)
    if isinstance(condition, InRange):
        low, high = condition.min, condition.max
        return any(_is_number(v) and (low is None or v >= low) and (high is None or v <= high) for v in values)
    if isinstance(condition, FlagIs):
        return any(isinstance(v, bool) and v is condition.value for v in values)
    raise TypeError(f"not a filter condition: {condition!r}")


@dataclass(frozen=True)
class Conditions:
    """A filter, backend-neutral: an item passes when it meets every `must` condition and none
    of the `must_not` ones. Backends translate it into their client's filter type; `admits`
    decides it in Python."""

    must: tuple[Condition, ...]
    must_not: tuple[Condition, ...]

    def admits(self, payload: Mapping[str, Any]) -> bool:
        """Whether an item passes, from its payload ({item_id, categories, attributes: {name:
        str | float | bool}}, or any stored payload) - what an index would answer."""
        return (all(holds(c, payload) for c in self.must)
                and not any(holds(c, payload) for c in self.must_not))


@dataclass(frozen=True)
class AttributeTest:
    """One attribute filter (common.proto AttributeFilter) as data: a condition on the payload's
    "attributes.<name>"; exclude: the items that pass it are left out instead (an item without
    the attribute, or with a value of another kind, fails the test - so passes an exclusion)."""

    condition: AnyOf | InRange | FlagIs
    exclude: bool = False

    @classmethod
    def any_of(cls, name: str, values: Iterable[str], exclude: bool = False) -> "AttributeTest":
        """The text attribute `name` equals one of values."""
        return cls(AnyOf(attribute_key(name), tuple(values)), exclude)

    @classmethod
    def in_range(cls, name: str, min: float | None = None, max: float | None = None,
                 exclude: bool = False) -> "AttributeTest":
        """The number attribute `name` lies in [min, max] (None: that side open)."""
        return cls(InRange(attribute_key(name), min, max), exclude)

    @classmethod
    def flag_is(cls, name: str, value: bool, exclude: bool = False) -> "AttributeTest":
        """The flag attribute `name` is `value`."""
        return cls(FlagIs(attribute_key(name), bool(value)), exclude)

    @classmethod
    def from_proto(cls, f: common_pb2.AttributeFilter) -> "AttributeTest":
        """Raises ValueError when no test is set (recmesh.common.validation refuses that first,
        naming the field)."""
        test = f.WhichOneof("test")
        if test == "any_of":
            return cls.any_of(f.name, f.any_of.values, f.exclude)
        if test == "range":
            return cls.in_range(f.name, f.range.min if f.range.HasField("min") else None,
                                f.range.max if f.range.HasField("max") else None, f.exclude)
        if test == "equals":
            return cls.flag_is(f.name, f.equals, f.exclude)
        raise ValueError(f"attribute filter {f.name!r} sets no test (any_of, range or equals)")


@dataclass
class SearchFilter:
    include_categories: list[str] = field(default_factory=list)
    exclude_categories: list[str] = field(default_factory=list)
    exclude_item_ids: list[str] = field(default_factory=list)
    attributes: list[AttributeTest] = field(default_factory=list)  # every one must hold

    @classmethod
    def from_proto(cls, filters: common_pb2.Filters, exclude_item_ids: Iterable[str] | None = None) -> Self:
        """A request's filters (categories, attributes; checked already); exclude_item_ids: the
        ids to leave out (None: the request's own). exclude_seen is the caller's to resolve."""
        ids = filters.exclude_item_ids if exclude_item_ids is None else exclude_item_ids
        return cls(list(filters.include_categories), list(filters.exclude_categories), list(ids),
                   [AttributeTest.from_proto(f) for f in filters.attributes])

    def conditions(self, with_ids: bool = True) -> Conditions | None:
        """The filter's rule, the one place it is written: an item passes when it has any of
        include_categories (none given: every item), none of exclude_categories, passes every
        attribute test (an excluding one: fails it), and is not one of exclude_item_ids. None:
        nothing to filter. with_ids=False leaves the excluded ids out (the caller drops them
        from the hits)."""
        must: list[Condition] = []
        must_not: list[Condition] = []
        if self.include_categories:
            must.append(AnyOf("categories", tuple(self.include_categories)))
        if self.exclude_categories:
            must_not.append(AnyOf("categories", tuple(self.exclude_categories)))
        for test in self.attributes:
            (must_not if test.exclude else must).append(test.condition)
        if with_ids and self.exclude_item_ids:
            must_not.append(HasPoint(tuple(point_id(i) for i in self.exclude_item_ids)))
        if not must and not must_not:
            return None
        return Conditions(tuple(must), tuple(must_not))


def last_rows(items: list[dict]) -> list[int]:
    """The rows to write, in order: an id given more than once is written from its last row."""
    last = {item["item_id"]: row for row, item in enumerate(items)}
    return sorted(last.values())


def with_popularity(items: list[dict], stored: dict[str, float]) -> list[dict]:
    """items, each with a popularity: its own, else the stored one (`stored`: item id ->
    popularity), else 0 - a statistic the catalog build computed, not reset by an update."""
    return [item if "popularity" in item else item | {"popularity": stored.get(item["item_id"], 0.0)}
            for item in items]


class ItemIndex(ABC):
    """Items with three named vectors (layout.INTEREST: the catalog vector, dot product;
    layout.SESSION: the same vector, cosine; layout.QUERY: the language-model text vector,
    cosine) and the payload {item_id, title, categories, popularity, attributes, text}
    (`layout.item_payload`), addressed by `layout.point_id(item_id)`. Items come back with their
    attributes ({name: str | float | bool}) from every read.

    Methods block (disk or network); they may be called from several threads. Backends
    differ in where the items live (the arguments `create` and `open` begin with), in what a
    read costs (`reads_in_process`) and in what they can promise under concurrent writers
    (see each backend's `upsert` and `delete`)."""

    dim: int  # catalog vectors' size (INTEREST, SESSION)
    text_dim: int  # text vectors' size (QUERY)
    version: str  # the catalog build the items came from ("unversioned" when it said none)

    # True: search, get and top_popular are in-process CPU work of a millisecond or two, with no
    # I/O - an event loop may call them inline rather than hand them to a thread.
    reads_in_process: ClassVar[bool] = False
    # True: search_scored answers the index's own StoredItem objects (one per item, replaced -
    # not mutated - when the item is written): a caller may cache what it derives from an item
    # for as long as it is handed the same object.
    shares_items: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def create(cls, *where: Any, dim: int, text_dim: int, version: str, hnsw_ef: int | None = None) -> Self:
        """A new, empty index at `where` (the backend's own: a shard directory; a client and a
        collection name), with the layout's vectors of sizes dim and text_dim, payload indexes
        on categories and popularity (and on attributes as `upsert` first meets them: what lets a
        narrow filter still fill a page), and `version` recorded. hnsw_ef: search breadth (higher is
        more exact and slower; None: the one the index records, `recmesh.index.hnsw.search_ef`).
        Backends may take more options by keyword (shards, replication)."""

    @classmethod
    @abstractmethod
    def open(cls, *where: Any, hnsw_ef: int | None = None) -> Self:
        """The index at `where`. Raises FileNotFoundError when there is none (the message names
        the command that builds it), OlderLayout (a ValueError) when it was built with another
        layout.LAYOUT, ValueError when it is not one recmesh wrote."""

    @abstractmethod
    def count(self) -> int:
        """The number of items held (exact)."""

    @abstractmethod
    def search(self, sources: list[tuple[str, np.ndarray]], limit: int, flt: SearchFilter,
               with_vectors: bool) -> Found:
        """Up to `limit` items from each (vector name, query vector) source, merged in order
        without duplicates; the score is the first source's that found the item (INTEREST: dot
        product, SESSION and QUERY: cosine). Names are layout.INTEREST/SESSION (vectors of
        `dim`) and layout.QUERY (`text_dim`); query vectors need not be unit. Only items that
        pass flt; excluded ids never take a place in a source's `limit`. with_vectors: the
        items' catalog and text vectors come back as (n, dim) and (n, text_dim) matrices."""

    def search_scored(self, sources: list[tuple[str, np.ndarray]], limit: int, flt: SearchFilter,
                      with_vectors: bool) -> tuple[Found, list[float]]:
        """As search, with the scores apart (scores[i]: items[i]'s): the items' own `score` is
        not to be read, and where `shares_items` they are the index's objects - never mutated."""
        found = self.search(sources, limit, flt, with_vectors)
        return found, [it.score for it in found.items]

    @abstractmethod
    def get(self, item_ids: list[str], with_vectors: bool = False) -> Found:
        """Items in the order asked; unknown ids are left out (a repeated id comes back as often
        as asked). Scores are 0."""

    @abstractmethod
    def top_popular(self, limit: int, with_vectors: bool = False, flt: SearchFilter | None = None) -> Found:
        """The `limit` most popular items that pass flt, most popular first (filtered before
        the cut: fewer only when fewer match). Scores are 0."""

    @abstractmethod
    def upsert(self, items: list[dict], vectors: np.ndarray, text_vectors: np.ndarray) -> int:
        """items: payloads (`layout.item_payload`: item_id, title, categories, attributes, text
        and optionally popularity - absent: the stored one is kept, 0 for a new item); row i of
        vectors (n, dim) and text_vectors (n, text_dim) is items[i]'s. An id given twice is
        written once, from its last row (`last_rows`, `with_popularity`). Returns the distinct
        items written. Raises ValueError, writing nothing, when an item's point id is held by
        another item and the backend knows it (EdgeItemStore)."""

    @abstractmethod
    def delete(self, item_ids: list[str]) -> int:
        """Deletes the items; returns how many distinct items existed and are now deleted
        (repeated and unknown ids count nothing)."""

    @abstractmethod
    def export(self, batch: int = 512, payload: list[str] | bool = True
               ) -> Iterator[tuple[list[dict], np.ndarray, np.ndarray]]:
        """Every item, batch by batch (up to `batch` items each, in no promised order), as
        (payloads: every field, or the fields named; catalog vectors (n, dim); text vectors
        (n, text_dim)) - what `upsert` takes, to copy an index into another."""

    @abstractmethod
    def close(self) -> None:
        """Makes every acknowledged write durable and releases the index; it is not used after."""
