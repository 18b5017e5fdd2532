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
