"""The console's calls to the gateway's public API: every call with the console's bearer token
and an explicit deadline; a gateway error is kept (code + details) for the page to show."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recmesh.common import tracing
from recmesh.common.channels import FAST_RECONNECT, GRPC_OPTIONS
from recmesh.common.transport import PREVIEW_HEADER, aio_channel
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc
from services.console.config import ConsoleSettings


class GatewayError(Exception):
    """The gateway refused or failed a call: its status code and details, shown as they are."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{method}: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details

    @property
    def http_status(self) -> int:
        """INVALID_ARGUMENT and NOT_FOUND are the request's fault (400, 404); a refusal of the
        console's own token is 502 like any other gateway failure - the person asking cannot
        fix it."""
        return {grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.NOT_FOUND: 404}.get(self.code, 502)


@dataclass
class Lookup:
    """What the user page shows: the profile and the recommendations now, without and (when a
    query was typed) with the query."""

    profile: recommendations_pb2.UserProfile
    plain: recommendations_pb2.RecommendResponse
    with_query: recommendations_pb2.RecommendResponse | None


class Gateway:
    def __init__(self, settings: ConsoleSettings):
        self._s = settings
        # Traced like the gateway's own calls when tracing is on: a console lookup is one trace.
        self._channel = aio_channel(settings.gateway_addr, settings, GRPC_OPTIONS + FAST_RECONNECT,
                                    tracing.client_interceptors())
        self._stub = recommendations_pb2_grpc.RecommendationsStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = (("authorization", f"Bearer {settings.gateway_token}"),) if settings.gateway_token else ()

    async def _call(self, method: str, request, preview: bool = False):
        metadata = (*self._metadata, (PREVIEW_HEADER, "1")) if preview else self._metadata
        try:
            return await getattr(self._stub, method)(request, timeout=self._s.call_timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise GatewayError(method, exc.code(), exc.details() or exc.code().name) from None

    async def profile(self, user_id: str) -> recommendations_pb2.UserProfile:
        return await self._call("GetUserProfile", recommendations_pb2.GetUserProfileRequest(user_id=user_id))

    async def recommend(self, user_id: str, k: int, query: str = "") -> recommendations_pb2.RecommendResponse:
        """A preview: the user is not shown these, so the gateway logs no impression (looking
        must not change the user's next answers)."""
        return await self._call("Recommend", recommendations_pb2.RecommendRequest(user_id=user_id, k=k, query=query),
                                preview=True)

    async def user(self, user_id: str, k: int, query: str) -> Lookup:
        """Profile, the list now and the list with the query, asked at the same time."""
        calls = [self.profile(user_id), self.recommend(user_id, k)]
        if query:
            calls.append(self.recommend(user_id, k, query))
        replies = await asyncio.gather(*calls)
        return Lookup(replies[0], replies[1], replies[2] if query else None)

    async def similar_to_item(self, item_id: str, k: int) -> recommendations_pb2.RecommendResponse:
        return await self._call("SimilarItems", recommendations_pb2.SimilarItemsRequest(item_id=item_id, k=k))

    async def search(self, text: str, k: int) -> recommendations_pb2.RecommendResponse:
        """Catalog search: the items closest to a free text (SimilarItems' text anchor)."""
        return await self._call("SimilarItems", recommendations_pb2.SimilarItemsRequest(text=text, k=k))

    async def experiments(self) -> list[common_pb2.Experiment]:
        """Every experiment, running and stopped, in creation order."""
        return list((await self._call("ListExperiments", common_pb2.ListExperimentsRequest())).experiments)

    async def experiment_report(self, name: str) -> dict:
        """The experiment's report (recmesh/experiments/report.py summarize, plus its state)."""
        reply = await self._call("GetExperimentReport", common_pb2.GetExperimentReportRequest(name=name))
        return json.loads(reply.report_json)

    async def serving(self) -> bool:
        """The gateway's grpc.health.v1 says SERVING (the console's readiness)."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=self._s.call_timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()
