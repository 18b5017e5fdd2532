"""Online learning: impressions meet feedback, the trainer learns what users choose, the learner
publishes only what is not worse on the held-back window, and rolls a regression back."""

import numpy as np
import pytest

from recmesh.events.eventlog import LoggedEvent
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import Scorer, scorer_from_spec
from recmesh.models.ranking.training import (
    LabelledList,
    LearnerConfig,
    OnlineLearner,
    Round,
    WideDeepTrainer,
    list_metrics,
)
from recmesh.v1 import common_pb2, updater_pb2
from services.updater.joiner import ImpressionJoiner

CLICK = common_pb2.EventType.EVENT_TYPE_CLICK
F = len(FEATURES)
POP = FEATURES.index("popularity")


def impression(request_id, user, items):
    return updater_pb2.Impression(
        request_id=request_id, user_id=user, feature_names=FEATURES,
        items=[updater_pb2.ImpressedItem(item_id=i, position=n, features=[float(n)] * F, propensity=1.0)
               for n, i in enumerate(items)])


def click(user, item, request_id=""):
    return LoggedEvent(f"{user}-{item}", user, item, CLICK, "", 0.0, 0, request_id)


def test_feedback_joins_its_impression_once_and_within_the_window():
    joiner = ImpressionJoiner(window_ms=1000)
    joiner.add(impression("r1", "u", ["a", "b", "c"]), arrived_ms=0)
    joiner.add(impression("r2", "u", ["c", "d"]), arrived_ms=10)
    by_request = joiner.join(click("u", "c", request_id="r1"), arrived_ms=20)
    assert by_request.row == 2 and by_request.features.shape == (3, F)
    newest = joiner.join(click("u", "c"), arrived_ms=30)  # no request_id: the newest showing
    assert newest.row == 0 and len(newest.features) == 2
    assert joiner.join(click("u", "c"), arrived_ms=40) is None  # both showings already labelled
    assert joiner.join(click("u", "zzz"), arrived_ms=40) is None  # never shown
    assert joiner.join(click("u", "b"), arrived_ms=5000) is None  # too late
    assert joiner.skipped("u", now=100) == {"a": 1, "b": 1, "d": 1}  # shown, never chosen
    assert joiner.skipped("u", now=5000) == {}  # out of the window


def test_feedback_that_overtakes_its_impression_waits_for_it():
    joiner = ImpressionJoiner(window_ms=1000, early_ms=500)
    assert joiner.join(click("u", "b", request_id="r1"), arrived_ms=0) is None  # held
    assert joiner.join(click("u", "a", request_id="r2"), arrived_ms=0) is None  # held, then too old
    assert joiner.join(click("v", "a", request_id="r3"), arrived_ms=0) is None  # held, then forgotten
    [joined] = joiner.add(impression("r1", "u", ["a", "b", "c"]), arrived_ms=20)
    assert joined.row == 1
    assert joiner.add(impression("r2", "u", ["a"]), arrived_ms=600) == []
    joiner.forget_user("v", now_ms=30)
    assert joiner.add(impression("r3", "v", ["a"]), arrived_ms=30) == []
    assert joiner.skipped("v", now=40) == {}  # an impression from before the deletion is dropped
    assert joiner.join(click("u", "b", request_id="r1"), arrived_ms=40) is None  # labelled once


def test_feedback_held_for_unseen_impressions_is_bounded_oldest_first():
    joiner = ImpressionJoiner(window_ms=1000, max_entries=3)
    for n, request in enumerate(["r1", "r1", "r2", "r3"]):  # the 4th event pushes r1 (2 events) out
        joiner.join(click("u", f"i{n}", request_id=request), arrived_ms=0)
    assert joiner.add(impression("r1", "u", ["i0", "i1"]), arrived_ms=1) == []
    assert [x.row for x in joiner.add(impression("r3", "u", ["x", "i3"]), arrived_ms=1)] == [1]


def event(user, item, type_, value=0.0, request_id=""):
    return LoggedEvent(f"{user}-{item}-{type_}", user, item, type_, "", value, 0, request_id)


def test_a_dislike_of_a_shown_item_is_a_negative_label_weighted_by_the_event_weights():
    from recmesh.events.weights import EventWeights

    ET = common_pb2.EventType
    joiner = ImpressionJoiner(window_ms=1000, weights=EventWeights(purchase=5.0))
    joiner.add(impression("r1", "u", ["a", "b", "c", "d"]), arrived_ms=0)
    disliked = joiner.join(event("u", "b", ET.EVENT_TYPE_DISLIKE), arrived_ms=10)
    assert disliked.row == 1 and disliked.label == -2.0 and not disliked.chosen
    bought = joiner.join(event("u", "c", ET.EVENT_TYPE_PURCHASE), arrived_ms=10)
    assert bought.row == 2 and bought.label == 5.0 and bought.chosen  # the catalog's own weight
    # A search names no item; a rating of a shown item is labelled by its value.
    assert joiner.join(event("u", "", ET.EVENT_TYPE_SEARCH), arrived_ms=10) is None
    assert joiner.join(event("u", "d", ET.EVENT_TYPE_RATE, value=5.0), arrived_ms=10).label == 2.0
    assert joiner.skipped("u", now=20) == {"a": 1}  # a rejected item was not merely skipped
    # Weight 0: nothing learned (a catalog that does not count views).
    quiet = ImpressionJoiner(window_ms=1000, weights=EventWeights(view=0.0))
    quiet.add(impression("r2", "u", ["a"]), arrived_ms=0)
    assert quiet.join(event("u", "a", ET.EVENT_TYPE_VIEW), arrived_ms=5) is None


def test_a_negative_label_pushes_the_rejected_item_below_the_rest_of_its_list():
    start = Scorer("s", np.zeros(F, np.float32), 0.0)
    trainer = WideDeepTrainer(start, hidden=0, lr=0.05)
    x = np.eye(4, F, dtype=np.float32)  # row i has only feature i
    rejected = LabelledList(x, 1, 0, label=-2.0)
    before = trainer.scorer("b", 0).score(x)
    for _ in range(30):
        trainer.step([rejected])
    after = trainer.scorer("a", 0).score(x)
    assert before[1] == before[0] and after[1] < min(np.delete(after, 1)) - 0.5
    assert list_metrics(trainer.scorer("a", 0), [rejected])["lists"] == 0  # no relevant item to score


def test_the_rejection_gradient_is_the_derivative_of_its_loss():
    from recmesh.models.ranking.training import _rejection_grad

    scores = np.array([0.3, -1.2, 2.0, 0.1])
    loss, grad = _rejection_grad(scores, 2)
    eps = 1e-6
    numeric = [(_rejection_grad(scores + eps * np.eye(4)[i], 2)[0] - loss) / eps for i in range(4)]
    assert np.allclose(grad, numeric, atol=1e-4)


def test_merged_users_feedback_joins_what_was_shown_to_the_guest():
    joiner = ImpressionJoiner(window_ms=1000)
    joiner.add(impression("r1", "guest", ["a", "b"]), arrived_ms=0)
    joiner.merge_users("guest", "u")
    assert joiner.join(click("u", "b"), arrived_ms=10).row == 1
    assert joiner.join(click("guest", "a"), arrived_ms=10) is None


def lists_preferring_popularity(n, rng):
    """Users choose the most popular of 10 shown items, among those close to their session;
    no query was typed; the other features are noise."""
    out = []
    for _ in range(n):
        x = rng.normal(size=(10, F)).astype(np.float32)
        x[:, FEATURES.index("query_sim")] = 0.0
        out.append(LabelledList(x, int(np.argmax(x[:, POP] + 0.5 * x[:, FEATURES.index("session_sim")])), 0))
    return out


def blind_scorer():
    weights = np.zeros(F, np.float32)
    weights[FEATURES.index("interest_sim")] = 1.0
    return Scorer("blind", weights)


def test_trainer_learns_what_users_choose():
    rng = np.random.default_rng(0)
    train, test = lists_preferring_popularity(600, rng), lists_preferring_popularity(200, rng)
    trainer = WideDeepTrainer(blind_scorer(), lr=0.05)
    before = list_metrics(trainer.scorer("v0", 0), test)
    for start in range(0, 600, 32):
        trainer.step(train[start : start + 32])
    after = list_metrics(trainer.scorer("v1", 0), test)
    assert before["ndcg"] < 0.5 < 0.8 < after["ndcg"] and after["auc"] > 0.9


def test_a_silent_deep_part_starts_where_the_linear_version_is():
    x = np.random.default_rng(1).normal(size=(7, F)).astype(np.float32)
    scorer = WideDeepTrainer(blind_scorer()).scorer("v", 0)
    assert np.allclose(scorer.score(x), blind_scorer().score(x))
    again = scorer_from_spec(scorer.to_spec())  # and the spec round-trips
    assert np.allclose(again.score(x), scorer.score(x)) and again.deep is not None


def run_round(learner, version):
    job = learner.start_round(version)
    if isinstance(job, Round):
        return learner.finish(job, *job.train())
    return job


def test_learner_publishes_improvements_with_the_feedback_time():
    rng = np.random.default_rng(2)
    learner = OnlineLearner(blind_scorer(), LearnerConfig(min_new_lists=50, lr=0.05, steps=40))
    for i, item in enumerate(lists_preferring_popularity(400, rng)):
        item.arrived_ms = 1000 + i
        learner.add(item)
    published = [p for v in range(8) if (p := run_round(learner, f"v{v}")) is not None]
    assert published and published[0].reason == "trained"
    assert published[-1].scorer.trained_through_ms == 1398  # the 400th list was held back, not trained on
    assert list_metrics(learner.serving, lists_preferring_popularity(200, rng))["ndcg"] > 0.8


def test_a_worse_candidate_is_not_published_and_a_regression_is_rolled_back():
    rng = np.random.default_rng(3)
    good = Scorer("good", np.eye(F, dtype=np.float32)[POP] * 5)
    config = LearnerConfig(min_new_lists=10, holdout_every=2, rollback_after=20, steps=5)
    learner = OnlineLearner(good, config)
    for item in lists_preferring_popularity(40, rng):
        learner.add(item)
    # Labels turn adversarial (users now pick the least popular): training moves away from
    # "good", and the held-back window - still the old behaviour - refuses the candidate.
    for x in lists_preferring_popularity(20, rng):
        x.row = int(np.argmin(x.features[:, POP]))
        learner._new.append(x)
    job = learner.start_round("bad")
    job.trainer.params["w"] = -job.trainer.params["w"]  # a candidate that is clearly worse
    assert learner.finish(job, *job.train()) is None and learner.rejected == 1
    # A version that passed the window but loses on fresh lists is rolled back to its parent.
    worse = Scorer("worse", -good.weights)
    learner.parent, learner.serving, learner._probation = good, worse, []
    for item in lists_preferring_popularity(40, rng):
        learner.add(item)
    back = learner.start_round("rollback-1")
    assert back.reason == "rollback" and np.allclose(back.scorer.weights, good.weights)
    assert learner.serving.version == "rollback-1" and learner.rollbacks == 1


@pytest.mark.parametrize("diversity", [0.0, 0.7])
def test_mmr_trades_score_for_variety(diversity):
    from recmesh.models.ranking.selection import mmr

    vectors = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1]], np.float32)  # three near-copies and one other
    scores = np.array([1.0, 0.99, 0.98, 0.5])
    top = mmr(scores, vectors, 2, diversity, pool_factor=2)
    assert top.tolist() == ([0, 1] if diversity == 0 else [0, 3])


def test_exploration_fills_the_last_slot_with_its_propensity():
    from recmesh.models.ranking.selection import explore

    rng = np.random.default_rng(0)
    always, p = explore(np.arange(3), 10, share=1.0, rng=rng)
    assert always[:2].tolist() == [0, 1] and always[2] >= 3 and p.tolist() == pytest.approx([1, 1, 1 / 7])
    never, p = explore(np.arange(3), 10, share=0.0, rng=rng)
    assert never.tolist() == [0, 1, 2] and p.tolist() == [1, 1, 1]


def test_a_version_that_stops_following_the_query_is_not_published():
    from recmesh.models.ranking.training import behaviour_violations

    rng = np.random.default_rng(4)
    rows = rng.normal(size=(50, F)).astype(np.float32)
    good = blind_scorer()
    deaf = Scorer("deaf", -np.eye(F, dtype=np.float32)[FEATURES.index("query_sim")])
    assert behaviour_violations(good, rows) == [] and behaviour_violations(deaf, rows) == ["query_sim"]
    learner = OnlineLearner(good, LearnerConfig(min_new_lists=10, steps=1))
    for item in lists_preferring_popularity(30, rng):
        learner.add(item)
    job = learner.start_round("deaf")
    job.trainer.params["w"][FEATURES.index("query_sim")] = -1.0
    assert learner.finish(job, *job.train()) is None and learner.rejected == 1
