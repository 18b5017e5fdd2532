"""The append-only event log: SQLite in WAL mode, fsynced before an event is acknowledged."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    type         INTEGER NOT NULL,
    query        TEXT NOT NULL,
    value        REAL NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    request_id   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
-- A deleted user's event ids, as keyed hashes: a retry of one is a duplicate, not a new user.
CREATE TABLE IF NOT EXISTS deleted_events (digest BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


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
        self._db.executescript(_SCHEMA)
        # Keyed, so that the markers cannot be matched against event ids hashed elsewhere (ids
        # often embed a user id); made once per log and kept in it, so markers outlive restarts.
        self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('deleted_key', ?)",
                         (secrets.token_bytes(32),))
        self._key = self._db.execute("SELECT value FROM meta WHERE name = 'deleted_key'").fetchone()[0]
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
                        "INSERT OR IGNORE INTO events (event_id, user_id, item_id, type, query, value, timestamp_ms,"
                        " request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (e.event_id, e.user_id, e.item_id, e.type, e.query, e.value, e.timestamp_ms, e.request_id),
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
            ids = [row[0] for row in cur.execute("SELECT event_id FROM events WHERE user_id = ?", (user_id,))]
            cur.executemany("INSERT OR IGNORE INTO deleted_events (digest) VALUES (?)",
                            [(self._digest(event_id),) for event_id in ids])
            cur.execute("DELETE FROM events WHERE user_id = ?", (user_id,))
            deleted = cur.rowcount
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._any_deleted = self._any_deleted or bool(ids)
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _digest(self, event_id: str) -> bytes:
        return hashlib.blake2b(event_id.encode(), key=self._key, digest_size=16).digest()

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self._db.close()
