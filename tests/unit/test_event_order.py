"""The updater orders a user's events by their own time, not by when they arrived; a deleted
user's events stay deleted when a client retries them; the counts it answers count effects."""

import asyncio

from recmesh.events.eventlog import EventLog, LoggedEvent
from recmesh.events.state import UserStateStore
from recmesh.events.stores import LocalStore
from recmesh.v1 import common_pb2
from services.updater.joiner import ImpressionJoiner
from tests.unit.test_learner import impression

CLICK, SEARCH = common_pb2.EventType.EVENT_TYPE_CLICK, common_pb2.EventType.EVENT_TYPE_SEARCH
T = 1_700_000_000_000
HOUR = 3600 * 1000


def ev(event_id, item, ts, user="u1", type=CLICK, query=""):
    return LoggedEvent(event_id, user, item, type, query, 0.0, ts, "")


def items(events):
    return [e.item_id for e in events]


def test_recent_is_in_event_time_order_ties_in_arrival_order():
    store = UserStateStore(recent_items=10)
    for event in (ev("a", "2", T), ev("b", "1", T - HOUR), ev("c", "3", T - HOUR), ev("d", "4", T)):
        store.apply(event)
    assert items(store.get("u1").recent) == ["1", "3", "2", "4"]  # oldest first


def test_a_full_window_drops_the_oldest_by_time_and_a_too_old_late_event_does_not_enter():
    store = UserStateStore(recent_items=3)
    for n, ts in enumerate((T + 10, T + 20, T + 30, T + 15)):
        store.apply(ev(f"e{n}", str(ts - T), ts))
    assert items(store.get("u1").recent) == ["15", "20", "30"]
    store.apply(ev("late", "5", T + 5))  # older than everything kept
    assert items(store.get("u1").recent) == ["15", "20", "30"]
    assert store.get("u1").event_count == 5  # it is still one of the user's events


def test_queries_are_newest_by_time_first_and_bounded_by_time():
    store = UserStateStore(recent_queries=2)
    for n, (query, ts) in enumerate((("new", T + 30), ("old", T + 10), ("mid", T + 20), ("older", T))):
        store.apply(ev(f"q{n}", "", ts, type=SEARCH, query=query))
    assert list(store.get("u1").queries) == ["new", "mid"]


def test_seen_is_trimmed_by_the_time_each_item_was_last_seen():
    store = UserStateStore(seen_items=2)
    for n, (item, ts) in enumerate((("a", T + 30), ("b", T + 10), ("c", T + 20))):
        store.apply(ev(f"s{n}", item, ts))
    assert list(store.get("u1").seen) == ["c", "a"]  # b was seen longest ago
    store.apply(ev("s3", "a", T))  # an old event of a: a was still last seen at T + 30
    store.apply(ev("s4", "d", T + 25))
    assert list(store.get("u1").seen) == ["d", "a"]


def test_local_store_rebuilds_the_same_time_order_after_a_restart(tmp_path):
    path = tmp_path / "events.sqlite"

    async def view_then_reopen():
        store = LocalStore(path, UserStateStore(recent_items=3))
        await store.open()
        await store.append_groups([[ev("a", "2", T), ev("b", "1", T - HOUR)], [ev("c", "3", T - HOUR)]])
        await store.append_groups([[ev("d", "4", T + 1), ev("e", "0", T - 2 * HOUR)]])
        before = await store.user_view("u1", 10)
        await store.close()
        store = LocalStore(path, UserStateStore(recent_items=3))
        assert await store.open() == 5
        after = await store.user_view("u1", 10)
        await store.close()
        return before, after

    before, after = asyncio.run(view_then_reopen())
    assert items(before.recent) == items(after.recent) == ["3", "2", "4"]
    assert after.event_count == 5


def test_a_retried_event_of_a_deleted_user_is_a_duplicate_and_leaves_no_raw_id(tmp_path):
    path = tmp_path / "events.sqlite"
    log = EventLog(path)
    assert items(log.append([ev("gone-e1", "1", T, user="gone"), ev("gone-e2", "2", T, user="gone"),
                             ev("kept-e1", "1", T, user="kept")])) == ["1", "2", "1"]
    assert log.delete_user("gone") == 2
    assert log.delete_user("gone") == 0  # nothing left to delete: counted once
    # The retry (same ids), twice in one call and again in a second group of the same commit.
    fresh = log.append_groups([[ev("gone-e1", "1", T, user="gone"), ev("gone-e1", "1", T, user="gone")],
                               [ev("gone-e2", "2", T, user="gone"), ev("gone-e3", "3", T, user="gone")]])
    assert [[e.event_id for e in group] for group in fresh] == [[], ["gone-e3"]]
    log.close()
    log = EventLog(path)  # remembered across a restart
    assert log.append([ev("gone-e1", "1", T, user="gone")]) == []
    assert [e.event_id for e in log.replay()] == ["kept-e1", "gone-e3"]
    assert log.delete_user("gone") == 1
    log.close()
    for f in tmp_path.glob("events.sqlite*"):
        assert b"gone" not in f.read_bytes(), f.name  # neither the user nor their event ids


def test_local_store_does_not_bring_a_deleted_user_back_on_a_retry(tmp_path):
    async def go():
        store = LocalStore(tmp_path / "events.sqlite", UserStateStore())
        await store.open()
        await store.append_groups([[ev("e1", "1", T)]])
        deleted = await store.delete_user("u1")
        retried = await store.append_groups([[ev("e1", "1", T)]])
        view = await store.user_view("u1", 10)
        await store.close()
        return deleted, retried, view

    deleted, retried, view = asyncio.run(go())
    assert (deleted, retried, view) == (1, [[]], None)


def test_feedback_from_before_the_join_window_labels_nothing():
    """Arrival is not event time: an old event that arrives late (a backfill, a client's
    offline queue) is not a reaction to what was shown just now."""
    joiner = ImpressionJoiner(window_ms=1000)
    joiner.add(impression("r1", "u", ["a", "b"]), arrived_ms=T)
    old = LoggedEvent("old", "u", "a", CLICK, "", 0.0, T - 5000, "")
    assert joiner.join(old, arrived_ms=T + 10) is None
    fresh = LoggedEvent("new", "u", "b", CLICK, "", 0.0, T + 5, "")
    assert joiner.join(fresh, arrived_ms=T + 10).row == 1


def test_a_logged_event_keeps_only_visible_query_text_and_gets_a_time():
    from services.updater.events import to_logged

    typed = common_pb2.Event(event_id="e", user_id="u", type=SEARCH, query="\u200b\u2060 caf\u00e9 \u00a0\ufeff")
    assert (to_logged(typed, now_ms=T).query, to_logged(typed, now_ms=T).timestamp_ms) == ("caf\u00e9", T)
    invisible = common_pb2.Event(event_id="e", user_id="u", item_id="1", type=CLICK, query="\u200b\u200d",
                                 timestamp_ms=T - HOUR)
    assert (to_logged(invisible, now_ms=T).query, to_logged(invisible, now_ms=T).timestamp_ms) == ("", T - HOUR)


def test_a_failing_consumer_of_committed_events_does_not_strand_the_callers():
    """The events are durable once committed: every caller is answered even when the callback
    for new events (the learner's feedback) raises."""
    import asyncio

    from services.updater.events import GroupCommitter

    class Store:
        async def append_groups(self, groups):
            return groups

    def broken(event):
        raise RuntimeError("learner bug")

    async def run():
        committer = GroupCommitter(Store(), broken)
        return await asyncio.wait_for(asyncio.gather(committer.append([ev("a", "1", 1)]),
                                                     committer.append([ev("b", "2", 2)])), timeout=2)

    answered = asyncio.run(run())
    assert [[e.event_id for e in group] for group in answered] == [["a"], ["b"]]
