"""Asking the mesh for a full answer, or for a shed one, in a behaviour test.

A stage can miss its deadline on a busy 2-core host (the user state read, the encoder, the
ranker), and the gateway then answers degraded, as designed; degradation has tests of its own.
A test of what the *full* path does asks again until a reply came back undegraded, so that a
scheduling gap is not read as a behaviour fault. Every behaviour test uses this one rule.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import grpc

from recmesh.v1 import recommendations_pb2 as R

T = TypeVar("T")
# Under the gateway's min_admit_ms (15): a call with this deadline is shed as a late arrival,
# whatever the load.
LATE_S = 0.014


def undegraded(call: Callable[[], R.RecommendResponse], tries: int = 20,
               pause_s: float = 0.1) -> R.RecommendResponse:
    """The first undegraded reply of ``call`` in ``tries`` calls, ``pause_s`` apart (by default
    over about 2 s: a stage restarted by the test before is reached again only after the
    gateway's channel backoff, up to 1 s - recmesh.common.channels.FAST_RECONNECT).

    Raises AssertionError naming the last reply's degradations when every try was degraded:
    a path that never answers in full is a fault, not noise.
    """
    for attempt in range(tries):
        reply = call()
        if not reply.degraded:
            return reply
        if attempt + 1 < tries:
            time.sleep(pause_s)
    raise AssertionError(f"degraded {tries} times in a row: {list(reply.degraded)}")


def answered(call: Callable[[], T], tries: int = 5) -> T:
    """The first answer to a call with a LATE_S deadline. One that misses it on the way (a busy
    2-core host: the client's own serialisation, a scheduling gap) is asked again; one answer
    is needed, and a late answer from the gateway would miss every try."""
    for _ in range(tries):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    raise AssertionError(f"no answer within {LATE_S * 1000:.0f} ms in {tries} tries")


def report_when(client, name: str, done: Callable[[dict], bool], timeout_s: float = 20.0) -> dict:
    """An experiment's report (RecmeshClient.experiment_report) once done(report) holds: answers
    and feedback are recorded off the request path (impressions in batches, feedback after its
    commit); the last one after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = client.experiment_report(name)
        if done(report) or time.monotonic() > deadline:
            return report
        time.sleep(0.2)
