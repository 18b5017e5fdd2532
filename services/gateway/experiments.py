"""The experiments as this gateway knows them (the updater's, listed with the stored rules every
rules_refresh_s, changed at once by a PutExperiment or StopExperiment made through this gateway,
as services/gateway/stored_rules.py), the variant each user is in, and what that variant serves
differently (common.proto VariantOverrides).

Assignment needs no state: BLAKE2b of the user id keyed by the experiment's name, cut by the
variants' shares (recmesh/experiments/assignment.py), the same on every replica and every call.
Only a running experiment assigns; a guest without a user id is in none (nothing would keep
them in one variant)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from recmesh.common.clock import now_ms
from recmesh.experiments.assignment import Experiment
from recmesh.experiments.wire import check_experiment_proto
from recmesh.v1 import common_pb2, recommendations_pb2, updater_pb2
from services.gateway.shedding import Plan


@dataclass(frozen=True)
class Arm:
    """One user's variant of the running experiment."""

    experiment: str
    variant: str
    overrides: common_pb2.VariantOverrides

    @property
    def label(self) -> str:
        """RecommendResponse.variant: "experiment/variant"."""
        return f"{self.experiment}/{self.variant}"

    def serve(self, request: recommendations_pb2.RecommendRequest, plan: Plan) -> Plan:
        """The variant's overrides applied: its diversity on the request, its exploration share,
        ranker version, interest model and ranking mode on the plan (retrieval order skips the
        ranker with no degraded reason: the variant's design, not a failure)."""
        o = self.overrides
        if o.HasField("diversity"):
            request.diversity = o.diversity
        changes = {}
        if o.HasField("exploration"):
            changes["exploration"] = o.exploration
        if o.ranker_version:
            changes["parameters_version"] = o.ranker_version
        if o.interest_model_version:
            changes["interest_model_version"] = o.interest_model_version
        if o.ranking == common_pb2.RANKING_MODE_RETRIEVAL_ORDER:
            changes["skip_ranker"] = True
        return dataclasses.replace(plan, **changes) if changes else plan

    def impression(self, user_id: str, reply: recommendations_pb2.RecommendResponse) -> updater_pb2.Impression:
        """What the answer showed under this variant, for the experiment's outcomes: its items in
        order, latency (ms) and whether it was degraded; stamped now (ms since the Unix epoch)."""
        return updater_pb2.Impression(
            request_id=reply.request_id, user_id=user_id, timestamp_ms=now_ms(),
            ranker_version=reply.versions.get("ranker", ""), encoder_version=reply.versions.get("encoder", ""),
            experiment=self.experiment, variant=self.variant,
            latency_ms=reply.total_ms, degraded=bool(reply.degraded),
            items=[updater_pb2.ImpressedItem(item_id=item.item_id, position=i, propensity=1.0)
                   for i, item in enumerate(reply.items)])


class Experiments:
    def __init__(self) -> None:
        self._experiments: dict[str, common_pb2.Experiment] = {}
        self._running: tuple[Experiment, dict[str, common_pb2.VariantOverrides]] | None = None
        self.writes = 0  # local changes so far (as StoredRules.writes)

    def assign(self, user_id: str) -> Arm | None:
        """The user's variant of the running experiment; None: none runs, or no user id."""
        if self._running is None or not user_id:
            return None
        experiment, overrides = self._running
        variant = experiment.assign(user_id)
        return Arm(experiment.name, variant.name, overrides[variant.name])

    def replace(self, experiments: Iterable[common_pb2.Experiment], writes_before: int) -> bool:
        """A listing asked for when `writes` was writes_before: taken unless a change through this
        gateway came since."""
        if writes_before != self.writes:
            return False
        listed = {e.name: e for e in experiments}
        if listed != self._experiments:
            self._experiments = listed
            self._index()
        return True

    def put(self, experiment: common_pb2.Experiment) -> None:
        """One the updater stored or stopped for this gateway's call."""
        self.writes += 1
        self._experiments[experiment.name] = experiment
        self._index()

    def _index(self) -> None:
        running = [e for e in self._experiments.values() if e.state == common_pb2.EXPERIMENT_STATE_RUNNING]
        if not running:
            self._running = None
            return
        newest = max(running, key=lambda e: (e.created_ms, e.name))  # one runs at a time; the newest wins a race
        self._running = (check_experiment_proto(newest), {v.name: v.overrides for v in newest.variants})
