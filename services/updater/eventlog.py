"""The append-only event log: SQLite in WAL mode, fsynced before an event is acknowledged."""

from __future__ import annotations

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

    def append(self, events: Iterable[LoggedEvent]) -> list[LoggedEvent]:
        """Log events in one transaction; returns those that were new (not seen by event_id)."""
        return self.append_groups([list(events)])[0]

    def append_groups(self, groups: list[list[LoggedEvent]]) -> list[list[LoggedEvent]]:
        """Several callers' events in one transaction and one fsync (group commit); for each
        group, the events that were new. An event_id seen earlier - in the log, or in an
        earlier group of this commit - is a duplicate."""
        fresh: list[list[LoggedEvent]] = []
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for events in groups:
                new = []
                for e in events:
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
        """Gone from the database file and from the write-ahead log: the WAL still holds the
        pages as they were before the delete until it is checkpointed and truncated."""
        cur = self._db.execute("DELETE FROM events WHERE user_id = ?", (user_id,))
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return cur.rowcount

    def count(self) -> int:
        return self._db.execute("SELECT count(*) FROM events").fetchone()[0]

    def close(self) -> None:
        self._db.close()
