"""Item vectors and payload in a Qdrant Edge shard (the Qdrant engine in-process, on disk)."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import qdrant_edge as qe

from recmesh.common.catalog import item_text
from recmesh.v1 import common_pb2


@functools.lru_cache(maxsize=1 << 16)  # seen-item exclusions resend the same ids every call
def point_id(item_id: str) -> int:
    """The item's Qdrant point id (ints or UUIDs; item ids are the backend's strings): 63 bits
    of a hash. Ints, because hits come back as Python objects of the id's type, and turning
    hundreds of UUIDs into Python objects per search cost more than the search. Collisions
    (expected at ~3e9 items) are refused when an item is stored."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big") >> 1


# The text is stored for humans and re-encoding, not needed to serve.
PAYLOAD_FIELDS = ["item_id", "title", "categories", "popularity"]


def item_payload(item: common_pb2.Item, popularity: float | None) -> dict:
    """What the shard stores per item (the text is kept for humans and re-encoding). popularity
    None: the item carries none - the store keeps the stored one (0 for a new item)."""
    payload = {
        "item_id": item.item_id,
        "title": item.title,
        "categories": list(item.categories),
        "text": item_text(item),
    }
    if popularity is not None:
        payload["popularity"] = float(popularity)
    return payload


def last_rows(items: list[dict]) -> list[int]:
    """The rows to write, in order: an id given more than once is written from its last row."""
    last = {item["item_id"]: row for row, item in enumerate(items)}
    return sorted(last.values())


def with_popularity(items: list[dict], stored: dict[str, float]) -> list[dict]:
    """items, each with a popularity: its own, else the stored one (`stored`: item id ->
    popularity), else 0 - a statistic the catalog build computed, not reset by an update."""
    return [item if "popularity" in item else item | {"popularity": stored.get(item["item_id"], 0.0)}
            for item in items]


# Named vectors per item. Search sources name the first three; "similar" holds the catalog
# vector again, which Qdrant normalises, so that item-to-item search is by cosine.
INTEREST, SESSION, QUERY = "interest", "similar", "text"
# Bump when what a shard holds changes: cached catalog builds are keyed on it.
LAYOUT = "interest.similar.text/v2"  # v2: 63-bit int point ids (v1: UUIDv5)


class OlderLayout(ValueError):
    """A catalog recmesh built with another LAYOUT: rebuild (or republish) it."""


@dataclass
class StoredItem:
    item_id: str
    title: str
    categories: list[str]
    popularity: float
    score: float = 0.0


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


@dataclass
class SearchFilter:
    include_categories: list[str] = field(default_factory=list)
    exclude_categories: list[str] = field(default_factory=list)
    exclude_item_ids: list[str] = field(default_factory=list)

    def to_qdrant(self, with_ids: bool = True) -> qe.Filter | None:
        """with_ids=False leaves the excluded ids out (the caller drops them from the hits)."""
        must, must_not = [], []
        if self.include_categories:
            must.append(qe.FieldCondition(key="categories", match=qe.MatchAny(any=list(self.include_categories))))
        if self.exclude_categories:
            must_not.append(qe.FieldCondition(key="categories", match=qe.MatchAny(any=list(self.exclude_categories))))
        if with_ids and self.exclude_item_ids:
            must_not.append(qe.HasIdCondition(point_ids={point_id(i) for i in self.exclude_item_ids}))
        if not must and not must_not:
            return None
        return qe.Filter(must=must or None, must_not=must_not or None)


class CatalogMirror:
    """Every item's payload and both vectors in memory, beside the shard, keyed by item id and by
    Qdrant point id. Qdrant answers searches with point ids and scores only: turning its payloads
    and vectors into Python objects cost more than the searches themselves (payload ~0.7 ms per
    100 hits; vectors ~5 ms for 200 x 384). Memory: ~2 KB per item at these dims."""

    def __init__(self, dim: int, text_dim: int):
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._items: dict[str, StoredItem] = {}
        self.item_by_point: dict[int, str] = {}
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._text = np.zeros((0, text_dim), dtype=np.float32)

    def check_point_ids(self, item_ids: list[str]) -> None:
        """Refuse ids whose point id another item holds - before the shard is written, where the
        second item would silently replace the first (so a shard never holds such a pair)."""
        for item_id in item_ids:
            other = self.item_by_point.get(point_id(item_id), item_id)
            if other != item_id:
                raise ValueError(f"item ids {item_id!r} and {other!r} hash to the same point id")

    def put(self, items: list[StoredItem], vectors: np.ndarray, text_vectors: np.ndarray) -> None:
        for item, vec, text in zip(items, vectors, text_vectors, strict=True):
            row = self._rows.get(item.item_id)
            if row is None:
                row = self._free.pop() if self._free else self._grow()
                self._rows[item.item_id] = row
            self._vectors[row], self._text[row] = vec, text
            self._items[item.item_id] = item
            self.item_by_point[point_id(item.item_id)] = item.item_id

    def _grow(self) -> int:
        n = len(self._vectors)
        if n == len(self._rows) + len(self._free):
            extra = max(n, 1024)
            self._vectors = np.concatenate([self._vectors, np.zeros((extra, self._vectors.shape[1]), np.float32)])
            self._text = np.concatenate([self._text, np.zeros((extra, self._text.shape[1]), np.float32)])
        return len(self._rows) + len(self._free)

    def popularity(self, item_ids: list[str]) -> dict[str, float]:
        """The stored popularity of those of item_ids that are held."""
        return {i: self._items[i].popularity for i in item_ids if i in self._items}

    def drop(self, item_ids: list[str]) -> None:
        for item_id in item_ids:
            row = self._rows.pop(item_id, None)
            if row is not None:
                self._free.append(row)
                del self._items[item_id]
                self.item_by_point.pop(point_id(item_id), None)

    def items(self, item_ids: list[str], scores: list[float] | None = None, with_vectors: bool = False) -> Found:
        """Copies of the known items among item_ids, in order (one deleted meanwhile drops out)."""
        by_id = self._items
        found = [StoredItem(m.item_id, m.title, m.categories, m.popularity, scores[n] if scores else 0.0)
                 for n, m in enumerate(by_id.get(i) for i in item_ids) if m is not None]
        if not with_vectors:
            return Found(found)
        rows = [self._rows[it.item_id] for it in found]
        return Found(found, self._vectors[rows], self._text[rows])


class EdgeItemStore:
    """One Qdrant Edge shard of items: three named vectors (INTEREST: the catalog vector, dot
    product; SESSION: the same, cosine; QUERY: the language-model text vector, cosine) and the
    payload {item_id, title, categories, popularity, text}."""

    # Excluded ids (mostly what the user has seen) are dropped from over-fetched hits up to this
    # many: cheaper than Qdrant's id filter (building it alone cost ~0.2 ms for 150 ids).
    MAX_OVERFETCH = 400

    def __init__(self, shard: qe.EdgeShard, meta: dict, hnsw_ef: int = 128):
        self._shard = shard
        self.dim, self.text_dim = int(meta["dim"]), int(meta["text_dim"])
        # Names the catalog build this shard came from; reported as the index version.
        self.version = str(meta.get("version", "unversioned"))
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef)
        # Writes are few; serialising them keeps upsert+flush atomic with respect to each other.
        self._write_lock = threading.Lock()
        self._mirror = CatalogMirror(self.dim, self.text_dim)
        self._load_mirror()

    def _load_mirror(self) -> None:
        for payloads, vectors, texts in self.export(2048, PAYLOAD_FIELDS):
            self._mirror.put([stored_item(p) for p in payloads], vectors, texts)

    @staticmethod
    def _meta_path(path: Path) -> Path:
        # Beside the shard, not in it: the shard directory belongs to Qdrant.
        return path.parent / f"{path.name}.meta.json"

    @classmethod
    def create(cls, path: Path, dim: int, text_dim: int, version: str, hnsw_ef: int = 128) -> "EdgeItemStore":
        path.mkdir(parents=True, exist_ok=True)
        config = qe.EdgeConfig(vectors={
            INTEREST: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot),
            SESSION: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            QUERY: qe.EdgeVectorParams(size=text_dim, distance=qe.Distance.Cosine),
        })
        shard = qe.EdgeShard.create(str(path), config)
        shard.update(qe.UpdateOperation.create_field_index("categories", qe.PayloadSchemaType.Keyword))
        shard.update(qe.UpdateOperation.create_field_index("popularity", qe.PayloadSchemaType.Float))
        meta = {"dim": dim, "text_dim": text_dim, "version": version, "layout": LAYOUT}
        cls._meta_path(path).write_text(json.dumps(meta))
        return cls(shard, meta, hnsw_ef)

    @classmethod
    def open(cls, path: Path, hnsw_ef: int = 128) -> "EdgeItemStore":
        meta_path = cls._meta_path(path)
        if not path.is_dir() or not meta_path.is_file():
            raise FileNotFoundError(f"no item shard at {path}: run `recmesh bootstrap` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("layout") != LAYOUT:
            raise OlderLayout(f"{path} is a catalog of an older layout: rebuild it with `recmesh bootstrap --force`")
        return cls(qe.EdgeShard.load(str(path)), meta, hnsw_ef)

    def count(self) -> int:
        return self._shard.count(qe.CountRequest(exact=True))

    def export(self, batch: int = 512, payload: list[str] | bool = True
               ) -> Iterator[tuple[list[dict], np.ndarray, np.ndarray]]:
        """Every item as (payloads: all fields, or those named; catalog vectors; text vectors),
        batch by batch."""
        offset = None
        while True:
            records, offset = self._shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=payload, with_vector=[INTEREST, QUERY]))
            if records:
                yield ([dict(r.payload) for r in records], np.array([r.vector[INTEREST] for r in records], np.float32),
                       np.array([r.vector[QUERY] for r in records], np.float32))
            if offset is None:
                return

    def upsert(self, items: list[dict], vectors: np.ndarray, text_vectors: np.ndarray) -> int:
        """items: dicts with item_id, title, categories, text and optionally popularity (absent:
        the stored one is kept, 0 for a new item); row i of the matrices is items[i]'s. An id
        given twice is written once, from its last row. Returns the distinct items written."""
        rows = last_rows(items)
        items, vectors, text_vectors = [items[r] for r in rows], vectors[rows], text_vectors[rows]
        # Under the write lock: the popularity kept is the one stored when this write lands.
        with self._write_lock:
            self._mirror.check_point_ids([item["item_id"] for item in items])
            items = with_popularity(items, self._mirror.popularity([item["item_id"] for item in items]))
            points = [
                qe.Point(id=point_id(item["item_id"]), payload=item,
                         vector={INTEREST: vec.tolist(), SESSION: vec.tolist(), QUERY: text.tolist()})
                for item, vec, text in zip(items, vectors, text_vectors, strict=True)
            ]
            self._shard.update(qe.UpdateOperation.upsert_points(points))
            self._mirror.put([stored_item(item) for item in items], vectors, text_vectors)
        return len(points)

    def delete(self, item_ids: list[str]) -> int:
        """Returns how many distinct items existed and are now deleted (repeated and unknown ids
        count nothing)."""
        ids = list(dict.fromkeys(item_ids))
        # Counted under the write lock: two concurrent deletes of one item count it once.
        with self._write_lock:
            existing = self._mirror.popularity(ids)
            self._shard.update(qe.UpdateOperation.delete_points([point_id(i) for i in ids]))
            self._mirror.drop(ids)
        return len(existing)

    def flush(self) -> None:
        with self._write_lock:
            self._shard.flush()

    def optimize(self) -> None:
        """Build indexes after a bulk load."""
        with self._write_lock:
            self._shard.optimize()

    def search(self, sources: list[tuple[str, np.ndarray]], limit: int, flt: SearchFilter,
               with_vectors: bool) -> Found:
        """Up to `limit` items from each (vector name, query vector) source, merged in order
        without duplicates; the score is the first source's that found the item."""
        excluded = set(flt.exclude_item_ids)
        overfetch = len(excluded) <= self.MAX_OVERFETCH
        qfilter = flt.to_qdrant(with_ids=not overfetch)
        # Over-fetching by the number excluded still leaves `limit` hits after dropping them.
        fetch = limit + len(excluded) if overfetch else limit
        requests = [qe.QueryRequest(query=qe.Query.Nearest(vector.tolist(), using=name), limit=fetch,
                                    filter=qfilter, params=self._params, with_payload=False)
                    for name, vector in sources]
        scores: dict[str, float] = {}
        by_point = self._mirror.item_by_point
        for hits in self._shard.query_batch(qe.QueryBatchRequest(requests)):
            kept = 0
            for hit in hits:
                item_id = by_point.get(hit.id)
                if item_id is None or item_id in excluded:  # None: deleted since the search began
                    continue
                scores.setdefault(item_id, hit.score)
                kept += 1
                if kept == limit:
                    break
        return self._mirror.items(list(scores), list(scores.values()), with_vectors)

    def get(self, item_ids: list[str], with_vectors: bool = False) -> Found:
        """Items in the order asked; unknown ids are left out."""
        return self._mirror.items(item_ids, with_vectors=with_vectors)

    def top_popular(self, limit: int, with_vectors: bool = False, flt: SearchFilter | None = None) -> Found:
        """The `limit` most popular items that pass flt, most popular first (filtered before
        the cut: fewer only when fewer match)."""
        order = qe.OrderBy(key="popularity", direction=qe.Direction.Desc)
        qfilter = flt.to_qdrant() if flt is not None else None
        records, _ = self._shard.scroll(qe.ScrollRequest(limit=limit, order_by=order, filter=qfilter,
                                                         with_payload=["item_id"]))
        return self._mirror.items([r.payload["item_id"] for r in records], with_vectors=with_vectors)

    def close(self) -> None:
        self._shard.close()


def stored_item(payload: dict) -> StoredItem:
    return StoredItem(
        item_id=payload["item_id"],
        title=payload.get("title", ""),
        categories=list(payload.get("categories", [])),
        popularity=float(payload.get("popularity", 0.0)),
    )
