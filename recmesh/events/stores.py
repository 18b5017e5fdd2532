"""Where the updater keeps events and the per-user state the next Recommend reads.

- LocalStore: the SQLite event log on this pod's disk, state in this process's memory (rebuilt
  from the log at start). One updater replica.
- RedisStore: the event stream (a Redis Stream, the log of record) and the per-user state in a
  Redis server shared by any number of updater replicas: an event acknowledged by one replica is
  read by the next GetUserState on any other (read-your-writes through any gateway).

Both append a batch atomically and idempotently by event_id, move one user's events to another
(merge_users: a guest's session at sign-in) atomically, and are durable before they return:
SQLite fsyncs its WAL; Redis must run with `appendonly yes` and `appendfsync always`
(recmesh.tools.redisserver and deploy/k8s do), so that its reply to a script comes after the
write reached the disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, TypeVar

from recmesh.common import limits
from recmesh.events.eventlog import EventLog, LoggedEvent
from recmesh.events.state import UserStateStore
from recmesh.v1 import common_pb2

T = TypeVar("T")
ET = common_pb2.EventType
# For the scripts' copies of recmesh.common.validation.is_item_event and hides_item (they run
# inside Redis).
SEARCH, HIDE, DISLIKE = ET.EVENT_TYPE_SEARCH, ET.EVENT_TYPE_HIDE, ET.EVENT_TYPE_DISLIKE


@dataclass
class UserView:
    """A user's state, in event time order (ties: arrival order)."""

    recent: list[LoggedEvent]  # oldest first, at most the max_recent newest asked for
    seen: list[str]  # item ids, the one whose newest event is oldest first (equal times: by id)
    queries: list[str]  # newest first
    event_count: int
    hidden: list[str] = field(default_factory=list)  # hidden or disliked, the one hidden longest ago first
    disliked: list[str] = field(default_factory=list)  # the newest dislike last


class EventStore(Protocol):
    async def open(self) -> int: ...  # returns how many events it holds (or replayed)
    async def append_groups(self, groups: list[list[LoggedEvent]]) -> list[list[LoggedEvent]]: ...
    async def user_view(self, user_id: str, max_recent: int) -> UserView | None: ...
    async def delete_user(self, user_id: str) -> int: ...
    # Moves from_user's events to into_user (log and state); returns how many moved.
    async def merge_users(self, from_user: str, into_user: str) -> int: ...
    async def close(self) -> None: ...


class LocalStore:
    """SQLite log + in-memory state. State is touched only on the event loop, after the commit:
    reads never race with writes, and state never shows an event the log does not hold."""

    def __init__(self, log_path: Path, state: UserStateStore):
        self._path = log_path
        self.state = state
        self._log: EventLog | None = None
        # SQLite wants one owner thread; this also serialises appends in arrival order.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")
        # Held from a write's start until its state is applied: a merge rebuilds a user's state
        # from the log, and no append committed before that read may be applied after it.
        self._writing = asyncio.Lock()

    async def _run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def open(self) -> int:
        self._log = await self._run(EventLog, self._path)
        return await self._run(self._replay)

    def _replay(self) -> int:
        count = 0
        for event in self._log.replay():
            self.state.apply(event)
            count += 1
        return count

    async def append_groups(self, groups: list[list[LoggedEvent]]) -> list[list[LoggedEvent]]:
        async with self._writing:
            fresh = await self._run(self._log.append_groups, groups)
            for new in fresh:
                for event in new:
                    self.state.apply(event)
        return fresh

    async def merge_users(self, from_user: str, into_user: str) -> int:
        async with self._writing:
            moved, events = await self._run(self._log.merge_users, from_user, into_user)
            if moved:
                self.state.rebuild(into_user, events)
                self.state.delete(from_user)
        return moved

    async def user_view(self, user_id: str, max_recent: int) -> UserView | None:
        state = self.state.get(user_id)
        if state is None:
            return None
        recent = [event for _, _, event in state.timeline[-max_recent:]]
        return UserView(recent, state.seen, state.queries, state.event_count, state.hidden, state.disliked)

    async def delete_user(self, user_id: str) -> int:
        deleted = await self._run(self._log.delete_user, user_id)
        self.state.delete(user_id)
        return deleted

    async def close(self) -> None:
        if self._log is not None:
            await self._run(self._log.close)
        self._pool.shutdown(wait=True)


# What the scripts share (each runs alone on the server, atomically): the arguments every one
# starts with, and how one event enters a user's state. The user's recent list, seen set,
# queries and counters are the state, all in event time order (ties: arrival): recent oldest
# first, queries newest first beside their times (:query_ts), seen scored by the time of the
# item's newest event; hidden and disliked (HIDE, DISLIKE) likewise. Events mostly arrive in
# time order: they are appended; a late one is inserted in its place. Keys are built in the
# scripts: one Redis (or a primary with replicas), not a cluster.
_STATE = """
local p, recent_max, seen_max, queries_max, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5])
local search, hide, dislike, hidden_max = ARGV[6], ARGV[7], ARGV[8], tonumber(ARGV[9])
local HEADER = 9
local stream = p .. ':events'

local function user_key(uid)
  return p .. ':user:' .. redis.sha1hex(uid)  -- hashed: no user id can name another's keys
end

local function insert_recent(key, entry, t)
  local last = redis.call('LINDEX', key, -1)
  if not last or tonumber(cjson.decode(last)[7]) <= t then
    redis.call('RPUSH', key, entry)
  else
    local all, pivot = redis.call('LRANGE', key, 0, -1), nil
    for j = #all, 1, -1 do
      if tonumber(cjson.decode(all[j])[7]) <= t then pivot = all[j]; break end
    end
    if pivot then redis.call('LINSERT', key, 'AFTER', pivot, entry)
    elseif #all < recent_max then redis.call('LPUSH', key, entry)
    else return end  -- older than everything in a full window
  end
  redis.call('LTRIM', key, -recent_max, -1)
end

local function insert_query(u, query, ts, t)
  local qk, tk = u .. ':queries', u .. ':query_ts'
  local times = redis.call('LRANGE', tk, 0, -1)
  local at = 1  -- before the first one not newer (an equal time arrived earlier); no time: older
  while times[at] and tonumber(times[at]) > t do at = at + 1 end
  if at > queries_max then return end
  if at == 1 then
    redis.call('LPUSH', qk, query)
    redis.call('LPUSH', tk, ts)
  else
    local queries = redis.call('LRANGE', qk, 0, -1)
    table.insert(queries, at, query)
    table.insert(times, at, ts)
    redis.call('DEL', qk, tk)
    for _, q in ipairs(queries) do redis.call('RPUSH', qk, q) end
    for _, q in ipairs(times) do redis.call('RPUSH', tk, q) end
  end
  redis.call('LTRIM', qk, 0, queries_max - 1)
  redis.call('LTRIM', tk, 0, queries_max - 1)
end

local function note(key, item, ts, t, bound)
  local last = redis.call('ZSCORE', key, item)
  if not last or tonumber(last) < t then redis.call('ZADD', key, ts, item) end
  local extra = redis.call('ZCARD', key) - bound
  if extra > 0 then redis.call('ZREMRANGEBYRANK', key, 0, extra - 1) end
end

-- One new event (stream entry sid) into user key u's state.
local function apply(u, sid, eid, uid, item, typ, query, value, ts, rid)
  local t = tonumber(ts)
  redis.call('RPUSH', u .. ':log', sid .. ' ' .. eid)
  redis.call('HINCRBY', u, 'count', 1)
  if query ~= '' then insert_query(u, query, ts, t) end
  -- An item event: recmesh.common.validation.is_item_event, and one that hides its item:
  -- hides_item - copied here because this runs inside Redis. Keep them in step.
  if typ ~= search and item ~= '' then
    insert_recent(u .. ':recent', cjson.encode({eid, uid, item, typ, query, value, ts, rid}), t)
    note(u .. ':seen', item, ts, t, seen_max)
    if typ == hide or typ == dislike then
      note(u .. ':hidden', item, ts, t, hidden_max)
      if typ == dislike then note(u .. ':disliked', item, ts, t, hidden_max) end
    end
  end
end
"""
# The keys of a user's state beside the hash at its prefix (the :log list names their stream
# entries and event ids, so that DeleteUser and MergeUsers find them all).
_USER_SUFFIXES = ("log", "recent", "seen", "queries", "query_ts", "hidden", "disliked")


def _user_keys(prefix: str) -> str:
    """A Lua expression: every key of the user whose key prefix is in the Lua variable `prefix`."""
    return ", ".join([prefix] + [f"{prefix} .. ':{suffix}'" for suffix in _USER_SUFFIXES])


# One batch. Per event: its id's dedupe key (kept for dedupe_ttl, holding the stream entry's id)
# is the idempotency check, and so is the keyed hash a deleted user's events leave behind
# (_DELETE_USER); the stream entry is the log of record.
_APPEND = _STATE + """
local salt = redis.call('GET', p .. ':deleted_salt')  -- none until a first DeleteUser
local out = {}
local n = (#ARGV - HEADER) / 8
for i = 0, n - 1 do
  local b = HEADER + i * 8
  local eid, uid, item, typ, query = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local value, ts, rid = ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local key = p .. ':event:' .. eid
  local gone = salt and redis.call('EXISTS', p .. ':gone:' .. redis.sha1hex(salt .. eid)) == 1
  if not gone and redis.call('EXISTS', key) == 0 then
    local sid = redis.call('XADD', stream, '*', 'event_id', eid, 'user_id', uid, 'item_id', item,
      'type', typ, 'query', query, 'value', value, 'timestamp_ms', ts, 'request_id', rid)
    redis.call('SET', key, sid, 'EX', ttl)
    apply(user_key(uid), sid, eid, uid, item, typ, query, value, ts, rid)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

# Every event of one user id moves to another: its stream entry is written again naming the new
# user (the old one deleted), its dedupe key follows it (same expiry), and it enters the new
# user's state as a new event would; the old id is left with nothing. Returns how many moved
# (0 when the old id has no events: a repeated merge moves nothing; each event id is one entry,
# so it is in the new user's history once).
_MERGE = _STATE + """
local from_uid, into_uid = ARGV[HEADER + 1], ARGV[HEADER + 2]
local f, u = user_key(from_uid), user_key(into_uid)
local moved = 0
for _, entry in ipairs(redis.call('LRANGE', f .. ':log', 0, -1)) do
  local sep = string.find(entry, ' ', 1, true)
  local sid, eid = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  local found = redis.call('XRANGE', stream, sid, sid)
  if #found == 1 then
    local e, kv = {}, found[1][2]
    for j = 1, #kv, 2 do e[kv[j]] = kv[j + 1] end
    redis.call('XDEL', stream, sid)
    local nsid = redis.call('XADD', stream, '*', 'event_id', eid, 'user_id', into_uid, 'item_id', e.item_id,
      'type', e.type, 'query', e.query, 'value', e.value, 'timestamp_ms', e.timestamp_ms, 'request_id', e.request_id)
    local key = p .. ':event:' .. eid
    local owner = redis.call('GET', key)
    if owner == sid or owner == from_uid then redis.call('SET', key, nsid, 'KEEPTTL') end
    apply(u, nsid, eid, into_uid, e.item_id, e.type, e.query, e.value, e.timestamp_ms, e.request_id)
    moved = moved + 1
  end
end
redis.call('DEL', """ + _user_keys("f") + """)
return moved
"""

# Each deleted event's dedupe key becomes a keyed hash of its id (sha1 of a random per-prefix salt
# and the id) for the rest of its dedupe window: a retry is a duplicate, and no key or value names
# the user or the event. Returns how many events were deleted.
_DELETE_USER = """
local p, uid, candidate, ttl_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local u = p .. ':user:' .. redis.sha1hex(uid)
local entries = redis.call('LRANGE', u .. ':log', 0, -1)
local salt = redis.call('GET', p .. ':deleted_salt')
if not salt and #entries > 0 then
  salt = candidate
  redis.call('SET', p .. ':deleted_salt', salt)
end
local deleted = 0
for _, entry in ipairs(entries) do
  local sep = string.find(entry, ' ', 1, true)
  local sid, eid = string.sub(entry, 1, sep - 1), string.sub(entry, sep + 1)
  deleted = deleted + redis.call('XDEL', p .. ':events', sid)
  local key = p .. ':event:' .. eid
  local owner = redis.call('GET', key)
  if owner == sid or owner == uid then  -- (older versions kept the user id there)
    local left = redis.call('PTTL', key)
    if left == -1 then left = ttl_ms end
    if tonumber(left) > 0 then
      redis.call('SET', p .. ':gone:' .. redis.sha1hex(salt .. eid), '1', 'PX', left)
    end
    redis.call('DEL', key)
  end
end
redis.call('DEL', """ + _user_keys("u") + """)
return deleted
"""


class RedisStore:
    def __init__(self, url: str, prefix: str, recent_items: int, seen_items: int, recent_queries: int,
                 dedupe_ttl_s: int, seed_log: Path | None = None, seed_batch: int = 2000,
                 hidden_items: int = limits.HIDDEN_ITEMS):
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, decode_responses=True)
        self._url, self._p = url, prefix
        self._limits = (recent_items, seen_items, recent_queries, dedupe_ttl_s)
        self._hidden_items = hidden_items
        self._seed_log, self._seed_batch = seed_log, seed_batch
        self._append = self._redis.register_script(_APPEND)
        self._merge = self._redis.register_script(_MERGE)
        self._rewrite_wanted = False
        self._rewriter: asyncio.Task | None = None
        self._delete = self._redis.register_script(_DELETE_USER)

    def _header(self) -> list:
        """The arguments every script of _STATE starts with."""
        recent, seen, queries, ttl = self._limits
        return [self._p, recent, seen, queries, ttl, int(SEARCH), int(HIDE), int(DISLIKE), self._hidden_items]

    async def open(self) -> int:
        try:
            info = await self._redis.config_get("appendfsync")
        except Exception as exc:
            raise RuntimeError(f"cannot reach Redis at {self._url}: {exc}") from exc
        if info.get("appendfsync") != "always":
            # Without it an acknowledged event can be lost by a Redis crash: refuse to start.
            raise RuntimeError(f"Redis at {self._url} must run with appendonly yes, appendfsync always")
        if self._seed_log is not None and self._seed_log.is_file() and not await self._redis.exists(self._stream):
            await self._seed(self._seed_log)
        return await self._redis.xlen(self._stream)

    @property
    def _stream(self) -> str:
        return f"{self._p}:events"

    async def _seed(self, path: Path) -> None:
        """First start on an empty Redis: the events of a bootstrapped SQLite log (idempotent, so
        replicas starting together import each event once)."""
        log = EventLog(path)
        try:
            batch: list[LoggedEvent] = []
            for event in log.replay():
                batch.append(event)
                if len(batch) == self._seed_batch:
                    await self.append_groups([batch])
                    batch = []
            if batch:
                await self.append_groups([batch])
        finally:
            log.close()

    async def append_groups(self, groups: list[list[LoggedEvent]]) -> list[list[LoggedEvent]]:
        args = self._header()
        flat = [e for events in groups for e in events]
        for e in flat:
            args += [e.event_id, e.user_id, e.item_id, int(e.type), e.query, repr(float(e.value)),
                     int(e.timestamp_ms), e.request_id]
        flags = iter(await self._append(args=args)) if flat else iter(())
        return [[e for e in events if next(flags) == 1] for events in groups]

    def _user_key(self, user_id: str) -> str:
        """The prefix of a user's keys: the id's SHA-1, as the scripts make it (redis.sha1hex),
        so that no user id - "alice:recent", say - can name another user's keys."""
        return f"{self._p}:user:{hashlib.sha1(user_id.encode()).hexdigest()}"

    async def user_view(self, user_id: str, max_recent: int) -> UserView | None:
        u = self._user_key(user_id)
        async with self._redis.pipeline(transaction=True) as pipe:  # one consistent snapshot
            pipe.hget(u, "count").lrange(f"{u}:recent", -max_recent, -1).zrange(f"{u}:seen", 0, -1)
            pipe.lrange(f"{u}:queries", 0, -1).zrange(f"{u}:hidden", 0, -1).zrange(f"{u}:disliked", 0, -1)
            count, recent, seen, queries, hidden, disliked = await pipe.execute()
        if count is None:
            return None
        events = []
        for raw in recent:
            eid, uid, item, typ, query, value, ts, rid = json.loads(raw)
            events.append(LoggedEvent(eid, uid, item, int(typ), query, float(value), int(ts), rid))
        return UserView(events, seen, queries, int(count), hidden, disliked)

    async def merge_users(self, from_user: str, into_user: str) -> int:
        """Moves from_user's events to into_user in one script (_MERGE): durable when Redis
        answers (appendfsync always). The moved events' stream entries are written anew, at the
        stream's end, naming into_user."""
        return int(await self._merge(args=[*self._header(), from_user, into_user]))

    async def delete_user(self, user_id: str) -> int:
        """Returns how many events were deleted. A retry of one of them within the dedupe window
        is a duplicate (_DELETE_USER).

        Gone from memory at once, and from the disk when Redis has rewritten its append-only
        file (asked for here; Redis runs it in the background and merges overlapping asks),
        which until then still holds the commands that wrote the user's events. Not yet: the
        bytes of their stream entries, which XDEL only flags as deleted until every entry of
        the stream node holding them is deleted (tests/integration/test_faults_updater.py)."""
        deleted = int(await self._delete(args=[self._p, user_id, secrets.token_hex(16), self._limits[3] * 1000]))
        self._rewrite_wanted = True
        if self._rewriter is None or self._rewriter.done():
            self._rewriter = asyncio.get_running_loop().create_task(self._rewrite_aof())
        return deleted

    async def _rewrite_aof(self) -> None:
        """A rewrite started before a delete still carries its key names in the tail file:
        ask again until a rewrite has started after the last delete."""
        while self._rewrite_wanted:
            info = await self._redis.info("persistence")
            if info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
                await asyncio.sleep(0.05)
                continue
            self._rewrite_wanted = False
            try:
                await self._redis.bgrewriteaof()
            except Exception as exc:  # raced with another rewrite: try again
                if "in progress" not in str(exc):
                    raise
                self._rewrite_wanted = True

    async def close(self) -> None:
        if self._rewriter is not None:
            await self._rewriter  # deletions reach the disk before the store goes
        await self._redis.aclose()
