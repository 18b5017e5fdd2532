"""Experiments on the wire (common.proto Experiment): the checks every service makes of one
(the gateway before forwarding, the updater before storing - the store holds only valid ones,
whoever calls), and the assignment made from one (recmesh/experiments/assignment.py)."""

from __future__ import annotations

from recmesh.common.errors import InvalidArgument
from recmesh.experiments.assignment import Experiment, Variant
from recmesh.experiments.report import METRICS
from recmesh.models.ranking.scorer import check_version_name
from recmesh.v1 import common_pb2

# Experiments kept (running and stopped, for their reports); a new one past it is refused.
STORED_EXPERIMENTS = 100
STOP_REASON_CHARS = 1000
# The metrics the guardrail can test (degraded_share is the mesh's health, not the variant's merit).
PRIMARY_METRICS = tuple(m for m in METRICS if m != "degraded_share")


def check_overrides(overrides: common_pb2.VariantOverrides, field: str) -> None:
    """diversity and exploration in [0, 1] when set; ranking a known mode; ranker_version and
    interest_model_version empty or a version's name (whether they exist is the updater's and
    the encoder's to say: PutExperiment)."""
    if overrides.HasField("diversity") and not 0.0 <= overrides.diversity <= 1.0:  # NaN fails too
        raise InvalidArgument(f"{field}.diversity", f"must be in [0, 1], got {overrides.diversity}")
    if overrides.HasField("exploration") and not 0.0 <= overrides.exploration <= 1.0:
        raise InvalidArgument(f"{field}.exploration", f"must be in [0, 1], got {overrides.exploration}")
    if overrides.ranking not in common_pb2.RankingMode.values():
        raise InvalidArgument(f"{field}.ranking", f"unknown ranking mode {overrides.ranking}")
    if overrides.ranker_version:
        check_version_name(overrides.ranker_version, f"{field}.ranker_version")
    if overrides.interest_model_version:
        check_version_name(overrides.interest_model_version, f"{field}.interest_model_version")


def check_experiment_proto(experiment: common_pb2.Experiment) -> Experiment:
    """The assignment of a valid experiment; InvalidArgument naming the field: the name and
    variants (assignment.check_experiment: names, shares summing to 1), each variant's
    overrides, the control (a variant's name, or empty: the first), the primary metric (one of
    PRIMARY_METRICS, or empty: ctr_at_k)."""
    field = "experiment"  # assignment.check_experiment's prefix too
    assignment = Experiment(experiment.name, tuple(
        Variant(v.name, v.share) for v in experiment.variants))  # checks (names, shares) on construction
    for i, variant in enumerate(experiment.variants):
        check_overrides(variant.overrides, f"{field}.variants[{i}].overrides")
    if experiment.control and experiment.control not in {v.name for v in experiment.variants}:
        raise InvalidArgument(f"{field}.control", f"{experiment.control!r} is not one of the variants")
    if experiment.primary_metric and experiment.primary_metric not in PRIMARY_METRICS:
        raise InvalidArgument(f"{field}.primary_metric", f"one of {', '.join(PRIMARY_METRICS)}")
    return assignment


def control_of(experiment: common_pb2.Experiment) -> str:
    return experiment.control or experiment.variants[0].name


def primary_of(experiment: common_pb2.Experiment) -> str:
    return experiment.primary_metric or "ctr_at_k"
