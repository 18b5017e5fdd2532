"""Items in a Qdrant server or cluster through qdrant-client (gRPC): the scale-out backend of
`recmesh.index.base.ItemIndex`, with the same layout and behaviour as EdgeItemStore
(recmesh/index/edge.py).

Unlike the Edge store it keeps no catalog mirror in memory - at scale the catalog does not fit
one pod - so payloads and the candidates' vectors come back with each search. The collection's
metadata holds the dims and the catalog version; shards and replication are set when the
collection is created (`recmesh publish-catalog`)."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

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
    attribute_key,
    last_rows,
    stored_item,
    with_popularity,
)
from recmesh.index.hnsw import DEFAULT_SEARCH_EF, HnswParams
from recmesh.index.layout import INTEREST, LAYOUT, PAYLOAD_FIELDS, QUERY, SESSION, OlderLayout, point_id


def connect(url: str, timeout_s: int = 10) -> QdrantClient:
    """http(s)://host:6333 - a server or cluster, over gRPC (port 6334); path:/some/dir or
    :memory: - qdrant-client's local mode (tests: the same client code path, no server)."""
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith("path:"):
        return QdrantClient(path=url.removeprefix("path:"))
    return QdrantClient(url=url, prefer_grpc=True, timeout=timeout_s)


def _condition(c: Condition) -> qm.FieldCondition | qm.HasIdCondition:
    if isinstance(c, AnyOf):
        return qm.FieldCondition(key=c.key, match=qm.MatchAny(any=list(c.values)))
    if isinstance(c, InRange):
        return qm.FieldCondition(key=c.key, range=qm.Range(gte=c.min, lte=c.max))
    if isinstance(c, FlagIs):
        return qm.FieldCondition(key=c.key, match=qm.MatchValue(value=c.value))
    if isinstance(c, HasPoint):
        return qm.HasIdCondition(has_id=list(c.point_ids))
    raise TypeError(f"not a filter condition: {c!r}")


def client_filter(conditions: Conditions | None) -> qm.Filter | None:
    """The conditions (`SearchFilter.conditions`) in qdrant-client's types."""
    if conditions is None:
        return None
    return qm.Filter(must=[_condition(c) for c in conditions.must] or None,
                     must_not=[_condition(c) for c in conditions.must_not] or None)


def _filter(flt: SearchFilter | None) -> qm.Filter | None:
    # Every exclusion, ids included, is the server's to filter: no mirror here to drop them from.
    return client_filter(flt.conditions()) if flt is not None else None


class QdrantServerStore(ItemIndex):
    """One Qdrant collection of items (on a server or a cluster, sharded and replicated as it
    was created). Every read is a call to the server: `reads_in_process` is False."""

    def __init__(self, client: QdrantClient, collection: str, meta: dict, hnsw_ef: int | None = None):
        self._client, self._collection = client, collection
        self.dim, self.text_dim = int(meta["dim"]), int(meta["text_dim"])
        self.version = str(meta.get("version", "unversioned"))
        # Search ef: the caller's, else the one the catalog build chose (published with it).
        self.search_ef = int(meta.get("search_ef", DEFAULT_SEARCH_EF)) if hnsw_ef is None else hnsw_ef
        self._params = qm.SearchParams(hnsw_ef=self.search_ef)
        # Attribute keys this store has met in an upsert: indexed, or passed over (see _index_attributes).
        self._attribute_keys: set[str] = set()

    @classmethod
    def create(cls, client: QdrantClient, collection: str, dim: int, text_dim: int, version: str,
               shards: int = 1, replication: int = 1, hnsw_ef: int | None = None,
               hnsw: HnswParams | None = None, search_ef: int = DEFAULT_SEARCH_EF) -> "QdrantServerStore":
        """A new collection `collection` through `client`, spread over `shards` shards of
        `replication` copies each, its HNSW graphs built with `hnsw` (default HnswParams());
        its metadata (dims, version, layout, HNSW parameters, the search ef it is to be
        searched with: search_ef) in the collection's. hnsw_ef: this handle's (None: search_ef)."""
        hnsw = HnswParams() if hnsw is None else hnsw
        meta = {"dim": dim, "text_dim": text_dim, "version": version, "layout": LAYOUT, "hnsw": hnsw.as_dict(),
                "search_ef": int(search_ef)}
        client.create_collection(
            collection,
            vectors_config={INTEREST: qm.VectorParams(size=dim, distance=qm.Distance.DOT),
                            SESSION: qm.VectorParams(size=dim, distance=qm.Distance.COSINE),
                            QUERY: qm.VectorParams(size=text_dim, distance=qm.Distance.COSINE)},
            shard_number=shards, replication_factor=replication, metadata=meta,
            hnsw_config=qm.HnswConfigDiff(m=hnsw.m, ef_construct=hnsw.ef_construct,
                                          full_scan_threshold=hnsw.full_scan_threshold_kb),
        )
        client.create_payload_index(collection, "categories", qm.PayloadSchemaType.KEYWORD)
        client.create_payload_index(collection, "popularity", qm.PayloadSchemaType.FLOAT)
        return cls(client, collection, meta, hnsw_ef)

    @classmethod
    def open(cls, client: QdrantClient, collection: str, hnsw_ef: int | None = None) -> "QdrantServerStore":
        """The collection `collection` through `client` (FileNotFoundError: none, run `recmesh
        publish-catalog`; ValueError: not recmesh's; OlderLayout: publish it again)."""
        if not client.collection_exists(collection):
            raise FileNotFoundError(f"no collection {collection!r}: run `recmesh publish-catalog` first")
        meta = client.get_collection(collection).config.metadata or {}
        if "text_dim" not in meta:
            raise ValueError(f"collection {collection!r} has no recmesh metadata: "
                             "publish it with `recmesh publish-catalog`")
        if meta.get("layout") != LAYOUT:
            raise OlderLayout(f"collection {collection!r} is of an older layout: publish it again with "
                             "`recmesh publish-catalog`")
        return cls(client, collection, meta, hnsw_ef)

    def count(self) -> int:
        return self._client.count(self._collection, exact=True).count

    def upsert(self, items: list[dict], vectors: np.ndarray, text_vectors: np.ndarray) -> int:
        """As ItemIndex.upsert: popularity absent keeps the stored one (0 for a new item); an
        id given twice is written once, from its last row; returns the distinct items written.
        The stored popularity is read just before the write: a concurrent writer of the same
        item's popularity (only a catalog publish writes it) may be overwritten. Point-id
        collisions are not checked here (no mirror knows every point id held)."""
        rows = last_rows(items)
        items, vectors, text_vectors = [items[r] for r in rows], vectors[rows], text_vectors[rows]
        self._index_attributes(items)
        keep = [item["item_id"] for item in items if "popularity" not in item]
        stored = {it.item_id: it.popularity for it in self.get(keep).items} if keep else {}
        points = [
            qm.PointStruct(id=point_id(item["item_id"]), payload=item,
                           vector={INTEREST: vec.tolist(), SESSION: vec.tolist(), QUERY: text.tolist()})
            for item, vec, text in zip(with_popularity(items, stored), vectors, text_vectors, strict=True)
        ]
        self._client.upsert(self._collection, points, wait=True)
        return len(points)

    def _index_attributes(self, items: list[dict]) -> None:
        """A payload index on each attribute key first met (up to INDEXED_ATTRIBUTES), of the
        kind of its first value (text keyword, number float, flag bool). The server's list is
        read when a key is new to this store: another writer may have indexed it (re-creating it
        with another kind would replace that index). qdrant-client's local mode keeps none."""
        new = {}
        for item in items:
            for name, value in (item.get(ATTRIBUTES) or {}).items():
                key = attribute_key(name)
                if key not in self._attribute_keys:
                    new.setdefault(key, value)
        if not new:
            return
        indexed = set(self._client.get_collection(self._collection).payload_schema or {})
        count = sum(key.startswith(f"{ATTRIBUTES}.") for key in indexed)
        for key, value in new.items():
            self._attribute_keys.add(key)
            if key in indexed or count >= INDEXED_ATTRIBUTES:
                continue
            kind = (qm.PayloadSchemaType.BOOL if isinstance(value, bool) else
                    qm.PayloadSchemaType.KEYWORD if isinstance(value, str) else qm.PayloadSchemaType.FLOAT)
            self._client.create_payload_index(self._collection, key, kind, wait=True)
            count += 1

    def delete(self, item_ids: list[str]) -> int:
        """Returns how many distinct items existed just before the delete (repeated and unknown
        ids count nothing; the server reports no count, and another client deleting the same
        item at the same moment may count it too)."""
        ids = list(dict.fromkeys(item_ids))
        existing = self.get(ids)
        self._client.delete(self._collection, qm.PointIdsList(points=[point_id(i) for i in ids]), wait=True)
        return len(existing)

    def export(self, batch: int = 512, payload: list[str] | bool = True
               ) -> Iterator[tuple[list[dict], np.ndarray, np.ndarray]]:
        """As ItemIndex.export, scrolled from the server."""
        offset = None
        while True:
            records, offset = self._client.scroll(self._collection, limit=batch, offset=offset, with_payload=payload,
                                                  with_vectors=[INTEREST, QUERY])
            if records:
                yield ([dict(r.payload) for r in records],
                       np.array([r.vector[INTEREST] for r in records], np.float32).reshape(len(records), -1),
                       np.array([r.vector[QUERY] for r in records], np.float32).reshape(len(records), -1))
            if offset is None:
                return

    def search(self, sources: list[tuple[str, np.ndarray]], limit: int, flt: SearchFilter,
               with_vectors: bool) -> Found:
        """As ItemIndex.search: the server filters every exclusion and returns the payloads
        (and vectors) with the hits."""
        qfilter = _filter(flt)
        vectors = [INTEREST, QUERY] if with_vectors else False
        requests = [qm.QueryRequest(query=vector.tolist(), using=name, limit=limit, filter=qfilter,
                                    params=self._params, with_payload=PAYLOAD_FIELDS, with_vector=vectors)
                    for name, vector in sources]
        merged: dict[str, object] = {}
        for response in self._client.query_batch_points(self._collection, requests):
            for point in response.points:
                merged.setdefault(point.payload["item_id"], point)
        return _found(list(merged.values()), with_vectors)

    def get(self, item_ids: list[str], with_vectors: bool = False) -> Found:
        """As ItemIndex.get."""
        records = self._client.retrieve(self._collection, [point_id(i) for i in item_ids],
                                        with_payload=PAYLOAD_FIELDS, with_vectors=[INTEREST, QUERY] if with_vectors
                                        else False)
        by_id = {r.payload["item_id"]: r for r in records}
        return _found([by_id[i] for i in item_ids if i in by_id], with_vectors)

    def top_popular(self, limit: int, with_vectors: bool = False, flt: SearchFilter | None = None) -> Found:
        """As ItemIndex.top_popular: filtered before the cut."""
        records, _ = self._client.scroll(
            self._collection, limit=limit, order_by=qm.OrderBy(key="popularity", direction=qm.Direction.DESC),
            scroll_filter=_filter(flt),
            with_payload=PAYLOAD_FIELDS, with_vectors=[INTEREST, QUERY] if with_vectors else False)
        return _found(records, with_vectors)

    def close(self) -> None:
        """Closes the client; writes were acknowledged by the server (wait=True), nothing is held here."""
        self._client.close()


def _found(points: list, with_vectors: bool) -> Found:
    """Search hits or records (in order) as items, with their vectors as matrices when asked."""
    items = []
    for point in points:
        item = stored_item(point.payload)
        item.score = float(getattr(point, "score", 0.0) or 0.0)
        items.append(item)
    if not with_vectors:
        return Found(items)
    return Found(items, np.array([p.vector[INTEREST] for p in points], np.float32).reshape(len(points), -1),
                 np.array([p.vector[QUERY] for p in points], np.float32).reshape(len(points), -1))
