"""Adaptive load shedding for Recommend, in rungs: brown out before blacking out.

When the mesh answers slower than it should (its CPU saturated: every stage queues), a fixed
in-flight cap does not help: calls are admitted, each stage does its work and then misses its
deadline, and the answer is degraded *and* late. Instead, a share of Recommends skips work at
the door, cheapest loss first - the ranker (retrieval order), then the encoder as well (the
user's last interest vector or session direction; a typed query is still encoded), and only
then the whole pipeline (the popular list) - so that everything is answered in time, as
personal as the CPU allows.

The pressure (0 to len(RUNGS)) tracks a tail quantile of the answered Recommends' latency:
each one that took more than `slow` of its budget while other Recommends were in flight raises it
by `step` (one slow call alone is a cold cache or a fault, not overload: nothing to shed), each
faster one lowers it by
step * slow_share / (1 - slow_share), so it settles where about `slow_share` of them are slow -
zero when the mesh keeps up, as much as needed when it does not. A call takes rung r with
probability clamp(pressure - r + 1) - e.g. pressure 1.3: every call skips the ranker, 30 %
the encoder too. Once no answer has been slow for `quiet_s`, the pressure also drains at
`drain_per_s`: slowness that has passed (a fault, a burst) stops costing answers within a few
seconds, where the per-answer steps alone would take hundreds of answers."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable

# The ladder: rung() returns one of these; RUNGS[r - 1] is the degraded reason rung r adds.
FULL, SKIP_RANKER, SKIP_ENCODER, SHED = 0, 1, 2, 3
RUNGS = ("brownout:ranker", "brownout:encoder", "shed:slow_mesh")


@dataclass(frozen=True)
class Plan:
    """How one Recommend is answered: in full, skipping the ranker and/or the encoder, or shed
    (the popular list at once, no pipeline). `reasons` are the degraded reasons the answer
    names first, in order: for a shed call, why it was shed; else each rung it skipped."""

    skip_ranker: bool = False
    skip_encoder: bool = False
    shed: bool = False
    reasons: tuple[str, ...] = ()
    # The ranker's exploration share for this call (an experiment's variant); None: the ranker's own.
    exploration: float | None = None
    # The ranker parameter version for this call (an experiment's variant); "": the ranker's current.
    parameters_version: str = ""
    # The interest model for this call (an experiment's variant); "": the encoder's default.
    interest_model_version: str = ""

    @classmethod
    def shed_at_door(cls, reason: str) -> "Plan":
        """Shed for `reason` (e.g. "shed:overload"): nothing of the pipeline runs."""
        return cls(skip_ranker=True, skip_encoder=True, shed=True, reasons=(reason,))

    @classmethod
    def for_rung(cls, rung: int) -> "Plan":
        """The plan of a rung of the ladder (FULL..SHED): the one place rung numbers are read."""
        if rung >= SHED:
            return cls.shed_at_door(RUNGS[SHED - 1])
        return cls(skip_ranker=rung >= SKIP_RANKER, skip_encoder=rung >= SKIP_ENCODER, reasons=RUNGS[:rung])


IN_FULL = Plan()


class AdaptiveShedding:
    def __init__(self, slow: float, slow_share: float = 0.02, step: float = 0.1, max_shed: float = 0.9,
                 quiet_s: float = 1.0, drain_per_s: float = 1.0, draw: Callable[[], float] = random.random):
        self.slow = slow  # a share of the call's budget; 0: off
        self.pressure = 0.0
        self._raise = step
        self._lower = step * slow_share / (1 - slow_share)
        # Some calls always go through in full or browned out: they are how recovery is seen.
        self._max = len(RUNGS) - 1 + max_shed
        self._quiet_s = quiet_s
        self._drain_per_s = drain_per_s
        self._draw = draw
        self._drained_until = 0.0  # drained up to this time, after the last slow answer's quiet_s

    def rung(self, now: float | None = None) -> int:
        """How far down the ladder this call goes: FULL (0), or 1 + the index of its rung in RUNGS."""
        self._drain(time.monotonic() if now is None else now)
        if self.pressure <= 0:
            return FULL
        u = self._draw()
        return sum(u < self.pressure - r for r in range(len(RUNGS)))

    def plan(self, now: float | None = None) -> Plan:
        """This call's plan: its rung (see rung()) decoded."""
        return Plan.for_rung(self.rung(now))

    def observe(self, budget_used: float, others_in_flight: int = 1, now: float | None = None) -> None:
        """One answered (not shed) Recommend: its time from arrival to answer / its budget, and how
        many other Recommends were in progress when it was answered."""
        if self.slow <= 0:
            return
        now = time.monotonic() if now is None else now
        self._drain(now)
        if budget_used > self.slow and others_in_flight > 0:
            self.pressure = min(self._max, self.pressure + self._raise)
            self._drained_until = now + self._quiet_s
        else:
            self.pressure = max(0.0, self.pressure - self._lower)

    def _drain(self, now: float) -> None:
        if self.pressure > 0 and now > self._drained_until:
            self.pressure = max(0.0, self.pressure - self._drain_per_s * (now - self._drained_until))
        self._drained_until = max(self._drained_until, now)
