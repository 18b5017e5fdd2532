"""Both outcome-log backends keep one contract (recmesh/experiments/outcomes.py, SQLite, and
outcomes_redis.py, Redis on a real redis-server), and the Redis one is shared by the replicas:
an answer recorded by one updater replica is joined by feedback another receives, and each
replica's report counts every answer."""

import uuid

import pytest

from recmesh.experiments.outcomes import OutcomeLog
from recmesh.experiments.outcomes_redis import RedisOutcomeLog


@pytest.fixture(params=["sqlite", "redis"])
def make_log(request, tmp_path, redis_server):
    """A factory of logs over the same data (a "replica" each call); closed at the end."""
    prefix, made = f"o{uuid.uuid4().hex[:8]}", []

    def make():
        if request.param == "redis":
            log = RedisOutcomeLog(redis_server.url, prefix, window_ms=60_000)
        else:
            log = OutcomeLog(tmp_path / "outcomes.sqlite", window_ms=60_000)
        made.append(log)
        return log

    make.kind = request.param
    yield make
    for log in made:
        log.close()


def answer(log, request_id, user, variant="A", items=("a", "b", "c"), at=1_000, degraded=False, latency=20.0,
           ranker_version=""):
    log.record_answer(experiment="e", variant=variant, user_id=user, request_id=request_id, shown_ms=at,
                      item_ids=list(items), latency_ms=latency, degraded=degraded, ranker_version=ranker_version)


def test_feedback_joins_by_request_id_else_the_newest_answer_showing_the_item(make_log):
    log = make_log()
    answer(log, "r1", "u1", at=1_000)
    answer(log, "r2", "u1", items=("c", "d"), at=2_000)
    assert log.record_feedback(user_id="u1", item_id="c", at_ms=3_000, purchase=False)  # newest: r2, position 0
    assert log.record_feedback(user_id="u1", item_id="b", at_ms=3_000, purchase=True, request_id="r1")
    assert not log.record_feedback(user_id="u1", item_id="z", at_ms=3_000, purchase=False)  # not shown
    assert not log.record_feedback(user_id="u2", item_id="a", at_ms=3_000, purchase=False)  # another user
    assert not log.record_feedback(user_id="u2", item_id="a", at_ms=3_000, purchase=False, request_id="r1")
    assert not log.record_feedback(user_id="u1", item_id="a", at_ms=90_000, purchase=False)  # past the window
    assert not log.record_feedback(user_id="u1", item_id="a", at_ms=3_000, purchase=False, request_id="r-none")
    s = log.sample("e")["A"]
    assert s.answers.tolist() == [2] and s.clicked.tolist() == [2] and s.converted.tolist() == [1]
    assert s.reciprocal_rank.tolist() == [pytest.approx(1 / 1 + 1 / 2)]


def test_a_resent_batch_counts_once_the_first_click_position_holds_and_deletion_is_complete(make_log):
    log = make_log()
    rows = [dict(experiment="e", variant=v, user_id=u, request_id=r, shown_ms=1_000, item_ids=["a", "b", "c"],
                 latency_ms=lat, degraded=d, ranker_version=rv)
            for r, u, v, lat, d, rv in [("r1", "u1", "A", 10.0, False, "v1"), ("r2", "u2", "B", 30.0, True, ""),
                                        ("r3", "someone-distinctive-42", "B", 20.0, False, "v2")]]
    rows[2]["encoder_version"] = "llm-seq/noisy"
    log.record_answers(rows)
    log.record_answers(rows)  # the same batch sent again
    assert log.record_feedback(user_id="u1", item_id="c", at_ms=1_500, purchase=False)
    assert log.record_feedback(user_id="u1", item_id="a", at_ms=1_600, purchase=False)  # a later, higher click
    assert log.record_feedback(user_id="u1", item_id="b", at_ms=1_700, purchase=True)  # a later, lower one
    samples = log.sample("e")
    assert samples["A"].answers.tolist() == [1] and samples["A"].reciprocal_rank.tolist() == [1.0]
    assert samples["A"].converted.tolist() == [1]
    assert sorted(samples["B"].answers.tolist()) == [1, 1] and samples["B"].degraded.sum() == 1
    assert sorted(samples["B"].latency_ms.tolist()) == [20.0, 30.0]
    assert log.ranker_versions("e") == {"A": {"v1": 1}, "B": {"": 1, "v2": 1}}
    assert log.encoder_versions("e") == {"A": {"": 1}, "B": {"": 1, "llm-seq/noisy": 1}}
    assert log.experiments() == ["e"]
    assert log.delete_user("someone-distinctive-42") == 1 and log.delete_user("someone-distinctive-42") == 0
    assert log.sample("e")["B"].answers.tolist() == [1]
    assert not log.record_feedback(user_id="someone-distinctive-42", item_id="a", at_ms=1_800, purchase=False,
                                   request_id="r3")


def test_user_ids_are_stored_as_keyed_digests_only(make_log, tmp_path, redis_server):
    log = make_log()
    answer(log, "r9", "someone-distinctive-42")
    if make_log.kind == "sqlite":
        raw = b"".join(f.read_bytes() for f in tmp_path.iterdir() if f.is_file())
        assert b"someone-distinctive-42" not in raw
    else:
        import redis

        r = redis.Redis.from_url(redis_server.url)
        dump = b"".join(r.dump(k) or b"" for k in r.scan_iter()) + b"".join(r.scan_iter())
        r.close()
        assert b"someone-distinctive-42" not in dump


def test_replicas_share_one_log(make_log):
    """What the redis store's replicas rely on (the sqlite store has one replica, but its file
    reopened reads the same): an answer recorded by one is joined by feedback another gets,
    and both report every answer, with the same digest key."""
    first, second = make_log(), make_log()
    answer(first, "r1", "u1")
    answer(second, "r2", "u2", variant="B")
    assert second.record_feedback(user_id="u1", item_id="b", at_ms=2_000, purchase=True)
    assert first.record_feedback(user_id="u2", item_id="a", at_ms=2_000, purchase=False, request_id="r2")
    for log in (first, second):
        samples = log.sample("e")
        assert samples["A"].clicked.tolist() == [1] and samples["A"].converted.tolist() == [1]
        assert samples["B"].reciprocal_rank.tolist() == [1.0]
    assert second.delete_user("u1") == 1 and "A" not in first.sample("e")


def test_two_updater_replicas_on_redis_join_and_report_each_others_answers(redis_server, tmp_path):
    """The redis store's updater replicas (services/updater/experiments.py over one Redis): a
    click received by replica 2 before replica 1 has recorded its answer is held, then joined at
    replica 2's next guardrail check; both replicas' reports count every answer."""
    import asyncio

    from recmesh.events.eventlog import LoggedEvent
    from recmesh.v1 import common_pb2, updater_pb2
    from services.updater.config import UpdaterSettings
    from services.updater.experiments import ExperimentsRole

    prefix = f"x{uuid.uuid4().hex[:8]}"

    def replica(n: int) -> ExperimentsRole:
        return ExperimentsRole(UpdaterSettings(store="redis", redis_url=redis_server.url, redis_prefix=prefix,
                                               log_path=tmp_path / f"r{n}" / "events.sqlite", guardrail_s=3600,
                                               event_weights_file=None))

    def impression(request_id: str, user: str, variant: str) -> updater_pb2.Impression:
        return updater_pb2.Impression(request_id=request_id, user_id=user, timestamp_ms=1_000, experiment="e1",
                                      variant=variant, latency_ms=5.0,
                                      items=[updater_pb2.ImpressedItem(item_id=str(i), position=i) for i in range(5)])

    async def scenario():
        one, two = replica(1), replica(2)
        await one.open()
        await two.open()
        try:
            await one.put(common_pb2.PutExperimentRequest(experiment=common_pb2.Experiment(name="e1", variants=[
                common_pb2.ExperimentVariant(name="A", share=0.5),
                common_pb2.ExperimentVariant(name="B", share=0.5)])), "test", "")
            await two.guard_once()  # replica 2 learns an experiment runs (it holds unjoined feedback from now)
            two.feedback(LoggedEvent("ev-1", "u1", "2", common_pb2.EVENT_TYPE_PURCHASE, "", 0.0, 2_000, "r1"))
            await two._run(lambda: None)
            assert len(two._held) == 1  # its answer is not recorded anywhere yet
            one.record([impression("r1", "u1", "A"), impression("r2", "u2", "B")])
            await one._run(lambda: None)
            two.feedback(LoggedEvent("ev-2", "u2", "0", common_pb2.EVENT_TYPE_CLICK, "", 0.0, 2_100, ""))
            await two.guard_once()  # tries the held click again: replica 1 has recorded r1 meanwhile
            assert len(two._held) == 0
            for role in (one, two):
                report = (await role._summary((await role.store.list())[0]))["variants"]
                assert {v: (s["answers"], s["clicks"], s["conversions"]) for v, s in report.items()} == \
                    {"A": (1, 1, 1), "B": (1, 1, 0)}
        finally:
            await one.close()
            await two.close()

    asyncio.run(scenario())


def test_a_user_with_many_answers_is_deleted_whole_in_batches_and_a_report_reads_once(make_log):
    """More answers than one deletion batch (outcomes_redis._BATCH): all go, the others stay;
    tallies (what a report reads) equal the separate reads."""
    from recmesh.experiments import outcomes_redis

    log = make_log()
    many = 2 * outcomes_redis._BATCH + 7
    log.record_answers([dict(experiment="e", variant="AB"[n % 2], user_id="heavy", request_id=f"h{n}",
                             shown_ms=1_000 + n, item_ids=["a"], latency_ms=5.0, degraded=False,
                             encoder_version=f"m{n % 3}") for n in range(many)])
    answer(log, "other", "u-other")
    samples, rankers, encoders = log.tallies("e")
    assert {v: s.answers.sum() for v, s in samples.items()} == {"A": many // 2 + 1 + 1, "B": many // 2}
    assert rankers == log.ranker_versions("e") and encoders == log.encoder_versions("e")
    assert sum(encoders["A"].values()) + sum(encoders["B"].values()) == many + 1
    assert log.delete_user("heavy") == many
    assert {v: s.answers.tolist() for v, s in log.sample("e").items()} == {"A": [1]}


def test_the_updater_deletes_a_users_outcomes_before_it_acknowledges(tmp_path):
    """DeleteUser's ack follows the deletion (in order after the answers queued before it), so
    a crash right after the ack cannot bring them back."""
    import asyncio

    from recmesh.v1 import updater_pb2
    from services.updater.config import UpdaterSettings
    from services.updater.experiments import ExperimentsRole

    async def scenario():
        role = ExperimentsRole(UpdaterSettings(log_path=tmp_path / "events.sqlite", guardrail_s=3600,
                                               event_weights_file=None))
        await role.open()
        try:
            role.record([updater_pb2.Impression(
                request_id=f"r{n}", user_id="gone", timestamp_ms=1_000, experiment="e1", variant="A", latency_ms=5.0,
                items=[updater_pb2.ImpressedItem(item_id="a", position=0)]) for n in range(50)])
            await role.forget_user("gone")  # not waited for the queued answers: the order does it
            return role._outcomes.sample("e1")
        finally:
            await role.close()

    assert asyncio.run(scenario()) == {}


def _normal(tallies) -> tuple:
    """tallies() comparable across backends (their user digests differ, so per-user rows are
    compared as a sorted multiset; the reciprocal rank to 1e-12: the sums' order differs)."""
    samples, rankers, encoders = tallies
    rows = {}
    for variant, s in samples.items():
        users = sorted(zip(s.answers.tolist(), s.clicked.tolist(), s.converted.tolist(),
                           [round(r, 12) for r in s.reciprocal_rank.tolist()], s.degraded.tolist(), strict=True))
        rows[variant] = (users, sorted(s.latency_ms.tolist()))
    return rows, rankers, encoders


_SEQUENCE_ROWS = [  # request id, user, variant, latency, degraded, ranker version, encoder version
    ("r1", "u1", "A", 11.5, False, "v1", ""), ("r2", "u1", "A", 12.25, True, "v1", "m1"),
    ("r3", "u2", "B", 30.0, False, "", "m1"), ("r4", "u3", "B", 7.0, False, "v2", ""),
    ("r5", "gone", "A", 99.0, True, "v2", "m2"), ("r6", "gone", "B", 98.0, False, "v1", "m2"),
    ("r7", "u3", "A", 5.0, False, "v1", ""),
]


def _play(log, users=None) -> None:
    """One sequence of answers and feedback (users: only these users' part of it)."""
    def keep(user: str) -> bool:
        return users is None or user in users

    rows = [dict(experiment="s", variant=v, user_id=u, request_id=r, shown_ms=1_000 + n,
                 item_ids=["a", "b", "c", "d"], latency_ms=lat, degraded=d, ranker_version=rv, encoder_version=ev)
            for n, (r, u, v, lat, d, rv, ev) in enumerate(_SEQUENCE_ROWS) if keep(u)]
    log.record_answers(rows)
    log.record_answers(rows[:3])  # resent
    for user, item, at, purchase, request_id in [
            ("u1", "c", 2_000, False, "r1"), ("u1", "d", 2_001, False, "r1"),  # a later, higher click: no change
            ("u1", "a", 2_002, False, "r1"),  # a later, lower one replaces it
            ("u1", "b", 2_003, True, "r2"), ("u1", "b", 2_004, True, "r2"),  # a purchase, resent: one conversion
            ("u2", "d", 2_005, False, ""), ("u2", "c", 2_006, False, "r3"),  # by the newest answer, then lower
            ("u3", "a", 2_007, False, "no-such-request"),  # an unknown request id: joins nothing
            ("u3", "b", 2_008, True, "r1"),  # another user's request id: joins nothing
            ("gone", "c", 2_009, True, "r5"), ("gone", "a", 2_010, False, "")]:
        if keep(user):
            log.record_feedback(user_id=user, item_id=item, at_ms=at, purchase=purchase, request_id=request_id)


def test_both_backends_tally_one_sequence_alike_and_a_deleted_user_was_never_there(tmp_path, redis_server):
    import redis

    prefix = f"t{uuid.uuid4().hex[:8]}"
    sqlite_log = OutcomeLog(tmp_path / "outcomes.sqlite", window_ms=60_000)
    redis_log = RedisOutcomeLog(redis_server.url, prefix, window_ms=60_000)
    never = RedisOutcomeLog(redis_server.url, prefix + "n", window_ms=60_000)  # where "gone" never answered
    try:
        for log in (sqlite_log, redis_log):
            _play(log)
        _play(never, users={"u1", "u2", "u3"})
        assert redis_log.tallied("s")
        want = _normal(sqlite_log.tallies("s"))
        assert _normal(redis_log.tallies("s")) == want == _normal(redis_log.scan_tallies("s"))
        rows, rankers, encoders = want
        # u1: r1 clicked at 2, then 3 (2 kept), then 0; r2 bought at 1; "gone": r5 bought at 2; u2: r3 at 3, then 2
        assert rows["A"][0] == sorted([(2, 2, 1, 1.5, 1), (1, 1, 1, round(1 / 3, 12), 1), (1, 0, 0, 0.0, 0)])
        assert rows["B"][0] == sorted([(1, 1, 0, round(1 / 3, 12), 0), (1, 0, 0, 0.0, 0), (1, 1, 0, 1.0, 0)])
        assert rankers == {"A": {"v1": 3, "v2": 1}, "B": {"": 1, "v1": 1, "v2": 1}}
        assert redis_log.ranker_versions("s") == rankers and redis_log.encoder_versions("s") == encoders

        assert sqlite_log.delete_user("gone") == redis_log.delete_user("gone") == 2
        after = _normal(sqlite_log.tallies("s"))
        assert _normal(redis_log.tallies("s")) == after == _normal(never.tallies("s")) == \
            _normal(redis_log.scan_tallies("s"))
        assert 99.0 not in after[0]["A"][1] and after[1] == {"A": {"v1": 3}, "B": {"": 1, "v2": 1}}

        for user in ("u1", "u2", "u3"):
            redis_log.delete_user(user)
        assert redis_log.tallies("s") == ({}, {}, {})
        r = redis.Redis.from_url(redis_server.url, decode_responses=True)
        left = sorted(r.scan_iter(f"{prefix}:outcomes:t*"))
        r.close()
        assert left == [f"{prefix}:outcomes:tallied"]  # no zero counts left behind
    finally:
        for log in (sqlite_log, redis_log, never):
            log.close()


def _legacy_answer(r, log: RedisOutcomeLog, experiment: str, request_id: str, user: str, variant: str) -> None:
    """An answer as the record script before the tallies wrote it (no tally, no `tally` field)."""
    p, digest = log._p, log._user(user)
    r.hset(p + "a:" + request_id, mapping=dict(
        experiment=experiment, variant=variant, user=digest, shown_ms=1_000, items='["a", "b", "c"]',
        latency_ms=10.0, degraded=0, ranker_version="v1", encoder_version="", converted=0))
    r.zadd(p + "u:" + digest, {request_id: 1_000})
    r.sadd(p + "e:" + experiment, request_id)
    r.sadd(p + "experiments", experiment)


def test_an_experiment_answered_before_the_tallies_is_scanned_and_reports_right(redis_server):
    import redis

    log = RedisOutcomeLog(redis_server.url, f"l{uuid.uuid4().hex[:8]}", window_ms=60_000)
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        _legacy_answer(r, log, "old", "o1", "u1", "A")
        _legacy_answer(r, log, "old", "o2", "u2", "B")
        answer(log, "o3", "u1")  # experiment "e": tallied from its first answer
        log.record_answer(experiment="old", variant="A", user_id="u3", request_id="o4", shown_ms=1_000,
                          item_ids=["a", "b"], latency_ms=40.0, degraded=True)  # a new answer: still untallied
        assert log.record_feedback(user_id="u1", item_id="b", at_ms=2_000, purchase=True, request_id="o1")
        assert log.record_feedback(user_id="u3", item_id="a", at_ms=2_000, purchase=False)
        assert not log.tallied("old") and log.tallied("e")
        samples, rankers, _ = log.tallies("old")
        assert {v: (s.answers.sum(), s.clicked.sum(), s.converted.sum(), s.reciprocal_rank.sum(), s.degraded.sum())
                for v, s in samples.items()} == {"A": (2, 2, 1, 1.5, 1), "B": (1, 0, 0, 0.0, 0)}
        assert sorted(samples["A"].latency_ms.tolist()) == [10.0, 40.0]
        assert rankers == {"A": {"": 1, "v1": 1}, "B": {"v1": 1}}
        assert log.delete_user("u1") == 2
        assert {v: s.answers.sum() for v, s in log.sample("old").items()} == {"A": 1, "B": 1}
        assert log.sample("e") == {}

        # an answer written without tallies into a tallied experiment (a replica of the earlier
        # release during a rollout): the tallies miss it, so the report scans
        answer(log, "o5", "u5")
        _legacy_answer(r, log, "e", "o6", "u6", "B")
        assert not log.tallied("e")
        assert {v: s.answers.sum() for v, s in log.sample("e").items()} == {"A": 1, "B": 1}
    finally:
        r.close()
        log.close()
