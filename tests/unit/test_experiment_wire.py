"""An experiment on the wire: the checks the gateway and updater make (fields named), the
client's and CLI's ways of writing variants, and what a variant changes in a Recommend's plan."""

from __future__ import annotations

import argparse

import pytest

from recmesh.client import variant_proto
from recmesh.common.errors import InvalidArgument
from recmesh.experiments.wire import check_experiment_proto
from recmesh.tools.cli import _variant_flag
from recmesh.v1 import common_pb2, recommendations_pb2
from services.gateway.experiments import Arm, Experiments
from services.gateway.shedding import IN_FULL, Plan


def exp(*variants, **fields) -> common_pb2.Experiment:
    return common_pb2.Experiment(name=fields.pop("name", "e"), variants=[variant_proto(v) for v in variants],
                                 **fields)


@pytest.mark.parametrize("experiment, field", [
    (exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}, name="a b"), "experiment.name"),
    (exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.6}), "experiment.variants"),
    (exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "exploration": 1.5}),
     "experiment.variants[1].overrides.exploration"),
    (exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "diversity": float("nan")}),
     "experiment.variants[1].overrides.diversity"),
    (exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}, primary_metric="degraded_share"),
     "experiment.primary_metric"),
])
def test_bad_experiments_name_the_field(experiment, field):
    with pytest.raises(InvalidArgument) as err:
        check_experiment_proto(experiment)
    assert err.value.field == field


def test_an_unknown_ranking_mode_is_named():
    e = exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5})
    e.variants[1].overrides.ranking = 7
    with pytest.raises(InvalidArgument, match=r"^experiment.variants\[1\].overrides.ranking:"):
        check_experiment_proto(e)


def test_a_malformed_ranker_version_is_named():
    for bad in ("../params/x", ".x", "a b", "v" * 129):
        e = exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "ranker_version": bad})
        with pytest.raises(InvalidArgument) as err:
            check_experiment_proto(e)
        assert err.value.field == "experiment.variants[1].overrides.ranker_version"
    fine = exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "ranker_version": "ranker-linear-v2"})
    check_experiment_proto(fine)  # whether it exists is the updater's to say (PutExperiment)
    assert fine.variants[1].overrides.ranker_version == "ranker-linear-v2"


def test_the_cli_reads_variants_with_their_overrides():
    assert _variant_flag("B=0.5:ranking=retrieval_order,diversity=0.3") == {
        "name": "B", "share": 0.5, "ranking": "retrieval_order", "diversity": 0.3}
    assert _variant_flag("B=0.5:ranker_version=ranker-online-20261207T101010-00003") == {
        "name": "B", "share": 0.5, "ranker_version": "ranker-online-20261207T101010-00003"}
    for bad in ("B", "B=x", "B=0.5:colour=red", "B=0.5:ranking=random"):
        with pytest.raises(argparse.ArgumentTypeError):
            _variant_flag(bad)


def test_a_variant_changes_the_plan_and_the_request_and_nothing_else():
    request = recommendations_pb2.RecommendRequest(user_id="u", diversity=0.1)
    arm = Arm("e", "B", variant_proto({"name": "B", "share": 0.5, "diversity": 0.4, "exploration": 0.2,
                                       "ranking": "retrieval_order"}).overrides)
    plan = arm.serve(request, IN_FULL)
    assert plan == Plan(skip_ranker=True, exploration=pytest.approx(0.2)) and not plan.reasons  # not degraded
    assert request.diversity == pytest.approx(0.4)
    control = Arm("e", "A", common_pb2.VariantOverrides())
    assert control.serve(request, IN_FULL) is IN_FULL
    pinned = Arm("e", "C", variant_proto({"name": "C", "share": 0.5, "ranker_version": "ranker-linear-v2"}).overrides)
    assert pinned.serve(request, IN_FULL) == Plan(parameters_version="ranker-linear-v2")


def test_only_a_running_experiment_assigns_and_stickily():
    running = exp({"name": "A", "share": 0.5}, {"name": "B", "share": 0.5, "ranking": "retrieval_order"},
                  state=common_pb2.EXPERIMENT_STATE_RUNNING, created_ms=1)
    experiments = Experiments()
    assert experiments.assign("u1") is None
    experiments.replace([running], experiments.writes)
    arms = {u: experiments.assign(u).label for u in (f"u{i}" for i in range(200))}
    assert set(arms.values()) == {"e/A", "e/B"}
    assert all(experiments.assign(u).label == label for u, label in arms.items())
    assert experiments.assign("") is None  # a guest without an id
    stopped = common_pb2.Experiment()
    stopped.CopyFrom(running)
    stopped.state = common_pb2.EXPERIMENT_STATE_STOPPED
    experiments.put(stopped)
    assert experiments.assign("u1") is None
    assert not experiments.replace([running], experiments.writes - 1)  # a listing older than the stop
    assert experiments.assign("u1") is None
