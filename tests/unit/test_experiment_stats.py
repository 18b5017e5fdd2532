"""The delta-method intervals and the guardrail (recmesh/experiments/stats.py)."""

import math

import numpy as np
import pytest

from recmesh.experiments.stats import difference, guardrail, ratio


def test_ratio_is_the_pooled_rate_not_the_mean_of_user_rates():
    # one heavy user (9 of 10) and nine light ones (0 of 1): pooled 9/19, mean of rates 0.09
    est = ratio(np.array([9] + [0] * 9), np.array([10] + [1] * 9))
    assert est.value == pytest.approx(9 / 19)


def test_interval_covers_the_true_rate_at_about_its_level():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        answers = rng.integers(1, 20, size=300)
        # users differ in their own click rate: answers of one user are correlated
        rates = rng.beta(2, 8, size=300)
        clicks = rng.binomial(answers, rates)
        est = ratio(clicks, answers)
        covered += est.low <= 0.2 <= est.high
    assert 0.91 <= covered / 400 <= 0.985


def test_clustered_interval_is_wider_than_one_that_treats_answers_as_independent():
    rng = np.random.default_rng(1)
    answers = rng.integers(5, 30, size=200)
    clicks = rng.binomial(answers, rng.beta(1, 4, size=200))
    est = ratio(clicks, answers)
    p, n = est.value, answers.sum()
    naive_half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert (est.high - est.low) / 2 > 1.3 * naive_half


def test_degenerate_inputs():
    assert math.isnan(ratio(np.array([]), np.array([])).value)
    assert math.isnan(ratio(np.array([0, 0]), np.array([0, 0])).value)
    one = ratio(np.array([1]), np.array([4]))
    assert one.value == 0.25 and one.variance == 0.0
    with pytest.raises(ValueError):
        ratio(np.array([1, 2]), np.array([1]))


def test_guardrail_stops_a_clearly_worse_arm_and_waits_for_users():
    rng = np.random.default_rng(2)
    answers_a, answers_b = rng.integers(1, 10, size=2000), rng.integers(1, 10, size=2000)
    control = ratio(rng.binomial(answers_a, 0.30), answers_a)
    worse = ratio(rng.binomial(answers_b, 0.20), answers_b)
    assert difference(worse, control).excludes_zero()
    assert guardrail(worse, control, (2000, 2000), min_users=100).stop
    assert not guardrail(worse, control, (2000, 50), min_users=100).stop
    # the control against itself is never stopped, and a better arm is not either
    assert not guardrail(control, control, (2000, 2000), min_users=100).stop
    assert not guardrail(control, worse, (2000, 2000), min_users=100).stop
