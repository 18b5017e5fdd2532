"""Where the updater keeps the stored business rules (common.proto StoredRule) and the
experiments (common.proto Experiment) - named records of one kind each, in the same kind of place
as its events, so that each deployment has them where its events are durable:

- SqliteNamed (SqliteRules): a SQLite file beside the event log (its own file: `recmesh bootstrap` and
  `recmesh import` rebuild the log, the rules stay), WAL, fsynced before a change is answered,
  held in memory too (one updater replica owns the file).
- RedisNamed (RedisRules): one hash in the Redis server the updater replicas share
  (`<prefix>:rules`, `<prefix>:experiments`), so a
  rule put through one replica is listed by every other; durable as the events are
  (`appendfsync always`, checked by RedisStore.open).

Records are kept as their proto JSON (`rule_json`): readable with sqlite3 or redis-cli, and a
field added to the contract later does not break reading older ones. Both list in name order
(the order stored rules apply in). One generic store per backend serves both kinds (`Kind`: the
table or hash, the message, where its name is)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Protocol, TypeVar

from google.protobuf import json_format

from recmesh.v1 import common_pb2


def rule_json(rule) -> str:
    """A stored record (rule, experiment) as compact JSON (proto field names, keys sorted): what
    the store and the audit log hold."""
    return json.dumps(json_format.MessageToDict(rule, preserving_proto_field_name=True), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False)


def parse_rule(text: str) -> common_pb2.StoredRule:
    return json_format.Parse(text, common_pb2.StoredRule(), ignore_unknown_fields=True)


M = TypeVar("M")


@dataclass(frozen=True)
class Kind(Generic[M]):
    """One kind of named record: its SQLite table / Redis hash suffix, its message, its name."""

    table: str
    message: type
    name_of: Callable[[M], str]

    def parse(self, text: str) -> M:
        return json_format.Parse(text, self.message(), ignore_unknown_fields=True)


RULES: Kind[common_pb2.StoredRule] = Kind("rules", common_pb2.StoredRule, lambda r: r.rule.name)
EXPERIMENTS: Kind[common_pb2.Experiment] = Kind("experiments", common_pb2.Experiment, lambda e: e.name)


class RuleStore(Protocol):
    async def open(self) -> int: ...  # how many records it holds
    # Creates or replaces the record of its name; returns (stored, the record it replaced or
    # None). Not stored (False) when the name is new and max_rules are held already.
    async def put(self, rule, max_rules: int) -> tuple[bool, object | None]: ...
    async def list(self) -> list: ...  # in name order
    async def delete(self, name: str) -> object | None: ...  # the deleted record, None: none
    async def close(self) -> None: ...


class SqliteNamed:
    """One table (name, record JSON) in its own SQLite file; every read from memory, every write
    through the file first (one thread owns the connection)."""

    def __init__(self, path: Path, kind: Kind = RULES):
        self._path = path
        self._kind = kind
        self._db: sqlite3.Connection | None = None
        self._rules: dict = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=kind.table)
        # A change reads the records held, writes the file, then updates them: concurrent
        # changes one after another, or 16 puts at once each saw room under max_rules and two
        # deletes of one name both found it (hostile-input review).
        self._changing = asyncio.Lock()

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> dict:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # the WAL is fsynced at every commit: an answered change stays
        # The rules' column is named `rule` (files written before experiments existed keep it).
        db.execute(f"CREATE TABLE IF NOT EXISTS {self._kind.table} (name TEXT PRIMARY KEY, rule TEXT NOT NULL)")
        self._db = db
        return {name: self._kind.parse(text) for name, text in db.execute(f"SELECT name, rule FROM {self._kind.table}")}

    async def open(self) -> int:
        self._rules = await self._run(self._open)
        return len(self._rules)

    async def put(self, rule, max_rules: int) -> tuple[bool, object | None]:
        name = self._kind.name_of(rule)
        async with self._changing:
            old = self._rules.get(name)
            if old is None and len(self._rules) >= max_rules:
                return False, None
            text = rule_json(rule)
            await self._run(lambda: self._db.execute(
                f"INSERT OR REPLACE INTO {self._kind.table} (name, rule) VALUES (?, ?)", (name, text)))
            self._rules[name] = rule
            return True, old

    async def list(self) -> list:
        return [self._rules[name] for name in sorted(self._rules)]

    async def delete(self, name: str):
        async with self._changing:
            if name not in self._rules:
                return None
            await self._run(lambda: self._db.execute(f"DELETE FROM {self._kind.table} WHERE name = ?", (name,)))
            return self._rules.pop(name)

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
        self._pool.shutdown(wait=True)


class SqliteRules(SqliteNamed):
    """The stored business rules' SQLite store."""

    def __init__(self, path: Path):
        super().__init__(path, RULES)


# Create or replace one record, atomically (a script runs alone on the server): a new name is
# refused when the hash holds max_rules already. Returns {stored 0/1, the replaced record or ""}.
_PUT = """
local key, name, rule, max_rules = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local old = redis.call('HGET', key, name)
if not old and redis.call('HLEN', key) >= max_rules then return {0, ''} end
redis.call('HSET', key, name, rule)
return {1, old or ''}
"""
# Delete one record; returns the deleted record, or "" when there was none.
_DELETE = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return '' end
redis.call('HDEL', KEYS[1], ARGV[1])
return old
"""


class RedisNamed:
    """The records in one Redis hash shared by every updater replica (name -> record JSON). The
    caller checks durability (RedisStore.open refuses a Redis without appendfsync always)."""

    def __init__(self, url: str, prefix: str, kind: Kind = RULES):
        import redis.asyncio as aioredis

        self._kind = kind
        self._redis = aioredis.from_url(url, decode_responses=True)
        self._key = f"{prefix}:{kind.table}"
        self._put = self._redis.register_script(_PUT)
        self._delete = self._redis.register_script(_DELETE)

    async def open(self) -> int:
        return await self._redis.hlen(self._key)

    async def put(self, rule, max_rules: int) -> tuple[bool, object | None]:
        stored, old = await self._put(keys=[self._key], args=[self._kind.name_of(rule), rule_json(rule), max_rules])
        return bool(int(stored)), self._kind.parse(old) if old else None

    async def list(self) -> list:
        rules = await self._redis.hgetall(self._key)
        return [self._kind.parse(rules[name]) for name in sorted(rules)]

    async def delete(self, name: str):
        old = await self._delete(keys=[self._key], args=[name])
        return self._kind.parse(old) if old else None

    async def close(self) -> None:
        await self._redis.aclose()


class RedisRules(RedisNamed):
    """The stored business rules' Redis hash."""

    def __init__(self, url: str, prefix: str):
        super().__init__(url, prefix, RULES)
