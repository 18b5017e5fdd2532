"""recmesh/models/similar.py: the blend of behaviour, text and the user's interest, and the
reasons that name what an item shares with the anchor."""

import numpy as np

from recmesh.models.similar import POPULAR, Anchor, Weights, reasons, score

# Three candidates: 0 is the anchor's behaviour neighbour, 1 its text neighbour, 2 neither.
VECTORS = np.array([[1, 0.1, 0], [0, 1, 0], [0, 0, 1]], np.float32)
TEXT_SIMILARITY = [0.1, 0.9, 0.0]
WARM = Anchor("a", "Alien (1979)", ("Sci-Fi", "Horror"), np.array([1, 0, 0], np.float32),
              np.ones(4, np.float32))


def test_a_warm_anchor_blends_behaviour_and_text_by_the_weight():
    def order(behaviour: float) -> list[int]:
        return score(WARM, VECTORS, TEXT_SIMILARITY, None, Weights(behaviour, 0.0)).order()

    assert order(1.0)[0] == 0 and order(0.0)[0] == 1
    scored = score(WARM, VECTORS, TEXT_SIMILARITY, None, Weights(0.6, 0.0))
    expected = 0.6 * (VECTORS @ [1, 0, 0]) / np.linalg.norm(VECTORS, axis=1) + 0.4 * np.array(TEXT_SIMILARITY)
    assert np.allclose(scored.scores, expected, atol=1e-6)


def test_an_anchor_without_a_catalog_vector_is_scored_by_text_alone():
    cold = Anchor("n", "New", ("Sci-Fi",), None, np.ones(4, np.float32))
    scored = score(cold, VECTORS, TEXT_SIMILARITY, None, Weights(0.6, 0.0))
    assert set(scored.parts) == {"text"} and np.allclose(scored.scores, TEXT_SIMILARITY)


def test_the_users_interest_reorders_by_its_weight():
    interest = np.array([0, 0, 1], np.float32)
    assert score(WARM, VECTORS, TEXT_SIMILARITY, interest, Weights(0.6, 0.0)).order()[-1] == 2
    assert score(WARM, VECTORS, TEXT_SIMILARITY, interest, Weights(0.6, 2.0)).order()[0] == 2


def test_without_any_similarity_popularity_orders_and_the_reason_says_so():
    unknown = Anchor("x", "X", ("Drama",), None, None)
    scored = score(unknown, np.zeros((0, 0)), None, None, Weights(0.6, 0.3), popularity=[0.2, 0.9, 0.5])
    assert scored.order() == [1, 2, 0]
    assert reasons(unknown, scored, 1, ["Drama"]) == [POPULAR, "shares Drama with X"]


def test_reasons_name_the_parts_that_lift_an_item_then_the_shared_categories():
    scored = score(WARM, VECTORS, TEXT_SIMILARITY, None, Weights(0.6, 0.0))
    assert reasons(WARM, scored, 0, ["Horror", "Sci-Fi", "Thriller"]) == [
        "people who liked Alien (1979) also liked this", "shares Sci-Fi, Horror with Alien (1979)"]
    assert reasons(WARM, scored, 1, ["Comedy"]) == ["similar description"]
    text = Anchor("", "", (), None, np.ones(4, np.float32))
    assert reasons(text, score(text, VECTORS, TEXT_SIMILARITY, None, Weights(0.6, 0.3)), 1, []) == [
        "matches the text given"]


def test_a_long_title_is_cut_in_a_reason():
    long = Anchor("l", "T" * 500, ("Drama",), None, np.ones(4, np.float32))
    said = reasons(long, score(long, VECTORS, TEXT_SIMILARITY, None, Weights(0.6, 0.0)), 1, ["Drama"])
    assert said[-1].startswith("shares Drama with T") and said[-1].endswith("…") and len(said[-1]) < 90
