"""The updater's experiments role over real files (SQLite store and outcome log): a variant
significantly worse on the primary metric is stopped by the guardrail, saying so; a variant as
good as the control, or too few users, is not; the stop is durable and the listing says why.
Answers arrive as the gateway's impressions and feedback as committed events, as on the mesh."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from recmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from recmesh.events.eventlog import LoggedEvent
from recmesh.v1 import common_pb2, updater_pb2
from services.updater.config import UpdaterSettings
from services.updater.experiments import ExperimentsRole

RUNNING, STOPPED = common_pb2.EXPERIMENT_STATE_RUNNING, common_pb2.EXPERIMENT_STATE_STOPPED


def settings(tmp_path, min_users: int = 100) -> UpdaterSettings:
    return UpdaterSettings(log_path=tmp_path / "events.sqlite", guardrail_s=3600, guardrail_min_users=min_users,
                           event_weights_file=None)


def experiment(name: str = "e1") -> common_pb2.PutExperimentRequest:
    return common_pb2.PutExperimentRequest(experiment=common_pb2.Experiment(name=name, variants=[
        common_pb2.ExperimentVariant(name="A", share=0.5),
        common_pb2.ExperimentVariant(name="B", share=0.5, overrides=common_pb2.VariantOverrides(
            ranking=common_pb2.RANKING_MODE_RETRIEVAL_ORDER))]))


async def _flush(role: ExperimentsRole) -> None:
    await role._run(lambda: None)  # every write submitted before has run (one thread, in order)


async def serve(role: ExperimentsRole, users: int, ctr: dict[str, float], seed: int = 0) -> None:
    """users per variant, each shown one answer of 5 items; a user of variant v clicks its
    first item with probability ctr[v]."""
    rng = np.random.default_rng(seed)
    impressions, events = [], []
    for variant, p in ctr.items():
        for u in range(users):
            user, request = f"{variant}-{u}", f"r-{variant}-{u}"
            impressions.append(updater_pb2.Impression(
                request_id=request, user_id=user, timestamp_ms=1_000, experiment="e1", variant=variant,
                latency_ms=12.0, items=[updater_pb2.ImpressedItem(item_id=str(i), position=i) for i in range(5)]))
            if rng.random() < p:
                events.append(LoggedEvent(f"ev-{user}", user, "0", common_pb2.EVENT_TYPE_CLICK, "", 0.0, 2_000,
                                          request))
    role.check_impressions(impressions, [f"impressions[{n}]." for n in range(len(impressions))])
    role.record(impressions)
    for event in events:
        role.feedback(event)
    await _flush(role)


def run(coro):
    return asyncio.run(coro)


def test_a_significantly_worse_variant_is_stopped_and_says_why(tmp_path):
    async def scenario():
        role = ExperimentsRole(settings(tmp_path))
        await role.open()
        await role.put(experiment(), "test", "")
        await serve(role, 400, {"A": 0.30, "B": 0.10})
        assert await role.guard_once() == ["B"]
        listed = (await role.list()).experiments
        assert listed[0].state == STOPPED and listed[0].stopped_ms > 0
        assert listed[0].stopped_reason.startswith("guardrail: B against A on ctr_at_k: significantly worse")
        await role.close()
        # Durable: a new role over the same files lists it stopped, with its report.
        again = ExperimentsRole(settings(tmp_path))
        await again.open()
        assert (await again.list()).experiments[0].state == STOPPED
        import json

        report = json.loads((await again.report(common_pb2.GetExperimentReportRequest(name="e1"))).report_json)
        assert report["state"] == "STOPPED" and report["variants"]["B"]["answers"] == 400
        assert report["against_control"]["B"]["difference"]["ctr_at_k"]["high"] < 0
        await again.close()

    run(scenario())


@pytest.mark.parametrize("users, ctr", [(400, {"A": 0.2, "B": 0.2}),  # as good: kept
                                        (400, {"A": 0.2, "B": 0.3}),  # better: kept
                                        (50, {"A": 0.3, "B": 0.05})])  # worse, but too few users yet
def test_a_variant_not_significantly_worse_or_too_young_keeps_running(tmp_path, users, ctr):
    async def scenario():
        role = ExperimentsRole(settings(tmp_path))
        await role.open()
        await role.put(experiment(), "test", "")
        await serve(role, users, ctr, seed=1)
        assert await role.guard_once() == []
        assert (await role.list()).experiments[0].state == RUNNING
        await role.close()

    run(scenario())


def test_one_runs_at_a_time_names_are_not_reused_and_unknown_names_are_not_found(tmp_path):
    async def scenario():
        role = ExperimentsRole(settings(tmp_path))
        await role.open()
        await role.put(experiment("e1"), "test", "")
        with pytest.raises(FailedPrecondition, match="running"):
            await role.put(experiment("e2"), "test", "")
        await role.stop(common_pb2.StopExperimentRequest(name="e1", reason="done"), "test", "")
        with pytest.raises(FailedPrecondition, match="exists"):
            await role.put(experiment("e1"), "test", "")
        assert (await role.put(experiment("e2"), "test", "")).state == RUNNING
        with pytest.raises(NotFound, match="^name:"):
            await role.report(common_pb2.GetExperimentReportRequest(name="nope"))
        with pytest.raises(InvalidArgument, match=r"^impressions\[0\].variant:"):
            role.check_impressions([updater_pb2.Impression(request_id="r", user_id="u", experiment="e2")],
                                   ["impressions[0]."])
        await role.close()

    run(scenario())


def test_feedback_that_commits_before_its_answer_is_recorded_is_joined_when_the_answer_comes(tmp_path):
    """Impressions leave the gateway in batches after the reply: a quick click can commit first."""
    async def scenario():
        role = ExperimentsRole(settings(tmp_path))
        await role.open()
        await role.put(experiment(), "test", "")
        role.feedback(LoggedEvent("ev-1", "u1", "3", common_pb2.EVENT_TYPE_CLICK, "", 0.0, 2_000, "r1"))
        role.feedback(LoggedEvent("ev-2", "u1", "3", common_pb2.EVENT_TYPE_PURCHASE, "", 0.0, 2_001, "r1"))
        role.feedback(LoggedEvent("ev-3", "u1", "9", common_pb2.EVENT_TYPE_CLICK, "", 0.0, 2_002, "r1"))  # not shown
        await _flush(role)
        role.record([updater_pb2.Impression(
            request_id="r1", user_id="u1", timestamp_ms=1_000, experiment="e1", variant="A", latency_ms=5.0,
            items=[updater_pb2.ImpressedItem(item_id=str(i), position=i) for i in range(5)])])
        await _flush(role)
        sample = (await role._run(role._outcomes.sample, "e1"))["A"]
        assert (sample.answers.sum(), sample.clicked.sum(), sample.converted.sum()) == (1, 1, 1)
        assert sample.reciprocal_rank.sum() == 1 / 4  # the click at position 3
        assert len(role._held) == 1  # the item that was not shown: still waiting, dropped after HOLD_S
        await role.close()

    run(scenario())
