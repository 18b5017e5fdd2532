"""recmesh.v1.Updater: log first, then apply, then acknowledge."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from prometheus_client import Counter, Histogram

from recmesh.common import limits
from recmesh.common.errors import InvalidArgument, Unavailable, rpc_method
from recmesh.common.metrics import set_version
from recmesh.common.server import Service
from recmesh.common.validation import check_events, check_id, visible_text
from recmesh.events.eventlog import LoggedEvent
from recmesh.events.state import UserStateStore
from recmesh.events.stores import EventStore, LocalStore, RedisStore
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import Scorer, load_params, newest_params, save_params
from recmesh.models.ranking.training import LabelledList, OnlineLearner, Publication, Round
from recmesh.v1 import common_pb2, updater_pb2, updater_pb2_grpc
from services.updater.config import UpdaterSettings
from services.updater.joiner import ImpressionJoiner, now_ms

log = logging.getLogger("recmesh.updater")
COMMIT_CALLS = Histogram("recmesh_updater_commit_calls", "Ingest calls sharing one commit (group commit)",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128))
PUBLISHED = Counter("recmesh_updater_published_total", "Ranker versions published, by reason", ["reason"])
LABELLED = Counter("recmesh_updater_labelled_lists_total", "Impressions joined with feedback")


def to_logged(e: common_pb2.Event, now_ms: int) -> LoggedEvent:
    """The event as logged: a query with nothing visible in it is no query; without a time of
    its own, the event happened when it arrived here (the state orders by this time)."""
    return LoggedEvent(
        e.event_id, e.user_id, e.item_id, e.type, visible_text(e.query), e.value, e.timestamp_ms or now_ms,
        e.request_id,
    )


def to_proto(e: LoggedEvent) -> common_pb2.Event:
    return common_pb2.Event(
        event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, type=e.type, query=e.query,
        value=e.value, timestamp_ms=e.timestamp_ms, request_id=e.request_id,
    )


class GroupCommitter:
    """Ingest calls that arrive while a commit is running share the next one: one transaction
    and one fsync for all of them (group commit, as databases do for their own logs). Each
    caller is answered once its events are durable and applied.

    The store applies state as part of the commit, and feedback is joined here - never by the
    caller, so a caller that gives up (deadline, cancel) cannot leave a committed event
    unapplied."""

    def __init__(self, servicer: "UpdaterServicer"):
        self._servicer = servicer
        self._pending: list[tuple[list[LoggedEvent], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def append(self, events: list[LoggedEvent]) -> list[LoggedEvent]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # Shielded: a cancelled caller stops waiting, the commit it joined goes on.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        servicer = self._servicer
        while self._pending:
            batch, self._pending = self._pending, []
            COMMIT_CALLS.observe(len(batch))
            try:
                fresh = await servicer.store.append_groups([events for events, _ in batch])
            except Exception as exc:  # nothing of this commit is durable: every caller hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), new in zip(batch, fresh, strict=True):
                for event in new:
                    servicer.feedback(event)
                if not future.done():
                    future.set_result(new)


class UpdaterServicer(updater_pb2_grpc.UpdaterServicer):
    def __init__(self, settings: UpdaterSettings):
        self._settings = settings
        self.store = _store(settings)
        self._ready = False
        self._commits = GroupCommitter(self)
        self._joiner = ImpressionJoiner(int(settings.join_window_s * 1000))
        self.learner: OnlineLearner | None = None
        self._learning: asyncio.Task | None = None
        # Training runs here, never on the event loop and never beside the log's thread.
        self._train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner")
        self._watchers: set[asyncio.Queue] = set()
        self._versions = itertools.count(1)

    async def load(self) -> None:
        started = time.perf_counter()
        count = await self.store.open()
        self._ready = True  # from here on, state is complete and calls are served
        log.info("event store open", extra={"store": self._settings.store, "events": count,
                                            "seconds": round(time.perf_counter() - started, 2)})
        s = self._settings
        serving = await asyncio.get_running_loop().run_in_executor(
            self._train_pool, _newest_scorer, s.params_dir, s.shipped_params_dir)
        self.learner = OnlineLearner(serving)
        if s.learn:
            self._learning = asyncio.create_task(self._learn_forever())
        log.info("ranker parameters", extra={"version": serving.version, "learning": s.learn})

    def _check_ready(self) -> None:
        if not self._ready:  # state is complete only once the store is open
            raise Unavailable("updater is warming up")

    @rpc_method
    async def Ingest(self, request, context):
        check_events(request.events, "events", limits.EVENTS_PER_CALL)  # whatever the gateway let in
        now_ms = int(time.time() * 1000)
        events = [to_logged(e, now_ms) for e in request.events]
        self._check_ready()  # UNAVAILABLE while warming up, before anything is queued
        fresh = await self._commits.append(events)
        return updater_pb2.IngestResponse(accepted=len(fresh), duplicates=len(events) - len(fresh))

    def feedback(self, event: LoggedEvent) -> None:
        """A committed event: if it answers an impression, a labelled list for the learner."""
        if self.learner is None:
            return
        labelled = self._joiner.join(event, now_ms())
        if labelled is not None:
            self._learn_from([labelled])

    def _learn_from(self, lists: list[LabelledList]) -> None:
        for labelled in lists:
            LABELLED.inc()
            self.learner.add(labelled)

    @rpc_method
    async def LogImpressions(self, request, context):
        """All or none: a batch with one malformed impression is refused whole, naming it."""
        if len(request.impressions) > self._settings.max_impressions_per_call:
            raise InvalidArgument("impressions", f"at most {self._settings.max_impressions_per_call} per call")
        for n, impression in enumerate(request.impressions):
            self._check_impression(impression, f"impressions[{n}].")
        now = now_ms()
        for impression in request.impressions:
            waited = self._joiner.add(impression, now)
            if waited and self.learner is not None:
                self._learn_from(waited)
        return updater_pb2.LogImpressionsResponse()

    def _check_impression(self, impression: updater_pb2.Impression, at: str) -> None:
        check_id(impression.user_id, f"{at}user_id")
        check_id(impression.request_id, f"{at}request_id")
        if len(impression.items) > self._settings.max_impression_items:
            raise InvalidArgument(f"{at}items", f"at most {self._settings.max_impression_items} items")
        if list(impression.feature_names) != list(FEATURES):
            raise InvalidArgument(f"{at}feature_names", f"must be {list(FEATURES)}")
        for i, item in enumerate(impression.items):
            if len(item.features) != len(FEATURES):
                raise InvalidArgument(f"{at}items[{i}].features",
                                      f"{len(item.features)} values, expected {len(FEATURES)}")

    async def WatchParameters(self, request, context):
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        try:
            current = self.learner.serving if self.learner is not None else None
            if current is not None and current.version != request.known_version:
                yield _parameters(current)
            while (scorer := await queue.get()) is not None:
                yield _parameters(scorer)
        finally:
            self._watchers.discard(queue)

    async def _learn_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._settings.learn_interval_s)
            try:
                version = f"ranker-online-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{next(self._versions):05d}"
                job = self.learner.start_round(version)
                if isinstance(job, Round):
                    scorer, report = await loop.run_in_executor(self._train_pool, job.train)
                    job = self.learner.finish(job, scorer, report)
                if isinstance(job, Publication):
                    await self._publish(job)
            except Exception:  # learning must never take ingest down: log, keep serving
                log.exception("learning round failed")

    async def _publish(self, publication: Publication) -> None:
        scorer = publication.scorer
        PUBLISHED.labels(publication.reason).inc()
        set_version("updater", "ranker_parameters", scorer.version)
        await asyncio.get_running_loop().run_in_executor(
            self._train_pool, lambda: save_params(scorer, self._settings.params_dir, reason=publication.reason,
                                                  window=publication.window))
        for queue in self._watchers:
            queue.put_nowait(scorer)
        log.info("ranker parameters published", extra={"version": scorer.version, "reason": publication.reason,
                                                       "trained_through_ms": scorer.trained_through_ms,
                                                       **publication.window})

    @rpc_method
    async def GetUserState(self, request, context):
        check_id(request.user_id, "user_id")
        self._check_ready()
        reply = updater_pb2.UserState(user_id=request.user_id)
        view = await self.store.user_view(request.user_id, request.max_recent or self._settings.default_max_recent)
        if view is None:
            return reply
        reply.recent.extend(to_proto(e) for e in view.recent)
        reply.seen_item_ids.extend(view.seen)
        reply.recent_queries.extend(view.queries)
        reply.event_count = view.event_count
        reply.skipped.update(self._joiner.skipped(request.user_id, now_ms()))
        return reply

    @rpc_method
    async def DeleteUser(self, request, context):
        user_id = check_id(request.user_id, "user_id")
        self._check_ready()
        deleted = await self.store.delete_user(user_id)
        self._joiner.forget_user(user_id, now_ms())
        return updater_pb2.DeleteUserStateResponse(events_deleted=deleted)

    async def close(self) -> None:
        if self._learning is not None:
            self._learning.cancel()
        for queue in self._watchers:
            queue.put_nowait(None)  # ends the streams, so the server's grace is not spent waiting
        self._train_pool.shutdown(wait=True)
        await self.store.close()


def _store(settings: UpdaterSettings) -> EventStore:
    s = settings
    if s.store == "redis":
        return RedisStore(s.redis_url, s.redis_prefix, s.recent_items, s.seen_items, s.recent_queries,
                          s.dedupe_ttl_s, s.seed_log)
    return LocalStore(s.log_path, UserStateStore(s.recent_items, s.seen_items, s.recent_queries))


def _newest_scorer(online: Path, shipped: Path) -> Scorer:
    for folder in (online, shipped):
        if folder.is_dir() and any(folder.glob("*.json")):
            return load_params(newest_params(folder))
    raise FileNotFoundError(f"no ranker parameters in {online} or {shipped}")


def _parameters(scorer: Scorer) -> updater_pb2.RankerParameters:
    return updater_pb2.RankerParameters(version=scorer.version, spec_json=json.dumps(scorer.to_spec()),
                                        trained_through_ms=scorer.trained_through_ms)


def build_service(settings: UpdaterSettings) -> Service:
    servicer = UpdaterServicer(settings)

    def register(server: grpc.aio.Server) -> list[str]:
        updater_pb2_grpc.add_UpdaterServicer_to_server(servicer, server)
        return [updater_pb2.DESCRIPTOR.services_by_name["Updater"].full_name]

    return Service("updater", register, servicer.load, servicer.close)
