"""The append-only event log: SQLite in WAL mode, fsynced before an event is acknowledged."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

# Every index holds keyed hashes, never a raw user or event id: a B-tree keeps copies of keys in
# its interior pages as dividers, and deleting the rows does not rewrite those, so an index on
# user_id would keep a deleted user's id in the file (secure_delete zeroes only the rows).
_EVENTS = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_key    BLOB NOT NULL UNIQUE,  -- keyed hash of event_id: the duplicate check
    user_key     BLOB NOT NULL,         -- keyed hash of user_id: what DeleteUser finds rows by
    event_id     TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    type         INTEGER NOT NULL,
    query        TEXT NOT NULL,
    value        REAL NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    request_id   TEXT NOT NULL
)"""
_EVENTS_BY_USER = "CREATE INDEX IF NOT EXISTS events_by_user ON events (user_key, seq)"
# A deleted user's event ids, as keyed hashes: a retry of one is a duplicate, not a new user.
_DELETED = "CREATE TABLE IF NOT EXISTS deleted_events (digest BLOB PRIMARY KEY) WITHOUT ROWID"
# The columns copied when a log of the first layout (indexes on the raw ids) is upgraded.
_COLUMNS = "seq, event_id, user_id, item_id, type, query, value, timestamp_ms, request_id"


@dataclass(frozen=True)
class LoggedEvent:
    event_id: str
    user_id: str
    item_id: str
    type: int
    query: str
    value: float
    timestamp_ms: int
    request_id: str


class EventLog:
    """Not thread-safe: own it from one thread (the updater uses a one-thread executor)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged event survives a crash.
        self._db.execute("PRAGMA synchronous=FULL")
        # Deleted rows are overwritten with zeros, not left in free pages (DeleteUser must leave
        # no trace in the file).
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)")
        # Keyed, so that the hashes cannot be matched against ids hashed elsewhere (event ids
        # often embed a user id); made once per log and kept in it, so they outlive restarts.
        self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('deleted_key', ?)",
                         (secrets.token_bytes(32),))
        self._key = self._db.execute("SELECT value FROM meta WHERE name = 'deleted_key'").fetchone()[0]
        self._upgrade_raw_id_indexes()
        for statement in (_EVENTS, _EVENTS_BY_USER, _DELETED):
            self._db.execute(statement)
        # Looked up only once some user was deleted: appends pay nothing before.
        self._any_deleted = self._db.execute("SELECT 1 FROM deleted_events LIMIT 1").fetchone() is not None

    def append(self, events: Iterable[LoggedEvent]) -> list[LoggedEvent]:
        """Log events in one transaction; returns those that were new (not seen by event_id)."""
        return self.append_groups([list(events)])[0]

    def append_groups(self, groups: list[list[LoggedEvent]]) -> list[list[LoggedEvent]]:
        """Several callers' events in one transaction and one fsync (group commit); for each
        group, the events that were new. An event_id seen earlier - in the log, earlier in
        this commit, or among a deleted user's events - is a duplicate."""
        fresh: list[list[LoggedEvent]] = []
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for events in groups:
                new = []
                for e in events:
                    if self._any_deleted and cur.execute("SELECT 1 FROM deleted_events WHERE digest = ?",
                                                         (self._digest(e.event_id),)).fetchone():
                        continue  # a retry of a deleted user's event must not bring them back
                    cur.execute(
                        "INSERT OR IGNORE INTO events (event_key, user_key, event_id, user_id, item_id, type, query,"
                        " value, timestamp_ms, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (self._digest(e.event_id), self._digest(e.user_id), e.event_id, e.user_id, e.item_id,
                         e.type, e.query, e.value, e.timestamp_ms, e.request_id),
                    )
                    if cur.rowcount == 1:
                        new.append(e)
                fresh.append(new)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return fresh

    def replay(self) -> Iterator[LoggedEvent]:
        """Every event in log order."""
        rows = self._db.execute(
            "SELECT event_id, user_id, item_id, type, query, value, timestamp_ms, request_id FROM events ORDER BY seq"
        )
        for row in rows:
            yield LoggedEvent(*row)

    def delete_user(self, user_id: str) -> int:
        """Deletes the user's events; returns how many there were (0 when none are left).

        Gone from the database file and from the write-ahead log: the WAL still holds the
        pages as they were before the delete until it is checkpointed and truncated. What
        stays is a keyed hash of each event_id, so that a client's retry of one is answered as
        a duplicate instead of starting the user again."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            key = self._digest(user_id)
            ids = [row[0] for row in cur.execute("SELECT event_key FROM events WHERE user_key = ?", (key,))]
            cur.executemany("INSERT OR IGNORE INTO deleted_events (digest) VALUES (?)", [(k,) for k in ids])
            cur.execute("DELETE FROM events WHERE user_key = ?", (key,))
            deleted = cur.rowcount
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._any_deleted = self._any_deleted or bool(ids)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def merge_users(self, from_user: str, into_user: str) -> tuple[int, list[LoggedEvent]]:
        """Moves every event of from_user to into_user, in one transaction, fsynced at its commit:
        the rows then name into_user and keep their place (seq) in the log. Returns how many
        moved (0 when from_user has none: a repeated merge moves nothing) and into_user's events
        after it, in log order - what the user's state is rebuilt from. Each event stays one
        row (event_id is unique in the log), so it is in into_user's history once."""
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            into_key = self._digest(into_user)
            cur.execute("UPDATE events SET user_id = ?, user_key = ? WHERE user_key = ?",
                        (into_user, into_key, self._digest(from_user)))
            moved = cur.rowcount
            rows = cur.execute(
                "SELECT event_id, user_id, item_id, type, query, value, timestamp_ms, request_id FROM events"
                " WHERE user_key = ? ORDER BY seq", (into_key,)).fetchall()
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return moved, [LoggedEvent(*row) for row in rows]

    def _digest(self, identifier: str) -> bytes:
        """The keyed hash (BLAKE2b, 16 bytes) of a user or event id: what the indexes hold."""
        return hashlib.blake2b(identifier.encode(), key=self._key, digest_size=16).digest()

    def _upgrade_raw_id_indexes(self) -> None:
        """A log of the first layout (its indexes on the raw user and event ids) is rewritten
        once into the keyed-hash layout, in one transaction; the old table's pages are freed,
        and zeroed (secure_delete). Rows keep their seq, so the replay order is unchanged."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if not columns or "user_key" in columns:
            return
        self._db.create_function("recmesh_key", 1, lambda text: self._digest(text), deterministic=True)
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("ALTER TABLE events RENAME TO events_raw_ids")
            cur.execute("DROP INDEX IF EXISTS events_by_user")
            cur.execute(_EVENTS)
            cur.execute(_EVENTS_BY_USER)
            cur.execute(f"INSERT INTO events (event_key, user_key, {_COLUMNS}) SELECT recmesh_key(event_id), "
                        f"recmesh_key(user_id), {_COLUMNS} FROM events_raw_ids ORDER BY seq")
            cur.execute("DROP TABLE events_raw_ids")
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self._db.close()
