"""The gateway's per-user seen items: filled from the updater's snapshots and from events tracked
through the gateway, expiring, bounded, and never brought back by a snapshot older than what is
held (a deletion included)."""

from recmesh.v1 import common_pb2
from services.gateway.seen import Seen, SeenItems

ET = common_pb2.EventType


def test_tracked_items_alone_are_an_incomplete_entry_a_snapshot_completes_it():
    cache = SeenItems(users=10, max_ids=100, ttl_s=60)
    assert cache.lookup("u", 0.0) is None
    cache.add_events([common_pb2.Event(user_id="u", item_id="a", type=ET.EVENT_TYPE_PURCHASE),
                      common_pb2.Event(user_id="u", query="films", type=ET.EVENT_TYPE_SEARCH),
                      common_pb2.Event(user_id="v", item_id="b", type=ET.EVENT_TYPE_VIEW)], now=1.0)
    assert cache.lookup("u", 2.0) == Seen(frozenset({"a"}), complete=False)
    cache.replace("u", ["x", "y"], asked_at=0.5)  # asked before "a" was tracked: it lacks it
    assert cache.lookup("u", 2.0) == Seen(frozenset({"a", "x", "y"}), complete=True)
    cache.replace("u", ["x"], asked_at=3.0)  # asked after: the updater's word is the whole truth
    assert cache.lookup("u", 4.0) == Seen(frozenset({"x"}), complete=True)
    cache.add("u", ["z"], now=5.0)
    assert cache.lookup("u", 6.0) == Seen(frozenset({"x", "z"}), complete=True)


def test_an_older_snapshot_never_replaces_a_newer_one_nor_undoes_a_deletion():
    cache = SeenItems(users=10, max_ids=100, ttl_s=60)
    cache.replace("u", ["a", "b"], asked_at=2.0)
    cache.replace("u", ["a"], asked_at=1.0)  # a slower reply to an earlier call
    assert cache.lookup("u", 3.0).ids == {"a", "b"}
    cache.forget("u", now=4.0)
    cache.replace("u", ["a", "b"], asked_at=3.5)  # asked before the deletion
    assert cache.lookup("u", 5.0) == Seen(frozenset(), complete=True)


def test_entries_expire_and_the_cache_is_bounded_in_users_and_ids():
    cache = SeenItems(users=2, max_ids=5, ttl_s=10)
    cache.replace("u", ["a"], asked_at=0.0)
    assert cache.lookup("u", 9.9) is not None and cache.lookup("u", 10.0) is None
    cache.replace("u", ["a"], asked_at=20.0)
    cache.replace("v", ["b"], asked_at=20.0)
    cache.lookup("u", 21.0)  # u used last: v goes first
    cache.replace("w", ["c"], asked_at=21.0)
    assert (cache.lookup("v", 22.0), len(cache)) == (None, 2)
    cache.replace("x", ["d", "e", "f", "g"], asked_at=22.0)  # 4 ids: only one other fits
    assert cache.lookup("u", 22.0) is None and cache.lookup("w", 22.0) is not None
    cache.replace("big", [str(i) for i in range(6)], asked_at=22.0)  # larger than the whole cache
    assert cache.lookup("big", 22.0) is None and cache.lookup("x", 22.0) is not None


def test_off_holds_nothing():
    for cache in (SeenItems(users=0, max_ids=100, ttl_s=60), SeenItems(users=10, max_ids=100, ttl_s=0)):
        cache.add("u", ["a"], now=0.0)
        cache.replace("v", ["a"], asked_at=0.0)
        assert cache.lookup("u", 0.0) is None and cache.lookup("v", 0.0) is None


def hide(user: str, item: str, kind=ET.EVENT_TYPE_HIDE) -> common_pb2.Event:
    return common_pb2.Event(user_id=user, item_id=item, type=kind)


def test_hides_outlive_the_ttl_and_an_invalidation_and_move_with_a_merge():
    """A hide is never taken back: answers made without the updater leave out every hide this
    gateway learned, after the entry expired (TTL), after a retry acknowledged as a duplicate
    invalidated it, and on the account a guest was merged into - found by the hostile-input
    review: each of these brought a hidden item back on a shed answer."""
    cache = SeenItems(users=10, max_ids=100, ttl_s=60)
    cache.note_ingested([hide("u", "h1"), hide("u", "d1", ET.EVENT_TYPE_DISLIKE)], duplicates=0, now=0.0)
    after_ttl = cache.lookup("u", 120.0)
    assert after_ttl == Seen(frozenset(), complete=False, hidden=frozenset({"h1", "d1"}))
    cache.note_ingested([hide("u", "h2")], duplicates=1, now=130.0)  # a retry: the entry is dropped
    assert cache.lookup("u", 131.0).hidden == {"h1", "d1", "h2"}
    cache.replace("u", ["x"], asked_at=140.0, hidden=["h1"])  # the updater's newest 1 of them
    assert cache.lookup("u", 141.0).hidden >= {"h1", "d1", "h2"}
    cache.note_ingested([hide("guest", "g1")], duplicates=0, now=150.0)
    cache.merge("guest", "u", now=151.0)
    assert cache.lookup("guest", 152.0) == Seen(frozenset(), complete=True)
    assert cache.lookup("u", 152.0).hidden == {"h1", "d1", "h2", "g1"}
    cache.forget("u", now=160.0)  # deleted through this gateway: nothing of theirs is left
    assert cache.lookup("u", 161.0) == Seen(frozenset(), complete=True)


def test_hides_held_apart_are_bounded_in_users_and_ids():
    cache = SeenItems(users=2, max_ids=5, ttl_s=60)
    for user in ("a", "b", "c"):
        cache.add(user, ["x"], now=0.0, hidden=["x"])
    assert cache.lookup("a", 100.0) is None  # least recently used user past the bound
    cache.add("b", [f"i{n}" for n in range(6)], now=1.0, hidden=[f"i{n}" for n in range(6)])
    assert cache._hidden_held <= 5
