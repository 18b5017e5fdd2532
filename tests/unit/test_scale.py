"""The catalog-scale tool's logic (recmesh/tools/bench/scale.py): both synthetic models (jittered
copies, mixes of real items) keep the real catalog and copy the anchor's metadata, exact search
and recall@k on known cases; the norm-completed INTEREST vector (recmesh/index/edge.py) scores
exactly by dot product; the HNSW settings fail naming their variable."""

import argparse
import json
import os

import numpy as np
import pytest

from recmesh.index.base import SearchFilter
from recmesh.index.edge import EdgeItemStore, interest_query, interest_stored
from recmesh.index.hnsw import DEFAULT_SEARCH_EF, HnswParams, hnsw_params, search_ef
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
    d = scale.derive_catalog(items, [0.5] * len(items), vectors, text, n_items=200, jitter=0.5, seed=0,
                             model="copies")
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
    d = scale.derive_catalog(items, [0.0] * 10, vectors, text, n_items=20, jitter=0.0, seed=0, model="copies")
    np.testing.assert_allclose(d.vectors[10:], vectors, rtol=1e-6)
    with pytest.raises(ValueError, match="--items must be at least the base catalog's 10, got 5"):
        scale.derive_catalog(items, [0.0] * 10, vectors, text, n_items=5, jitter=0.5, seed=0)
    with pytest.raises(ValueError, match="--model must be one of mix, copies, got 'clone'"):
        scale.derive_catalog(items, [0.0] * 10, vectors, text, n_items=20, jitter=0.5, seed=0, model="clone")


def test_mix_parts_are_the_anchor_and_distinct_other_real_items_with_weights_summing_to_one():
    rng = np.random.default_rng(3)
    anchors = np.arange(3000) % 5
    parts, weights = scale.mix_parts(anchors, 5, rng)
    assert parts.shape == weights.shape == (3000, 3)
    assert (parts[:, 0] == anchors).all()
    assert all(len(set(row)) == 3 for row in parts.tolist())  # no part twice, the anchor not again
    # Every other item is drawn about equally often as a partner (uniform, not a fixed neighbour).
    counts = np.bincount(parts[:, 1:].ravel(), minlength=5)
    assert counts.min() > 0.8 * counts.mean()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    used = (weights > 0).sum(axis=1)
    assert set(used.tolist()) == {2, 3} and 0.4 < (used == 2).mean() < 0.6
    assert (weights[:, 0] > 0).all() and (weights[used == 2, 2] == 0).all()
    with pytest.raises(ValueError, match="a mix needs"):
        scale.mix_parts(anchors, 2, rng)  # 3 parts from 2 real items


def test_a_mix_is_its_parts_weighted_at_their_mean_norm_and_noise_moves_it_by_jitter():
    _, vectors, text = real(30)
    parts = np.array([[0, 1, 2], [3, 4, 5]])
    weights = np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    exact = scale.mixed(vectors, parts, weights, 0.0, np.random.default_rng(0))
    norms = np.linalg.norm(vectors, axis=1)
    for row, (p, w) in enumerate(zip(parts, weights, strict=True)):
        direction = (w[:, None] * vectors[p]).sum(axis=0)
        np.testing.assert_allclose(exact[row], direction / np.linalg.norm(direction) * (w * norms[p]).sum(),
                                   rtol=1e-5)
    unit = scale.mixed(text, parts, weights, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    noisy = scale.mixed(text, np.repeat(parts, 500, axis=0), np.repeat(weights, 500, axis=0), 0.05,
                        np.random.default_rng(1))
    moved = np.linalg.norm(noisy - np.repeat(unit, 500, axis=0), axis=1)
    assert 0.5 * 0.05 * np.sqrt(12) < np.median(moved) < 1.5 * 0.05 * np.sqrt(12)


def test_the_mix_model_keeps_the_real_catalog_and_gives_distinct_points_between_real_items():
    items, vectors, text = real()
    d = scale.derive_catalog(items, [0.5] * 40, vectors, text, n_items=4040, jitter=0.25, seed=0)  # 100 per item
    assert len(d.items) == len(d.vectors) == len(d.text_vectors) == 4040
    np.testing.assert_array_equal(d.vectors[:40], vectors)
    np.testing.assert_array_equal(d.text_vectors[:40], text)
    assert d.items[40].item_id == "m0~1" and d.items[4039].item_id == "m39~100"
    assert d.popularity[:40] == [0.5] * 40 and set(d.popularity[40:]) == {0.0}
    np.testing.assert_allclose(np.linalg.norm(d.text_vectors, axis=1), 1.0, atol=1e-5)
    # Not clustered round their anchors as copies are: a mix lies farther from its anchor than a
    # copy with the same jitter.
    copies = scale.derive_catalog(items, [0.5] * 40, vectors, text, n_items=4040, jitter=0.25, seed=0,
                                  model="copies")
    anchors = np.arange(4000) % 40
    spread = {name: np.median(np.linalg.norm(m.text_vectors[40:] - text[anchors], axis=1))
              for name, m in (("mix", d), ("copies", copies))}
    assert spread["mix"] > 2 * spread["copies"]
    # Distinct points: each synthetic item's nearest other synthetic item is farther away than
    # a jittered copy's, whose ~100 siblings crowd round the same centre.
    def nearest_other(v: np.ndarray) -> float:
        s = v @ v.T
        np.fill_diagonal(s, -np.inf)
        return float(np.median(np.sqrt(np.maximum(2 - 2 * s.max(axis=1), 0))))
    assert nearest_other(d.text_vectors[40:]) > 1.5 * nearest_other(copies.text_vectors[40:])


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


def test_a_vector_shard_of_a_synthetic_set_is_searched_through_its_graph_against_numpy(tmp_path):
    import qdrant_edge as qe

    _, vectors, text = real(30)
    matrices, _, _ = scale.synthetic_vectors({INTEREST: vectors, "text": text}, 600, 0.25, "mix",
                                             np.random.default_rng(0))
    ids = np.arange(1, 601, dtype=np.int64)
    rng = np.random.default_rng(4)
    queries = {INTEREST: rng.standard_normal((20, 8)).astype(np.float32),
               "similar": rng.standard_normal((20, 8)).astype(np.float32),
               "text": rng.standard_normal((20, 12)).astype(np.float32)}
    shard, bound, timing = scale.vector_shard(tmp_path / "g", ids, matrices, HnswParams(16, 100))
    try:
        assert bound == pytest.approx(float(np.linalg.norm(matrices[INTEREST], axis=1).max()))
        assert timing["index_seconds"] >= 0 and shard.count(qe.CountRequest(exact=True)) == 600
        measured = scale.measure_shard(shard, ids, matrices, queries, [128], bound, k=10, exact_queries=0)
    finally:
        shard.close()
    for name in ("interest", "similar", "text"):
        assert "exact" not in measured[name]  # exact_queries 0: Qdrant's exact search skipped
        assert measured[name]["by_ef"]["128"]["recall_at_100"] >= 0.9  # 600 points: the graph finds them


def test_the_models_command_refuses_an_unknown_model_and_an_empty_grid(capsys):
    for argv, message in ((["--model", "mix,clone"], "--model: comma-separated mix, copies"),
                          (["--grid", ","], "--grid: at least one m:ef_construct"),
                          (["--base-items", "0"], "--base-items: comma-separated integers >= 1")):
        with pytest.raises(SystemExit):
            scale.main(["models", "--var", "/nonexistent", *argv])
        assert message in capsys.readouterr().err


def test_the_report_tabulates_the_synthetic_models(tmp_path):
    row = {"by_ef": {"128": {"recall_at_100": 0.5}, "256": {"recall_at_100": 0.75}}}
    entry = {"base_items": 1000, "synthetic_per_real": 99.0, "model": "copies", "jitter_nn_distances": 0.5, "m": 16,
             "ef_construct": 100, "index_seconds": 86.5, "nn_distance_over_base": {"interest": 0.48, "text": 0.47},
             "sources": {name: row for name in scale.SOURCES}}
    (tmp_path / "models-100000.json").write_text(json.dumps({"items": 100000, "sets": [entry]}))
    text = scale.report(tmp_path)
    assert "Synthetic models at 100,000 items: recall@100 at ef 128 / 256" in text
    assert "| 1,000 (99) | copies, 0.5 | 16 / 100 (86.5) | interest 0.48, text 0.47 | 0.500/0.750 |" in text


def test_the_search_ef_grows_with_the_catalog():
    assert search_ef(0) == search_ef(9_742) == search_ef(200_000) == 256
    assert search_ef(200_001) == search_ef(1_000_000) == search_ef(10**8) == 1024
    with pytest.raises(ValueError, match="items must be >= 0, got -1"):
        search_ef(-1)


def test_a_shard_records_the_search_ef_its_build_chose_and_is_searched_with_it_unless_told(tmp_path, monkeypatch):
    from recmesh.tools.catalog.importer import write_shard

    items, vectors, text = real(50)
    built = write_shard(tmp_path / "shard", "test", items, [0.0] * 50, vectors, text, HnswParams(8, 32))
    assert built["search_ef"] == 256  # 50 items
    meta_path = tmp_path / "shard.meta.json"
    assert json.loads(meta_path.read_text())["search_ef"] == 256
    # A large catalog's build records a larger ef (the rule, not 50 items, decides here).
    monkeypatch.setattr("recmesh.tools.catalog.importer.search_ef", lambda n: 1024)
    write_shard(tmp_path / "shard", "test2", items, [0.0] * 50, vectors, text, HnswParams(8, 32))
    store = EdgeItemStore.open(tmp_path / "shard")
    assert (store.version, store.search_ef) == ("test2", 1024)
    store.close()
    store = EdgeItemStore.open(tmp_path / "shard", hnsw_ef=64)  # RECMESH_RETRIEVAL_HNSW_EF set
    assert store.search_ef == 64
    store.close()
    meta = json.loads(meta_path.read_text())
    del meta["search_ef"]  # a shard built before the ef was recorded
    meta_path.write_text(json.dumps(meta))
    store = EdgeItemStore.open(tmp_path / "shard")
    assert store.search_ef == DEFAULT_SEARCH_EF == 256
    store.close()


def test_the_retrieval_searches_with_the_shards_ef_unless_the_setting_names_one(monkeypatch):
    from services.retrieval.config import RetrievalSettings

    monkeypatch.delenv("RECMESH_RETRIEVAL_HNSW_EF", raising=False)
    assert RetrievalSettings().hnsw_ef is None
    monkeypatch.setenv("RECMESH_RETRIEVAL_HNSW_EF", "512")
    assert RetrievalSettings().hnsw_ef == 512
