"""Adaptive shedding: nothing is skipped while the mesh keeps up; under overload the pressure
rises until only about slow_share of answered Recommends are slow, calls going down the
ladder (ranker, then encoder, then everything) in that order; it drains when slowness passes."""

import random

import pytest

from services.gateway.shedding import FULL, RUNGS, AdaptiveShedding

SLOW, FAST = 0.9, 0.1  # shares of the budget used


def test_a_mesh_that_keeps_up_skips_nothing():
    shedding = AdaptiveShedding(slow=0.6, draw=lambda: 0.0)
    for i in range(1000):
        shedding.observe(FAST, now=i * 0.01)
    assert shedding.pressure == 0 and shedding.rung() == FULL


def test_slow_calls_one_at_a_time_are_not_overload():
    shedding = AdaptiveShedding(slow=0.6)  # a cold cache, a stage that is down: shedding would not help
    for i in range(100):
        shedding.observe(SLOW, others_in_flight=0, now=i * 0.01)
    assert shedding.pressure == 0
    shedding.observe(SLOW, others_in_flight=2, now=1.0)
    assert shedding.pressure > 0


@pytest.mark.parametrize("pressure, draw, rung", [
    (0.3, 0.2, 1), (0.3, 0.4, FULL),  # some skip the ranker
    (1.3, 0.2, 2), (1.3, 0.5, 1), (1.3, 0.99, 1),  # all skip the ranker, some the encoder too
    (2.4, 0.3, 3), (2.4, 0.5, 2),  # 40 % get the popular list
])
def test_pressure_sends_calls_down_the_ladder_in_order(pressure, draw, rung):
    shedding = AdaptiveShedding(slow=0.6, draw=lambda: draw)
    shedding.pressure = pressure
    assert shedding.rung(now=0.0) == rung and len(RUNGS) == 3


def test_the_pressure_settles_where_slow_share_of_answered_calls_are_slow():
    # A mesh slow for 50 % of calls in full, 20 points fewer per rung of pressure: 2 % are slow
    # at pressure 2.4.
    rng = random.Random(3)
    shedding = AdaptiveShedding(slow=0.6, slow_share=0.02, draw=rng.random)
    pressures = []
    for i in range(60_000):
        slow = rng.random() < max(0.0, 0.5 - 0.2 * shedding.pressure)
        shedding.observe(SLOW if slow else FAST, now=i * 0.005)
        pressures.append(shedding.pressure)
    settled = sum(pressures[-20_000:]) / 20_000
    assert 2.3 < settled < 2.5


def test_sustained_slowness_is_capped_and_passed_slowness_drains_within_seconds():
    shedding = AdaptiveShedding(slow=0.6, slow_share=0.02, step=0.05, max_shed=0.9, quiet_s=1.0,
                                drain_per_s=1.0)
    for i in range(200):
        shedding.observe(SLOW, now=i * 0.01)
    assert shedding.pressure == pytest.approx(2.9)  # 10 % still answered: they show the recovery
    i = 200
    while shedding.pressure > 0:  # fast again, 100 answers/s: one quiet second, then 1.0/s drained
        shedding.observe(FAST, now=i * 0.01)
        i += 1
    assert 3.3 < (i - 200) * 0.01 < 3.8  # by the answers' steps alone it would take 28 s


def test_after_an_idle_spell_it_starts_from_zero_and_off_means_off():
    shedding = AdaptiveShedding(slow=0.6)
    for i in range(10):
        shedding.observe(SLOW, now=i * 0.01)
    assert shedding.pressure > 0.4
    assert shedding.rung(now=5.0) == FULL and shedding.pressure == 0
    off = AdaptiveShedding(slow=0, draw=lambda: 0.0)
    for i in range(100):
        off.observe(SLOW, now=i * 0.01)
    assert off.pressure == 0 and off.rung() == FULL
