"""Asking the mesh for a full answer in a behaviour test.

A stage can miss its deadline on a busy 2-core host (the user state read, the encoder, the
ranker), and the gateway then answers degraded, as designed; degradation has tests of its own.
A test of what the *full* path does asks again until a reply came back undegraded, so that a
scheduling gap is not read as a behaviour fault. Every behaviour test uses this one rule.
"""

from __future__ import annotations

import time
from typing import Callable

from recmesh.v1 import recommendations_pb2 as R


def undegraded(call: Callable[[], R.RecommendResponse], tries: int = 10,
               pause_s: float = 0.05) -> R.RecommendResponse:
    """The first undegraded reply of ``call`` in ``tries`` calls, ``pause_s`` apart.

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
