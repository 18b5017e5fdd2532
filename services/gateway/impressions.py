"""What each Recommend showed goes to the updater for online learning - after the reply, off
the request's path, bounded: when the updater is slow, impressions are dropped (and counted),
never queued without limit and never waited for. They are training signal, not acknowledged
data."""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from recmesh.v1 import updater_pb2
from services.gateway.upstreams import Upstreams

log = logging.getLogger("recmesh.gateway.impressions")
DROPPED = Counter("recmesh_impressions_dropped_total", "Impressions not delivered to the updater")


class ImpressionLog:
    def __init__(self, upstreams: Upstreams, max_in_flight: int, timeout_s: float = 2.0):
        self._up = upstreams
        self._max = max_in_flight
        self._timeout_s = timeout_s
        self._in_flight: set[asyncio.Task] = set()
        self.dropped = 0

    def log(self, impression: updater_pb2.Impression) -> None:
        if len(self._in_flight) >= self._max:
            self.dropped += 1
            DROPPED.inc()
            return
        task = asyncio.get_running_loop().create_task(self._send(impression))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, impression: updater_pb2.Impression) -> None:
        try:
            await self._up.updater.LogImpression(impression, timeout=self._timeout_s)
        except Exception as exc:  # the updater down or slow: this impression is not learned from
            self.dropped += 1
            DROPPED.inc()
            if self.dropped % 1000 == 1:
                log.info("impressions dropped", extra={"dropped": self.dropped, "error": str(exc)[:200]})
