import numpy as np
import pytest

from recmesh.tools.eval.zeroshot import InterestRule, event_weight
from recmesh.v1 import common_pb2

ET = common_pb2.EventType


def unit(*xs):
    v = np.array(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_recent_events_outweigh_older_ones():
    old, new = unit(1, 0, 0), unit(0, 1, 0)
    vectors = np.stack([old] * 5 + [new] * 5)
    interest = InterestRule().combine(vectors, [ET.EVENT_TYPE_CLICK] * 10, [0.0] * 10, None)
    assert interest @ new > 0.9 and interest @ old < 0.4
    assert np.isclose(np.linalg.norm(interest), 1.0)


def test_strong_events_outweigh_weak_ones_of_the_same_age():
    viewed, bought = unit(1, 0, 0), unit(0, 1, 0)
    interest = InterestRule(recency_half_life_events=1e9).combine(
        np.stack([viewed, bought]), [ET.EVENT_TYPE_VIEW, ET.EVENT_TYPE_PURCHASE], [0, 0], None
    )
    assert interest @ bought > interest @ viewed


def test_low_ratings_barely_count():
    assert event_weight(ET.EVENT_TYPE_RATE, 5.0) > 10 * event_weight(ET.EVENT_TYPE_RATE, 1.0)


def test_query_blends_with_history_and_stands_alone():
    rule = InterestRule(query_weight=0.6)
    history, query = unit(1, 0, 0), unit(0, 0, 1)
    blended = rule.combine(history[None], [ET.EVENT_TYPE_CLICK], [0], query)
    assert blended @ query > blended @ history > 0
    assert np.allclose(rule.combine(np.zeros((0, 3), np.float32), [], [], query), query)


def test_no_signal_gives_no_vector():
    assert InterestRule().combine(np.zeros((0, 3), np.float32), [], [], None) is None


@pytest.mark.parametrize("event_type", [ET.EVENT_TYPE_SEARCH, ET.EVENT_TYPE_UNSPECIFIED])
def test_itemless_event_types_carry_no_weight(event_type):
    assert event_weight(event_type, 0.0) == 0.0
