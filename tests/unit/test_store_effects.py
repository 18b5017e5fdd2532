"""What the retrieval stores' writes report and keep, on both backends (Qdrant Edge, and a Qdrant
server through qdrant-client in its local mode): counts are distinct effects, not ids asked; an
update leaves alone what it does not carry (popularity); the popular list is filtered before its
cut."""

import asyncio

import numpy as np
import pytest

from recmesh.common.vectors import to_matrix
from recmesh.index.base import SearchFilter
from recmesh.index.edge import EdgeItemStore
from recmesh.index.qdrant_server import QdrantServerStore, connect
from recmesh.v1 import common_pb2, retrieval_pb2
from services.retrieval.config import RetrievalSettings
from services.retrieval.server import RetrievalServicer

N = 40


def catalog(n: int = N) -> list[dict]:
    """Item i has popularity i / n; one item in ten is a Documentary, the rest Drama."""
    return [{"item_id": f"i{i}", "title": f"T{i}", "categories": ["Documentary" if i % 10 == 3 else "Drama"],
             "popularity": i / n, "text": f"item {i}"} for i in range(n)]


def vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


@pytest.fixture(params=["edge", "server"])
def store(request, tmp_path):
    if request.param == "edge":
        s = EdgeItemStore.create(tmp_path / "shard", dim=8, text_dim=6, version="test")
    else:
        s = QdrantServerStore.create(connect(f"path:{tmp_path / 'server'}"), "items", dim=8, text_dim=6,
                                     version="test")
    s.upsert(catalog(), vectors(N, 8), vectors(N, 6, seed=1))
    yield s
    s.close()


def test_delete_counts_distinct_items_that_existed(store):
    assert store.delete(["i1", "i1", "no-such-id", "i2", "i2", "i1"]) == 2
    assert store.get(["i1", "i2"]).ids() == []
    assert store.delete(["i1"]) == 0  # already gone: no effect
    assert store.count() == N - 2


def test_an_id_twice_in_one_upsert_is_written_once_and_the_last_row_wins(store):
    rows = [catalog()[5] | {"title": "first"}, catalog()[6], catalog()[5] | {"title": "last"}]
    vecs, texts = vectors(3, 8, seed=2), vectors(3, 6, seed=3)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)  # a cosine space: the server stores them unit
    assert store.upsert(rows, vecs, texts) == 2
    got = store.get(["i5"], with_vectors=True)
    assert got.items[0].title == "last"
    assert np.allclose(got.vectors, vecs[2:3]) and np.allclose(got.text_vectors, texts[2:3])
    assert store.count() == N


def test_an_upsert_without_popularity_keeps_the_stored_one_and_a_new_item_starts_at_zero(store):
    top = store.top_popular(1).items[0]
    assert top.item_id == f"i{N - 1}" and top.popularity == pytest.approx((N - 1) / N)
    same = {k: v for k, v in catalog()[N - 1].items() if k != "popularity"}
    new = {"item_id": "new", "title": "New", "categories": ["Drama"], "text": "new"}
    assert store.upsert([same, new], vectors(2, 8), vectors(2, 6)) == 2
    assert store.top_popular(1).ids() == [f"i{N - 1}"]
    kept, fresh = store.get([f"i{N - 1}", "new"]).items
    assert kept.popularity == pytest.approx((N - 1) / N) and fresh.popularity == 0.0
    assert store.upsert([catalog()[0] | {"popularity": 0.999}], vectors(1, 8), vectors(1, 6)) == 1
    assert store.top_popular(1).ids() == ["i0"]  # carried: it changes


def test_top_popular_filters_before_the_cut(store):
    docs = store.top_popular(3, flt=SearchFilter(include_categories=["Documentary"]))
    assert docs.ids() == ["i33", "i23", "i13"]
    rest = store.top_popular(3, flt=SearchFilter(include_categories=["Documentary"], exclude_item_ids=["i23"]))
    assert rest.ids() == ["i33", "i13", "i3"]
    no_docs = store.top_popular(2, True, SearchFilter(exclude_categories=["Documentary"],
                                                      exclude_item_ids=["i39", "i37"]))
    assert no_docs.ids() == ["i38", "i36"] and no_docs.vectors.shape == (2, 8)
    assert len(store.top_popular(10, flt=SearchFilter(include_categories=["Documentary"]))) == 4


class Context:
    def time_remaining(self):
        return None

    async def abort(self, code, details):
        raise AssertionError(f"{code.name}: {details}")


def servicer(tmp_path) -> RetrievalServicer:
    s = RetrievalServicer(RetrievalSettings())
    store = EdgeItemStore.create(tmp_path / "shard", dim=8, text_dim=6, version="test")
    store.upsert(catalog(), vectors(N, 8), vectors(N, 6, seed=1))
    s._store = store
    return s


def test_the_retrieval_service_keeps_popularity_counts_effects_and_filters_top_popular(tmp_path):
    s = servicer(tmp_path)

    async def calls():
        item = common_pb2.Item(item_id=f"i{N - 1}", title=f"T{N - 1}", categories=["Drama"])
        upserted = await s.Upsert(retrieval_pb2.UpsertRequest(
            items=[item], vectors=to_matrix(vectors(1, 8)), text_vectors=to_matrix(vectors(1, 6))), Context())
        top = await s.TopPopular(retrieval_pb2.TopPopularRequest(limit=1), Context())
        docs_only = common_pb2.Filters(include_categories=["Documentary"], exclude_item_ids=["i33"])
        docs = await s.TopPopular(retrieval_pb2.TopPopularRequest(limit=10, filters=docs_only), Context())
        deleted = await s.Delete(retrieval_pb2.DeleteRequest(item_ids=["i1", "i1", "no-such-id"]), Context())
        return upserted, top, docs, deleted

    upserted, top, docs, deleted = asyncio.run(calls())
    assert upserted.upserted == 1
    assert [c.item_id for c in top.candidates] == [f"i{N - 1}"]
    assert top.candidates[0].popularity == pytest.approx((N - 1) / N)
    assert [c.item_id for c in docs.candidates] == ["i23", "i13", "i3"]
    assert deleted.deleted == 1
    s.store.close()


def test_a_non_finite_popularity_is_invalid_argument_naming_it(tmp_path):
    """Found by attack: Upsert(popularity=[NaN]) answered INTERNAL (Qdrant refused the payload)."""
    s = servicer(tmp_path)
    request = retrieval_pb2.UpsertRequest(items=[common_pb2.Item(item_id="n", title="N")], popularity=[float("nan")],
                                          vectors=to_matrix(vectors(1, 8)), text_vectors=to_matrix(vectors(1, 6)))
    with pytest.raises(AssertionError, match="INVALID_ARGUMENT: popularity\\[0\\]: must be a finite number"):
        asyncio.run(s.Upsert(request, Context()))
    s.store.close()
