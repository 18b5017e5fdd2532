"""Item vectors and payload in a Qdrant Edge shard (the Qdrant engine in-process, on disk)."""

from __future__ import annotations

import functools
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import qdrant_edge as qe

from recmesh.common.catalog import item_text
from recmesh.v1 import common_pb2

# Qdrant point ids are ints or UUIDs; item ids are the backend's strings.
_ID_NAMESPACE = uuid.UUID("6f1c1f0e-8a51-4f57-9a57-1f0ad1ee7a11")


@functools.lru_cache(maxsize=1 << 16)  # seen-item exclusions resend the same ids every call
def point_id(item_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


# The text is stored for humans and re-encoding, not needed to serve.
_PAYLOAD_FIELDS = ["item_id", "title", "categories", "popularity"]


def item_payload(item: common_pb2.Item, popularity: float) -> dict:
    """What the shard stores per item (the text is kept for humans and re-encoding)."""
    return {
        "item_id": item.item_id,
        "title": item.title,
        "categories": list(item.categories),
        "popularity": float(popularity),
        "text": item_text(item),
    }


# Named vectors per item. Search sources name the first three; "similar" holds the catalog
# vector again, which Qdrant normalises, so that item-to-item search is by cosine.
INTEREST, SESSION, QUERY = "interest", "similar", "text"
# Bump when what a shard holds changes: cached catalog builds are keyed on it.
LAYOUT = "interest.similar.text/v1"


@dataclass
class StoredItem:
    item_id: str
    title: str
    categories: list[str]
    popularity: float
    score: float = 0.0
    vector: np.ndarray | None = None  # the catalog's space
    text_vector: np.ndarray | None = None  # the language model's


@dataclass
class SearchFilter:
    include_categories: list[str] = field(default_factory=list)
    exclude_categories: list[str] = field(default_factory=list)
    exclude_item_ids: list[str] = field(default_factory=list)

    def to_qdrant(self) -> qe.Filter | None:
        must, must_not = [], []
        if self.include_categories:
            must.append(qe.FieldCondition(key="categories", match=qe.MatchAny(any=list(self.include_categories))))
        if self.exclude_categories:
            must_not.append(qe.FieldCondition(key="categories", match=qe.MatchAny(any=list(self.exclude_categories))))
        if self.exclude_item_ids:
            must_not.append(qe.HasIdCondition(point_ids={point_id(i) for i in self.exclude_item_ids}))
        if not must and not must_not:
            return None
        return qe.Filter(must=must or None, must_not=must_not or None)


class VectorMirror:
    """Item vectors as one numpy matrix, beside the shard. Qdrant hands vectors back as Python
    lists (about 5 ms for 200 x 384); candidates need them for ranking, so they come from here."""

    def __init__(self, dim: int):
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._matrix = np.zeros((0, dim), dtype=np.float32)

    def put(self, item_ids: list[str], vectors: np.ndarray) -> None:
        for item_id, vec in zip(item_ids, vectors, strict=True):
            row = self._rows.get(item_id)
            if row is None:
                row = self._free.pop() if self._free else self._grow()
                self._rows[item_id] = row
            self._matrix[row] = vec

    def _grow(self) -> int:
        n = len(self._matrix)
        if n == len(self._rows) + len(self._free):
            self._matrix = np.concatenate([self._matrix, np.zeros((max(n, 1024), self._matrix.shape[1]), np.float32)])
        return len(self._rows) + len(self._free)

    def drop(self, item_ids: list[str]) -> None:
        for item_id in item_ids:
            row = self._rows.pop(item_id, None)
            if row is not None:
                self._free.append(row)

    def get(self, item_ids: list[str]) -> np.ndarray:
        return self._matrix[[self._rows[i] for i in item_ids]]


class EdgeItemStore:
    """One Qdrant Edge shard of items: three named vectors (INTEREST: the catalog vector, dot
    product; SESSION: the same, cosine; QUERY: the language-model text vector, cosine) and the
    payload {item_id, title, categories, popularity, text}."""

    def __init__(self, shard: qe.EdgeShard, meta: dict, hnsw_ef: int = 128):
        self._shard = shard
        self.dim, self.text_dim = int(meta["dim"]), int(meta["text_dim"])
        # Names the catalog build this shard came from; reported as the index version.
        self.version = str(meta.get("version", "unversioned"))
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef)
        # Writes are few; serialising them keeps upsert+flush atomic with respect to each other.
        self._write_lock = threading.Lock()
        self._vectors = VectorMirror(self.dim)
        self._text = VectorMirror(self.text_dim)
        self._load_mirror()

    def _load_mirror(self) -> None:
        offset = None
        while True:
            records, offset = self._shard.scroll(
                qe.ScrollRequest(offset=offset, limit=2048, with_payload=["item_id"], with_vector=[INTEREST, QUERY])
            )
            if records:
                ids = [r.payload["item_id"] for r in records]
                self._vectors.put(ids, np.array([r.vector[INTEREST] for r in records], np.float32))
                self._text.put(ids, np.array([r.vector[QUERY] for r in records], np.float32))
            if offset is None:
                return

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
        meta = {"dim": dim, "text_dim": text_dim, "version": version}
        cls._meta_path(path).write_text(json.dumps(meta))
        return cls(shard, meta, hnsw_ef)

    @classmethod
    def open(cls, path: Path, hnsw_ef: int = 128) -> "EdgeItemStore":
        meta_path = cls._meta_path(path)
        if not path.is_dir() or not meta_path.is_file():
            raise FileNotFoundError(f"no item shard at {path}: run `recmesh bootstrap` first")
        meta = json.loads(meta_path.read_text())
        if "text_dim" not in meta:
            raise ValueError(f"{path} is a catalog of an older layout: rebuild it with `recmesh bootstrap --force`")
        return cls(qe.EdgeShard.load(str(path)), meta, hnsw_ef)

    def count(self) -> int:
        return self._shard.count(qe.CountRequest(exact=True))

    def upsert(self, items: list[dict], vectors: np.ndarray, text_vectors: np.ndarray) -> int:
        """items: dicts with item_id, title, categories, popularity, text."""
        points = [
            qe.Point(id=point_id(item["item_id"]), payload=item,
                     vector={INTEREST: vec.tolist(), SESSION: vec.tolist(), QUERY: text.tolist()})
            for item, vec, text in zip(items, vectors, text_vectors, strict=True)
        ]
        ids = [item["item_id"] for item in items]
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(points))
            self._vectors.put(ids, vectors)
            self._text.put(ids, text_vectors)
        return len(points)

    def delete(self, item_ids: list[str]) -> int:
        existing = self.get(item_ids)
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.delete_points([point_id(i) for i in item_ids]))
            self._vectors.drop(item_ids)
            self._text.drop(item_ids)
        return len(existing)

    def flush(self) -> None:
        with self._write_lock:
            self._shard.flush()

    def optimize(self) -> None:
        """Build indexes after a bulk load."""
        with self._write_lock:
            self._shard.optimize()

    def search(self, sources: list[tuple[str, np.ndarray]], limit: int, flt: SearchFilter,
               with_vectors: bool) -> list[StoredItem]:
        """Up to `limit` items from each (vector name, query vector) source, merged in order
        without duplicates."""
        qfilter = flt.to_qdrant()
        merged: dict[str, StoredItem] = {}
        for name, vector in sources:
            request = qe.QueryRequest(query=qe.Query.Nearest(vector.tolist(), using=name), limit=limit, filter=qfilter,
                                      params=self._params, with_payload=_PAYLOAD_FIELDS)
            for item in self._items(self._shard.query(request), False):
                merged.setdefault(item.item_id, item)
        items = list(merged.values())
        if with_vectors:
            self._attach_vectors(items)
        return items

    def get(self, item_ids: list[str], with_vectors: bool = False) -> list[StoredItem]:
        """Items in the order asked; unknown ids are left out."""
        records = self._shard.retrieve([point_id(i) for i in item_ids], _PAYLOAD_FIELDS, False)
        by_id = {item.item_id: item for item in self._items(records, with_vectors)}
        return [by_id[i] for i in item_ids if i in by_id]

    def top_popular(self, limit: int, with_vectors: bool = False) -> list[StoredItem]:
        order = qe.OrderBy(key="popularity", direction=qe.Direction.Desc)
        records, _ = self._shard.scroll(qe.ScrollRequest(limit=limit, order_by=order, with_payload=_PAYLOAD_FIELDS))
        return self._items(records, with_vectors)

    def close(self) -> None:
        self._shard.close()

    def _items(self, points, with_vectors: bool) -> list[StoredItem]:
        items = [
            StoredItem(
                item_id=p.payload["item_id"],
                title=p.payload.get("title", ""),
                categories=list(p.payload.get("categories", [])),
                popularity=float(p.payload.get("popularity", 0.0)),
                score=float(getattr(p, "score", 0.0)),
            )
            for p in points
        ]
        if with_vectors:
            self._attach_vectors(items)
        return items

    def _attach_vectors(self, items: list[StoredItem]) -> None:
        if not items:
            return
        ids = [it.item_id for it in items]
        for item, vec, text in zip(items, self._vectors.get(ids), self._text.get(ids), strict=True):
            item.vector, item.text_vector = vec, text
