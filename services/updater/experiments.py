"""The updater's experiments: PutExperiment, ListExperiments, StopExperiment (durable in a store
of its event store's kind: recmesh/events/rulestore.py, as the stored rules), their outcomes
(recmesh/experiments/outcomes.py: the answers shown under an experiment - the gateway's
impressions that name one - joined with the committed feedback that follows), each one's report
(GetExperimentReport: recmesh/experiments/report.py), and the guardrail: every guardrail_s the
running experiment's variants are compared with its control on its primary metric, and a variant
significantly worse (recmesh/experiments/stats.py guardrail, at guardrail_level, once both arms
have guardrail_min_users users) stops the experiment, saying so in stopped_reason and the log;
every gateway then serves its defaults to everyone.

The outcome log is owned by one thread per replica (every write and report in order on it, off
the event loop): an answer recorded before its feedback is always joined by it. Its backend
follows the event store's: a SQLite file for the sqlite store's one replica, the shared Redis
for the redis store's replicas (recmesh/experiments/outcomes_redis.py), so an answer recorded by
one replica is joined by feedback any replica receives, and every replica's report and guardrail
read all answers. Feedback that comes before its answer is held and tried again when this
replica records answers of that user or request, and at each guardrail check (the answer may
have been recorded by another replica)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from recmesh.common import clock
from recmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from recmesh.common.validation import check_id
from recmesh.events.eventlog import LoggedEvent
from recmesh.events.rulestore import EXPERIMENTS, RedisNamed, RuleStore, SqliteNamed, rule_json
from recmesh.experiments.assignment import check_experiment_name
from recmesh.experiments.outcomes import OutcomeLog
from recmesh.experiments.outcomes_redis import RedisOutcomeLog
from recmesh.experiments.report import summarize
from recmesh.experiments.wire import (
    STOP_REASON_CHARS,
    STORED_EXPERIMENTS,
    check_experiment_proto,
    control_of,
    primary_of,
)
from recmesh.models.ranking.scorer import VERSION_CHARS, find_params
from recmesh.v1 import common_pb2, updater_pb2
from services.updater.config import UpdaterSettings

log = logging.getLogger("recmesh.updater.experiments")
# Feedback can commit before the answer it names is recorded (impressions leave the gateway in
# batches, after the reply): feedback that joins no answer yet is held this long, at most this
# much of it, and tried again as answers arrive.
HOLD_S = 60.0
HELD_MAX = 10_000
RUNNING, STOPPED = common_pb2.EXPERIMENT_STATE_RUNNING, common_pb2.EXPERIMENT_STATE_STOPPED
# Item events that answer an answer shown: the user went for the item (a click-through); a
# purchase is also a conversion. Hide, dislike, rate and search answer none.
CLICK_THROUGH = frozenset({common_pb2.EVENT_TYPE_VIEW, common_pb2.EVENT_TYPE_CLICK,
                           common_pb2.EVENT_TYPE_ADD_TO_CART, common_pb2.EVENT_TYPE_PURCHASE})


def make_experiment_store(settings: UpdaterSettings) -> RuleStore:
    """The experiments' store beside the configured event store, not yet opened."""
    if settings.store == "redis":
        return RedisNamed(settings.redis_url, settings.redis_prefix, EXPERIMENTS)
    return SqliteNamed(settings.experiments_path or settings.log_path.with_name("experiments.sqlite"), EXPERIMENTS)


def make_outcome_log(settings: UpdaterSettings) -> OutcomeLog | RedisOutcomeLog:
    """The outcome log of the event store's kind (blocking: open it off the event loop)."""
    window_ms = int(settings.join_window_s * 1000)
    if settings.store == "redis":
        return RedisOutcomeLog(settings.redis_url, settings.redis_prefix, window_ms)
    return OutcomeLog(settings.outcomes_path or settings.log_path.with_name("outcomes.sqlite"), window_ms)


class ExperimentsRole:
    """Calls are UNAVAILABLE until open() has returned."""

    def __init__(self, settings: UpdaterSettings):
        self._s = settings
        self.store = make_experiment_store(settings)
        self._outcomes: OutcomeLog | RedisOutcomeLog | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outcomes")
        self._ready = False
        self._guardrail: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one change at a time: "at most one running" holds on this replica
        # Feedback waiting for its answer (outcome thread only): (held until, monotonic s; record_feedback's arguments).
        self._held: deque[tuple[float, dict]] = deque(maxlen=HELD_MAX)
        # Whether an experiment ran when last looked (open, put, stop, each guardrail check): only
        # then is unjoined feedback held (most feedback answers no experiment's answer).
        self._running = False

    async def open(self) -> None:
        count = await self.store.open()
        self._running = any(e.state == RUNNING for e in await self.store.list())
        self._outcomes = await self._run(make_outcome_log, self._s)
        self._ready = True
        self._guardrail = asyncio.create_task(self._guard_forever())
        log.info("experiment store open", extra={"experiments": count})

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _submit(self, fn, *args) -> None:
        """A write to the outcome log, in order after every earlier one; not waited for."""
        self._pool.submit(fn, *args).add_done_callback(_log_failure)

    def _check_ready(self) -> None:
        if not self._ready:
            raise Unavailable("updater is warming up")

    async def _listed(self) -> list[common_pb2.Experiment]:
        return sorted(await self.store.list(), key=lambda e: (e.created_ms, e.name))

    async def put(self, request: common_pb2.PutExperimentRequest, client: str, peer: str) -> common_pb2.Experiment:
        """The experiment as stored: RUNNING, created_ms now. InvalidArgument naming the field;
        FailedPrecondition when the name is taken (an experiment's assignment never changes
        under it: stop it and start another name), another one is running, or STORED_EXPERIMENTS
        are kept."""
        check_experiment_proto(request.experiment)
        self._check_ready()
        await self._check_versions(request.experiment)
        async with self._lock:
            listed = await self._listed()
            if any(e.name == request.experiment.name for e in listed):
                raise FailedPrecondition(f"experiment.name: {request.experiment.name!r} exists; an experiment's "
                                         "variants never change while users are assigned: use a new name")
            running = [e.name for e in listed if e.state == RUNNING]
            if running:
                raise FailedPrecondition(f"experiment {running[0]!r} is running; stop it first (one runs at a time)")
            stored = common_pb2.Experiment()
            stored.CopyFrom(request.experiment)
            stored.control = control_of(stored)
            stored.primary_metric = primary_of(stored)
            stored.state = RUNNING
            stored.created_ms = clock.now_ms()
            stored.ClearField("stopped_reason")
            stored.stopped_ms = 0
            done, _ = await self.store.put(stored, STORED_EXPERIMENTS)
            if not done:
                raise FailedPrecondition(f"experiment.name: {STORED_EXPERIMENTS} experiments are kept already")
            self._running = True
        log.info("experiment put", extra={"audit": "experiments", "action": "create", "client": client, "peer": peer,
                                          "experiment_name": stored.name, "experiment": rule_json(stored)})
        return stored

    async def _check_versions(self, experiment: common_pb2.Experiment) -> None:
        """Every pinned ranker version is one this updater has (published, or a start version):
        FailedPrecondition naming the variant's field otherwise - refused now, not served a
        fallback for the experiment's whole run. The learner never deletes a published version,
        so one that exists now is there for the experiment's run."""
        folders = (self._s.params_dir, self._s.shipped_params_dir)
        for i, variant in enumerate(experiment.variants):
            version = variant.overrides.ranker_version
            if version and await asyncio.to_thread(find_params, version, *folders) is None:
                raise FailedPrecondition(f"experiment.variants[{i}].overrides.ranker_version: no ranker version "
                                         f"{version!r} in the updater's published or start versions")

    async def list(self) -> common_pb2.ListExperimentsResponse:
        self._check_ready()
        return common_pb2.ListExperimentsResponse(experiments=await self._listed())

    async def stop(self, request: common_pb2.StopExperimentRequest, client: str, peer: str) -> common_pb2.Experiment:
        """The experiment, STOPPED (a stopped one is returned as it is). NotFound naming name."""
        name = check_experiment_name(request.name, "name")
        if len(request.reason) > STOP_REASON_CHARS:
            raise InvalidArgument("reason", f"longer than {STOP_REASON_CHARS} characters")
        self._check_ready()
        return await self._stop(name, request.reason or f"stopped by {client}", client, peer)

    async def _stop(self, name: str, reason: str, client: str, peer: str) -> common_pb2.Experiment:
        async with self._lock:
            found = {e.name: e for e in await self.store.list()}.get(name)
            if found is None:
                raise NotFound("name", f"no experiment {name!r}")
            if found.state == STOPPED:
                return found
            found.state = STOPPED
            found.stopped_reason = reason
            found.stopped_ms = clock.now_ms()
            await self.store.put(found, STORED_EXPERIMENTS)
        log.warning("experiment stopped", extra={"audit": "experiments", "action": "stop", "client": client,
                                                  "peer": peer, "experiment_name": name, "reason": reason})
        return found

    async def report(self, request: common_pb2.GetExperimentReportRequest) -> common_pb2.GetExperimentReportResponse:
        name = check_experiment_name(request.name, "name")
        self._check_ready()
        found = {e.name: e for e in await self.store.list()}.get(name)
        if found is None:
            raise NotFound("name", f"no experiment {name!r}")
        summary = await self._summary(found)
        return common_pb2.GetExperimentReportResponse(report_json=json.dumps(summary, allow_nan=False))

    async def _summary(self, experiment: common_pb2.Experiment) -> dict:
        """report.summarize of the experiment's outcomes so far, with its state; before the
        control has an answer, the variants' counts only."""
        samples, versions, encoders = await self._run(self._outcomes.tallies, experiment.name)
        s = self._s
        try:
            summary = summarize(experiment.name, samples, control_of(experiment), primary_of(experiment),
                                level=s.report_level, guardrail_level=s.guardrail_level,
                                min_users=s.guardrail_min_users)
        except KeyError as exc:
            summary = {"experiment": experiment.name, "control": control_of(experiment),
                       "primary": primary_of(experiment), "level": s.report_level,
                       "guardrail_level": s.guardrail_level, "variants": {}, "against_control": {},
                       "note": exc.args[0]}
        overrides = {v.name: v.overrides for v in experiment.variants}
        for variant, shown in summary["variants"].items():  # which versions ranked and encoded its answers
            shown["ranker_versions"] = versions.get(variant, {})
            shown["encoder_versions"] = encoders.get(variant, {})
            # The interest model the variant names ("": the encoder's default).
            shown["interest_model_version"] = overrides[variant].interest_model_version if variant in overrides else ""
        summary["state"] = common_pb2.ExperimentState.Name(experiment.state).removeprefix("EXPERIMENT_STATE_")
        summary["stopped_reason"] = experiment.stopped_reason
        return summary

    def check_impressions(self, impressions: Sequence[updater_pb2.Impression], fields: Sequence[str]) -> None:
        """InvalidArgument naming the field of a malformed experiment impression (fields[i]
        names impressions[i])."""
        for impression, at in zip(impressions, fields, strict=True):
            check_id(impression.user_id, f"{at}user_id")
            check_id(impression.request_id, f"{at}request_id")
            check_experiment_name(impression.experiment, f"{at}experiment")
            check_experiment_name(impression.variant, f"{at}variant")
            if len(impression.items) > self._s.max_impression_items:
                raise InvalidArgument(f"{at}items", f"at most {self._s.max_impression_items} items")
            for i, item in enumerate(impression.items):
                check_id(item.item_id, f"{at}items[{i}].item_id")
            if len(impression.ranker_version) > VERSION_CHARS:
                raise InvalidArgument(f"{at}ranker_version", f"longer than {VERSION_CHARS} characters")
            if len(impression.encoder_version) > VERSION_CHARS:
                raise InvalidArgument(f"{at}encoder_version", f"longer than {VERSION_CHARS} characters")
            # A NaN or infinite latency would poison every later report's percentiles and JSON.
            if not (math.isfinite(impression.latency_ms) and impression.latency_ms >= 0):
                raise InvalidArgument(f"{at}latency_ms", f"must be a finite number >= 0, got {impression.latency_ms}")

    def record(self, impressions: Sequence[updater_pb2.Impression]) -> None:
        """Answers shown under an experiment (checked: check_impressions), in the outcome log."""
        if impressions:
            rows = [dict(experiment=i.experiment, variant=i.variant, user_id=i.user_id, request_id=i.request_id,
                         shown_ms=i.timestamp_ms or clock.now_ms(),
                         item_ids=[item.item_id for item in sorted(i.items, key=lambda it: it.position)],
                         latency_ms=i.latency_ms, degraded=i.degraded, ranker_version=i.ranker_version,
                         encoder_version=i.encoder_version)
                    for i in impressions]
            self._submit(self._record_all, rows)

    def _record_all(self, rows: list[dict]) -> None:
        self._outcomes.record_answers(rows)
        if self._held:
            self._join_held({r["request_id"] for r in rows}, {r["user_id"] for r in rows})

    def _join(self, feedback: dict) -> None:
        """Feedback joined now, else held for HOLD_S (its answer may not be recorded yet)."""
        if not self._outcomes.record_feedback(**feedback) and self._running:
            self._held.append((time.monotonic() + HOLD_S, feedback))

    def _join_held(self, request_ids: set[str] | None, users: set[str] | None) -> None:
        """Held feedback naming one of these answers (or, naming none, from one of these users;
        None and None: all of it) tried again, in the order it came; what has waited HOLD_S is
        dropped."""
        now, keep = time.monotonic(), deque(maxlen=HELD_MAX)
        for until, feedback in self._held:
            if until < now:
                continue
            named = feedback["request_id"]
            concerned = request_ids is None or (named in request_ids if named else feedback["user_id"] in users)
            if concerned and self._outcomes.record_feedback(**feedback):
                continue
            keep.append((until, feedback))
        self._held = keep

    def feedback(self, event: LoggedEvent) -> None:
        """A committed new event: a click-through or purchase of an item shown under an
        experiment marks that answer (by the event's request_id, else the user's newest answer
        within the join window showing the item); held a while when that answer is not
        recorded yet."""
        if self._outcomes is None or event.type not in CLICK_THROUGH:
            return
        self._submit(self._join, dict(
            user_id=event.user_id, item_id=event.item_id, at_ms=event.timestamp_ms,
            purchase=event.type == common_pb2.EVENT_TYPE_PURCHASE, request_id=event.request_id))

    async def forget_user(self, user_id: str) -> None:
        """The user's answers deleted from the outcome log before DeleteUser is acknowledged (in
        order after every write queued before: answers on their way are deleted too)."""
        if self._outcomes is not None:
            await self._run(self._outcomes.delete_user, user_id)

    def _join_all_held(self) -> None:
        if self._held:
            self._join_held(None, None)

    async def guard_once(self) -> list[str]:
        """The guardrail's check of the running experiment; the variants it stopped for. Held
        feedback is tried again first: its answer may have been recorded by another replica."""
        if self._outcomes is not None:
            await self._run(self._join_all_held)
        running = [e for e in await self.store.list() if e.state == RUNNING]
        self._running = bool(running)
        stopped = []
        for experiment in running:
            summary = await self._summary(experiment)
            worse = {name: c["guardrail"]["reason"] for name, c in summary["against_control"].items()
                     if c["guardrail"]["stop"]}
            if worse:
                reason = "guardrail: " + "; ".join(
                    f"{name} against {control_of(experiment)} on {primary_of(experiment)}: {why}"
                    for name, why in sorted(worse.items()))
                await self._stop(experiment.name, reason, "guardrail", "")
                stopped.extend(sorted(worse))
        return stopped

    async def _guard_forever(self) -> None:
        while True:
            await asyncio.sleep(self._s.guardrail_s)
            try:
                await self.guard_once()
            except Exception:  # the guardrail must never take the updater down: log, check again
                log.exception("guardrail check failed")

    async def close(self) -> None:
        if self._guardrail is not None:
            self._guardrail.cancel()
        await self.store.close()
        if self._outcomes is not None:
            await self._run(self._outcomes.close)
        self._pool.shutdown(wait=True)


def _log_failure(future: Future) -> None:
    if future.exception() is not None:
        log.error("outcome log write failed", exc_info=future.exception())
