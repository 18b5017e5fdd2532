"""One Recommend's time budget, split across stages, and its trace (latencies, degradations)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

import grpc

T = TypeVar("T")


@dataclass
class Trace:
    latencies: list[tuple[str, float]] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)

    def degrade(self, reason: str) -> None:
        if reason not in self.degraded:
            self.degraded.append(reason)


class Budget:
    """Deadline = now + min(budget, client's remaining time). Stages get what is left, capped."""

    def __init__(self, budget_s: float, client_remaining_s: float | None, margin_s: float, min_stage_s: float):
        total = self.total(budget_s, client_remaining_s)
        self.started = time.perf_counter()
        self.deadline = self.started + total
        self._margin = margin_s
        self._min_stage = min_stage_s
        self.trace = Trace()

    @staticmethod
    def total(budget_s: float, client_remaining_s: float | None) -> float:
        return budget_s if client_remaining_s is None else min(budget_s, client_remaining_s)

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
