"""What each Recommend showed goes to the updater for online learning - after the reply, off
the request's path, bounded: impressions are buffered and sent in batches (one call per
Recommend cost the gateway and the updater more CPU than everything else they do for it); when
the updater is slow or down, the buffer fills and further impressions are dropped (and counted),
never queued without limit and never waited for. They are training signal, not acknowledged
data."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from prometheus_client import Counter

from recmesh.common.clock import now_ms
from recmesh.v1 import ranker_pb2, updater_pb2
from services.gateway.upstreams import Upstreams

log = logging.getLogger("recmesh.gateway.impressions")
DROPPED = Counter("recmesh_impressions_dropped_total", "Impressions not delivered to the updater")


def impression(request_id: str, user_id: str, ranking: ranker_pb2.RankResponse, k: int,
               shown: Sequence[ranker_pb2.RankedItem | None] | None = None) -> updater_pb2.Impression:
    """What one ranked answer showed: its top k in order (position from 0) with the features and
    propensity the ranker saw them with, stamped now (ms since the Unix epoch). shown: the
    answer's items in order when business rules placed them (None at a position the ranker did
    not score: left out, the others keep their positions); None: the ranking's top k."""
    slots = list(enumerate(ranking.items[:k])) if shown is None else \
        [(i, item) for i, item in enumerate(shown) if item is not None]
    return updater_pb2.Impression(
        request_id=request_id, user_id=user_id, timestamp_ms=now_ms(),
        ranker_version=ranking.model_version, feature_names=ranking.feature_names,
        items=[updater_pb2.ImpressedItem(item_id=item.item_id, position=i, features=item.features,
                                         propensity=item.propensity) for i, item in slots],
    )


class ImpressionLog:
    """log() appends; one sender task per batch, at most one in flight: a batch leaves when the
    previous one is answered and either flush_after_s has passed since its first impression or
    max_batch are waiting."""

    def __init__(self, upstreams: Upstreams, max_buffered: int, flush_after_s: float = 0.02,
                 max_batch: int = 64, timeout_s: float = 2.0):
        self._up = upstreams
        self._max_buffered = max_buffered
        self._flush_after_s = flush_after_s
        self._max_batch = max_batch
        self._timeout_s = timeout_s
        self._buffer: list[updater_pb2.Impression] = []
        self._sender: asyncio.Task | None = None
        self._full = asyncio.Event()
        self.dropped = 0

    def log(self, impression: updater_pb2.Impression) -> None:
        if len(self._buffer) >= self._max_buffered:
            self._drop(1, None)
            return
        self._buffer.append(impression)
        if len(self._buffer) >= self._max_batch:
            self._full.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        while self._buffer:
            try:
                await asyncio.wait_for(self._full.wait(), self._flush_after_s)
            except TimeoutError:
                pass
            self._full.clear()
            batch, self._buffer = self._buffer[:self._max_batch], self._buffer[self._max_batch:]
            try:
                await self._up.updater.LogImpressions(updater_pb2.LogImpressionsRequest(impressions=batch),
                                                      timeout=self._timeout_s)
            except Exception as exc:  # the updater down or slow: this batch is not learned from
                self._drop(len(batch), exc)

    async def flush(self, timeout_s: float) -> None:
        """Send what is buffered now (on shutdown, after the last Recommend was answered), waiting
        at most timeout_s; what is still unsent then is dropped (counted)."""
        if not self._buffer and (self._sender is None or self._sender.done()):
            return
        self._flush_after_s = 0.0  # no more waiting for a batch to fill
        self._full.set()
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_all())
        try:
            await asyncio.wait_for(asyncio.shield(self._sender), timeout_s)
        except TimeoutError:
            self._drop(len(self._buffer), None)
            self._buffer = []

    def _drop(self, n: int, exc: Exception | None) -> None:
        before, self.dropped = self.dropped, self.dropped + n
        DROPPED.inc(n)
        if before // 1000 != self.dropped // 1000 or before == 0:
            log.info("impressions dropped", extra={"dropped": self.dropped, "error": str(exc)[:200] if exc else "full"})
