"""The cold typed-query blend: its scenario (label queries, label folds), its choice, and the
ranker scoring with it only for requests without history, stored and loaded with the params."""

import json

import numpy as np
import pytest

from recmesh.common.vectors import to_matrix
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.rank import rank
from recmesh.models.ranking.scorer import Scorer, load_params, save_params
from recmesh.models.ranking.training import WideDeepTrainer
from recmesh.tools.eval.cold_queries import (
    ColdScenario,
    LabelQuery,
    choose_cold_blend,
    label_folds,
    label_queries,
    popularity_ranks,
)
from recmesh.v1 import ranker_pb2, retrieval_pb2

Q, INTEREST, P = (FEATURES.index(n) for n in ("query_sim", "interest_sim", "popularity"))


def weights(**named) -> np.ndarray:
    return np.array([named.get(n, 0.0) for n in FEATURES], np.float32)


MAIN = weights(popularity=5.0, query_sim=1.0, session_sim=1.0)
COLD = weights(query_sim=5.0, popularity=0.1)


def scorer(cold=COLD) -> Scorer:
    return Scorer("ranker-test", MAIN, 0.0, None, 0, cold)


def test_cold_weights_only_for_typed_words_without_history():
    s = scorer()
    assert s.for_request(has_history=True, typed=True) is s
    assert s.for_request(has_history=False, typed=False) is s  # no query: the blend's cold-start ranking
    assert s.for_request(has_history=False, typed=True).weights.tolist() == COLD.tolist()
    assert s.for_request(has_history=False, typed=True).version == s.version
    plain = scorer(cold=None)
    assert plain.for_request(has_history=False, typed=True) is plain


def test_cold_weights_are_stored_and_loaded_with_the_version(tmp_path):
    path = save_params(scorer(), tmp_path, cold_tuning={"chosen": {"interest_units": 1.0}})
    spec = json.loads(path.read_text())
    assert spec["cold_weights"]["query_sim"] == 5.0 and spec["cold_tuning"]["chosen"]["interest_units"] == 1.0
    loaded = load_params(path)
    assert loaded.cold.tolist() == COLD.tolist() and loaded.weights.tolist() == MAIN.tolist()
    assert load_params(save_params(scorer(cold=None), tmp_path / "plain")).cold is None


@pytest.mark.parametrize("cold, message", [
    ({"nonsense": 1.0}, "unknown features in cold_weights"), ({"query_sim": float("nan")}, "finite"),
    # each kind of wrong JSON names the field, with the file (hostile-input findings)
    (None, "cold_weights must be an object"), ("abc", "cold_weights must be an object"),
    ([1.0], "cold_weights must be an object"), ({"query_sim": None}, r"cold_weights\.query_sim must be a finite"),
    ({"query_sim": "1"}, "must be a finite number"), ({"query_sim": True}, "must be a finite number"),
    ({"query_sim": [1.0]}, "must be a finite number"), ({}, "weights no feature")])
def test_bad_cold_weights_are_refused(tmp_path, cold, message):
    path = tmp_path / "ranker-x.json"
    path.write_text(json.dumps({"version": "x", "kind": "linear", "weights": {"query_sim": 1.0}, "cold_weights": cold}))
    with pytest.raises(ValueError, match=message) as raised:
        load_params(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("weights", [None, {"query_sim": "2"}, {"query_sim": None}, {"query_sim": float("inf")}])
def test_bad_blend_weights_are_refused_naming_the_field(tmp_path, weights):
    path = tmp_path / "ranker-y.json"
    path.write_text(json.dumps({"version": "y", "kind": "linear", "weights": weights}))
    with pytest.raises(ValueError, match="weights"):
        load_params(path)


def test_the_online_learner_carries_the_cold_weights_into_its_versions():
    trainer = WideDeepTrainer(scorer(), hidden=0)
    assert trainer.scorer("ranker-learned-1", 5).cold.tolist() == COLD.tolist()


def request(**history) -> ranker_pb2.RankRequest:
    """Two candidates: "typed" matches the query, "popular" is popular."""
    vectors = np.eye(2, dtype=np.float32)
    return ranker_pb2.RankRequest(
        candidates=[retrieval_pb2.Candidate(item_id="typed", popularity=0.1),
                    retrieval_pb2.Candidate(item_id="popular", popularity=0.9)],
        candidate_vectors=to_matrix(vectors), query_similarity=[0.9, 0.3], k=2, **history)


def top(req: ranker_pb2.RankRequest, s: Scorer) -> str:
    reply = rank(req, s, np.random.default_rng(0), max_candidates=10, exploration=0.0, mmr_pool_factor=3,
                 max_reasons=2)
    return reply.items[0].item_id


def test_rank_scores_a_newcomer_with_the_cold_weights_and_a_user_with_history_with_the_blend():
    assert top(request(), scorer()) == "typed"
    assert top(request(), scorer(cold=None)) == "popular"  # the blend: popularity 5 x 0.8 > query 1 x 0.6
    session = to_matrix(np.array([0.6, 0.8], np.float32))
    assert top(request(session=session), scorer()) == "popular"
    recent = dict(recent=[ranker_pb2.RecentItem(item_id="x", title="X")],
                  recent_vectors=to_matrix(np.array([[0.0, 1.0]], np.float32)))
    assert top(request(**recent), scorer()) == "popular"
    assert top(request(category_affinity={"Drama": 0.5}), scorer()) == "popular"
    untyped = request()
    untyped.ClearField("query_similarity")
    assert top(untyped, scorer()) == "popular"  # no typed words: the blend


def test_label_queries_keep_labels_on_enough_interacted_items_merged_case_insensitively():
    labels = [["Pens", "blue"], ["pens"], ["Pens", "red"], ["Pens"], ["red"], ["red"]]
    interacted = np.array([True, True, True, False, True, True])
    queries = label_queries(labels, interacted, n=10, seed=0, min_items=3, max_items=3)
    assert [(q.label, q.relevant.tolist()) for q in queries] == [("Pens", [0, 1, 2]), ("red", [2, 4, 5])]
    assert label_queries(labels, interacted, n=10, seed=0, min_items=3, max_items=3, only={"red"})[0].label == "red"
    assert len(label_queries(labels, interacted, n=1, seed=0, min_items=3, max_items=3)) == 1


def test_label_folds_hold_each_label_out_once_seeded():
    labels = [["a", "B"], ["b", "c"], ["d"], ["e", "f", "g"]]
    folds = label_folds(labels, 3, seed=1)
    assert sorted(folds) == ["a", "b", "c", "d", "e", "f", "g"]
    assert set(folds.values()) == {0, 1, 2}
    assert folds == label_folds(labels, 3, seed=1)
    with pytest.raises(ValueError, match="folds"):
        label_folds(labels, 1, seed=0)


def test_popularity_ranks_share_ties():
    assert popularity_ranks(np.array([5.0, 1.0, 5.0, 0.0])).tolist() == [1.5, 3.0, 1.5, 4.0]


def scenario() -> ColdScenario:
    """40 items, 0..19 popular (many events), 20..39 rarely consumed; each query's relevant items
    are 5 of each half. The interest points at the popular half (relevant first), the query
    feature at every relevant item, popularity at the popular half."""
    rng = np.random.default_rng(0)
    n, queries, features = 40, [], []
    counts = np.r_[np.full(20, 100.0) + np.arange(20), np.full(20, 2.0) + np.arange(20) / 100]
    for q in range(8):
        relevant = np.r_[rng.choice(20, 5, replace=False), 20 + rng.choice(20, 5, replace=False)]
        f = np.zeros((n, len(FEATURES)), np.float32)
        f[:20, INTEREST] = 0.5 + rng.random(20) * 0.1
        f[relevant[:5], INTEREST] += 0.5
        f[:, Q] = rng.random(n) * 0.2
        f[relevant, Q] += 0.5
        f[:, P] = counts / counts.max()
        queries.append(LabelQuery(f"q{q}", np.sort(relevant)))
        features.append(f)
    return ColdScenario(queries, np.stack(features), popularity_ranks(counts))


def test_the_cold_blend_is_the_best_among_those_as_popular_as_the_relevant_items():
    sc = scenario()
    blend = weights(interest_sim=4.0, query_sim=1.0, popularity=1.0)
    cold, report = choose_cold_blend(sc, blend, interest_grid=(0.0, 1.0, 4.0), popularity_grid=(0.0, 1.0))
    chosen = report["chosen"]
    # The interest-led blends answer only popular items (median rank ~10 vs the relevant's ~20):
    # outside the factor 1.5 here; the query alone answers every relevant item.
    union = np.unique(np.concatenate([q.relevant for q in sc.queries]))
    assert report["relevant_median_popularity_rank"] == pytest.approx(np.median(sc.ranks[union]))
    assert chosen["calibrated"] and chosen["interest_units"] == 0.0 and chosen["popularity_units"] == 0.0
    assert chosen["P@10"] == pytest.approx(1.0)
    tight, _ = choose_cold_blend(sc, blend, factor=1.5, interest_grid=(0.0, 1.0, 4.0), popularity_grid=(0.0, 1.0))
    assert tight[Q] > 0 and tight[INTEREST] == 0 and tight[P] == 0
    assert all(cold[FEATURES.index(n)] == 0 for n in ("session_sim", "recent_sim_max", "category_affinity",
                                                      "skipped"))
    over = {(g["interest_units"], g["popularity_units"]): g for g in report["grid"]}
    assert over[(4.0, 1.0)]["median_popularity_rank"] < report["relevant_median_popularity_rank"]
    # Scaled to the blend's score spread over the same lists.
    spread = lambda w: np.einsum("qnf,f->qn", sc.features, w).std(axis=1).mean()  # noqa: E731
    assert spread(cold) == pytest.approx(spread(blend), rel=1e-3)


def test_the_interest_weight_is_served_in_units_of_the_served_heads_spread():
    sc = scenario()
    blend = weights(interest_sim=4.0, query_sim=1.0, popularity=1.0)
    grid = dict(interest_grid=(1.0,), popularity_grid=(0.0,))
    own, _ = choose_cold_blend(sc, blend, **grid)
    sc.served_interest_spread = 2 * sc.spread("interest_sim")
    served, _ = choose_cold_blend(sc, blend, **grid)
    assert served[Q] == pytest.approx(own[Q]) and served[INTEREST] == pytest.approx(own[INTEREST] / 2)


def test_a_catalog_without_fitting_labels_keeps_the_blend_for_newcomers(monkeypatch):
    # tune imported first: it binds mesh.MeshScorer at import, which is replaced here for a moment.
    from recmesh.tools.eval import cold_queries, mesh, tune  # noqa: F401

    def no_labels(*args, **kwargs):
        raise cold_queries.NoScenario("shop: no label is on 5..100 items with events")

    monkeypatch.setattr(mesh, "MeshScorer", lambda *args, **kwargs: None)
    monkeypatch.setattr(cold_queries, "build_scenario", no_labels)
    from types import SimpleNamespace

    s = scorer(cold=None)
    shop = SimpleNamespace(name="shop", item_ids=[], categories=lambda: [])
    out, report = cold_queries.with_cold_blend(s, shop, None, None, None, None, None)
    assert out is s and "no label" in report["skipped"]
