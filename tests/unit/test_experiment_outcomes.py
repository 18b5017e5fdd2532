"""The answers' log joined with feedback, and the report over it (recmesh/experiments)."""

import json

import numpy as np
import pytest

from recmesh.experiments.outcomes import OutcomeLog
from recmesh.experiments.report import plot, summarize, text


@pytest.fixture
def log(tmp_path):
    out = OutcomeLog(tmp_path / "outcomes.sqlite", window_ms=60_000)
    yield out
    out.close()


def answer(log, request_id, user, variant="A", items=("a", "b", "c"), at=1_000, degraded=False, latency=20.0):
    log.record_answer(experiment="e", variant=variant, user_id=user, request_id=request_id, shown_ms=at,
                      item_ids=list(items), latency_ms=latency, degraded=degraded)


# The join's rules, on both backends: tests/integration/test_outcome_store.py.


def test_counts_are_per_answer_and_survive_a_restart_and_a_resent_batch(tmp_path):
    path = tmp_path / "o.sqlite"
    first = OutcomeLog(path, window_ms=60_000)
    answer(first, "r1", "u1")
    answer(first, "r1", "u1")  # the same batch sent again
    first.record_feedback(user_id="u1", item_id="a", at_ms=1_500, purchase=False)
    first.record_feedback(user_id="u1", item_id="c", at_ms=1_600, purchase=False)  # a later, lower click
    first.close()
    again = OutcomeLog(path, window_ms=60_000)
    s = again.sample("e")["A"]
    assert s.answers.tolist() == [1] and s.reciprocal_rank.tolist() == [1.0]
    answer(again, "r9", "someone-distinctive-42")
    raw = b"".join(f.read_bytes() for f in tmp_path.iterdir())
    assert b"someone-distinctive-42" not in raw  # user ids are stored as keyed digests only
    assert again.delete_user("u1") == 1 and list(again.sample("e")["A"].answers) == [1]
    again.close()


def test_answers_keep_the_ranker_version_and_an_older_file_gains_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)  # the answers table as written before answers named their version
    old.executescript("""CREATE TABLE answers (request_id TEXT PRIMARY KEY, experiment TEXT NOT NULL,
        variant TEXT NOT NULL, user_key BLOB NOT NULL, shown_ms INTEGER NOT NULL, items TEXT NOT NULL,
        latency_ms REAL NOT NULL, degraded INTEGER NOT NULL, clicked_position INTEGER,
        converted INTEGER NOT NULL DEFAULT 0);
        INSERT INTO answers VALUES ('r0', 'e', 'A', x'00', 1, '["a"]', 5.0, 0, NULL, 0);""")
    old.commit()
    old.close()
    log = OutcomeLog(path, window_ms=60_000)
    for n, (variant, version) in enumerate([("A", "v-live"), ("A", "v-live"), ("B", "v-frozen"), ("B", "")]):
        log.record_answer(experiment="e", variant=variant, user_id=f"u{n}", request_id=f"r{n + 1}", shown_ms=1_000,
                          item_ids=["a"], latency_ms=5.0, degraded=False, ranker_version=version)
    assert log.ranker_versions("e") == {"A": {"": 1, "v-live": 2}, "B": {"": 1, "v-frozen": 1}}
    assert log.sample("e")["A"].answers.sum() == 3  # the older row still counts
    summary = summarize("e", log.sample("e"), control="A")
    for variant, shown in summary["variants"].items():  # as the updater's report adds them
        shown["ranker_versions"] = log.ranker_versions("e")[variant]
    assert text(summary).splitlines()[-2:] == ["A ranked by: unranked 1, v-live 2",
                                              "B ranked by: unranked 1, v-frozen 1"]
    log.close()


def test_report_counts_intervals_and_guardrail(log, tmp_path):
    rng = np.random.default_rng(0)
    for u in range(400):
        variant = "A" if u % 2 else "B"
        p = 0.5 if variant == "A" else 0.15
        for j in range(5):
            rid = f"r{u}-{j}"
            answer(log, rid, f"u{u}", variant=variant, at=10_000 * j)
            if rng.random() < p:
                log.record_feedback(user_id=f"u{u}", item_id="a", at_ms=10_000 * j + 5, purchase=False, request_id=rid)
    summary = summarize("e", log.sample("e"), control="A", min_users=100)
    assert summary["variants"]["A"]["answers"] == 1000 and summary["variants"]["B"]["answers"] == 1000
    assert summary["variants"]["A"]["clicks"] + summary["variants"]["B"]["clicks"] == sum(
        v["clicks"] for v in summary["variants"].values())
    delta = summary["against_control"]["B"]["difference"]["ctr_at_k"]
    assert delta["high"] < 0 and summary["against_control"]["B"]["guardrail"]["stop"]
    assert "STOP" in text(summary)
    json.dumps(summary)  # JSON-able
    assert plot(summary, tmp_path / "e.png").stat().st_size > 1000
    with pytest.raises(KeyError, match="control"):
        summarize("e", log.sample("e"), control="C")
