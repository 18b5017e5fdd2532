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

# Qdrant point ids are ints or UUIDs; item ids are the backend's strings.
_ID_NAMESPACE = uuid.UUID("6f1c1f0e-8a51-4f57-9a57-1f0ad1ee7a11")


@functools.lru_cache(maxsize=1 << 16)  # seen-item exclusions resend the same ids every call
def point_id(item_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, item_id))


@dataclass
class StoredItem:
    item_id: str
    title: str
    categories: list[str]
    popularity: float
    score: float = 0.0
    vector: np.ndarray | None = None


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


class EdgeItemStore:
    """One Qdrant Edge shard of items: cosine vectors + {item_id, title, categories, popularity, text}."""

    def __init__(self, shard: qe.EdgeShard, meta: dict, hnsw_ef: int = 128):
        self._shard = shard
        self.dim = int(meta["dim"])
        # Names the catalog build this shard came from; reported as the index version.
        self.version = str(meta.get("version", "unversioned"))
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef)
        # Writes are few; serialising them keeps upsert+flush atomic with respect to each other.
        self._write_lock = threading.Lock()

    @staticmethod
    def _meta_path(path: Path) -> Path:
        # Beside the shard, not in it: the shard directory belongs to Qdrant.
        return path.parent / f"{path.name}.meta.json"

    @classmethod
    def create(cls, path: Path, dim: int, version: str, hnsw_ef: int = 128) -> "EdgeItemStore":
        path.mkdir(parents=True, exist_ok=True)
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))
        shard = qe.EdgeShard.create(str(path), config)
        shard.update(qe.UpdateOperation.create_field_index("categories", qe.PayloadSchemaType.Keyword))
        shard.update(qe.UpdateOperation.create_field_index("popularity", qe.PayloadSchemaType.Float))
        meta = {"dim": dim, "version": version}
        cls._meta_path(path).write_text(json.dumps(meta))
        return cls(shard, meta, hnsw_ef)

    @classmethod
    def open(cls, path: Path, hnsw_ef: int = 128) -> "EdgeItemStore":
        meta_path = cls._meta_path(path)
        if not path.is_dir() or not meta_path.is_file():
            raise FileNotFoundError(f"no item shard at {path}: run `recmesh bootstrap` first")
        return cls(qe.EdgeShard.load(str(path)), json.loads(meta_path.read_text()), hnsw_ef)

    def count(self) -> int:
        return self._shard.count(qe.CountRequest(exact=True))

    def upsert(self, items: list[dict], vectors: np.ndarray) -> int:
        """items: dicts with item_id, title, categories, popularity, text."""
        points = [
            qe.Point(id=point_id(item["item_id"]), vector=vec.tolist(), payload=item)
            for item, vec in zip(items, vectors, strict=True)
        ]
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.upsert_points(points))
        return len(points)

    def delete(self, item_ids: list[str]) -> int:
        existing = self.get(item_ids)
        with self._write_lock:
            self._shard.update(qe.UpdateOperation.delete_points([point_id(i) for i in item_ids]))
        return len(existing)

    def flush(self) -> None:
        with self._write_lock:
            self._shard.flush()

    def optimize(self) -> None:
        """Build indexes after a bulk load."""
        with self._write_lock:
            self._shard.optimize()

    def search(self, vector: np.ndarray, limit: int, flt: SearchFilter, with_vectors: bool) -> list[StoredItem]:
        request = qe.QueryRequest(
            query=qe.Query.Nearest(vector.tolist()),
            limit=limit,
            filter=flt.to_qdrant(),
            params=self._params,
            with_payload=True,
            with_vector=with_vectors,
        )
        return [self._to_item(p, p.score, with_vectors) for p in self._shard.query(request)]

    def get(self, item_ids: list[str], with_vectors: bool = False) -> list[StoredItem]:
        """Items in the order asked; unknown ids are left out."""
        records = self._shard.retrieve([point_id(i) for i in item_ids], with_payload=True, with_vector=with_vectors)
        by_id = {r.payload["item_id"]: self._to_item(r, 0.0, with_vectors) for r in records}
        return [by_id[i] for i in item_ids if i in by_id]

    def top_popular(self, limit: int, with_vectors: bool = False) -> list[StoredItem]:
        order = qe.OrderBy(key="popularity", direction=qe.Direction.Desc)
        records, _ = self._shard.scroll(
            qe.ScrollRequest(limit=limit, order_by=order, with_payload=True, with_vector=with_vectors)
        )
        return [self._to_item(r, 0.0, with_vectors) for r in records]

    def close(self) -> None:
        self._shard.close()

    @staticmethod
    def _to_item(point, score: float, with_vectors: bool) -> StoredItem:
        payload = point.payload
        vector = None
        if with_vectors:
            raw = point.vector
            vector = np.asarray(raw[""] if isinstance(raw, dict) else raw, dtype=np.float32)
        return StoredItem(
            item_id=payload["item_id"],
            title=payload.get("title", ""),
            categories=list(payload.get("categories", [])),
            popularity=float(payload.get("popularity", 0.0)),
            score=float(score),
            vector=vector,
        )
