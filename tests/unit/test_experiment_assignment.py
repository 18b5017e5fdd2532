"""Stable, sticky assignment by a hash of the user id (recmesh/experiments/assignment.py)."""

import pytest
from scipy.stats import chisquare

from recmesh.common.errors import InvalidArgument
from recmesh.experiments.assignment import Experiment, Variant, bucket


def two_arms(share_b: float = 0.3, name: str = "ranker-v2") -> Experiment:
    return Experiment(name, (Variant("A", 1 - share_b), Variant("B", share_b, {"diversity": 0.3})))


def test_a_user_always_gets_the_same_variant():
    exp = two_arms()
    first = {f"u{i}": exp.assign(f"u{i}").name for i in range(500)}
    again = two_arms()  # a new object, as on another gateway replica
    assert all(again.assign(u).name == v for u, v in first.items())


def test_shares_hold_within_statistical_tolerance():
    exp = two_arms(0.3)
    n = 20_000
    b = sum(exp.assign(f"user-{i}").name == "B" for i in range(n))
    assert chisquare([n - b, b], [0.7 * n, 0.3 * n]).pvalue > 0.001


def test_experiments_with_other_salts_assign_independently():
    one, other = two_arms(0.5, "exp-one"), two_arms(0.5, "exp-two")
    users = [f"u{i}" for i in range(4000)]
    both_b = sum(one.assign(u).name == "B" and other.assign(u).name == "B" for u in users)
    assert abs(both_b / len(users) - 0.25) < 0.03


def test_bucket_is_uniform_in_unit_interval_and_salt_is_a_key():
    points = [bucket("s", f"u{i}") for i in range(1000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert bucket("a", "bc") != bucket("ab", "c")


@pytest.mark.parametrize("variants, field", [
    ((Variant("A", 1.0),), "experiment.variants"),
    ((Variant("A", 0.5), Variant("A", 0.5)), "experiment.variants[1].name"),
    ((Variant("A", 0.5), Variant("B", 0.6)), "experiment.variants"),
    ((Variant("A", 1.0), Variant("B", 0.0)), "experiment.variants[1].share"),
    ((Variant("A", float("nan")), Variant("B", 0.5)), "experiment.variants[0].share"),
    ((Variant("A b", 0.5), Variant("B", 0.5)), "experiment.variants[0].name"),
])
def test_bad_experiments_name_the_field(variants, field):
    with pytest.raises(InvalidArgument) as err:
        Experiment("e", variants)
    assert err.value.field == field
