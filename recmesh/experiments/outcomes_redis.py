"""The answers' log joined with feedback, in Redis: one log for every updater replica.

With the redis event store, a gateway's impressions and a user's events reach whichever updater
replica the load balancer picks, so an answer and its click are often recorded by different
replicas. Kept in the replicas' shared Redis, every answer can be joined by any replica and the
report (and the guardrail) of every replica reads all of them. Same contract as the SQLite
OutcomeLog (recmesh/experiments/outcomes.py): idempotent by request id, feedback by request id
else the user's newest answer within `window_ms` showing the item, user ids stored as keyed
BLAKE2b digests only, DeleteUser removing the user's answers.

Keys under `<prefix>:outcomes:` - `meta` (hash: the digest key), `a:<request_id>` (hash: one
answer), `u:<user digest>` (sorted set: the user's request ids by shown_ms), `e:<experiment>`
(set: its request ids), `experiments` (set of names). Each change is one Lua script, so two
replicas joining feedback to one answer keep the first click's (lowest) position. Multi-key
scripts: one Redis server or a primary with replicas, not Redis Cluster (as the event store)."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable

from recmesh.experiments.outcomes import VariantSample, variant_samples

# KEYS: answer, user's answers, experiment's answers, experiments. ARGV: experiment, variant, user
# digest, shown_ms, items (JSON), latency_ms, degraded (0/1), ranker version, request id, encoder version.
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'experiment', ARGV[1], 'variant', ARGV[2], 'user', ARGV[3], 'shown_ms', ARGV[4],
           'items', ARGV[5], 'latency_ms', ARGV[6], 'degraded', ARGV[7], 'ranker_version', ARGV[8],
           'encoder_version', ARGV[10], 'converted', '0')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[9])
redis.call('SADD', KEYS[3], ARGV[9])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""

# KEYS: answer. ARGV: user digest, position, purchase (0/1). The lower click position is kept.
_MARK = """
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return 0 end
local clicked = redis.call('HGET', KEYS[1], 'clicked')
if (not clicked) or tonumber(clicked) > tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], 'clicked', ARGV[2]) end
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'converted', '1') end
return 1
"""

# KEYS: the user's answers. ARGV: answer key prefix, experiment key prefix, batch size. Deletes
# the user's first `batch` answers; returns {deleted, left}. Called until none are left, so one
# user with many answers never holds the shared Redis (events, user state) for long.
_DELETE_USER = """
local n = 0
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
for _, request_id in ipairs(ids) do
  local answer = ARGV[1] .. request_id
  local experiment = redis.call('HGET', answer, 'experiment')
  if experiment then
    redis.call('SREM', ARGV[2] .. experiment, request_id)
    redis.call('DEL', answer)
    n = n + 1
  end
end
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return {n, redis.call('ZCARD', KEYS[1])}
"""

_READ = ("variant", "user", "clicked", "converted", "degraded", "latency_ms", "ranker_version", "encoder_version")
_BATCH = 1000  # answers read per pipeline round trip in a report


class RedisOutcomeLog:
    """OutcomeLog's methods over Redis (redis-py, synchronous: the updater calls it from its one
    outcome thread, off the event loop). url: redis://host:port/db; prefix: the event store's."""

    def __init__(self, url: str, prefix: str, window_ms: int):
        import redis

        self.window_ms = window_ms
        self._redis = redis.Redis.from_url(url, decode_responses=True)
        self._p = f"{prefix}:outcomes:"
        self._redis.hsetnx(self._p + "meta", "user_key", secrets.token_hex(32))  # the first replica's wins
        self._key = bytes.fromhex(self._redis.hget(self._p + "meta", "user_key"))
        self._record = self._redis.register_script(_RECORD)
        self._mark = self._redis.register_script(_MARK)
        self._delete_user = self._redis.register_script(_DELETE_USER)

    def _user(self, user_id: str) -> str:
        return hashlib.blake2b(user_id.encode(), key=self._key, digest_size=16).hexdigest()

    def record_answer(self, *, experiment: str, variant: str, user_id: str, request_id: str, shown_ms: int,
                      item_ids: list[str], latency_ms: float, degraded: bool, ranker_version: str = "",
                      encoder_version: str = "") -> None:
        """Idempotent by request_id (a resent batch is not counted twice)."""
        self.record_answers([dict(experiment=experiment, variant=variant, user_id=user_id, request_id=request_id,
                                  shown_ms=shown_ms, item_ids=item_ids, latency_ms=latency_ms, degraded=degraded,
                                  ranker_version=ranker_version, encoder_version=encoder_version)])

    def record_answers(self, rows: Iterable[dict]) -> None:
        """record_answer for each row, one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for row in rows:
            user = self._user(row["user_id"])
            self._record(keys=[self._p + "a:" + row["request_id"], self._p + "u:" + user,
                               self._p + "e:" + row["experiment"], self._p + "experiments"],
                         args=[row["experiment"], row["variant"], user, row["shown_ms"], json.dumps(row["item_ids"]),
                               row["latency_ms"], int(row["degraded"]), row.get("ranker_version", ""),
                               row["request_id"], row.get("encoder_version", "")],
                         client=pipe)
        pipe.execute()

    def record_feedback(self, *, user_id: str, item_id: str, at_ms: int, purchase: bool,
                        request_id: str = "") -> bool:
        """Marks the answer this item event answers; False when it answers none."""
        user = self._user(user_id)
        if request_id:
            candidates = [request_id]
        else:
            candidates = self._redis.zrevrangebyscore(self._p + "u:" + user, at_ms, at_ms - self.window_ms)
        for answer_id in candidates:
            items = self._redis.hget(self._p + "a:" + answer_id, "items")
            shown = json.loads(items) if items else []
            if item_id not in shown:
                continue
            if self._mark(keys=[self._p + "a:" + answer_id], args=[user, shown.index(item_id), int(purchase)]):
                return True
        return False

    def delete_user(self, user_id: str) -> int:
        """Every answer of the user deleted, _BATCH at a time; how many there were."""
        total, left = 0, 1
        while left:
            deleted, left = self._delete_user(keys=[self._p + "u:" + self._user(user_id)],
                                              args=[self._p + "a:", self._p + "e:", _BATCH])
            total += int(deleted)
        return total

    def experiments(self) -> list[str]:
        return sorted(self._redis.smembers(self._p + "experiments"))

    def _answers(self, experiment: str) -> list[dict]:
        ids = sorted(self._redis.smembers(self._p + "e:" + experiment))
        rows = []
        for start in range(0, len(ids), _BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for request_id in ids[start:start + _BATCH]:
                pipe.hmget(self._p + "a:" + request_id, _READ)
            rows.extend(dict(zip(_READ, values, strict=True)) for values in pipe.execute() if values[0] is not None)
        return rows

    def tallies(self, experiment: str) -> tuple[dict[str, VariantSample], dict, dict]:
        """(sample, ranker_versions, encoder_versions) of the experiment from one read of its
        answers: what a report reads."""
        answers = self._answers(experiment)
        return (self._sample(answers), self._versions(answers, "ranker_version"),
                self._versions(answers, "encoder_version"))

    def sample(self, experiment: str) -> dict[str, VariantSample]:
        """Each variant's per-user sums for the experiment (variants with no answer are absent)."""
        return self._sample(self._answers(experiment))

    def ranker_versions(self, experiment: str) -> dict[str, dict[str, int]]:
        """variant -> ranker version -> answers it ranked ('': answers the ranker did not rank)."""
        return self._versions(self._answers(experiment), "ranker_version")

    def encoder_versions(self, experiment: str) -> dict[str, dict[str, int]]:
        """variant -> encoder version (naming the interest model) -> answers whose interest it
        encoded ('': answers without an interest)."""
        return self._versions(self._answers(experiment), "encoder_version")

    @staticmethod
    def _sample(answers: list[dict]) -> dict[str, VariantSample]:
        return variant_samples(
            (r["variant"], r["user"], None if r["clicked"] is None else int(r["clicked"]), int(r["converted"]),
             int(r["degraded"]), float(r["latency_ms"])) for r in answers)

    @staticmethod
    def _versions(answers: list[dict], field: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in answers:
            versions = out.setdefault(r["variant"], {})
            version = r[field] or ""  # an answer recorded before the field existed: none
            versions[version] = versions.get(version, 0) + 1
        return {variant: dict(sorted(v.items())) for variant, v in sorted(out.items())}

    def close(self) -> None:
        self._redis.close()
