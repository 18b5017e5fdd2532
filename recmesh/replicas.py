"""Calling gateway replicas from asyncio so that losing one costs no answers.

Round robin over the replicas a caller was given. A call that finds its replica unreachable
(UNAVAILABLE: killed, restarting) is sent again at once to another one, within the same
deadline; a call its replica has not answered after `hedge_after_s` (stopped, hung, overloaded)
is hedged: the same request goes to another replica and the first answer wins, the other is
cancelled. Either way the replica is avoided for `avoid_s`, so that the calls after it do not
pay the same wait. Extra attempts are throttled like gRPC's retryThrottling: each call earns a
tenth of a token, each extra attempt spends one, so they stay near 10 % of calls at most even
when every replica is slow.

gRPC's round_robin policy with a retryPolicy covers the kill, not the hang: C-core does not
implement hedging. Hedge only idempotent calls (Recommend; TrackEvents dedupes by event_id and
is retried but not hedged)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from recmesh.common.channels import FAST_RECONNECT
from recmesh.v1 import recommendations_pb2_grpc

MAX_TOKENS = 10.0
TOKENS_PER_CALL = 0.1


@dataclass
class Replica:
    target: str
    channel: grpc.aio.Channel
    stub: recommendations_pb2_grpc.RecommendationsStub
    avoid_until: float = 0.0


class Replicas:
    def __init__(self, targets: Sequence[str], hedge_after_s: float = 0.05, avoid_s: float = 1.0):
        if not targets:
            raise ValueError("targets: give at least one gateway address")
        self.targets, self.hedge_after_s, self.avoid_s = list(targets), hedge_after_s, avoid_s
        self.replicas: list[Replica] = []
        self._turn = itertools.count()
        self._tokens = MAX_TOKENS
        self.extra_attempts = 0  # hedges and retries sent, for reports

    async def __aenter__(self) -> "Replicas":
        for target in self.targets:
            # A restarted replica is reconnected within a second; while it is down, calls routed
            # to it fail fast and go elsewhere.
            channel = grpc.aio.insecure_channel(target, options=FAST_RECONNECT)
            self.replicas.append(Replica(target, channel, recommendations_pb2_grpc.RecommendationsStub(channel)))
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(r.channel.close() for r in self.replicas))

    def _pick(self, now: float, besides: Replica | None = None) -> Replica | None:
        """The next replica in turn that is not being avoided; if all are, the next one in turn
        (avoidance is a preference, never a reason not to try); None if only `besides` exists."""
        others = [r for r in self.replicas if r is not besides]
        if not others:
            return None
        turn = next(self._turn)
        rotated = others[turn % len(others):] + others[:turn % len(others)]
        return next((r for r in rotated if r.avoid_until <= now), rotated[0])

    def _may_send_extra(self) -> bool:
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        self.extra_attempts += 1
        return True

    async def call(self, method: str, request, timeout: float, hedge: bool = True):
        """One unary call of `method` (a Recommendations method name) within `timeout` seconds
        overall; returns the first reply, or raises the last attempt's grpc.aio.AioRpcError."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout
        self._tokens = min(MAX_TOKENS, self._tokens + TOKENS_PER_CALL)
        first = self._pick(now)
        if len(self.replicas) == 1:
            return await getattr(first.stub, method)(request, timeout=timeout)

        def attempt(replica: Replica) -> asyncio.Task:
            rpc = getattr(replica.stub, method)(request, timeout=max(deadline - loop.time(), 0.001))
            return asyncio.ensure_future(rpc)

        pending = {attempt(first): first}
        hedge_at = now + self.hedge_after_s if hedge else None
        extra_sent, last_error = False, None
        try:
            while pending:
                wait = None if extra_sent or hedge_at is None else max(hedge_at - loop.time(), 0.0)
                done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                now = loop.time()
                if not done:  # no answer in hedge_after_s: try another replica alongside
                    slow = next(iter(pending.values()))
                    slow.avoid_until = now + self.avoid_s
                    extra_sent = True
                    other = self._pick(now, besides=slow)
                    if other is not None and now < deadline and self._may_send_extra():
                        pending[attempt(other)] = other
                    continue
                for task in done:
                    replica = pending.pop(task)
                    try:
                        return task.result()
                    except grpc.aio.AioRpcError as exc:
                        last_error = exc
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            continue
                        replica.avoid_until = now + self.avoid_s
                        if extra_sent or now >= deadline:
                            continue
                        extra_sent = True
                        other = self._pick(now, besides=replica)
                        if other is not None and self._may_send_extra():
                            pending[attempt(other)] = other
            raise last_error
        finally:
            for task in pending:
                if task.done() and not task.cancelled():
                    task.exception()  # an answer lost to a faster one; nothing to report
                task.cancel()
