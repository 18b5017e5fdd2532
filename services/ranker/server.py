"""recmesh.v1.Ranker over the newest parameter version on disk."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import grpc
import numpy as np
from prometheus_client import Gauge

from recmesh.common.channels import FAST_RECONNECT
from recmesh.common.errors import InvalidArgument, rpc_method
from recmesh.common.metrics import set_version
from recmesh.common.server import Service
from recmesh.common.transport import aio_channel
from recmesh.models.ranking.rank import rank
from recmesh.models.ranking.scorer import Scorer, load_params, newest_params, scorer_from_spec
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


class RankerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, settings: RankerSettings, scorer: Scorer):
        self._settings = settings
        self._scorer = scorer
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
        return rank(request, self._scorer, self._rng, max_candidates=s.max_candidates, exploration=exploration,
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
    servicer = RankerServicer(settings, scorer)
    watcher: list[asyncio.Task] = []

    def register(server: grpc.aio.Server) -> list[str]:
        ranker_pb2_grpc.add_RankerServicer_to_server(servicer, server)
        return [ranker_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name]

    async def warmup() -> None:
        if settings.updater_addr:  # not awaited: the ranker serves its own version meanwhile
            watcher.append(asyncio.create_task(watch_parameters(servicer, settings)))

    async def shutdown() -> None:
        for task in watcher:
            task.cancel()

    return Service("ranker", register, warmup, shutdown)
