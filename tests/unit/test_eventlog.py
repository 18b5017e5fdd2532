from recmesh.events.eventlog import EventLog, LoggedEvent
from recmesh.events.state import UserStateStore
from recmesh.v1 import common_pb2

CLICK, SEARCH = common_pb2.EventType.EVENT_TYPE_CLICK, common_pb2.EventType.EVENT_TYPE_SEARCH


def ev(event_id, user="u1", item="1", type=CLICK, query=""):
    return LoggedEvent(event_id, user, item, type, query, 0.0, 1, "")


def test_append_is_idempotent_by_event_id(tmp_path):
    log = EventLog(tmp_path / "events.sqlite")
    assert [e.event_id for e in log.append([ev("a"), ev("b")])] == ["a", "b"]
    assert [e.event_id for e in log.append([ev("b"), ev("c"), ev("c")])] == ["c"]
    assert log.count() == 3


def test_group_commit_answers_each_group_and_dedupes_across_them(tmp_path):
    log = EventLog(tmp_path / "events.sqlite")
    log.append([ev("old")])
    fresh = log.append_groups([[ev("a"), ev("old")], [ev("a"), ev("b")], []])
    assert [[e.event_id for e in group] for group in fresh] == [["a"], ["b"], []]
    assert log.count() == 3


def test_log_survives_reopen_and_replays_in_order(tmp_path):
    path = tmp_path / "events.sqlite"
    log = EventLog(path)
    log.append([ev("a", item="1"), ev("b", item="2")])
    log.close()
    assert [e.item_id for e in EventLog(path).replay()] == ["1", "2"]


def test_delete_user_removes_only_that_user(tmp_path):
    log = EventLog(tmp_path / "events.sqlite")
    log.append([ev("a", user="u1"), ev("b", user="u2"), ev("c", user="u1")])
    assert log.delete_user("u1") == 2
    assert [e.user_id for e in log.replay()] == ["u2"]


def test_state_keeps_recent_items_seen_and_queries():
    store = UserStateStore(recent_items=2, seen_items=3, recent_queries=5)
    for i in range(4):
        store.apply(ev(f"e{i}", item=str(i)))
    store.apply(ev("s", item="", type=SEARCH, query="boots"))
    state = store.get("u1")
    assert [e.item_id for e in state.recent] == ["2", "3"]
    assert list(state.seen) == ["1", "2", "3"]
    assert list(state.queries) == ["boots"]
    assert state.event_count == 5
    store.delete("u1")
    assert store.get("u1") is None
