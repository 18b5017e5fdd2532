"""A small client for backend teams: one object, plain Python arguments, recmesh.v1 replies.

    from recmesh.client import RecmeshClient
    with RecmeshClient("localhost:50060") as rm:
        rm.track("u42", "1", "click")
        reply = rm.recommend("u42", query="space opera", k=10)
        for item in reply.items:
            print(item.title, item.reasons)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from recmesh.common.clock import now_ms
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc

EVENT_TYPES = {
    name.removeprefix("EVENT_TYPE_").lower(): value
    for name, value in common_pb2.EventType.items()
    if value != common_pb2.EventType.EVENT_TYPE_UNSPECIFIED
}


@dataclass
class Event:
    user_id: str
    item_id: str
    type: str  # view, click, add_to_cart, purchase, rate, search
    query: str = ""
    value: float = 0.0
    timestamp_ms: int = 0
    request_id: str = ""
    # The idempotency key: resend the same event with the same id and it is applied once.
    event_id: str = ""

    def to_proto(self) -> common_pb2.Event:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; one of {sorted(EVENT_TYPES)}")
        return common_pb2.Event(
            event_id=self.event_id or uuid.uuid4().hex,
            user_id=self.user_id,
            item_id=self.item_id,
            type=EVENT_TYPES[self.type],
            query=self.query,
            value=self.value,
            timestamp_ms=self.timestamp_ms or now_ms(),
            request_id=self.request_id,
        )


class RecmeshClient:
    def __init__(self, target: str = "localhost:50060", timeout_s: float = 1.0, channel: grpc.Channel | None = None,
                 token: str | None = None):
        """token: the API key, sent as `authorization: Bearer <token>` (when the gateway has keys)."""
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = recommendations_pb2_grpc.RecommendationsStub(self._channel)
        self.timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def recommend(
        self,
        user_id: str,
        query: str = "",
        k: int | None = None,
        include_categories: Iterable[str] = (),
        exclude_categories: Iterable[str] = (),
        exclude_item_ids: Iterable[str] = (),
        exclude_seen: bool = True,
        surface: str = "",
        locale: str = "",
        diversity: float = 0.0,
        timeout_s: float | None = None,
    ) -> recommendations_pb2.RecommendResponse:
        request = recommendations_pb2.RecommendRequest(
            user_id=user_id,
            query=query,
            diversity=diversity,
            filters=common_pb2.Filters(
                include_categories=include_categories,
                exclude_categories=exclude_categories,
                exclude_item_ids=exclude_item_ids,
                exclude_seen=exclude_seen,
            ),
            context=common_pb2.Context(surface=surface, locale=locale),
        )
        if k is not None:
            request.k = k
        return self._stub.Recommend(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)

    def track(self, user_id: str, item_id: str, type: str, **fields) -> recommendations_pb2.TrackEventsResponse:
        return self.track_events([Event(user_id, item_id, type, **fields)])

    def track_events(self, events: Iterable[Event], timeout_s: float | None = None):
        request = recommendations_pb2.TrackEventsRequest(events=[e.to_proto() for e in events])
        return self._stub.TrackEvents(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def upsert_items(self, items: Iterable[common_pb2.Item | dict], timeout_s: float | None = None):
        protos = [it if isinstance(it, common_pb2.Item) else common_pb2.Item(**it) for it in items]
        request = recommendations_pb2.UpsertItemsRequest(items=protos)
        return self._stub.UpsertItems(request, timeout=timeout_s or max(self.timeout_s, 10.0), metadata=self._metadata)

    def delete_items(self, item_ids: Iterable[str], timeout_s: float | None = None):
        request = recommendations_pb2.DeleteItemsRequest(item_ids=list(item_ids))
        return self._stub.DeleteItems(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def profile(self, user_id: str, timeout_s: float | None = None) -> recommendations_pb2.UserProfile:
        request = recommendations_pb2.GetUserProfileRequest(user_id=user_id)
        return self._stub.GetUserProfile(request, timeout=timeout_s or self.timeout_s, metadata=self._metadata)

    def delete_user(self, user_id: str, timeout_s: float | None = None):
        request = recommendations_pb2.DeleteUserRequest(user_id=user_id)
        return self._stub.DeleteUser(request, timeout=timeout_s or max(self.timeout_s, 5.0), metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "RecmeshClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
