"""recmesh.v1.Updater: log first, then apply, then acknowledge."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import grpc

from recmesh.common.errors import Unavailable, rpc_method
from recmesh.common.server import Service
from recmesh.common.validation import check_events, check_id
from recmesh.v1 import common_pb2, updater_pb2, updater_pb2_grpc
from services.updater.config import UpdaterSettings
from services.updater.eventlog import EventLog, LoggedEvent
from services.updater.state import UserStateStore

T = TypeVar("T")
log = logging.getLogger("recmesh.updater")


def to_logged(e: common_pb2.Event, now_ms: int) -> LoggedEvent:
    return LoggedEvent(
        e.event_id, e.user_id, e.item_id, e.type, e.query.strip(), e.value, e.timestamp_ms or now_ms, e.request_id
    )


def to_proto(e: LoggedEvent) -> common_pb2.Event:
    return common_pb2.Event(
        event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, type=e.type, query=e.query,
        value=e.value, timestamp_ms=e.timestamp_ms, request_id=e.request_id,
    )


class UpdaterServicer(updater_pb2_grpc.UpdaterServicer):
    def __init__(self, settings: UpdaterSettings):
        self._settings = settings
        self._log: EventLog | None = None
        self._state = UserStateStore(settings.recent_items, settings.seen_items, settings.recent_queries)
        # SQLite wants one owner thread; this also serialises log appends in arrival order.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")

    async def _run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def load(self) -> None:
        started = time.perf_counter()
        event_log = await self._run(EventLog, self._settings.log_path)
        count = await self._run(self._replay, event_log)
        self._log = event_log  # from here on, state is complete and calls are served
        log.info("state rebuilt from log", extra={"events": count, "users": len(self._state),
                                                  "seconds": round(time.perf_counter() - started, 2)})

    def _replay(self, event_log: EventLog) -> int:
        count = 0
        for event in event_log.replay():
            self._state.apply(event)
            count += 1
        return count

    @property
    def event_log(self) -> EventLog:
        if self._log is None:
            raise Unavailable("updater is warming up")
        return self._log

    @rpc_method
    async def Ingest(self, request, context):
        check_events(request.events, "events", self._settings.max_events_per_call)
        now_ms = int(time.time() * 1000)
        events = [to_logged(e, now_ms) for e in request.events]
        fresh = await self._run(self.event_log.append, events)
        # State is touched only on the event loop, after the commit: reads never race
        # with writes, and state never shows an event the log does not hold.
        for event in fresh:
            self._state.apply(event)
        return updater_pb2.IngestResponse(accepted=len(fresh), duplicates=len(events) - len(fresh))

    @rpc_method
    async def GetUserState(self, request, context):
        check_id(request.user_id, "user_id")
        if self._log is None:  # state is complete only once the log has been replayed
            raise Unavailable("updater is warming up")
        reply = updater_pb2.UserState(user_id=request.user_id)
        state = self._state.get(request.user_id)
        if state is None:
            return reply
        max_recent = request.max_recent or self._settings.default_max_recent
        recent = list(state.recent)[-max_recent:]
        reply.recent.extend(to_proto(e) for e in recent)
        reply.seen_item_ids.extend(state.seen.keys())
        reply.recent_queries.extend(state.queries)
        reply.event_count = state.event_count
        return reply

    @rpc_method
    async def DeleteUser(self, request, context):
        user_id = check_id(request.user_id, "user_id")

        deleted = await self._run(self.event_log.delete_user, user_id)
        self._state.delete(user_id)
        return updater_pb2.DeleteUserStateResponse(events_deleted=deleted)

    async def close(self) -> None:
        if self._log is not None:
            await self._run(self._log.close)
        self._pool.shutdown(wait=True)


def build_service(settings: UpdaterSettings) -> Service:
    servicer = UpdaterServicer(settings)

    def register(server: grpc.aio.Server) -> list[str]:
        updater_pb2_grpc.add_UpdaterServicer_to_server(servicer, server)
        return [updater_pb2.DESCRIPTOR.services_by_name["Updater"].full_name]

    return Service("updater", register, servicer.load, servicer.close)
