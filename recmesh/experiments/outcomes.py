"""What each answer served under an experiment led to: the answers' log joined with feedback.

One row per answer shown (its experiment, variant, user, request id, the items in order, the
answer's latency, whether it was degraded and the ranker version that ranked it); feedback
marks the row it answers: the first item event on a shown item is a click at that item's
position (a view of a recommendation is its click-through, as in online learning's join), a
purchase of a shown item a conversion. Feedback that names the answer's request id joins that
answer; feedback without one joins the user's newest answer showing the item within `window_ms`.

SQLite (WAL, synchronous=FULL): the counts survive a restart, and the report reads the same
rows the join wrote. User ids are stored as keyed BLAKE2b digests (as in the event log's
indexes): deleting a user removes their rows, and nothing else in the file names them."""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
  request_id TEXT PRIMARY KEY,
  experiment TEXT NOT NULL,
  variant TEXT NOT NULL,
  user_key BLOB NOT NULL,
  shown_ms INTEGER NOT NULL,
  items TEXT NOT NULL,            -- JSON list of item ids, in the order shown
  latency_ms REAL NOT NULL,
  degraded INTEGER NOT NULL,
  clicked_position INTEGER,       -- 0-based position of the first clicked item; NULL: none
  converted INTEGER NOT NULL DEFAULT 0,
  ranker_version TEXT NOT NULL DEFAULT '',  -- the parameter version that ranked it; '': not the ranker's
  encoder_version TEXT NOT NULL DEFAULT ''  -- the encoder (interest model) version of its interest; '': none
);
CREATE INDEX IF NOT EXISTS answers_by_user ON answers (user_key, shown_ms);
CREATE INDEX IF NOT EXISTS answers_by_experiment ON answers (experiment, variant);
"""


@dataclass(frozen=True)
class VariantSample:
    """Per-user sums of one variant (arrays of one length, one entry per user), plus the
    answers' latencies. answers: answers shown; clicked: answers with a click; converted:
    answers with a purchase of a shown item; reciprocal_rank: sum over answers of 1/(position+1)
    of the first click (0 without one); degraded: degraded answers."""

    answers: np.ndarray
    clicked: np.ndarray
    converted: np.ndarray
    reciprocal_rank: np.ndarray
    degraded: np.ndarray
    latency_ms: np.ndarray

    @property
    def users(self) -> int:
        return len(self.answers)


def variant_samples(answers: Iterable[tuple[str, object, int | None, int, int, float]]) -> dict[str, VariantSample]:
    """Per-user sums from answer rows (variant, user key, clicked position or None, converted
    0/1, degraded 0/1, latency ms) - what OutcomeLog.sample sums in SQL, for a backend that
    reads the rows (outcomes_redis.py). Users in key order within a variant."""
    sums: dict[str, dict[object, list[float]]] = {}
    latencies: dict[str, list[float]] = {}
    for variant, user, clicked, converted, degraded, latency in answers:
        row = sums.setdefault(variant, {}).setdefault(user, [0.0] * 5)
        row[0] += 1
        if clicked is not None:
            row[1] += 1
            row[3] += 1.0 / (clicked + 1)
        row[2] += converted
        row[4] += degraded
        latencies.setdefault(variant, []).append(latency)
    out = {}
    for variant in sorted(sums):
        cols = np.array([sums[variant][user] for user in sorted(sums[variant])], np.float64).T
        out[variant] = VariantSample(cols[0], cols[1], cols[2], cols[3], cols[4],
                                     np.array(latencies[variant], np.float64))
    return out


class OutcomeLog:
    """The SQLite backend: one file, for the sqlite event store's one updater replica (the redis
    store's replicas share recmesh/experiments/outcomes_redis.py's)."""

    def __init__(self, path: Path, window_ms: int):
        self.window_ms = window_ms
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {name for _, name, *_ in self._db.execute("PRAGMA table_info(answers)")}
        for column in ("ranker_version", "encoder_version"):  # a file from before answers named them
            if column not in columns:
                self._db.execute(f"ALTER TABLE answers ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
        row = self._db.execute("SELECT value FROM meta WHERE key = 'user_key'").fetchone()
        if row is None:
            key = secrets.token_bytes(32)
            self._db.execute("INSERT INTO meta VALUES ('user_key', ?)", (key,))
        else:
            key = row[0]
        self._key = key

    def _user(self, user_id: str) -> bytes:
        return hashlib.blake2b(user_id.encode(), key=self._key, digest_size=16).digest()

    def record_answer(self, *, experiment: str, variant: str, user_id: str, request_id: str, shown_ms: int,
                      item_ids: list[str], latency_ms: float, degraded: bool, ranker_version: str = "",
                      encoder_version: str = "") -> None:
        """Idempotent by request_id (a resent batch is not counted twice)."""
        self._db.execute(
            "INSERT OR IGNORE INTO answers (request_id, experiment, variant, user_key, shown_ms, items, latency_ms,"
            " degraded, ranker_version, encoder_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (request_id, experiment, variant, self._user(user_id), shown_ms, json.dumps(item_ids), latency_ms,
             int(degraded), ranker_version, encoder_version))

    def record_answers(self, rows: Iterable[dict]) -> None:
        """record_answer for each row (its keyword arguments), one transaction: one fsync."""
        self._db.execute("BEGIN")
        try:
            for row in rows:
                self.record_answer(**row)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def record_feedback(self, *, user_id: str, item_id: str, at_ms: int, purchase: bool,
                        request_id: str = "") -> bool:
        """Marks the answer this item event answers; False when it answers none."""
        if request_id:
            rows = self._db.execute("SELECT request_id, items, clicked_position, converted FROM answers"
                                    " WHERE request_id = ? AND user_key = ?", (request_id, self._user(user_id)))
        else:
            rows = self._db.execute(
                "SELECT request_id, items, clicked_position, converted FROM answers WHERE user_key = ?"
                " AND shown_ms BETWEEN ? AND ? ORDER BY shown_ms DESC",
                (self._user(user_id), at_ms - self.window_ms, at_ms))
        for answer_id, items, clicked, converted in rows.fetchall():
            shown = json.loads(items)
            if item_id not in shown:
                continue
            position = shown.index(item_id)
            self._db.execute(
                "UPDATE answers SET clicked_position = ?, converted = ? WHERE request_id = ?",
                (position if clicked is None else min(clicked, position), int(converted or purchase), answer_id))
            return True
        return False

    def delete_user(self, user_id: str) -> int:
        return self._db.execute("DELETE FROM answers WHERE user_key = ?", (self._user(user_id),)).rowcount

    def experiments(self) -> list[str]:
        return [name for (name,) in self._db.execute("SELECT DISTINCT experiment FROM answers ORDER BY experiment")]

    def sample(self, experiment: str) -> dict[str, VariantSample]:
        """Each variant's per-user sums for the experiment (variants with no answer are absent)."""
        per_user = self._db.execute(
            "SELECT variant, COUNT(*), SUM(clicked_position IS NOT NULL), SUM(converted),"
            " SUM(CASE WHEN clicked_position IS NULL THEN 0.0 ELSE 1.0 / (clicked_position + 1) END),"
            " SUM(degraded) FROM answers WHERE experiment = ? GROUP BY variant, user_key ORDER BY variant",
            (experiment,)).fetchall()
        latencies: dict[str, list[float]] = {}
        for variant, latency in self._db.execute(
                "SELECT variant, latency_ms FROM answers WHERE experiment = ?", (experiment,)):
            latencies.setdefault(variant, []).append(latency)
        by_variant: dict[str, list[tuple]] = {}
        for variant, *sums in per_user:
            by_variant.setdefault(variant, []).append(sums)
        out = {}
        for variant, rows in by_variant.items():
            cols = np.array(rows, np.float64).T
            out[variant] = VariantSample(cols[0], cols[1], cols[2], cols[3], cols[4],
                                         np.array(latencies[variant], np.float64))
        return out

    def tallies(self, experiment: str) -> tuple[dict[str, VariantSample], dict, dict]:
        """(sample, ranker_versions, encoder_versions) of the experiment: what a report reads."""
        return self.sample(experiment), self.ranker_versions(experiment), self.encoder_versions(experiment)

    def ranker_versions(self, experiment: str) -> dict[str, dict[str, int]]:
        """variant -> ranker version -> answers it ranked ('': answers the ranker did not rank)."""
        return self._versions(experiment, "ranker_version")

    def encoder_versions(self, experiment: str) -> dict[str, dict[str, int]]:
        """variant -> encoder version (naming the interest model) -> answers whose interest it
        encoded ('': answers without an interest: popular items, the session's direction)."""
        return self._versions(experiment, "encoder_version")

    def _versions(self, experiment: str, column: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for variant, version, answers in self._db.execute(
                f"SELECT variant, {column}, COUNT(*) FROM answers WHERE experiment = ?"  # column: ours, not input
                f" GROUP BY variant, {column} ORDER BY variant, {column}", (experiment,)):
            out.setdefault(variant, {})[version] = answers
        return out

    def close(self) -> None:
        self._db.close()
