"""One Recommend's time budget, split across stages, and its trace (latencies, degradations)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import grpc

from services.gateway.config import GatewaySettings

T = TypeVar("T")
MS = 1e-3


@dataclass
class Trace:
    """What one Recommend met on its way: (stage, ms) per stage called, in call order, and the
    degraded reasons, each once, in the order they happened."""

    latencies: list[tuple[str, float]] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    def degrade(self, reason: str) -> None:
        if reason not in self.degraded:
            self.degraded.append(reason)


class Budget:
    """Deadline = now + min(budget, client's remaining time). Stages get what is left, capped."""

    def __init__(self, budget_s: float, client_remaining_s: float | None, margin_s: float, min_stage_s: float):
        """All in seconds; client_remaining_s None: the client set no deadline."""
        # The one place the total is computed: the stages' deadline and the shedding's
        # observation (share_used) both read it.
        self.total_s = budget_s if client_remaining_s is None else min(budget_s, client_remaining_s)
        self.started = time.perf_counter()
        self.deadline = self.started + self.total_s
        self._margin = margin_s
        self._min_stage = min_stage_s
        self.trace = Trace()

    @classmethod
    def for_recommend(cls, settings: GatewaySettings, client_remaining_s: float | None) -> "Budget":
        """A Recommend's budget from the gateway's settings (budget_ms, reply_margin_ms,
        min_stage_ms), starting now."""
        return cls(settings.budget_ms * MS, client_remaining_s, settings.reply_margin_ms * MS,
                   settings.min_stage_ms * MS)

    def share_used(self, ms: float) -> float:
        """ms (e.g. an answer's total_ms) as a share of this budget's total: 1.0 = all of it."""
        return ms * MS / self.total_s

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def stage_timeout(self, cap_s: float) -> float | None:
        timeout = min(cap_s, self.remaining() - self._margin)
        return timeout if timeout >= self._min_stage else None

    async def call(self, stage: str, cap_s: float, rpc: Callable[[float], Awaitable[T]]) -> T | None:
        """Run one stage with an explicit timeout; on failure or lateness record why and return None."""
        timeout = self.stage_timeout(cap_s)
        if timeout is None:
            self.trace.degrade(f"{stage}:no_budget")
            return None
        started = time.perf_counter()
        try:
            return await rpc(timeout)
        except grpc.aio.AioRpcError as exc:
            self.trace.degrade(f"{stage}:{exc.code().name.lower()}")
            return None
        finally:
            self.trace.latencies.append((stage, (time.perf_counter() - started) * 1000))

    def report(self, reply) -> None:
        """Write the trace into a RecommendResponse: its degraded reasons (after any already
        there), each stage's latency in ms, and total_ms, the time since the budget started."""
        reply.degraded.extend(self.trace.degraded)
        for stage, ms in self.trace.latencies:
            reply.stage_latency.add(stage=stage, ms=ms)
        reply.total_ms = self.elapsed_ms()
