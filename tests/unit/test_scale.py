"""The catalog-scale tool's logic (recmesh/tools/bench/scale.py): vector jitter keeps the real
catalog and copies metadata, exact search and recall@k on known cases; the norm-completed
INTEREST vector (recmesh/index/edge.py) scores exactly by dot product; the HNSW settings fail
naming their variable."""

import argparse
import os

import numpy as np
import pytest

from recmesh.index.base import SearchFilter
from recmesh.index.edge import EdgeItemStore, interest_query, interest_stored
from recmesh.index.hnsw import HnswParams, hnsw_params
from recmesh.index.layout import INTEREST
from recmesh.tools.bench import scale
from recmesh.tools.devstack import process_tree_rss_mib
from recmesh.v1 import common_pb2


def item(i: int) -> common_pb2.Item:
    return common_pb2.Item(item_id=f"m{i}", title=f"Film {i}", description=f"about {i}", categories=["Drama", f"c{i}"],
                           tags=[f"t{i}"], attributes={"year": common_pb2.AttributeValue(number=1990 + i),
                                                       "in_stock": common_pb2.AttributeValue(flag=i % 2 == 0)})


def real(n: int = 40, seed: int = 1) -> tuple[list[common_pb2.Item], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = (rng.standard_normal((n, 8)) * rng.uniform(0.5, 1.5, (n, 1))).astype(np.float32)
    text = rng.standard_normal((n, 12)).astype(np.float32)
    return [item(i) for i in range(n)], vectors, text / np.linalg.norm(text, axis=1, keepdims=True)


def test_a_synthetic_item_copies_its_original_with_id_and_title_suffixed():
    original = item(3)
    copy = scale.synthetic_item(original, 2)
    assert (copy.item_id, copy.title) == ("m3~2", "Film 3 ~2")
    assert copy.description == original.description
    assert list(copy.categories) == list(original.categories) and list(copy.tags) == list(original.tags)
    assert dict(copy.attributes) == dict(original.attributes)
    assert original.item_id == "m3"  # the original is untouched


def test_jitter_keeps_the_real_catalog_and_places_each_copy_near_its_original():
    items, vectors, text = real()
    d = scale.derive_catalog(items, [0.5] * len(items), vectors, text, n_items=200, jitter=0.5, seed=0)
    assert len(d.items) == len(d.popularity) == len(d.vectors) == len(d.text_vectors) == 200
    # The real items first, as they were: ids, vectors, popularity.
    assert [it.item_id for it in d.items[:40]] == [it.item_id for it in items]
    np.testing.assert_array_equal(d.vectors[:40], vectors)
    np.testing.assert_array_equal(d.text_vectors[:40], text)
    assert d.popularity[:40] == [0.5] * 40 and set(d.popularity[40:]) == {0.0}
    # Copies round robin: synthetic j copies real j mod 40, copy number j // 40 + 1.
    assert d.items[40].item_id == "m0~1" and d.items[80].item_id == "m0~2" and d.items[41].item_id == "m1~1"
    assert len({it.item_id for it in d.items}) == 200
    sources = np.arange(160) % 40
    # Text vectors stay unit; catalog vectors keep their original's norm.
    np.testing.assert_allclose(np.linalg.norm(d.text_vectors[40:], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(d.vectors[40:], axis=1), np.linalg.norm(vectors[sources], axis=1),
                               rtol=1e-5)
    # The noise is about jitter x the real nearest-neighbour distance, per space.
    for name, copies, originals in ((INTEREST, d.vectors[40:], vectors[sources]),
                                    ("text", d.text_vectors[40:], text[sources])):
        moved = np.median(np.linalg.norm(copies - originals, axis=1))
        assert 0.2 * d.nn_distance[name] < moved < 0.8 * d.nn_distance[name]
    # Each copy's nearest real item is its original (jitter 0.5 keeps the neighbourhoods).
    nearest = scale.exact_top_k(text, d.text_vectors[40:], 1, "cosine")[:, 0]
    assert (nearest == sources).mean() > 0.9


def test_no_jitter_gives_exact_copies_and_too_few_items_are_refused():
    items, vectors, text = real(10)
    d = scale.derive_catalog(items, [0.0] * 10, vectors, text, n_items=20, jitter=0.0, seed=0)
    np.testing.assert_allclose(d.vectors[10:], vectors, rtol=1e-6)
    with pytest.raises(ValueError, match="--items must be at least the base catalog's 10, got 5"):
        scale.derive_catalog(items, [0.0] * 10, vectors, text, n_items=5, jitter=0.5, seed=0)


def test_exact_top_k_by_dot_product_and_by_cosine():
    matrix = np.array([[1.0, 0.0], [3.0, -1.0], [0.0, 1.0], [0.7, 0.7]], np.float32)
    query = np.array([[1.0, 0.1]], np.float32)
    # Dot product favours the long vector; cosine the one pointing the same way.
    assert scale.exact_top_k(matrix, query, 3, "dot").tolist() == [[1, 0, 3]]
    assert scale.exact_top_k(matrix, query, 3, "cosine").tolist() == [[0, 1, 3]]
    with pytest.raises(ValueError, match="metric"):
        scale.exact_top_k(matrix, query, 3, "l2")


def test_recall_at_k_is_the_share_of_the_true_k_nearest_found():
    assert scale.recall_at_k([[1, 2, 3], [7, 8, 9]], [[1, 2, 4], [9, 8, 7]], k=3) == pytest.approx((2 / 3 + 1) / 2)
    assert scale.recall_at_k([[5, 1, 2, 3]], [[1, 2, 3, 4]], k=2) == pytest.approx(0.5)  # only the first k count
    with pytest.raises(ValueError):
        scale.recall_at_k([[1]], [[1], [2]], k=1)


def test_norm_completion_keeps_every_dot_product_and_equalises_norms():
    _, vectors, _ = real(30)
    bound = float(np.linalg.norm(vectors, axis=1).max())
    stored = interest_stored(vectors, bound)
    assert stored.shape == (30, 9)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), bound, rtol=1e-5)
    q = np.random.default_rng(5).standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(stored @ np.asarray(interest_query(q, bound)), vectors @ q, rtol=1e-5, atol=1e-5)
    # A vector longer than the bound gets 0, and still its exact score; no bound: stored as it is.
    assert interest_stored(vectors * 2, bound)[:, -1].min() == 0.0
    np.testing.assert_array_equal(interest_stored(vectors, None), vectors)
    assert interest_query(q, None) == q.tolist()


def test_a_shard_answers_interest_by_exact_dot_product_and_exports_the_plain_vectors(tmp_path):
    items, vectors, text = real(50)
    store = EdgeItemStore.create(tmp_path / "shard", 8, 12, "test", hnsw=HnswParams(8, 32),
                                 interest_norm_bound=1.0)  # shorter than most: scores stay exact
    store.upsert([{"item_id": it.item_id, "title": it.title, "categories": list(it.categories)} for it in items],
                 vectors, text)
    q = np.random.default_rng(9).standard_normal(8).astype(np.float32)
    found, scores = store.search_scored([(INTEREST, q)], 10, SearchFilter(), False)
    truth = scale.exact_top_k(vectors, q[None], 10, "dot")[0]
    assert found.ids() == [items[i].item_id for i in truth]
    np.testing.assert_allclose(scores, vectors[truth] @ q, rtol=1e-4)
    (_, exported, _), = list(store.export(100, ["item_id"]))
    assert exported.shape == (50, 8)
    store.close()
    reopened = EdgeItemStore.open(tmp_path / "shard")
    assert reopened.interest_norm_bound == 1.0 and reopened.hnsw == HnswParams(8, 32)
    reopened.close()


def test_the_hnsw_settings_name_the_variable_of_a_bad_value(monkeypatch):
    monkeypatch.setenv("RECMESH_INDEX_HNSW_M", "24")
    monkeypatch.setenv("RECMESH_INDEX_HNSW_EF_CONSTRUCT", "300")
    assert hnsw_params() == HnswParams(24, 300, HnswParams.full_scan_threshold_kb)
    monkeypatch.setenv("RECMESH_INDEX_HNSW_M", "1")
    with pytest.raises(ValueError, match="RECMESH_INDEX_HNSW_M: .*greater than or equal to 2"):
        hnsw_params()


def test_grid_entries_and_ef_lists_are_checked():
    assert scale.grid_entry("16:100") == (HnswParams(16, 100), True)
    assert scale.grid_entry("8:64:plain") == (HnswParams(8, 64), False)
    for bad in ("16", "16:100:flat", "a:b"):
        with pytest.raises(argparse.ArgumentTypeError, match="--grid"):
            scale.grid_entry(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="--ef"):
        scale._ints("--ef", "64,0")


def test_process_tree_rss_counts_a_live_process_and_zero_for_a_gone_one():
    rss = process_tree_rss_mib({"me": os.getpid(), "gone": 2**22 + 7})
    assert rss["me"] > 10 and rss["gone"] == 0.0
