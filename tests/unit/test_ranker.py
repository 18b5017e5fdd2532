import json

import numpy as np
import pytest

from recmesh.models.ranking.features import FEATURES, RankInputs, compute
from recmesh.models.ranking.reasons import explain
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, Scorer, load_params, newest_params


def unit_rows(*rows):
    m = np.array(rows, dtype=np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def inputs(**overrides):
    base = dict(
        candidate_vectors=unit_rows([1, 0, 0], [0, 1, 0], [0, 0, 1]),
        candidate_text_vectors=unit_rows([1, 0, 0], [0, 1, 0], [0, 0, 1]),
        candidate_categories=[["Drama"], ["Comedy"], ["Horror"]],
        popularity=np.array([0.1, 0.9, 0.2], np.float32),
        interest=None, session=None, query=None,
        recent_vectors=np.zeros((0, 3), np.float32),
        category_affinity={},
    )
    return RankInputs(**(base | overrides))


def shipped():
    return load_params(newest_params(SHIPPED_PARAMS))  # not the var's own blend, whatever the var holds


def test_shipped_params_load_and_cover_known_features():
    scorer = shipped()
    assert scorer.version.startswith("ranker-")
    assert scorer.weights.shape == (len(FEATURES),)


def test_query_outranks_popularity():
    scorer = shipped()
    f = compute(inputs(query=np.array([0, 0, 1], np.float32)))
    assert np.argmax(scorer.score(f.values)) == 2


def test_without_signals_popularity_decides():
    scorer = shipped()
    assert np.argmax(scorer.score(compute(inputs()).values)) == 1


def test_category_affinity_and_closest_recent_item():
    f = compute(inputs(category_affinity={"Horror": 0.75, "Drama": 0.25},
                       recent_vectors=unit_rows([0, 0.1, 1], [1, 0, 0])))
    assert f.column("category_affinity").tolist() == [0.25, 0.0, 0.75]
    assert f.closest_recent.tolist()[0] == 1 and f.closest_recent.tolist()[2] == 0


def test_reasons_name_the_query_and_the_similar_title():
    weights = {"interest_sim": 1.0, "session_sim": 0.0, "query_sim": 1.2, "recent_sim_max": 0.3,
               "category_affinity": 0.4, "popularity": 0.25, "skipped": 0.0}
    scorer = Scorer("test", np.array([weights[f] for f in FEATURES], np.float32), 0.0)
    f = compute(inputs(query=np.array([0, 0, 1], np.float32), recent_vectors=unit_rows([0, 0.2, 1])))
    contributions = scorer.contributions(f.values)
    reasons = explain(contributions, f, 2, ["Horror"], {}, ["The Shining (1980)"], 2)
    assert reasons == ["matches what you typed", "similar to The Shining (1980)"]


def test_params_with_unknown_features_are_refused(tmp_path):
    path = tmp_path / "ranker-x.json"
    path.write_text(json.dumps({"version": "x", "kind": "linear", "weights": {"nonsense": 1.0}}))
    with pytest.raises(ValueError, match="unknown features"):
        load_params(path)


def test_interest_score_is_scale_free_and_session_is_a_cosine():
    long_rows = np.array([[4, 0, 0], [0, 1, 0], [0, 0, 2]], np.float32)  # catalog vectors are not unit
    strong = compute(inputs(candidate_vectors=long_rows, interest=np.array([0, 0, 9], np.float32)))
    weak = compute(inputs(candidate_vectors=long_rows, interest=np.array([0, 0, 0.1], np.float32)))
    assert np.allclose(strong.column("interest_sim"), weak.column("interest_sim"))
    assert strong.column("interest_sim").tolist() == pytest.approx([0, 0, 2])  # the item's norm still counts
    session = compute(inputs(candidate_vectors=long_rows, session=np.array([1, 0, 0], np.float32)))
    assert session.column("session_sim").tolist() == pytest.approx([1, 0, 0])


def test_hand_set_weights_let_a_session_outvote_a_slightly_better_model_score():
    scorer = load_params(SHIPPED_PARAMS / "ranker-linear-v2.json")
    f = compute(inputs(interest=np.array([0.2, 1, 0], np.float32), session=np.array([1, 0, 0], np.float32)))
    assert np.argmax(scorer.score(f.values)) == 0


def test_session_vector_weights_the_newest_items_most():
    from recmesh.models.session import session_vector

    direction = session_vector(np.array([[3, 0], [0, 1]], np.float32), half_life_events=1.0)  # oldest first
    assert direction == pytest.approx(np.array([1, 2]) / np.sqrt(5))
    assert session_vector(np.zeros((0, 2), np.float32)) is None
    assert session_vector(np.eye(12, dtype=np.float32), last_n=10)[:2].tolist() == [0, 0]  # only the last 10


def test_skipped_counts_become_a_feature():
    f = compute(inputs(skipped=np.array([0, 3, 0], np.float32)))
    assert f.column("skipped").tolist() == pytest.approx([0, np.log(4), 0])


def test_query_similarity_from_retrieval_stands_in_for_the_text_vectors():
    query = np.array([0.6, 0, 0.8], np.float32)
    from_vectors = compute(inputs(query=query))
    from_retrieval = compute(inputs(candidate_text_vectors=np.zeros((0, 0), np.float32),
                                    query_similarity=np.array([0.6, 0.0, 0.8], np.float32)))
    assert np.allclose(from_vectors.values, from_retrieval.values)


@pytest.mark.parametrize("field, change", [
    ("candidates.popularity", lambda r: setattr(r.candidates[0], "popularity", float("nan"))),
    ("candidates.popularity", lambda r: setattr(r.candidates[1], "popularity", float("inf"))),
    ("category_affinity", lambda r: r.category_affinity.update({"Drama": float("nan")})),
    ("skipped", lambda r: r.skipped.update({"a": -1})),
])
def test_non_finite_or_negative_inputs_are_invalid_argument_naming_them(field, change):
    """Found by attack: Rank answered NaN/Inf scores for NaN popularity or affinity."""
    from recmesh.common.errors import InvalidArgument
    from recmesh.common.vectors import to_matrix
    from recmesh.models.ranking.rank import rank
    from recmesh.v1 import ranker_pb2, retrieval_pb2

    request = ranker_pb2.RankRequest(
        candidates=[retrieval_pb2.Candidate(item_id=i, categories=["Drama"], popularity=0.5) for i in "ab"],
        candidate_vectors=to_matrix(unit_rows([1, 0, 0], [0, 1, 0])), k=2)
    change(request)
    with pytest.raises(InvalidArgument, match=f"^{field}:"):
        rank(request, shipped(), np.random.default_rng(0), max_candidates=100, exploration=0.0,
             mmr_pool_factor=3, max_reasons=2)
