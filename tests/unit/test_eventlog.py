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


def _many_users(log: EventLog, users: int = 3000, each: int = 4) -> None:
    """Enough rows for multi-level B-trees: index keys then also sit in interior pages."""
    log.append([ev(f"evt-{u:05d}-{n}", user=f"user-{u:05d}", item=str(n)) for u in range(users) for n in range(each)])


def test_deleted_users_leave_no_id_in_any_page_of_a_large_log(tmp_path):
    """Found by the integration test: with an index on the raw user_id, a deleted user's id
    stayed in the file as an interior page's divider key (deleting rows does not rewrite
    dividers). The indexes hold keyed hashes now: no deleted id is anywhere in the file."""
    path = tmp_path / "events.sqlite"
    log = EventLog(path)
    _many_users(log)
    gone = [f"user-{u:05d}" for u in range(0, 3000, 37)]
    for user in gone:
        assert log.delete_user(user) == 4
    log.close()
    data = b"".join(f.read_bytes() for f in tmp_path.glob("events.sqlite*"))
    assert len(data) > 500_000  # many pages: the index has interior levels
    left = [u for u in gone if u.encode() in data]
    assert not left, left[:5]
    assert b"user-00001" in data  # the kept users are still there, readable


def test_a_log_of_the_first_layout_is_upgraded_in_place(tmp_path):
    """A log written with indexes on the raw ids opens as before: same replay order, the same
    duplicates refused, deletions leave no trace."""
    import sqlite3

    path = tmp_path / "events.sqlite"
    db = sqlite3.connect(str(path), isolation_level=None)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
            user_id TEXT NOT NULL, item_id TEXT NOT NULL, type INTEGER NOT NULL, query TEXT NOT NULL,
            value REAL NOT NULL, timestamp_ms INTEGER NOT NULL, request_id TEXT NOT NULL);
        CREATE INDEX events_by_user ON events (user_id, seq);
        CREATE TABLE deleted_events (digest BLOB PRIMARY KEY) WITHOUT ROWID;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    """)
    rows = [(f"old-{n}", f"olduser-{n % 7}", str(n), CLICK, "", 0.0, n, "") for n in range(2000)]
    db.executemany("INSERT INTO events (event_id, user_id, item_id, type, query, value, timestamp_ms, request_id) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.close()
    log = EventLog(path)
    assert [e.event_id for e in log.replay()] == [r[0] for r in rows]
    assert log.append([ev("old-5", user="olduser-5"), ev("new-1", user="olduser-3")]) == [ev("new-1", user="olduser-3")]
    assert log.delete_user("olduser-3") == len(range(3, 2000, 7)) + 1
    log.close()
    log = EventLog(path)  # reopened: already upgraded, nothing to do
    assert log.count() == 2000 - len(range(3, 2000, 7))
    assert log.append([ev("old-3", user="olduser-3")]) == []  # a deleted user's retry stays a duplicate
    log.close()
    data = b"".join(f.read_bytes() for f in tmp_path.glob("events.sqlite*"))
    assert b"olduser-3" not in data and b"olduser-4" in data


def test_no_index_of_the_log_holds_a_raw_id(tmp_path):
    """Why the hashes: SQLite can leave a copy of an index cell in a page's free space when it
    rearranges the page, where secure_delete does not reach (seen on a 100k-event log: 8 of 8
    deleted users' ids stayed in events_by_user's leaf pages). So no index may hold raw ids."""
    import sqlite3

    path = tmp_path / "events.sqlite"
    EventLog(path).close()
    db = sqlite3.connect(str(path))
    indexed = {(table, column) for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
               for index in db.execute(f"PRAGMA index_list({table})")
               for column in (row[2] for row in db.execute(f"PRAGMA index_info({index[1]})"))}
    assert not {column for _, column in indexed} & {"user_id", "event_id", "query", "request_id"}, indexed
    assert ("events", "user_key") in indexed and ("events", "event_key") in indexed
