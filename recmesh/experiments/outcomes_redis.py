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
scripts: one Redis server or a primary with replicas, not Redis Cluster (as the event store).

Tallies, so that a report (and the guardrail check) never reads the answers: the same scripts
keep, per experiment and variant, under `t:<len(experiment)>:<experiment>:<variant>:` - `n`,
`d`, `v` (hashes user digest -> answers, degraded answers, converted answers), `r` (hash
"<user digest>:<position>" -> answers whose first (lowest) click is at that position: integers
only, so a later lower click moves one count and no float drift builds up; clicks and the
reciprocal rank are summed from it), `l` (hash request id -> latency_ms, every answer's: the
report's percentiles), `rv` / `ev` (hashes ranker / encoder version -> answers); `tv:<experiment>`
(set: its variants with answers) and `tallied` (set: the tallied experiments). Counts that reach
zero are removed, so after DeleteUser the tallies equal those of a log where the user never
existed. A report reads them in one script call (one round trip, one consistent snapshot):
O(users x first-click positions + answers' latencies), never a hash of an answer. An answer
tallied carries its tally prefix (`tally` field), which feedback and DeleteUser follow.

Answers recorded before the tallies existed: an experiment is tallied only when its tallies
start with its first answer (the record script marks it `tallied` when its `e:` set is empty);
one that already had answers never is (until every answer of it is deleted) and its report
scans every answer, as before (`scan_tallies`). The report also checks, in the same script,
that its tallies count every answer of the experiment (an answer written by a replica of an
earlier release during a rollout has none), and scans when they do not. Feedback joined and
answers deleted by such a replica are not seen by that check: roll every replica over before an
experiment starts, or restart the experiment under a new name."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable

import numpy as np

from recmesh.experiments.outcomes import VariantSample, variant_samples

# Lua: one tally field down by one, gone at zero (a report after a deletion equals one where the
# user never existed: no zero-count users or versions left behind).
_DECR = """
local function decr(key, field)
  if redis.call('HINCRBY', key, field, -1) <= 0 then redis.call('HDEL', key, field) end
end
"""

# KEYS: answer, user's answers, experiment's answers, experiments, tallied experiments, the
# experiment's tallied variants. ARGV: experiment, variant, user digest, shown_ms, items (JSON),
# latency_ms, degraded (0/1), ranker version, request id, encoder version, the (experiment,
# variant)'s tally key prefix. An experiment is tallied from its first answer on, never from a
# later one (the answers before it would be missing from its tallies).
_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local tallied = redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 1
if (not tallied) and redis.call('SCARD', KEYS[3]) == 0 then
  redis.call('SADD', KEYS[5], ARGV[1])
  tallied = true
end
redis.call('HSET', KEYS[1], 'experiment', ARGV[1], 'variant', ARGV[2], 'user', ARGV[3], 'shown_ms', ARGV[4],
           'items', ARGV[5], 'latency_ms', ARGV[6], 'degraded', ARGV[7], 'ranker_version', ARGV[8],
           'encoder_version', ARGV[10], 'converted', '0')
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[9])
redis.call('SADD', KEYS[3], ARGV[9])
redis.call('SADD', KEYS[4], ARGV[1])
if tallied then
  local t = ARGV[11]
  redis.call('HSET', KEYS[1], 'tally', t)
  redis.call('SADD', KEYS[6], ARGV[2])
  redis.call('HINCRBY', t .. 'n', ARGV[3], 1)
  if ARGV[7] == '1' then redis.call('HINCRBY', t .. 'd', ARGV[3], 1) end
  redis.call('HSET', t .. 'l', ARGV[9], ARGV[6])
  redis.call('HINCRBY', t .. 'rv', ARGV[8], 1)
  redis.call('HINCRBY', t .. 'ev', ARGV[10], 1)
end
return 1
"""

# KEYS: answer. ARGV: user digest, position, purchase (0/1). The lower click position is kept:
# a tallied answer's first-click count moves from the old position to the new one; a conversion
# counts once per answer.
_MARK = _DECR + """
if redis.call('HGET', KEYS[1], 'user') ~= ARGV[1] then return 0 end
local clicked, converted, t = unpack(redis.call('HMGET', KEYS[1], 'clicked', 'converted', 'tally'))
local position = tonumber(ARGV[2])
if (not clicked) or tonumber(clicked) > position then
  redis.call('HSET', KEYS[1], 'clicked', ARGV[2])
  if t then
    if clicked then decr(t .. 'r', ARGV[1] .. ':' .. clicked) end
    redis.call('HINCRBY', t .. 'r', ARGV[1] .. ':' .. ARGV[2], 1)
  end
end
if ARGV[3] == '1' and converted ~= '1' then
  redis.call('HSET', KEYS[1], 'converted', '1')
  if t then redis.call('HINCRBY', t .. 'v', ARGV[1], 1) end
end
return 1
"""

# KEYS: the user's answers. ARGV: answer key prefix, experiment key prefix, batch size, tallied
# variants key prefix. Deletes the user's first `batch` answers, each one's tallies with it;
# returns {deleted, left}. Called until none are left, so one user with many answers never holds
# the shared Redis (events, user state) for long.
_DELETE_USER = _DECR + """
local n = 0
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
for _, request_id in ipairs(ids) do
  local answer = ARGV[1] .. request_id
  local experiment, variant, user, clicked, converted, degraded, ranker, encoder, t = unpack(redis.call(
    'HMGET', answer, 'experiment', 'variant', 'user', 'clicked', 'converted', 'degraded', 'ranker_version',
    'encoder_version', 'tally'))
  if experiment then
    if t then
      decr(t .. 'n', user)
      if degraded == '1' then decr(t .. 'd', user) end
      if converted == '1' then decr(t .. 'v', user) end
      if clicked then decr(t .. 'r', user .. ':' .. clicked) end
      redis.call('HDEL', t .. 'l', request_id)
      decr(t .. 'rv', ranker)
      decr(t .. 'ev', encoder)
      if redis.call('HLEN', t .. 'n') == 0 then redis.call('SREM', ARGV[4] .. experiment, variant) end
    end
    redis.call('SREM', ARGV[2] .. experiment, request_id)
    redis.call('DEL', answer)
    n = n + 1
  end
end
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return {n, redis.call('ZCARD', KEYS[1])}
"""

# KEYS: tallied experiments, the experiment's answers, its tallied variants. ARGV: experiment,
# its tally key prefix (a variant's: this .. variant .. ':'), '1' to read the per-user sums and
# latencies too (else the version counts only). {0}: no tallies to trust (the scan's turn);
# else {1, then per variant: name, answers, degraded, converted, first clicks (user:position),
# latencies (values), ranker versions, encoder versions}, hashes as flat field/value lists.
# One script, so the report is one consistent snapshot; the answers counted in the tallies must
# equal the experiment's answers (not so: an answer written without tallies, e.g. by a replica
# of an earlier release during a rollout), else the scan reads them.
_READ_TALLIES = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return {0} end
local out, total = {1}, 0
for _, variant in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local t = ARGV[2] .. variant .. ':'
  total = total + redis.call('HLEN', t .. 'l')
  out[#out + 1] = variant
  if ARGV[3] == '1' then
    out[#out + 1] = redis.call('HGETALL', t .. 'n')
    out[#out + 1] = redis.call('HGETALL', t .. 'd')
    out[#out + 1] = redis.call('HGETALL', t .. 'v')
    out[#out + 1] = redis.call('HGETALL', t .. 'r')
    out[#out + 1] = redis.call('HVALS', t .. 'l')
  else
    for _ = 1, 5 do out[#out + 1] = {} end
  end
  out[#out + 1] = redis.call('HGETALL', t .. 'rv')
  out[#out + 1] = redis.call('HGETALL', t .. 'ev')
end
if total ~= redis.call('SCARD', KEYS[2]) then return {0} end
return out
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
        self._read_tallies = self._redis.register_script(_READ_TALLIES)

    def _tally_prefix(self, experiment: str) -> str:
        """The experiment's tally keys' prefix (a variant's keys: this + variant + ':' + metric);
        the name's length first, so no experiment's keys are another's."""
        return f"{self._p}t:{len(experiment)}:{experiment}:"

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
                               self._p + "e:" + row["experiment"], self._p + "experiments", self._p + "tallied",
                               self._p + "tv:" + row["experiment"]],
                         args=[row["experiment"], row["variant"], user, row["shown_ms"], json.dumps(row["item_ids"]),
                               row["latency_ms"], int(row["degraded"]), row.get("ranker_version", ""),
                               row["request_id"], row.get("encoder_version", ""),
                               self._tally_prefix(row["experiment"]) + row["variant"] + ":"],
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
                                              args=[self._p + "a:", self._p + "e:", _BATCH, self._p + "tv:"])
            total += int(deleted)
        return total

    def experiments(self) -> list[str]:
        return sorted(self._redis.smembers(self._p + "experiments"))

    def tallied(self, experiment: str) -> bool:
        """Whether a report on the experiment reads its tallies (else it scans every answer: an
        experiment with answers from before the tallies, see the module docstring)."""
        return self._read_tallies(keys=self._tally_keys(experiment), args=self._tally_args(experiment, False))[0] == 1

    def _tally_keys(self, experiment: str) -> list[str]:
        return [self._p + "tallied", self._p + "e:" + experiment, self._p + "tv:" + experiment]

    def _tally_args(self, experiment: str, sums: bool) -> list:
        return [experiment, self._tally_prefix(experiment), int(sums)]

    def _answers(self, experiment: str) -> list[dict]:
        """Every answer of the experiment, _BATCH per round trip: the untallied experiment's report."""
        ids = sorted(self._redis.smembers(self._p + "e:" + experiment))
        rows = []
        for start in range(0, len(ids), _BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for request_id in ids[start:start + _BATCH]:
                pipe.hmget(self._p + "a:" + request_id, _READ)
            rows.extend(dict(zip(_READ, values, strict=True)) for values in pipe.execute() if values[0] is not None)
        return rows

    def scan_tallies(self, experiment: str) -> tuple[dict[str, VariantSample], dict, dict]:
        """tallies() from every answer (the untallied experiment's path; kept callable to check
        and time the tallies against it)."""
        answers = self._answers(experiment)
        return (self._sample(answers), self._versions(answers, "ranker_version"),
                self._versions(answers, "encoder_version"))

    def tallies(self, experiment: str) -> tuple[dict[str, VariantSample], dict, dict]:
        """(sample, ranker_versions, encoder_versions) of the experiment: what a report reads.
        One round trip reading O(users + answers' latencies), else (an untallied experiment)
        a scan of every answer."""
        reply = self._read_tallies(keys=self._tally_keys(experiment), args=self._tally_args(experiment, True))
        if reply[0] != 1:
            return self.scan_tallies(experiment)
        return self._from_tallies(reply)

    def sample(self, experiment: str) -> dict[str, VariantSample]:
        """Each variant's per-user sums for the experiment (variants with no answer are absent)."""
        return self.tallies(experiment)[0]

    def ranker_versions(self, experiment: str) -> dict[str, dict[str, int]]:
        """variant -> ranker version -> answers it ranked ('': answers the ranker did not rank)."""
        return self._version_tallies(experiment, "ranker_version")

    def encoder_versions(self, experiment: str) -> dict[str, dict[str, int]]:
        """variant -> encoder version (naming the interest model) -> answers whose interest it
        encoded ('': answers without an interest)."""
        return self._version_tallies(experiment, "encoder_version")

    def _version_tallies(self, experiment: str, field: str) -> dict[str, dict[str, int]]:
        """The version counts alone: O(variants x versions) read from the tallies."""
        reply = self._read_tallies(keys=self._tally_keys(experiment), args=self._tally_args(experiment, False))
        if reply[0] != 1:
            return self._versions(self._answers(experiment), field)
        return self._from_tallies(reply)[1 if field == "ranker_version" else 2]

    @staticmethod
    def _from_tallies(reply: list) -> tuple[dict[str, VariantSample], dict, dict]:
        """_READ_TALLIES's reply as tallies() returns it: users in digest order (as the scan's)."""
        def counts(flat: list) -> dict[str, int]:
            return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

        samples, rankers, encoders = {}, {}, {}
        for i in range(1, len(reply), 8):
            variant, answers, degraded, converted, first_clicks, latencies, ranker, encoder = reply[i:i + 8]
            versions = counts(ranker)
            if not versions:  # no answer left (the deletion script drops such a variant: defensive)
                continue
            rankers[variant] = dict(sorted(versions.items()))
            encoders[variant] = dict(sorted(counts(encoder).items()))
            answers = counts(answers)
            if not answers:  # the version counts alone were asked for
                continue
            degraded, converted = counts(degraded), counts(converted)
            clicked: dict[str, int] = {}
            reciprocal_rank: dict[str, float] = {}
            for field, n in counts(first_clicks).items():
                user, position = field.rsplit(":", 1)
                clicked[user] = clicked.get(user, 0) + n
                reciprocal_rank[user] = reciprocal_rank.get(user, 0.0) + n / (int(position) + 1)
            users = sorted(answers)
            samples[variant] = VariantSample(
                np.array([answers[u] for u in users], np.float64), np.array([clicked.get(u, 0) for u in users],
                                                                            np.float64),
                np.array([converted.get(u, 0) for u in users], np.float64),
                np.array([reciprocal_rank.get(u, 0.0) for u in users], np.float64),
                np.array([degraded.get(u, 0) for u in users], np.float64),
                np.array([float(latency) for latency in latencies], np.float64))
        order = sorted(rankers)
        return ({v: samples[v] for v in order if v in samples}, {v: rankers[v] for v in order},
                {v: encoders[v] for v in order})

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
