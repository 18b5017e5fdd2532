"""Item vectors and payload in a Qdrant Edge shard (the Qdrant engine in-process, on disk):
the single-node backend of `recmesh.index.base.ItemIndex`, with a catalog mirror in memory."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import qdrant_edge as qe

from recmesh.index.base import (
    ATTRIBUTES,
    INDEXED_ATTRIBUTES,
    AnyOf,
    Condition,
    Conditions,
    FlagIs,
    Found,
    HasPoint,
    InRange,
    ItemIndex,
    SearchFilter,
    StoredItem,
    attribute_key,
    last_rows,
    stored_item,
    with_popularity,
)
from recmesh.index.hnsw import DEFAULT_SEARCH_EF, HnswParams
from recmesh.index.layout import INTEREST, LAYOUT, PAYLOAD_FIELDS, QUERY, SESSION, OlderLayout, ShardInUse, point_id

# qdrant-edge-py (0.9) reads MatchValue(True) as the integer 1, which no boolean payload value
# matches: a flag cannot be tested directly. So the shard also holds, per item, each boolean
# attribute as a keyword "attributes.<name>=true|false" in this field (Edge's own: written by
# upsert, left out of export, so the payload others see is the layout's).
FLAG_TERMS = "flag_terms"


# INTEREST is scored by dot product (maximum inner product search) over catalog vectors of
# unequal norms, where an HNSW graph built on dot product finds the true top 100 poorly
# (recall@100 0.77 at ef 128 on MovieLens' catalog vectors; docs/scaling.md). So the shard
# stores each catalog vector with one more component, sqrt(B^2 - |x|^2) (B: the shard's
# interest_norm_bound; 0 for a vector longer than B), and searches with 0 there: every score is
# still exactly q.x, while the stored vectors share one norm, so the graph is one of cosine
# neighbours (Bachrach et al. 2014, "Speeding up the Xbox recommender system using a Euclidean
# transformation for inner-product spaces"): recall@100 0.96 at ef 128. A shard built before
# (no bound in its metadata) stores and searches the plain vectors.
DEFAULT_INTEREST_NORM_BOUND = 2.0


def interest_stored(vectors: np.ndarray, bound: float | None) -> np.ndarray:
    """What the shard stores as INTEREST for catalog vectors (n, dim): (n, dim + 1) with the
    norm-completing component for a shard with a bound, the vectors themselves without."""
    vectors = np.asarray(vectors, np.float32)
    if bound is None:
        return vectors
    extra = np.sqrt(np.maximum(bound * bound - np.einsum("ij,ij->i", vectors, vectors), 0.0))
    return np.hstack([vectors, extra[:, None].astype(np.float32)])


def interest_query(vector: np.ndarray, bound: float | None) -> list[float]:
    """An INTEREST search vector (dim,) as the shard's INTEREST is searched: 0 appended when it
    stores the norm-completing component."""
    return [*vector.tolist(), 0.0] if bound is not None else vector.tolist()


def flag_term(key: str, value: bool) -> str:
    """The FLAG_TERMS keyword of a boolean `value` at payload key `key`."""
    return f"{key}={'true' if value else 'false'}"


def _with_flag_terms(item: dict) -> dict:
    """The payload the shard stores: item, plus FLAG_TERMS when it has boolean attributes."""
    terms = [flag_term(attribute_key(name), value) for name, value in (item.get(ATTRIBUTES) or {}).items()
             if isinstance(value, bool)]
    return item | {FLAG_TERMS: terms} if terms else item


def _condition(c: Condition) -> qe.FieldCondition | qe.HasIdCondition:
    if isinstance(c, AnyOf):
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(any=list(c.values)))
    if isinstance(c, InRange):
        return qe.FieldCondition(key=c.key, range=qe.RangeFloat(gte=c.min, lte=c.max))
    if isinstance(c, FlagIs):
        return qe.FieldCondition(key=FLAG_TERMS, match=qe.MatchAny(any=[flag_term(c.key, c.value)]))
    if isinstance(c, HasPoint):
        return qe.HasIdCondition(point_ids=set(c.point_ids))
    raise TypeError(f"not a filter condition: {c!r}")


def edge_filter(conditions: Conditions | None) -> qe.Filter | None:
    """The conditions (`SearchFilter.conditions`) in qdrant_edge's types."""
    if conditions is None:
        return None
    return qe.Filter(must=[_condition(c) for c in conditions.must] or None,
                     must_not=[_condition(c) for c in conditions.must_not] or None)


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

    def shared(self, item_ids: list[str], scores: list[float], with_vectors: bool) -> tuple[Found, list[float]]:
        """The mirror's own items (not copies: never mutated) among item_ids, in order, and
        their scores (one deleted meanwhile drops out, with its score)."""
        by_id, rows = self._items, self._rows
        try:
            found = [by_id[i] for i in item_ids]
            found_rows = [rows[i] for i in item_ids] if with_vectors else None
        except KeyError:  # deleted since the search began: the rare path
            kept = [n for n, i in enumerate(item_ids) if i in by_id]
            return self.shared([item_ids[n] for n in kept], [scores[n] for n in kept], with_vectors)
        if not with_vectors:
            return Found(found), scores
        return Found(found, self._vectors[found_rows], self._text[found_rows]), scores

    def items(self, item_ids: list[str], scores: list[float] | None = None, with_vectors: bool = False) -> Found:
        """Copies of the known items among item_ids, in order (one deleted meanwhile drops out)."""
        by_id = self._items
        found = [StoredItem(m.item_id, m.title, m.categories, m.popularity, scores[n] if scores else 0.0,
                            m.attributes)
                 for n, m in enumerate(by_id.get(i) for i in item_ids) if m is not None]
        if not with_vectors:
            return Found(found)
        rows = [self._rows[it.item_id] for it in found]
        return Found(found, self._vectors[rows], self._text[rows])


class EdgeItemStore(ItemIndex):
    """One Qdrant Edge shard of items: three named vectors (INTEREST: the catalog vector, dot
    product; SESSION: the same, cosine; QUERY: the language-model text vector, cosine) and the
    payload {item_id, title, categories, popularity, attributes, text} (and FLAG_TERMS). Reads
    are answered from the CatalogMirror and the shard's search, in this process."""

    reads_in_process = True
    shares_items = True  # search_scored: the mirror's StoredItems, replaced on every write

    # Excluded ids (mostly what the user has seen) are dropped from over-fetched hits up to this
    # many: cheaper than Qdrant's id filter (building it alone cost ~0.2 ms for 150 ids).
    MAX_OVERFETCH = 400

    def __init__(self, shard: qe.EdgeShard, meta: dict, hnsw_ef: int | None = None):
        self._shard = shard
        self.dim, self.text_dim = int(meta["dim"]), int(meta["text_dim"])
        # Names the catalog build this shard came from; reported as the index version.
        self.version = str(meta.get("version", "unversioned"))
        # What its graphs were built with (a shard built before they were recorded: Qdrant's defaults).
        self.hnsw = HnswParams(**meta.get("hnsw", {}))
        bound = meta.get("interest_norm_bound")
        self.interest_norm_bound = None if bound is None else float(bound)
        # Search ef: the caller's, else the one the build chose for the catalog's size.
        self.search_ef = int(meta.get("search_ef", DEFAULT_SEARCH_EF)) if hnsw_ef is None else hnsw_ef
        self._params = qe.SearchParams(hnsw_ef=self.search_ef)
        # Writes are few; serialising them keeps upsert+flush atomic with respect to each other.
        self._write_lock = threading.Lock()
        self._closed = False
        self._mirror = CatalogMirror(self.dim, self.text_dim)
        self._indexed = set(shard.info().payload_schema)  # payload keys with an index
        self._load_mirror()

    def _load_mirror(self) -> None:
        for payloads, vectors, texts in self.export(2048, PAYLOAD_FIELDS):
            self._mirror.put([stored_item(p) for p in payloads], vectors, texts)

    @staticmethod
    def _meta_path(path: Path) -> Path:
        # Beside the shard, not in it: the shard directory belongs to Qdrant.
        return path.parent / f"{path.name}.meta.json"

    @staticmethod
    def shard_config(dim: int, text_dim: int, hnsw: HnswParams, norm_completed: bool = True) -> qe.EdgeConfig:
        """The shard's three named vectors (INTEREST of dim + 1 when norm_completed, see
        interest_stored), and the HNSW graph built over each of them."""
        return qe.EdgeConfig(
            vectors={
                INTEREST: qe.EdgeVectorParams(size=dim + norm_completed, distance=qe.Distance.Dot),
                SESSION: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
                QUERY: qe.EdgeVectorParams(size=text_dim, distance=qe.Distance.Cosine),
            },
            hnsw_config=qe.HnswIndexConfig(m=hnsw.m, ef_construct=hnsw.ef_construct,
                                           full_scan_threshold=hnsw.full_scan_threshold_kb))

    @classmethod
    def create(cls, path: Path, dim: int, text_dim: int, version: str, hnsw_ef: int | None = None,
               hnsw: HnswParams | None = None,
               interest_norm_bound: float = DEFAULT_INTEREST_NORM_BOUND,
               search_ef: int = DEFAULT_SEARCH_EF) -> "EdgeItemStore":
        """A new shard in the directory `path`; its metadata (dims, version, layout, the HNSW
        build parameters: `hnsw`, default HnswParams(); interest_norm_bound: the largest catalog
        vector norm expected, see interest_stored - a longer one is still scored exactly;
        search_ef: the ef it is to be searched with, `recmesh.index.hnsw.search_ef`) beside it.
        hnsw_ef: this handle's search ef (None: search_ef)."""
        hnsw = HnswParams() if hnsw is None else hnsw
        if not interest_norm_bound > 0:
            raise ValueError(f"interest_norm_bound must be > 0, got {interest_norm_bound}")
        path.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(str(path), cls.shard_config(dim, text_dim, hnsw))
        shard.update(qe.UpdateOperation.create_field_index("categories", qe.PayloadSchemaType.Keyword))
        shard.update(qe.UpdateOperation.create_field_index("popularity", qe.PayloadSchemaType.Float))
        shard.update(qe.UpdateOperation.create_field_index(FLAG_TERMS, qe.PayloadSchemaType.Keyword))
        meta = {"dim": dim, "text_dim": text_dim, "version": version, "layout": LAYOUT, "hnsw": hnsw.as_dict(),
                "interest_norm_bound": float(interest_norm_bound), "search_ef": int(search_ef)}
        cls._meta_path(path).write_text(json.dumps(meta))
        return cls(shard, meta, hnsw_ef)

    @classmethod
    def open(cls, path: Path, hnsw_ef: int | None = None) -> "EdgeItemStore":
        """The shard in `path`, its items loaded into the mirror (FileNotFoundError: none there,
        run `recmesh bootstrap`; OlderLayout: rebuild it with `--force`). hnsw_ef: the search ef
        (None: the one its metadata records, DEFAULT_SEARCH_EF if none)."""
        meta_path = cls._meta_path(path)
        if not path.is_dir() or not meta_path.is_file():
            raise FileNotFoundError(f"no item shard at {path}: run `recmesh import` or `recmesh bootstrap` first")
        meta = json.loads(meta_path.read_text())
        if meta.get("layout") != LAYOUT:
            raise OlderLayout(f"{path} is a catalog of an older layout: rebuild it (`recmesh import` "
                              "with your files, or `recmesh bootstrap --force`)")
        try:
            shard = qe.EdgeShard.load(str(path))
        except Exception as exc:  # qdrant-edge raises a bare Exception naming its WAL lock
            if "WouldBlock" in str(exc):
                raise ShardInUse(f"{path} is open in another process (a running `recmesh run`, or the "
                                 "retrieval service over this var): stop it first") from None
            raise
        return cls(shard, meta, hnsw_ef)

    def count(self) -> int:
        return self._shard.count(qe.CountRequest(exact=True))

    def export(self, batch: int = 512, payload: list[str] | bool = True
               ) -> Iterator[tuple[list[dict], np.ndarray, np.ndarray]]:
        """As ItemIndex.export."""
        offset = None
        while True:
            records, offset = self._shard.scroll(
                qe.ScrollRequest(offset=offset, limit=batch, with_payload=payload, with_vector=[INTEREST, QUERY]))
            if records:
                payloads = [dict(r.payload) for r in records]
                for p in payloads:
                    p.pop(FLAG_TERMS, None)  # the shard's own (see FLAG_TERMS): not the layout's payload
                yield (payloads, np.array([r.vector[INTEREST][: self.dim] for r in records], np.float32),
                       np.array([r.vector[QUERY] for r in records], np.float32))
            if offset is None:
                return

    def upsert(self, items: list[dict], vectors: np.ndarray, text_vectors: np.ndarray) -> int:
        """As ItemIndex.upsert. An id whose point id another item holds is refused (ValueError)
        before the shard is written; the popularity kept is the one stored when the write lands."""
        rows = last_rows(items)
        items, vectors, text_vectors = [items[r] for r in rows], vectors[rows], text_vectors[rows]
        # Under the write lock: the popularity kept is the one stored when this write lands.
        with self._write_lock:
            self._mirror.check_point_ids([item["item_id"] for item in items])
            items = with_popularity(items, self._mirror.popularity([item["item_id"] for item in items]))
            self._index_attributes(items)
            stored = interest_stored(vectors, self.interest_norm_bound)
            points = [
                qe.Point(id=point_id(item["item_id"]), payload=_with_flag_terms(item),
                         vector={INTEREST: interest.tolist(), SESSION: vec.tolist(), QUERY: text.tolist()})
                for item, interest, vec, text in zip(items, stored, vectors, text_vectors, strict=True)
            ]
            self._shard.update(qe.UpdateOperation.upsert_points(points))
            self._mirror.put([stored_item(item) for item in items], vectors, text_vectors)
        return len(points)

    def _index_attributes(self, items: list[dict]) -> None:
        """A payload index on each attribute key first met here (up to INDEXED_ATTRIBUTES), of
        the kind of its first value: text keyword, number float (flags: FLAG_TERMS' index). A
        value of another kind under an indexed key is still filtered right, from the payload.
        Called under the write lock."""
        indexed = sum(key.startswith(f"{ATTRIBUTES}.") for key in self._indexed)
        for item in items:
            for name, value in (item.get(ATTRIBUTES) or {}).items():
                key = attribute_key(name)
                if key in self._indexed or isinstance(value, bool) or indexed >= INDEXED_ATTRIBUTES:
                    continue
                kind = qe.PayloadSchemaType.Keyword if isinstance(value, str) else qe.PayloadSchemaType.Float
                self._shard.update(qe.UpdateOperation.create_field_index(key, kind))
                self._indexed.add(key)
                indexed += 1

    def delete(self, item_ids: list[str]) -> int:
        """As ItemIndex.delete; exact also under concurrent deletes."""
        ids = list(dict.fromkeys(item_ids))
        # Counted under the write lock: two concurrent deletes of one item count it once.
        with self._write_lock:
            existing = self._mirror.popularity(ids)
            self._shard.update(qe.UpdateOperation.delete_points([point_id(i) for i in ids]))
            self._mirror.drop(ids)
        return len(existing)

    def flush(self) -> None:
        """Writes the shard's pending changes to disk (close does too)."""
        with self._write_lock:
            self._shard.flush()

    def optimize(self) -> None:
        """Build indexes after a bulk load (Edge only: a Qdrant server's optimizers build them in
        the background)."""
        with self._write_lock:
            self._shard.optimize()

    def search(self, sources: list[tuple[str, np.ndarray]], limit: int, flt: SearchFilter,
               with_vectors: bool) -> Found:
        """As ItemIndex.search: the shard finds point ids and scores, the mirror turns them into
        items (copies, each with its score) and vectors."""
        found, scores = self.search_scored(sources, limit, flt, with_vectors)
        items = [StoredItem(m.item_id, m.title, m.categories, m.popularity, score, m.attributes)
                 for m, score in zip(found.items, scores, strict=True)]
        return Found(items, found.vectors, found.text_vectors)

    def search_scored(self, sources: list[tuple[str, np.ndarray]], limit: int, flt: SearchFilter,
                      with_vectors: bool) -> tuple[Found, list[float]]:
        """As ItemIndex.search_scored: the shard finds point ids and scores, the mirror answers
        its own items (no copies) and vectors."""
        excluded = set(flt.exclude_item_ids)
        overfetch = len(excluded) <= self.MAX_OVERFETCH
        qfilter = edge_filter(flt.conditions(with_ids=not overfetch))
        # Over-fetching by the number excluded still leaves `limit` hits after dropping them.
        fetch = limit + len(excluded) if overfetch else limit
        requests = [qe.QueryRequest(query=qe.Query.Nearest(self.query_vector(name, vector), using=name),
                                    limit=fetch, filter=qfilter, params=self._params, with_payload=False)
                    for name, vector in sources]
        scores: dict[str, float] = {}
        to_item = self._mirror.item_by_point.get
        for hits in self._shard.query_batch(qe.QueryBatchRequest(requests)):
            # The first `limit` hits whose item is known (None: deleted since the search began)
            # and not excluded; the first source that found an item scores it.
            kept = [(item_id, hit.score) for hit in hits
                    if (item_id := to_item(hit.id)) is not None and item_id not in excluded]
            for item_id, score in kept[:limit]:
                scores.setdefault(item_id, score)
        return self._mirror.shared(list(scores), list(scores.values()), with_vectors)

    def query_vector(self, name: str, vector: np.ndarray) -> list[float]:
        """A search vector (its source's dim) as the shard's named vector `name` is searched."""
        return interest_query(vector, self.interest_norm_bound) if name == INTEREST else vector.tolist()

    def get(self, item_ids: list[str], with_vectors: bool = False) -> Found:
        """As ItemIndex.get, from the mirror."""
        return self._mirror.items(item_ids, with_vectors=with_vectors)

    def top_popular(self, limit: int, with_vectors: bool = False, flt: SearchFilter | None = None) -> Found:
        """As ItemIndex.top_popular: the shard orders and filters, the mirror answers."""
        order = qe.OrderBy(key="popularity", direction=qe.Direction.Desc)
        qfilter = edge_filter(flt.conditions()) if flt is not None else None
        records, _ = self._shard.scroll(qe.ScrollRequest(limit=limit, order_by=order, filter=qfilter,
                                                         with_payload=["item_id"]))
        return self._mirror.items([r.payload["item_id"] for r in records], with_vectors=with_vectors)

    def close(self) -> None:
        """Flushes, then closes the shard (closing again does nothing: a closed shard cannot flush)."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._shard.flush()
            self._shard.close()
