"""Where the updater keeps the stored business rules (common.proto StoredRule), in the same kind
of place as its events, so that each deployment has them where its events are durable:

- SqliteRules: a SQLite file beside the event log (its own file: `recmesh bootstrap` and
  `recmesh import` rebuild the log, the rules stay), WAL, fsynced before a change is answered,
  held in memory too (one updater replica owns the file).
- RedisRules: one hash in the Redis server the updater replicas share (`<prefix>:rules`), so a
  rule put through one replica is listed by every other; durable as the events are
  (`appendfsync always`, checked by RedisStore.open).

Rules are kept as their proto JSON (`rule_json`): readable with sqlite3 or redis-cli, and a
field added to the contract later does not break reading older ones. Both list in name order
(the order stored rules apply in)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from google.protobuf import json_format

from recmesh.v1 import common_pb2


def rule_json(rule: common_pb2.StoredRule) -> str:
    """A stored rule as compact JSON (proto field names, keys sorted): what the store and the
    audit log hold."""
    return json.dumps(json_format.MessageToDict(rule, preserving_proto_field_name=True), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def parse_rule(text: str) -> common_pb2.StoredRule:
    return json_format.Parse(text, common_pb2.StoredRule(), ignore_unknown_fields=True)


class RuleStore(Protocol):
    async def open(self) -> int: ...  # how many rules it holds
    # Creates or replaces rule.rule.name; returns (stored, the rule it replaced or None). Not
    # stored (False) when the name is new and max_rules are held already.
    async def put(self, rule: common_pb2.StoredRule, max_rules: int) -> tuple[bool, common_pb2.StoredRule | None]: ...
    async def list(self) -> list[common_pb2.StoredRule]: ...  # in name order
    async def delete(self, name: str) -> common_pb2.StoredRule | None: ...  # the deleted rule, None: none
    async def close(self) -> None: ...


class SqliteRules:
    """One table (name, rule JSON) in its own SQLite file; every read from memory, every write
    through the file first (one thread owns the connection)."""

    def __init__(self, path: Path):
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._rules: dict[str, common_pb2.StoredRule] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rules")

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> dict[str, common_pb2.StoredRule]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at every commit: an answered change stays
        db.execute("CREATE TABLE IF NOT EXISTS rules (name TEXT PRIMARY KEY, rule TEXT NOT NULL)")
        self._db = db
        return {name: parse_rule(text) for name, text in db.execute("SELECT name, rule FROM rules")}

    async def open(self) -> int:
        self._rules = await self._run(self._open)
        return len(self._rules)

    async def put(self, rule: common_pb2.StoredRule, max_rules: int) -> tuple[bool, common_pb2.StoredRule | None]:
        name = rule.rule.name
        old = self._rules.get(name)
        if old is None and len(self._rules) >= max_rules:
            return False, None
        text = rule_json(rule)
        await self._run(lambda: self._db.execute("INSERT OR REPLACE INTO rules (name, rule) VALUES (?, ?)",
                                                 (name, text)))
        self._rules[name] = rule
        return True, old

    async def list(self) -> list[common_pb2.StoredRule]:
        return [self._rules[name] for name in sorted(self._rules)]

    async def delete(self, name: str) -> common_pb2.StoredRule | None:
        if name not in self._rules:
            return None
        await self._run(lambda: self._db.execute("DELETE FROM rules WHERE name = ?", (name,)))
        return self._rules.pop(name)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
        self._pool.shutdown(wait=True)


# Create or replace one rule, atomically (a script runs alone on the server): a new name is
# refused when the hash holds max_rules already. Returns {stored 0/1, the replaced rule or ""}.
_PUT = """
local key, name, rule, max_rules = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local old = redis.call('HGET', key, name)
if not old and redis.call('HLEN', key) >= max_rules then return {0, ''} end
redis.call('HSET', key, name, rule)
return {1, old or ''}
"""
# Delete one rule; returns the deleted rule, or "" when there was none.
_DELETE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return '' end
redis.call('HDEL', KEYS[1], ARGV[1])
return old
"""


class RedisRules:
    """The rules in one Redis hash shared by every updater replica (name -> rule JSON). The
    caller checks durability (RedisStore.open refuses a Redis without appendfsync always)."""

    def __init__(self, url: str, prefix: str):
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(url, decode_responses=True)
        self._key = f"{prefix}:rules"
        self._put = self._redis.register_script(_PUT)
        self._delete = self._redis.register_script(_DELETE)

    async def open(self) -> int:
        return await self._redis.hlen(self._key)

    async def put(self, rule: common_pb2.StoredRule, max_rules: int) -> tuple[bool, common_pb2.StoredRule | None]:
        stored, old = await self._put(keys=[self._key], args=[rule.rule.name, rule_json(rule), max_rules])
        return bool(int(stored)), parse_rule(old) if old else None

    async def list(self) -> list[common_pb2.StoredRule]:
        rules = await self._redis.hgetall(self._key)
        return [parse_rule(rules[name]) for name in sorted(rules)]

    async def delete(self, name: str) -> common_pb2.StoredRule | None:
        old = await self._delete(keys=[self._key], args=[name])
        return parse_rule(old) if old else None

    async def close(self) -> None:
        await self._redis.aclose()
