"""Locust driving the same Recommend calls as `recmesh load`, for the cross-check
(`python -m recmesh.tools.bench.crosscheck`): each simulated user asks once per second (constant
throughput), so N users spawned at N per second offer N evenly spread Recommend/s; 30 % carry
typed text; deadline 100 ms. With RECMESH_LOCUST_SAMPLES set, every call's response time (ms)
is also written there as JSON when the run ends: Locust's own percentiles are rounded to whole
milliseconds, too coarse at 10-20 ms to compare within 10 %."""

from __future__ import annotations

import json
import os
import time

import grpc
from locust import User, constant_throughput, events, task

from recmesh.common.heap import freeze_heap
from recmesh.tools.loadtest import Sessions
from recmesh.v1 import recommendations_pb2_grpc

SESSIONS = Sessions.from_movielens()
freeze_heap()  # as the harness does: neither tool's numbers carry its own GC pauses
# Not the harness's sequence: run side by side, the same users at the same moments would let
# whichever tool comes second reuse the interest the first one paid for.
SESSIONS.rng.seed(8)
SAMPLES_MS: list[float] = []
# Blocking gRPC calls: grpc.experimental.gevent made each call ~60 ms slower here, and calls on
# gevent's thread pool as much (measured: p50 69-75 ms against 12 ms). A blocking call holds
# the other simulated users back while it lasts, which delays their next call's start, not its
# timing; at the cross-check's rate (20/s, ~13 ms each) roughly one call in four can start late
# (an estimate from rate x latency, not measured).


class RecommendUser(User):
    wait_time = constant_throughput(1)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host)
        self.stub = recommendations_pb2_grpc.RecommendationsStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def recommend(self) -> None:
        request = SESSIONS.recommend(0.3, 0.1)
        started = time.perf_counter()
        error = None
        try:
            self.stub.Recommend(request, timeout=0.1)
        except grpc.RpcError as exc:
            error = exc
        elapsed_ms = (time.perf_counter() - started) * 1000
        SAMPLES_MS.append(elapsed_ms)
        self.environment.events.request.fire(request_type="grpc", name="Recommend", response_time=elapsed_ms,
                                             response_length=0, exception=error, context={})


@events.quitting.add_listener
def write_samples(environment, **kwargs) -> None:
    path = os.environ.get("RECMESH_LOCUST_SAMPLES")
    if path:
        with open(path, "w") as f:
            json.dump(SAMPLES_MS, f)
