"""recmesh.v1.Retrieval over an item index (recmesh.index.base.ItemIndex): an EdgeItemStore or a
QdrantServerStore (same behaviour)."""

from __future__ import annotations

import asyncio
import functools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import grpc
import numpy as np

from recmesh.common import limits
from recmesh.common.errors import InvalidArgument, Unavailable, rpc_method
from recmesh.common.metrics import set_version
from recmesh.common.server import Service
from recmesh.common.validation import check_attribute_filters, check_item
from recmesh.common.vectors import from_matrix, l2_normalize, optional_row, to_matrix
from recmesh.index.base import Found, ItemIndex, SearchFilter, StoredItem
from recmesh.index.edge import EdgeItemStore
from recmesh.index.layout import INTEREST, QUERY, SESSION, attribute_protos, item_payload
from recmesh.index.qdrant_server import QdrantServerStore, connect
from recmesh.v1 import retrieval_pb2, retrieval_pb2_grpc
from services.retrieval.config import RetrievalSettings

T = TypeVar("T")


@functools.lru_cache(maxsize=1 << 14)
def _attributes_wire(attributes: tuple[tuple[str, type, str | float | bool], ...]) -> bytes:
    """A Candidate holding only these attributes ((name, type, value) each: the type keeps True
    and 1.0 apart, which compare equal), serialised - merged into a reply's candidate, it costs
    ~2 us where building the map's messages anew cost ~15 us for 10 attributes (a Search answers
    hundreds of candidates)."""
    return retrieval_pb2.Candidate(attributes=attribute_protos({name: value for name, _, value in attributes})
                                   ).SerializeToString()


def _candidate_bytes(it: StoredItem) -> bytes:
    """A Candidate of the item's own fields (no score, no query similarity), serialised."""
    candidate = retrieval_pb2.Candidate(item_id=it.item_id, title=it.title, categories=it.categories,
                                        popularity=it.popularity)
    if it.attributes:
        candidate.MergeFromString(_attributes_wire(tuple((k, type(v), v) for k, v in it.attributes.items())))
    return candidate.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# CandidateList.candidates (field 1, length-delimited): the tag before each candidate's length.
_CANDIDATES_TAG = b"\x0a"


def _field_prefix(length: int) -> bytes:
    return _CANDIDATES_TAG + _varint(length)


def _wire_entry(it: StoredItem) -> tuple[StoredItem, bytes, bytes, bytes]:
    """(the item, its Candidate bytes, the prefix (tag, length) of a candidate of them and a
    score, the same with a score and a query similarity)."""
    body = _candidate_bytes(it)
    return (it, body, _field_prefix(len(body) + _SCORE_TAIL.itemsize),
            _field_prefix(len(body) + _SCORE_SIM_TAIL.itemsize))


# Candidate.score (field 4) and Candidate.query_similarity (field 6), both float (wire type 5):
# a tag byte and 4 little-endian bytes each, float32 rounded as protobuf rounds a double.
_SCORE_TAIL = np.dtype([("tag", "u1"), ("score", "<f4")])
_SCORE_SIM_TAIL = np.dtype([("tag", "u1"), ("score", "<f4"), ("sim_tag", "u1"), ("sim", "<f4")])


def _tails(scores: list[float], query_similarity: np.ndarray | None) -> bytes:
    """Each candidate's score (and query similarity) fields, one fixed-size record a candidate."""
    if query_similarity is None:
        tails = np.empty(len(scores), _SCORE_TAIL)
    else:
        tails = np.empty(len(scores), _SCORE_SIM_TAIL)
        tails["sim_tag"] = 6 << 3 | 5
        tails["sim"] = query_similarity
    tails["tag"] = 4 << 3 | 5
    tails["score"] = scores
    return tails.tobytes()


def open_index(settings: RetrievalSettings) -> ItemIndex:
    """The index the settings name (blocks: disk or network)."""
    if settings.backend == "qdrant":
        return QdrantServerStore.open(connect(settings.qdrant_url), settings.collection, settings.hnsw_ef)
    return EdgeItemStore.open(settings.shard_dir, settings.hnsw_ef)


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServicer):
    def __init__(self, settings: RetrievalSettings):
        self._settings = settings
        self._store: ItemIndex | None = None
        # Writes, and every call to a Qdrant server, block: they run off the event loop.
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qdrant")
        # Item id -> _wire_entry of the index's StoredItem for it, used while the index hands out
        # that same object (a write replaces it: stale at once); emptied when the index or its
        # version changes, and an item's entry dropped when it is written.
        self._wire: dict[str, tuple[StoredItem, bytes, bytes, bytes]] = {}
        self._wire_of: tuple[int, str] | None = None

    async def load(self) -> None:
        self._store = store = await self._run(open_index, self._settings)
        set_version("retrieval", "index", store.version)
        warm = [(INTEREST, np.ones(store.dim, np.float32)), (SESSION, np.ones(store.dim, np.float32)),
                (QUERY, np.ones(store.text_dim, np.float32))]
        await self._run(store.search, warm, 10, SearchFilter(), True)

    async def _run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _read(self, fn: Callable[..., T], *args) -> T:
        # Edge reads are CPU work of a millisecond or two: on the loop they cost less than the
        # hand-off to a thread and back (measured: ~1 ms CPU per Search).
        return fn(*args) if self.store.reads_in_process else await self._run(fn, *args)

    @property
    def store(self) -> ItemIndex:
        if self._store is None:
            raise Unavailable("retrieval is warming up")
        return self._store

    def _answer(self, found: Found, with_text: bool = True, query_similarity: np.ndarray | None = None,
                scores: list[float] | None = None, shared: bool = False) -> retrieval_pb2.CandidateList:
        """The reply: each candidate's wire bytes (its item's fields, cached per item when
        `shared` - the index's own objects, see ItemIndex.shares_items) with its score and query
        similarity appended, parsed once: the same message as built field by field (tested:
        tests/unit/test_retrieval_answer.py), without a message built per candidate (a Search
        answers hundreds). scores: items[i]'s (None: their own)."""
        items = found.items
        reply = retrieval_pb2.CandidateList()
        if items:
            if scores is None:
                scores = [it.score for it in items]
            tails = _tails(scores, query_similarity)
            size = len(tails) // len(items)
            at = 2 if query_similarity is None else 3  # the entry's prefix for this tail size
            cache = self._wire if shared else {}
            get = cache.get
            parts: list[bytes] = []
            for n, it in enumerate(items):
                entry = get(it.item_id)
                if entry is None or entry[0] is not it:  # new, or written since (a new object)
                    entry = cache[it.item_id] = _wire_entry(it)
                parts += (entry[at], entry[1], tails[n * size:(n + 1) * size])
            reply.ParseFromString(b"".join(parts))
        reply.index_version = self.store.version
        if found.vectors is not None and items:
            reply.vectors.CopyFrom(to_matrix(found.vectors))
            if with_text:
                reply.text_vectors.CopyFrom(to_matrix(found.text_vectors))
        return reply

    def _check_ids(self, ids, field: str) -> list[str]:
        if len(ids) > limits.IDS_PER_REQUEST:  # what a gateway may send: exclusions and seen items
            raise InvalidArgument(field, f"at most {limits.IDS_PER_REQUEST} ids")
        for i, item_id in enumerate(ids):
            if not item_id:
                raise InvalidArgument(f"{field}[{i}]", "must not be empty")
        return list(ids)

    def _check_limit(self, limit: int) -> int:
        if not 1 <= limit <= self._settings.max_limit:
            raise InvalidArgument("limit", f"must be in 1..{self._settings.max_limit}, got {limit}")
        return limit

    def _filter(self, f) -> SearchFilter:
        """The request's filters (common_pb2.Filters: categories, attributes, excluded ids),
        checked as the gateway checks them; raises InvalidArgument naming the field."""
        check_attribute_filters(f.attributes, "filters.attributes")
        return SearchFilter.from_proto(f, self._check_ids(f.exclude_item_ids, "filters.exclude_item_ids"))

    @rpc_method
    async def Search(self, request, context):
        store = self.store
        sources = []
        for name, field, dim in ((INTEREST, "interest", store.dim), (SESSION, "session", store.dim),
                                 (QUERY, "query", store.text_dim)):
            vector = optional_row(getattr(request, field), field, dim)
            if vector is not None:
                sources.append((name, vector))
        query = dict(sources).get(QUERY)
        if not sources:
            raise InvalidArgument("interest", "at least one of interest, session and query must have one row")
        limit = self._check_limit(request.limit)
        flt = self._filter(request.filters)
        # A query needs the text vectors here, for every candidate's query similarity.
        found, scores = await self._read(store.search_scored, sources, limit, flt,
                                         request.with_vectors or query is not None)
        sims = None if query is None or not found.items else found.text_vectors @ l2_normalize(query)
        if not request.with_vectors:
            found = Found(found.items)
        if self._wire_of != (id(store), store.version):
            self._wire.clear()
            self._wire_of = (id(store), store.version)
        return self._answer(found, request.with_text_vectors, sims, scores, store.shares_items)

    @rpc_method
    async def GetItems(self, request, context):
        ids = self._check_ids(request.item_ids, "item_ids")
        found = await self._read(self.store.get, ids, request.with_vectors)
        return self._answer(found, with_text=not request.catalog_vectors_only)

    @rpc_method
    async def TopPopular(self, request, context):
        limit = self._check_limit(request.limit)
        flt = self._filter(request.filters)
        return self._answer(await self._read(self.store.top_popular, limit, request.with_vectors, flt))

    @rpc_method
    async def Upsert(self, request, context):
        store = self.store
        vectors = from_matrix(request.vectors, "vectors")
        if vectors.shape[0] != len(request.items):
            raise InvalidArgument("vectors", f"{vectors.shape[0]} rows for {len(request.items)} items")
        if len(request.items) and vectors.shape[1] != store.dim:
            raise InvalidArgument("vectors", f"dim {vectors.shape[1]}, index dim is {store.dim}")
        text_vectors = from_matrix(request.text_vectors, "text_vectors")
        if text_vectors.shape[0] != len(request.items):
            raise InvalidArgument("text_vectors", f"{text_vectors.shape[0]} rows for {len(request.items)} items")
        if len(request.items) and text_vectors.shape[1] != store.text_dim:
            raise InvalidArgument("text_vectors", f"dim {text_vectors.shape[1]}, index text dim is {store.text_dim}")
        if request.popularity and len(request.popularity) != len(request.items):
            raise InvalidArgument("popularity", "one value per item, or none")
        for i, value in enumerate(request.popularity):
            if not math.isfinite(value):  # Qdrant refuses NaN in a payload: the caller's error, not ours
                raise InvalidArgument(f"popularity[{i}]", f"must be a finite number, got {value}")
        if len(request.items) > limits.ITEMS_PER_CALL:
            raise InvalidArgument("items", f"at most {limits.ITEMS_PER_CALL} per call, got {len(request.items)}")
        for i, item in enumerate(request.items):
            check_item(item, f"items[{i}]")  # the gateway's and the encoder's check: one set of limits
        # No popularity given: stored items keep theirs (the store fills it in), new ones get 0.
        payloads = [
            item_payload(it, request.popularity[i] if request.popularity else None)
            for i, it in enumerate(request.items)
        ]
        try:
            count = await self._run(store.upsert, payloads, vectors, text_vectors)
        finally:
            self._forget(it.item_id for it in request.items)
        return retrieval_pb2.UpsertResponse(upserted=count)

    @rpc_method
    async def Delete(self, request, context):
        ids = self._check_ids(request.item_ids, "item_ids")
        try:
            return retrieval_pb2.DeleteResponse(deleted=await self._run(self.store.delete, ids))
        finally:
            self._forget(ids)

    def _forget(self, item_ids) -> None:
        """Drops written items' cached Candidate bytes (stale already: the index holds new objects
        for them - this frees the memory of deleted ones)."""
        for item_id in item_ids:
            self._wire.pop(item_id, None)

    async def close(self) -> None:
        if self._store is not None:
            await self._run(self._store.close)  # flushes what the backend holds
        self._pool.shutdown(wait=True)


def build_service(settings: RetrievalSettings) -> Service:
    servicer = RetrievalServicer(settings)

    def register(server: grpc.aio.Server) -> list[str]:
        retrieval_pb2_grpc.add_RetrievalServicer_to_server(servicer, server)
        return [retrieval_pb2.DESCRIPTOR.services_by_name["Retrieval"].full_name]

    return Service("retrieval", register, servicer.load, servicer.close)
