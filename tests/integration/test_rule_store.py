"""The updater's two rule stores pass the same tests: a SQLite file (one replica) and the shared
Redis (a real redis-server on loopback): create or replace by name, list in name order, delete,
a full set refusing a new name, and everything still there after the store is opened again."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from recmesh.events.rulestore import RedisRules, SqliteRules, parse_rule, rule_json
from recmesh.v1 import common_pb2

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "redis"])
def make_rules(request, tmp_path, redis_server):
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make():
        if request.param == "redis":
            return RedisRules(redis_server.url, prefix)
        return SqliteRules(tmp_path / "rules.sqlite")

    return make


def rule(name: str, boost: float = 2.0, *surfaces: str) -> common_pb2.StoredRule:
    return common_pb2.StoredRule(
        rule=common_pb2.Rule(name=name, boost=boost, match=common_pb2.ItemMatch(
            categories=["Drama"], attributes=[common_pb2.AttributeFilter(name="price", range=common_pb2.NumberRange(
                max=50))])),
        surfaces=surfaces, updated_ms=1_700_000_000_123)


def test_put_list_replace_delete_and_reopen(make_rules):
    async def go():
        store = make_rules()
        assert await store.open() == 0
        created = await store.put(rule("b", 2.0, "home"), max_rules=3)
        await store.put(rule("a"), max_rules=3)
        replaced = await store.put(rule("b", 0.5), max_rules=3)
        await store.put(rule("c"), max_rules=3)
        full = await store.put(rule("d"), max_rules=3)  # a new name past the limit
        again = await store.put(rule("c", 3.0), max_rules=3)  # an existing name is still replaced
        listed = await store.list()
        deleted, missing = await store.delete("a"), await store.delete("a")
        await store.close()
        reopened = make_rules()
        count = await reopened.open()
        after = await reopened.list()
        await reopened.close()
        return created, replaced, full, again, listed, deleted, missing, count, after

    created, replaced, full, again, listed, deleted, missing, count, after = asyncio.run(go())
    assert created == (True, None)
    assert replaced[0] and replaced[1] == rule("b", 2.0, "home")
    assert full == (False, None) and again[0]
    assert [r.rule.name for r in listed] == ["a", "b", "c"]
    assert listed[1] == rule("b", 0.5) and listed[2].rule.boost == 3.0
    assert deleted == rule("a") and missing is None
    assert count == 2 and after == listed[1:]


def test_a_rule_is_kept_as_readable_json_that_reads_back_whole():
    stored = rule("brand_acme", 2.0, "home", "pdp")
    text = rule_json(stored)
    assert '"name":"brand_acme"' in text and '"surfaces":["home","pdp"]' in text
    assert parse_rule(text) == stored
    assert parse_rule(text.replace("{", '{"a_field_from_a_later_contract":1,', 1)) == stored


def test_redis_rules_are_shared_by_every_replica(redis_server):
    """Two updater replicas over one Redis: a rule put through one is listed by the other at once."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    async def go():
        a, b = RedisRules(redis_server.url, prefix), RedisRules(redis_server.url, prefix)
        await a.open()
        await b.open()
        await a.put(rule("shared"), max_rules=5)
        seen = await b.list()
        await b.delete("shared")
        gone = await a.list()
        await a.close()
        await b.close()
        return seen, gone

    seen, gone = asyncio.run(go())
    assert seen == [rule("shared")] and gone == []


def test_the_updater_keeps_rules_where_its_events_are(tmp_path):
    from services.updater.config import UpdaterSettings
    from services.updater.rules import make_rule_store

    assert isinstance(make_rule_store(UpdaterSettings(store="redis", redis_url="redis://127.0.0.1:1/0")), RedisRules)
    local = make_rule_store(UpdaterSettings(log_path=tmp_path / "updater" / "events.sqlite"))
    assert isinstance(local, SqliteRules) and local._path == tmp_path / "updater" / "rules.sqlite"
    chosen = make_rule_store(UpdaterSettings(log_path=tmp_path / "events.sqlite", rules_path=tmp_path / "r.sqlite"))
    assert chosen._path == tmp_path / "r.sqlite"


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_experiments_live_beside_the_rules_in_either_store_and_stay_apart(kind, tmp_path, redis_server):
    """The same generic store holds experiments (common.proto Experiment) in a table / hash of
    their own: a rule and an experiment of one name do not meet."""
    from recmesh.events.rulestore import EXPERIMENTS, RedisNamed, SqliteNamed

    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make(which):
        if kind == "redis":
            return RedisNamed(redis_server.url, prefix, which)
        return SqliteNamed(tmp_path / "store.sqlite", which)

    experiment = common_pb2.Experiment(name="a", control="A", state=common_pb2.EXPERIMENT_STATE_RUNNING, variants=[
        common_pb2.ExperimentVariant(name="A", share=0.5), common_pb2.ExperimentVariant(
            name="B", share=0.5, overrides=common_pb2.VariantOverrides(diversity=0.25))])

    async def go():
        experiments, rules = make(EXPERIMENTS), (RedisRules(redis_server.url, prefix) if kind == "redis"
                                                 else SqliteRules(tmp_path / "store.sqlite"))
        await experiments.open()
        await rules.open()
        await experiments.put(experiment, max_rules=10)
        await rules.put(rule("a"), max_rules=10)
        stopped = common_pb2.Experiment()
        stopped.CopyFrom(experiment)
        stopped.state = common_pb2.EXPERIMENT_STATE_STOPPED
        replaced = await experiments.put(stopped, max_rules=10)
        await experiments.close()
        await rules.close()
        again = make(EXPERIMENTS)
        await again.open()
        listed = await again.list()
        await again.close()
        return replaced, listed

    replaced, listed = asyncio.run(go())
    assert replaced == (True, experiment)
    assert len(listed) == 1 and listed[0].state == common_pb2.EXPERIMENT_STATE_STOPPED
    assert listed[0].variants[1].overrides.diversity == pytest.approx(0.25)
