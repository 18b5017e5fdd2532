import asyncio
import time

import grpc
import pytest

from services.gateway.budget import Budget


def test_client_deadline_wins_when_shorter():
    b = Budget(budget_s=0.1, client_remaining_s=0.03, margin_s=0.005, min_stage_s=0.002)
    assert 0.02 < b.stage_timeout(1.0) <= 0.025


def test_stage_cap_and_skip_when_spent():
    b = Budget(budget_s=0.1, client_remaining_s=None, margin_s=0.005, min_stage_s=0.002)
    assert b.stage_timeout(0.01) == pytest.approx(0.01)
    b.deadline = time.perf_counter() + 0.006
    assert b.stage_timeout(1.0) is None


def test_failed_and_skipped_stages_are_recorded():
    b = Budget(budget_s=0.1, client_remaining_s=None, margin_s=0.0, min_stage_s=0.002)

    async def fail(timeout):
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())

    async def ok(timeout):
        return timeout

    assert asyncio.run(b.call("ranker", 0.02, fail)) is None
    assert asyncio.run(b.call("encoder", 0.02, ok)) == pytest.approx(0.02)
    b.deadline = time.perf_counter()
    assert asyncio.run(b.call("retrieval", 0.02, ok)) is None
    assert b.trace.degraded == ["ranker:unavailable", "retrieval:no_budget"]
    assert [s for s, _ in b.trace.latencies] == ["ranker", "encoder"]
