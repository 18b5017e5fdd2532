"""Locust driving the same Recommend calls as `recmesh load`, for the cross-check
(`python -m recmesh.bench.crosscheck`): each simulated user asks once per second (constant
throughput), so N users offer N Recommend/s; 30 % carry typed text; deadline 100 ms."""

from __future__ import annotations

import time

import grpc
from locust import User, constant_throughput, task

from recmesh.loadtest import Sessions
from recmesh.v1 import recommendations_pb2_grpc

SESSIONS = Sessions.from_movielens()
# grpc is not made cooperative with gevent (grpc.experimental.gevent): measured here, that
# integration itself adds ~60 ms per call. A blocking call holds the other simulated users back
# for its duration, which delays their next call but not the timing of any call: at the cross-
# check's low rates (one core's worth of calls at most) the offered rate is still met.


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
        self.environment.events.request.fire(request_type="grpc", name="Recommend",
                                             response_time=(time.perf_counter() - started) * 1000,
                                             response_length=0, exception=error, context={})
