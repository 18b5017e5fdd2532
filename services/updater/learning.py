"""The updater's online learning/publishing role: impressions (LogImpressions) joined with the
feedback that follows (committed events, services/updater/joiner.py) become labelled lists; the
ranker's scorer learns from them in rounds on a worker thread (recmesh/models/ranking/
training.py), and each version it publishes goes to params_dir and to every WatchParameters
stream."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client import Counter

from recmesh.common.clock import now_ms
from recmesh.common.errors import InvalidArgument, NotFound
from recmesh.common.metrics import set_version
from recmesh.common.validation import check_id
from recmesh.events.eventlog import LoggedEvent
from recmesh.models.ranking.features import FEATURES
from recmesh.models.ranking.scorer import (
    Scorer,
    check_version_name,
    find_params,
    load_params,
    newest_params,
    save_params,
)
from recmesh.models.ranking.training import LabelledList, OnlineLearner, Publication, Round
from recmesh.v1 import updater_pb2
from services.updater.config import UpdaterSettings
from services.updater.joiner import ImpressionJoiner

log = logging.getLogger("recmesh.updater")
PUBLISHED = Counter("recmesh_updater_published_total", "Ranker versions published, by reason", ["reason"])
LABELLED = Counter("recmesh_updater_labelled_lists_total", "Impressions joined with feedback")


class LearningRole:
    """Everything here runs on the event loop except training, loading and saving parameters
    (the training pool). Until start() has loaded the serving parameters, no feedback is joined
    and impressions are kept but no list is learnt from."""

    def __init__(self, settings: UpdaterSettings):
        self._settings = settings
        self._joiner = ImpressionJoiner(int(settings.join_window_s * 1000), weights=settings.event_weights())
        self.learner: OnlineLearner | None = None
        self._learning: asyncio.Task | None = None
        # Training runs here, never on the event loop and never beside the log's thread.
        self._train_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner")
        self._watchers: set[asyncio.Queue] = set()
        self._versions = itertools.count(1)

    async def start(self) -> None:
        """Serves the newest parameters of params_dir, else of shipped_params_dir
        (FileNotFoundError when neither has any), and starts learning if settings.learn."""
        s = self._settings
        serving = await asyncio.get_running_loop().run_in_executor(
            self._train_pool, _newest_scorer, s.params_dir, s.shipped_params_dir)
        self.learner = OnlineLearner(serving)
        if s.learn:
            self._learning = asyncio.create_task(self._learn_forever())
        log.info("ranker parameters", extra={"version": serving.version, "learning": s.learn})

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

    def log_impressions(self, request: updater_pb2.LogImpressionsRequest) -> updater_pb2.LogImpressionsResponse:
        """All or none: a batch with one malformed impression is refused whole, naming it
        (InvalidArgument)."""
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

    def skipped(self, user_id: str) -> dict[str, int]:
        """Items shown to the user within the join window and not chosen: item_id -> times."""
        return self._joiner.skipped(user_id, now_ms())

    def merge_users(self, from_user: str, into_user: str) -> None:
        """from_user's events moved to into_user: so do the impressions shown to from_user."""
        self._joiner.merge_users(from_user, into_user)

    def forget_user(self, user_id: str) -> None:
        """A deleted user: their impressions and held feedback go, and an impression of theirs
        from before now, still on its way, is dropped when it comes."""
        self._joiner.forget_user(user_id, now_ms())

    async def watch(self, known_version: str) -> AsyncIterator[updater_pb2.RankerParameters]:
        """The serving parameters now (unless they are known_version), then each version as it
        is published; ends at close()."""
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        try:
            current = self.learner.serving if self.learner is not None else None
            if current is not None and current.version != known_version:
                yield _parameters(current)
            while (scorer := await queue.get()) is not None:
                yield _parameters(scorer)
        finally:
            self._watchers.discard(queue)

    async def parameters(self, version: str) -> updater_pb2.RankerParameters:
        """One version by name as kept on disk (published, else a start version): what a ranker
        pinned to it serves. NotFound naming version when neither folder has it."""
        check_version_name(version, "version")
        s = self._settings
        # Not on the training pool: a long round must not hold a pinned request up.
        path = await asyncio.to_thread(find_params, version, s.params_dir, s.shipped_params_dir)
        if path is None:
            raise NotFound("version", f"no ranker version {version!r} in the published or start versions")
        return _parameters(await asyncio.to_thread(load_params, path))

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

    async def close(self) -> None:
        """Stops learning, ends every WatchParameters stream, waits for the training pool."""
        if self._learning is not None:
            self._learning.cancel()
        for queue in self._watchers:
            queue.put_nowait(None)  # ends the streams, so the server's grace is not spent waiting
        self._train_pool.shutdown(wait=True)


def _newest_scorer(online: Path, shipped: Path) -> Scorer:
    for folder in (online, shipped):
        if folder.is_dir() and any(folder.glob("*.json")):
            return load_params(newest_params(folder))
    raise FileNotFoundError(f"no ranker parameters in {online} or {shipped}")


def _parameters(scorer: Scorer) -> updater_pb2.RankerParameters:
    return updater_pb2.RankerParameters(version=scorer.version, spec_json=json.dumps(scorer.to_spec()),
                                        trained_through_ms=scorer.trained_through_ms)
