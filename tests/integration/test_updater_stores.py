"""The updater's two event stores pass the same tests: SQLite + memory (one replica) and Redis
(shared by replicas), the latter against a real redis-server started here on loopback."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis

from recmesh.events.eventlog import LoggedEvent
from recmesh.events.stores import RedisStore
from recmesh.v1 import common_pb2
from tests.integration.conftest import opened, wait_for_aof_rewrite

pytestmark = pytest.mark.integration
ET = common_pb2.EventType
CLICK, SEARCH, HIDE, DISLIKE = ET.EVENT_TYPE_CLICK, ET.EVENT_TYPE_SEARCH, ET.EVENT_TYPE_HIDE, ET.EVENT_TYPE_DISLIKE
LIMITS = {"recent_items": 3, "seen_items": 4, "recent_queries": 2}


def ev(event_id, user="u1", item="1", type=CLICK, query="", value=0.5, request_id="", at=1000):
    return LoggedEvent(event_id, user, item, type, query, value, at, request_id)


def test_append_is_atomic_per_batch_and_idempotent_by_event_id(make_store):
    async def go():
        store = await opened(make_store)
        first = await store.append_groups([[ev("a"), ev("b")], [ev("b"), ev("c")]])
        again = await store.append_groups([[ev("c"), ev("d"), ev("d")]])
        view = await store.user_view("u1", 10)
        await store.close()
        return first, again, view

    first, again, view = asyncio.run(go())
    assert [[e.event_id for e in g] for g in first] == [["a", "b"], ["c"]]
    assert [[e.event_id for e in g] for g in again] == [["d"]]
    assert view.event_count == 4


def test_user_view_keeps_recent_seen_and_queries_within_limits(make_store):
    async def go():
        store = await opened(make_store)
        events = [ev(f"e{i}", item=str(i), value=i / 2, request_id=f"r{i}") for i in range(6)]
        events.insert(2, ev("s", item="", type=SEARCH, query="space opera"))
        events.append(ev("q", item="9", query="funny dogs"))
        await store.append_groups([events])
        view = await store.user_view("u1", 2)
        none = await store.user_view("nobody", 2)
        await store.close()
        return view, none

    view, none = asyncio.run(go())
    assert none is None
    assert [e.item_id for e in view.recent] == ["5", "9"]  # oldest first, at most max_recent
    assert view.recent[0] == ev("e5", item="5", value=2.5, request_id="r5")  # every field kept
    assert view.seen == ["3", "4", "5", "9"]  # a search is not an item; oldest dropped past 4
    assert view.queries == ["funny dogs", "space opera"]  # newest first
    assert view.event_count == 8


def test_state_survives_a_new_store_instance(make_store):
    async def go():
        store = await opened(make_store)
        await store.append_groups([[ev("a", item="7"), ev("b", user="u2")]])
        await store.close()
        store = await opened(make_store)  # a restarted (or another) replica
        view = await store.user_view("u1", 5)
        dup = await store.append_groups([[ev("a", item="7")]])
        await store.close()
        return view, dup

    view, dup = asyncio.run(go())
    assert [e.event_id for e in view.recent] == ["a"] and dup == [[]]


def test_delete_user_leaves_nothing_of_them(make_store, redis_server, tmp_path):
    gone = f"gone-{tmp_path.name}"

    async def go():
        store = await opened(make_store)
        await store.append_groups([[ev("a", user=gone, item="1", query="secret"), ev("b", user=gone, item="2"),
                                    ev("c", user="kept", item="1")]])
        deleted = await store.delete_user(gone)
        views = await store.user_view(gone, 5), await store.user_view("kept", 5)
        # "a" is a late retry of a deleted event: deletion wins; "n" is new and starts the user afresh.
        readded = await store.append_groups([[ev("a", user=gone), ev("n", user=gone)]])
        await store.delete_user(gone)
        await store.close()
        return deleted, views, readded

    deleted, (gone_view, kept), readded = asyncio.run(go())
    assert deleted == 2 and gone_view is None and kept.event_count == 1
    assert [e.event_id for g in readded for e in g] == ["n"]
    if make_store.kind == "redis":
        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        p = make_store.prefix
        assert not r.keys(f"{p}:user:{hashlib.sha1(gone.encode()).hexdigest()}*")
        assert not [k for k in r.keys(f"{p}:event:*") if r.get(k) == gone]
        assert all(fields["user_id"] != gone for _, fields in r.xrange(f"{p}:events"))
        wait_for_aof_rewrite(r)
        on_disk = [f for f in redis_server.workdir.rglob("*") if f.is_file() and gone.encode() in f.read_bytes()]
        assert not on_disk  # the append-only file was rewritten without them
    else:
        assert not [f for f in tmp_path.glob("events.sqlite*") if gone.encode() in f.read_bytes()]




def test_hidden_and_disliked_items_are_kept_beside_the_seen_ones(make_store):
    async def go():
        store = await opened(make_store)
        await store.append_groups([[ev("d4", item="4", type=DISLIKE, at=4000), ev("h2", item="2", type=HIDE, at=2000),
                                    ev("c1", item="1", at=1000), ev("d3", item="3", type=DISLIKE, at=3000)]])
        view = await store.user_view("u1", 10)
        await store.close()
        return view

    view = asyncio.run(go())
    assert view.hidden == ["2", "3", "4"]  # hidden or disliked, by time
    assert view.disliked == ["3", "4"]  # the newest dislike last
    assert view.seen == ["1", "2", "3", "4"]  # they are item events too
    assert [e.item_id for e in view.recent] == ["2", "3", "4"]  # at most 3 (LIMITS)


def test_merge_moves_every_event_once_durably_and_leaves_the_source_empty(make_store):
    async def go():
        store = await opened(make_store)
        await store.append_groups([[ev("g1", user="guest", item="1", at=1000),
                                    ev("g2", user="guest", item="2", type=HIDE, at=3000),
                                    ev("gs", user="guest", item="", type=SEARCH, query="space opera", at=3500),
                                    ev("u1", user="user", item="3", at=2000)]])
        moved = await store.merge_users("guest", "user")
        again = await store.merge_users("guest", "user")
        retried = await store.append_groups([[ev("g1", user="guest", item="1", at=1000)]])  # a late retry
        await store.close()
        store = await opened(make_store)  # a restarted (or another) replica reads the merge
        views = await store.user_view("user", 10), await store.user_view("guest", 10)
        await store.close()
        return moved, again, retried, views

    moved, again, retried, (user, guest) = asyncio.run(go())
    assert (moved, again, retried) == (3, 0, [[]])  # a repeat moves nothing; a retry is a duplicate
    assert guest is None
    assert [(e.event_id, e.user_id) for e in user.recent] == [("g1", "user"), ("u1", "user"), ("g2", "user")]
    assert user.event_count == 4 and user.hidden == ["2"] and user.queries == ["space opera"]
    assert user.seen == ["1", "3", "2"]


def test_redis_store_refuses_a_server_that_could_lose_acknowledged_events(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    r.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(RuntimeError, match="appendfsync always"):
            asyncio.run(RedisStore(redis_server.url, "x", dedupe_ttl_s=60, **LIMITS).open())
    finally:
        r.config_set("appendfsync", "always")
