"""The gateway's impression log: batched, bounded, never blocking the caller."""

import asyncio
from types import SimpleNamespace

from recmesh.v1 import updater_pb2
from services.gateway.impressions import ImpressionLog


class RecordingUpdater:
    def __init__(self, fail: bool = False, delay_s: float = 0.0):
        self.batches: list[list[str]] = []
        self.fail, self.delay_s = fail, delay_s

    async def LogImpressions(self, request, timeout):
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("updater down")
        self.batches.append([i.request_id for i in request.impressions])
        return updater_pb2.LogImpressionsResponse()


def impression(n: int) -> updater_pb2.Impression:
    return updater_pb2.Impression(request_id=f"r{n}", user_id="u")


def run_log(updater: RecordingUpdater, count: int, **kwargs) -> ImpressionLog:
    async def go() -> ImpressionLog:
        log = ImpressionLog(SimpleNamespace(updater=updater), **kwargs)
        for n in range(count):
            log.log(impression(n))
            if n % 10 == 9:
                await asyncio.sleep(0.001)
        for _ in range(500):  # until the sender has finished
            if log._sender is None or log._sender.done():
                break
            await asyncio.sleep(0.01)
        return log

    return asyncio.run(go())


def test_impressions_arrive_once_in_order_in_few_calls():
    updater = RecordingUpdater(delay_s=0.005)
    log = run_log(updater, 300, max_buffered=1000, max_batch=64)
    delivered = [r for batch in updater.batches for r in batch]
    assert delivered == [f"r{n}" for n in range(300)]
    assert len(updater.batches) <= 10 and max(map(len, updater.batches)) <= 64
    assert log.dropped == 0


def test_a_down_updater_costs_a_bounded_buffer_and_counted_drops():
    updater = RecordingUpdater(fail=True, delay_s=0.05)
    log = run_log(updater, 500, max_buffered=100, max_batch=64)
    assert log.dropped == 500
    assert updater.batches == []


def test_flush_on_shutdown_sends_what_waits_for_its_batch_at_once():
    """With a long batching window (impression_flush_ms), the last impressions would wait for
    it; the gateway's close() flushes them before its channels close."""
    updater = RecordingUpdater()

    async def go() -> tuple[float, ImpressionLog]:
        log = ImpressionLog(SimpleNamespace(updater=updater), max_buffered=100, flush_after_s=30.0)
        for n in range(3):
            log.log(impression(n))
        await asyncio.sleep(0)
        started = asyncio.get_running_loop().time()
        await log.flush(timeout_s=2.0)
        return asyncio.get_running_loop().time() - started, log

    waited, log = asyncio.run(go())
    assert [r for batch in updater.batches for r in batch] == ["r0", "r1", "r2"]
    assert waited < 1.0 and log.dropped == 0


def test_flush_gives_up_after_its_timeout_and_counts_the_rest():
    updater = RecordingUpdater(delay_s=5.0)

    async def go() -> ImpressionLog:
        log = ImpressionLog(SimpleNamespace(updater=updater), max_buffered=100, max_batch=2, flush_after_s=30.0)
        for n in range(5):
            log.log(impression(n))
        await log.flush(timeout_s=0.2)
        return log

    log = asyncio.run(go())
    assert log.dropped == 3  # the first batch of 2 is in flight; the 3 behind it are dropped
