"""recmesh.v1.Ranker over the newest parameter version (on disk at start, then the updater's
stream), or the version a request pins (an experiment's variant: PinnedVersions)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict

import grpc
import numpy as np
from prometheus_client import Gauge

from recmesh.common.channels import FAST_RECONNECT
from recmesh.common.errors import DependencyFailed, InvalidArgument, NotFound, rpc_method
from recmesh.common.metrics import set_version
from recmesh.common.server import Service
from recmesh.common.transport import aio_channel
from recmesh.models.ranking.rank import rank
from recmesh.models.ranking.scorer import (
    Scorer,
    check_version_name,
    find_params,
    load_params,
    newest_params,
    scorer_from_spec,
)
from recmesh.v1 import ranker_pb2, ranker_pb2_grpc, updater_pb2, updater_pb2_grpc
from services.ranker.config import RankerSettings

log = logging.getLogger("recmesh.ranker")
# How fresh the served parameters are (the console shows it beside the version): the newest
# feedback the version learned from (0 for a shipped or offline-trained one), and since when
# this process serves it.
TRAINED_THROUGH = Gauge("recmesh_ranker_parameters_trained_through_seconds",
                        "Unix time of the newest feedback the served parameter version learned from (0: none)")
SERVING_SINCE = Gauge("recmesh_ranker_parameters_serving_since_seconds",
                      "Unix time this ranker began serving its parameter version")


def _serving(scorer: Scorer) -> None:
    set_version("ranker", "parameters", scorer.version)
    TRAINED_THROUGH.set(scorer.trained_through_ms / 1000)
    SERVING_SINCE.set(time.time())


class PinnedVersions:
    """The parameter versions requests name (RankRequest.parameters_version), loaded on first
    use - from the ranker's own params_dir, else from the updater, which keeps every version it
    published (Updater.GetParameters) - and the `size` used last kept. A version is immutable
    once written, so a kept one never goes stale."""

    def __init__(self, settings: RankerSettings, updater=None):
        self._s = settings
        self.updater = updater  # an UpdaterStub, or None: params_dir only
        self._kept: OrderedDict[str, Scorer] = OrderedDict()
        self._loading: dict[str, asyncio.Future] = {}  # one load per version, however many ask

    def kept(self) -> list[str]:
        """The versions kept, least recently used first."""
        return list(self._kept)

    async def get(self, version: str, timeout_s: float | None) -> Scorer:
        """NotFound naming parameters_version when neither params_dir nor the updater has it;
        DependencyFailed with the updater's status when it could not say (unreachable, late)."""
        scorer = self._kept.get(version)
        if scorer is not None:
            self._kept.move_to_end(version)
            return scorer
        loading = self._loading.get(version)
        if loading is None:
            loading = self._loading[version] = asyncio.ensure_future(self._load(version, timeout_s))
            loading.add_done_callback(lambda _: self._loading.pop(version, None))
        scorer = await asyncio.shield(loading)
        self._kept[version] = scorer
        self._kept.move_to_end(version)
        while len(self._kept) > self._s.pinned_versions:
            self._kept.popitem(last=False)
        return scorer

    async def _load(self, version: str, timeout_s: float | None) -> Scorer:
        path = await asyncio.to_thread(find_params, version, self._s.params_dir)
        if path is not None:
            return await asyncio.to_thread(load_params, path)
        if self.updater is None:
            raise NotFound("parameters_version", f"no ranker version {version!r} in {self._s.params_dir}")
        try:
            reply = await self.updater.GetParameters(updater_pb2.GetParametersRequest(version=version),
                                                      timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound("parameters_version", f"no ranker version {version!r} in the ranker's start "
                                                     "versions or the updater's published ones") from None
            raise DependencyFailed(exc.code(), f"parameters_version {version!r}: the updater could not give it: "
                                               f"{exc.details()}") from None
        return scorer_from_spec(json.loads(reply.spec_json), f"updater version {reply.version}")


class RankerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, settings: RankerSettings, scorer: Scorer, pinned: PinnedVersions | None = None):
        self._settings = settings
        self._scorer = scorer
        self._pinned = pinned if pinned is not None else PinnedVersions(settings)
        self._rng = np.random.default_rng()
        _serving(scorer)

    @property
    def version(self) -> str:
        return self._scorer.version

    @rpc_method
    async def Rank(self, request, context):
        s = self._settings
        # self._scorer is read once: one version for the whole call, even if a swap lands meanwhile.
        exploration = s.exploration
        if request.HasField("exploration"):  # an experiment's variant sets its own share
            if not 0.0 <= request.exploration <= 1.0:  # NaN fails too
                raise InvalidArgument("exploration", f"must be in [0, 1], got {request.exploration}")
            exploration = request.exploration
        scorer = self._scorer
        if request.parameters_version and request.parameters_version != scorer.version:
            check_version_name(request.parameters_version, "parameters_version")
            scorer = await self._pinned.get(request.parameters_version, context.time_remaining())
        return rank(request, scorer, self._rng, max_candidates=s.max_candidates, exploration=exploration,
                    mmr_pool_factor=s.mmr_pool_factor, max_reasons=s.max_reasons)

    def swap(self, scorer: Scorer) -> None:
        """Calls in flight finish on the version they started with; the next ones use this."""
        self._scorer = scorer
        _serving(scorer)


async def watch_parameters(servicer: RankerServicer, settings: RankerSettings) -> None:
    """Follow the updater's published versions for as long as the ranker runs; while the
    updater is away, keep serving the version at hand and reconnect with backoff."""
    backoff = 0.2
    while True:
        try:
            async with aio_channel(settings.updater_addr, settings, FAST_RECONNECT) as channel:
                stream = updater_pb2_grpc.UpdaterStub(channel).WatchParameters(
                    updater_pb2.WatchParametersRequest(known_version=servicer.version))
                async for update in stream:
                    scorer = scorer_from_spec(json.loads(update.spec_json), f"updater version {update.version}")
                    servicer.swap(scorer)
                    backoff = 0.2
                    log.info("ranker parameters swapped", extra={"version": scorer.version,
                                                                  "trained_through_ms": update.trained_through_ms})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the updater restarting, a bad spec: keep the current version
            log.info("parameter stream interrupted", extra={"error": str(exc)[:200]})
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 5.0)


def build_service(settings: RankerSettings) -> Service:
    scorer = load_params(newest_params(settings.params_dir))
    channels: list = []  # the updater's, for pinned versions: opened on the server's loop (warmup)
    pinned = PinnedVersions(settings)
    servicer = RankerServicer(settings, scorer, pinned)
    watcher: list[asyncio.Task] = []

    def register(server: grpc.aio.Server) -> list[str]:
        ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
        return [ranker_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name]

    async def warmup() -> None:
        if settings.updater_addr:  # not awaited: the ranker serves its own version meanwhile
            watcher.append(asyncio.create_task(watch_parameters(servicer, settings)))
            channel = aio_channel(settings.updater_addr, settings, FAST_RECONNECT)
            channels.append(channel)
            pinned.updater = updater_pb2_grpc.UpdaterStub(channel)

    async def shutdown() -> None:
        for task in watcher:
            task.cancel()
        for channel in channels:
            await channel.close()

    return Service("ranker", register, warmup, shutdown)
