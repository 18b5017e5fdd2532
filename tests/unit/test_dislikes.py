"""A dislike pushes the items like the disliked one down at once (services/gateway/dislikes.py):
by the cosine of catalog vectors, nothing below the settings' threshold, the ranker's page
refilled from the extra items it was asked for, the reason shown."""

import numpy as np

from recmesh.models.session import History
from recmesh.v1 import ranker_pb2, retrieval_pb2
from services.gateway.config import GatewaySettings
from services.gateway.dislikes import DislikePush
from services.gateway.fallbacks import CandidateSet

SETTINGS = GatewaySettings(dislike_push=4.0, dislike_similar_from=0.6)


def candidates() -> CandidateSet:
    """c0 is the disliked item's twin, c1 half like it (cosine 0.8), c2 and c3 unlike it."""
    vectors = np.array([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    items = [retrieval_pb2.Candidate(item_id=f"c{i}", score=1.0 - i / 10) for i in range(4)]
    return CandidateSet(items, vectors)


def disliking() -> History:
    history = History([], np.zeros((0, 0), np.float32), {"x": retrieval_pb2.Candidate(item_id="x", title="Alien")},
                      set(), disliked=["x"])
    history.disliked_vectors = np.array([[2.0, 0, 0]], np.float32)  # any norm: cosine
    return history


def test_the_push_grows_with_similarity_and_spares_unlike_items():
    push = DislikePush.of(candidates(), disliking(), SETTINGS)
    assert set(push.penalty) == {"c0", "c1"} and push.pushed == 2
    assert np.isclose(push.penalty["c0"], 4.0) and np.isclose(push.penalty["c1"], 4.0 * (0.8 - 0.6) / 0.4)
    assert push.reason["c1"] == "ranked lower: like Alien, which you disliked"


def test_no_dislike_or_no_push_setting_changes_nothing():
    plain = History([], np.zeros((0, 0), np.float32), {}, set())
    assert DislikePush.of(candidates(), plain, SETTINGS) is None
    assert DislikePush.of(candidates(), disliking(), GatewaySettings(dislike_push=0)) is None


def test_the_ranked_page_is_reordered_and_refilled_from_the_extra_items():
    push = DislikePush.of(candidates(), disliking(), SETTINGS)
    ranking = ranker_pb2.RankResponse(model_version="r", feature_names=["f"], items=[
        ranker_pb2.RankedItem(item_id=f"c{i}", score=score, features=[float(i)])
        for i, score in enumerate([3.0, 2.5, 1.0, 0.8])])
    page = push.rerank(ranking, k=2)
    assert [i.item_id for i in page.items] == ["c2", "c3"]  # c0 (3 - 4) and c1 (2.5 - 2) pushed off
    wide = push.rerank(ranking, k=4)
    assert [i.item_id for i in wide.items] == ["c2", "c3", "c1", "c0"]
    assert wide.items[2].reasons[-1].startswith("ranked lower: like Alien") and wide.items[0].features == [2.0]
    assert np.allclose([i.score for i in wide.items], [1.0, 0.8, 0.5, -1.0])  # pushed once, however often asked
    assert ranking.items[0].score == 3.0 and not ranking.items[0].reasons  # the ranker's reply unchanged


def test_retrieval_order_is_pushed_too():
    push = DislikePush.of(candidates(), disliking(), SETTINGS)
    ordered, scores = push.reorder(candidates())
    assert [c.item_id for c in ordered.items] == ["c2", "c3", "c1", "c0"]
    assert scores == sorted(scores, reverse=True)
