"""The updater's events/state role: Ingest (log first, then apply, then acknowledge, with group
commit), GetUserState's stored part, DeleteUser's and MergeUsers', over one event store (SQLite or Redis,
recmesh/events/stores.py). What committed events mean for online learning is not decided here:
each new event is handed to a callback (services/updater/learning.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Protocol

from prometheus_client import Histogram

from recmesh.common import clock, limits
from recmesh.common.errors import InvalidArgument, Unavailable
from recmesh.common.validation import check_events, check_id, visible_text
from recmesh.events.eventlog import LoggedEvent
from recmesh.events.state import UserStateStore
from recmesh.events.stores import EventStore, LocalStore, RedisStore
from recmesh.v1 import common_pb2, updater_pb2
from services.updater.config import UpdaterSettings

log = logging.getLogger("recmesh.updater")
COMMIT_CALLS = Histogram("recmesh_updater_commit_calls", "Ingest calls sharing one commit (group commit)",
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128))


def to_logged(e: common_pb2.Event, now_ms: int) -> LoggedEvent:
    """The event as logged: a query with nothing visible in it is no query; without a time of
    its own, the event happened when it arrived here, at now_ms (milliseconds since the Unix
    epoch; the state orders by this time)."""
    return LoggedEvent(
        e.event_id, e.user_id, e.item_id, e.type, visible_text(e.query), e.value, e.timestamp_ms or now_ms,
        e.request_id,
    )


def to_proto(e: LoggedEvent) -> common_pb2.Event:
    """A logged event as GetUserState returns it."""
    return common_pb2.Event(
        event_id=e.event_id, user_id=e.user_id, item_id=e.item_id, type=e.type, query=e.query,
        value=e.value, timestamp_ms=e.timestamp_ms, request_id=e.request_id,
    )


class GroupAppender(Protocol):
    """What the committer needs of a store (recmesh.events.stores.EventStore has it)."""

    async def append_groups(self, groups: list[list[LoggedEvent]]) -> list[list[LoggedEvent]]: ...


class GroupCommitter:
    """Ingest calls that arrive while a commit is running share the next one: one transaction
    and one fsync for all of them (group commit, as databases do for their own logs). Each
    caller is answered once its events are durable and applied.

    The store applies state as part of the commit, and on_new (called with each committed new
    event, in commit order, before its caller is answered) runs here - never in the caller, so
    a caller that gives up (deadline, cancel) cannot leave a committed event unapplied."""

    def __init__(self, store: GroupAppender, on_new: Callable[[LoggedEvent], None]):
        self._store = store
        self._on_new = on_new
        self._pending: list[tuple[list[LoggedEvent], asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def append(self, events: list[LoggedEvent]) -> list[LoggedEvent]:
        """Returns the events that were new (not seen by event_id); raises what the store's
        commit raised, in which case none of this commit is durable."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        # Shielded: a cancelled caller stops waiting, the commit it joined goes on.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            COMMIT_CALLS.observe(len(batch))
            try:
                fresh = await self._store.append_groups([events for events, _ in batch])
            except Exception as exc:  # nothing of this commit is durable: every caller hears it
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), new in zip(batch, fresh, strict=True):
                for event in new:
                    try:
                        self._on_new(event)
                    except Exception:  # the events are durable: a failing consumer must not strand callers
                        log.exception("on_new failed for a committed event", extra={"event_id": event.event_id})
                if not future.done():
                    future.set_result(new)


class EventsRole:
    """The event store and the calls served from it. Calls other than open/close are UNAVAILABLE
    until open() has returned (state is complete only once the store is open)."""

    def __init__(self, settings: UpdaterSettings, on_new: Callable[[LoggedEvent], None]):
        """on_new: called on the event loop with each committed new event (not with duplicates)."""
        self._settings = settings
        self.store = make_store(settings)
        self._ready = False
        self._commits = GroupCommitter(self.store, on_new)

    async def open(self) -> None:
        """Opens the store: SQLite replays its log into memory; Redis checks that it is durable
        (RuntimeError when it is not, or cannot be reached) and seeds an empty stream."""
        started = time.perf_counter()
        count = await self.store.open()
        self._ready = True  # from here on, state is complete and calls are served
        log.info("event store open", extra={"store": self._settings.store, "events": count,
                                            "seconds": round(time.perf_counter() - started, 2)})

    def _check_ready(self) -> None:
        if not self._ready:  # state is complete only once the store is open
            raise Unavailable("updater is warming up")

    async def ingest(self, request: updater_pb2.IngestRequest) -> updater_pb2.IngestResponse:
        """Answered once the events are durable and applied. InvalidArgument naming the event
        and field; Unavailable while warming up."""
        check_events(request.events, "events", limits.EVENTS_PER_CALL)  # whatever the gateway let in
        now_ms = clock.now_ms()
        events = [to_logged(e, now_ms) for e in request.events]
        self._check_ready()  # UNAVAILABLE while warming up, before anything is queued
        fresh = await self._commits.append(events)
        return updater_pb2.IngestResponse(accepted=len(fresh), duplicates=len(events) - len(fresh))

    async def user_state(self, user_id: str, max_recent: int) -> updater_pb2.UserState | None:
        """The user's stored state (at most max_recent recent events, 0 = the configured
        default), `skipped` left empty; None when the store holds nothing of the user.
        InvalidArgument for a bad user_id; Unavailable while warming up."""
        check_id(user_id, "user_id")
        if max_recent < 0:  # a negative count sliced the history from the wrong end
            raise InvalidArgument("max_recent", f"must be >= 0 (0 = the default), got {max_recent}")
        self._check_ready()
        view = await self.store.user_view(user_id, max_recent or self._settings.default_max_recent)
        if view is None:
            return None
        reply = updater_pb2.UserState(user_id=user_id)
        reply.recent.extend(to_proto(e) for e in view.recent)
        reply.seen_item_ids.extend(view.seen)
        reply.recent_queries.extend(view.queries)
        reply.event_count = view.event_count
        reply.hidden_item_ids.extend(view.hidden)
        reply.disliked_item_ids.extend(view.disliked)
        return reply

    async def merge_users(self, from_user: str, into_user: str) -> int:
        """Moves every event of from_user to into_user (log and state), durable before it
        returns (as Ingest); returns how many moved - 0 when from_user has none, so a repeated
        merge moves nothing. InvalidArgument naming from_user_id / into_user_id for a bad id,
        or into_user_id when the two are the same; Unavailable while warming up."""
        check_id(from_user, "from_user_id")
        check_id(into_user, "into_user_id")
        if from_user == into_user:
            raise InvalidArgument("into_user_id", "must differ from from_user_id")
        self._check_ready()
        return await self.store.merge_users(from_user, into_user)

    async def delete_user(self, user_id: str) -> int:
        """Deletes the user's events and state; returns how many events there were.
        InvalidArgument for a bad user_id; Unavailable while warming up."""
        check_id(user_id, "user_id")
        self._check_ready()
        return await self.store.delete_user(user_id)

    async def close(self) -> None:
        """Closes the store (Redis: once a pending rewrite of its append-only file is done)."""
        await self.store.close()


def make_store(settings: UpdaterSettings) -> EventStore:
    """The configured store, not yet opened (EventStore.open connects or replays)."""
    s = settings
    if s.store == "redis":
        return RedisStore(s.redis_url, s.redis_prefix, s.recent_items, s.seen_items, s.recent_queries,
                          s.dedupe_ttl_s, s.seed_log, hidden_items=s.hidden_items)
    return LocalStore(s.log_path, UserStateStore(s.recent_items, s.seen_items, s.recent_queries, s.hidden_items))
