"""Retrieval's Search reply is built from cached per-item Candidate bytes and the hits merged
without per-candidate copies (services/retrieval/server.py, EdgeItemStore.search_scored): for
the same request and index state it must be the same message - same candidates, order, scores,
query similarities, attributes, vectors - as the code it replaced, kept here as the reference
(the hit loop, the StoredItem copies and the field-by-field reply). Writes are seen at once:
an upsert or a delete (through the service or straight to the index) and another index version
never answer cached bytes."""

import asyncio

import numpy as np
import pytest
import qdrant_edge as qe

from recmesh.common.vectors import l2_normalize, to_matrix
from recmesh.index.base import Found, SearchFilter, StoredItem
from recmesh.index.edge import EdgeItemStore, edge_filter
from recmesh.index.layout import INTEREST, QUERY, SESSION
from recmesh.v1 import common_pb2, retrieval_pb2
from services.retrieval.config import RetrievalSettings
from services.retrieval.server import RetrievalServicer, _attributes_wire

N, DIM, TEXT_DIM = 600, 8, 6


class Context:
    def time_remaining(self):
        return None

    async def abort(self, code, details):
        raise AssertionError(f"{code.name}: {details}")


def attributes(i: int) -> dict:
    kinds = [{}, {"brand": ["Acme", "Other", "Ünï"][i % 3]}, {"price": float(i) / 7, "in_stock": i % 2 == 0},
             {"brand": "Acme", "price": -0.0, "in_stock": False, "n": 1.0}]
    return kinds[i % 4]


def catalog(n: int = N, title: str = "T") -> list[dict]:
    return [{"item_id": f"i{i}", "title": f"{title}{i} – é" if i % 5 else "", "popularity": (i % 17) / 17,
             "categories": [["Drama"], ["Comedy", "Drama"], []][i % 3], "text": str(i),
             "attributes": attributes(i)} for i in range(n)]


def rows(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def reference_search(store: EdgeItemStore, sources, limit: int, flt: SearchFilter, with_vectors: bool) -> Found:
    """EdgeItemStore.search before the change: the same shard query, the hit loop, copies."""
    excluded = set(flt.exclude_item_ids)
    overfetch = len(excluded) <= store.MAX_OVERFETCH
    qfilter = edge_filter(flt.conditions(with_ids=not overfetch))
    fetch = limit + len(excluded) if overfetch else limit
    requests = [qe.QueryRequest(query=qe.Query.Nearest(store.query_vector(name, vector), using=name), limit=fetch,
                                filter=qfilter, params=store._params, with_payload=False)
                for name, vector in sources]
    scores: dict[str, float] = {}
    by_point = store._mirror.item_by_point
    for hits in store._shard.query_batch(qe.QueryBatchRequest(requests)):
        kept = 0
        for hit in hits:
            item_id = by_point.get(hit.id)
            if item_id is None or item_id in excluded:
                continue
            scores.setdefault(item_id, hit.score)
            kept += 1
            if kept == limit:
                break
    mirror = store._mirror
    found = [StoredItem(m.item_id, m.title, m.categories, m.popularity, scores[m.item_id], m.attributes)
             for m in (mirror._items.get(i) for i in scores) if m is not None]
    if not with_vectors:
        return Found(found)
    idx = [mirror._rows[it.item_id] for it in found]
    return Found(found, mirror._vectors[idx], mirror._text[idx])


def reference_answer(store, request: retrieval_pb2.SearchRequest) -> retrieval_pb2.CandidateList:
    """RetrievalServicer.Search and _answer before the change (valid requests)."""
    sources = [(name, np.frombuffer(m.data, np.float32)) for name, m in
               ((INTEREST, request.interest), (SESSION, request.session), (QUERY, request.query)) if m.rows == 1]
    query = dict(sources).get(QUERY)
    flt = SearchFilter.from_proto(request.filters)
    found = reference_search(store, sources, request.limit, flt, request.with_vectors or query is not None)
    sims = None if query is None or not found.items else found.text_vectors @ l2_normalize(query)
    if not request.with_vectors:
        found = Found(found.items)
    reply = retrieval_pb2.CandidateList(index_version=store.version)
    add = reply.candidates.add
    sims = [0.0] * len(found.items) if sims is None else sims.tolist()
    for it, sim in zip(found.items, sims, strict=True):
        candidate = add(item_id=it.item_id, title=it.title, categories=it.categories, score=it.score,
                        popularity=it.popularity, query_similarity=sim)
        if it.attributes:
            candidate.MergeFromString(_attributes_wire(tuple((k, type(v), v) for k, v in it.attributes.items())))
    if found.vectors is not None and found.items:
        reply.vectors.CopyFrom(to_matrix(found.vectors))
        if request.with_text_vectors:
            reply.text_vectors.CopyFrom(to_matrix(found.text_vectors))
    return reply


@pytest.fixture
def servicer(tmp_path):
    s = RetrievalServicer(RetrievalSettings())
    store = EdgeItemStore.create(tmp_path / "shard", dim=DIM, text_dim=TEXT_DIM, version="v1")
    store.upsert(catalog(), rows(N, DIM, 0), rows(N, TEXT_DIM, 1))
    s._store = store
    yield s
    store.close()


def requests() -> list[retrieval_pb2.SearchRequest]:
    q = rows(4, DIM, 7)
    t = rows(2, TEXT_DIM, 8)
    one = lambda v: to_matrix(v[None, :])  # noqa: E731
    seen = [f"i{i}" for i in range(0, N, 3)]  # 200: over-fetched and dropped
    many = [f"i{i}" for i in range(0, N, 2)][:450]  # over MAX_OVERFETCH: the shard's id filter
    attrs = [common_pb2.AttributeFilter(name="brand", any_of=common_pb2.StringSet(values=["Acme"])),
             common_pb2.AttributeFilter(name="in_stock", equals=True, exclude=True)]
    return [
        retrieval_pb2.SearchRequest(interest=one(q[0]), limit=250),
        retrieval_pb2.SearchRequest(interest=one(q[1]), session=one(q[2]), limit=120,
                                    filters=common_pb2.Filters(exclude_item_ids=seen)),
        retrieval_pb2.SearchRequest(interest=one(q[0]), session=one(q[3]), query=one(t[0]), limit=100,
                                    filters=common_pb2.Filters(exclude_item_ids=seen)),
        retrieval_pb2.SearchRequest(session=one(q[1]), query=one(t[1]), limit=60, with_vectors=True,
                                    with_text_vectors=True),
        retrieval_pb2.SearchRequest(interest=one(q[2]), limit=80, with_vectors=True,
                                    filters=common_pb2.Filters(include_categories=["Comedy"], exclude_item_ids=many)),
        retrieval_pb2.SearchRequest(interest=one(q[3]), query=one(t[0]), limit=50,
                                    filters=common_pb2.Filters(exclude_categories=["Comedy"], attributes=attrs,
                                                               exclude_item_ids=seen[:20])),
        retrieval_pb2.SearchRequest(query=one(t[1]), limit=5,
                                    filters=common_pb2.Filters(include_categories=["None such"])),
    ]


def search(s: RetrievalServicer, request) -> retrieval_pb2.CandidateList:
    return asyncio.run(s.Search(request, Context()))


def assert_same(s: RetrievalServicer, request) -> retrieval_pb2.CandidateList:
    reply, expected = search(s, request), reference_answer(s.store, request)
    assert reply == expected
    assert reply.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    return reply


def test_search_answers_the_same_message_as_before(servicer):
    replies = [assert_same(servicer, r) for r in requests() * 2]  # the second time from the cache
    sizes = [len(r.candidates) for r in replies[:7]]
    assert sizes[0] == 250 and sizes[1] > 120 and sizes[6] == 0 and all(sizes[:6])
    with_query = replies[2]
    assert any(c.query_similarity for c in with_query.candidates) and any(c.attributes for c in with_query.candidates)
    assert any(c.attributes["price"].number == 0.0 for c in replies[0].candidates if "price" in c.attributes)
    seen = set(requests()[1].filters.exclude_item_ids)
    assert not seen & {c.item_id for c in replies[1].candidates}


def test_writes_and_another_index_version_are_answered_at_once(servicer, tmp_path):
    request = requests()[0]
    before = assert_same(servicer, request)
    top = before.candidates[0].item_id
    n = int(top[1:])

    async def write():
        item = common_pb2.Item(item_id=top, title="renamed", categories=["New"],
                               attributes={"brand": common_pb2.AttributeValue(text="Zed")})
        await servicer.Upsert(retrieval_pb2.UpsertRequest(
            items=[item], vectors=to_matrix(rows(N, DIM, 0)[n:n + 1]),
            text_vectors=to_matrix(rows(N, TEXT_DIM, 1)[n:n + 1])), Context())
    asyncio.run(write())
    after = assert_same(servicer, request)
    assert after.candidates[0].title == "renamed" and after.candidates[0].attributes["brand"].text == "Zed"

    # Straight to the index, not through the service: the index's new object is not the cached one.
    second = after.candidates[1].item_id
    servicer.store.upsert([dict(catalog()[int(second[1:])], title="direct")],
                          rows(N, DIM, 0)[int(second[1:]):int(second[1:]) + 1],
                          rows(N, TEXT_DIM, 1)[int(second[1:]):int(second[1:]) + 1])
    assert assert_same(servicer, request).candidates[1].title == "direct"

    asyncio.run(servicer.Delete(retrieval_pb2.DeleteRequest(item_ids=[top]), Context()))
    gone = assert_same(servicer, request)
    assert top not in {c.item_id for c in gone.candidates}
    servicer.store.delete([second])
    assert second not in {c.item_id for c in assert_same(servicer, request).candidates}

    # Another index (version v2, other titles) in place of this one: nothing cached is answered.
    other = EdgeItemStore.create(tmp_path / "other", dim=DIM, text_dim=TEXT_DIM, version="v2")
    other.upsert(catalog(title="Other "), rows(N, DIM, 0), rows(N, TEXT_DIM, 1))
    old, servicer._store = servicer._store, other
    try:
        reply = assert_same(servicer, request)
        assert reply.index_version == "v2" and all(c.title.startswith("Other ") or not c.title
                                                   for c in reply.candidates)
    finally:
        servicer._store = old
        other.close()


def test_get_items_and_top_popular_answer_as_before(servicer):
    ids = ["i5", "i3", "nope", "i5", "i599"]
    reply = asyncio.run(servicer.GetItems(retrieval_pb2.GetItemsRequest(item_ids=ids, with_vectors=True), Context()))
    found = servicer.store.get(ids, True)
    expected = retrieval_pb2.CandidateList(index_version="v1")
    for it in found.items:
        c = expected.candidates.add(item_id=it.item_id, title=it.title, categories=it.categories,
                                    popularity=it.popularity)
        if it.attributes:
            c.MergeFromString(_attributes_wire(tuple((k, type(v), v) for k, v in it.attributes.items())))
    expected.vectors.CopyFrom(to_matrix(found.vectors))
    expected.text_vectors.CopyFrom(to_matrix(found.text_vectors))
    assert reply == expected and [c.item_id for c in reply.candidates] == ["i5", "i3", "i5", "i599"]
