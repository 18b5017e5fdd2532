"""A report's read on the Redis outcome log: the tallies against the scan of every answer.

One durable redis-server (recmesh/tools/redisserver.py, appendfsync always), one experiment of
`answers` answers from `users` users over two variants, ~30 % clicked (a tenth of those clicked
again lower down), ~5 % bought; then `RedisOutcomeLog.tallies` (what a report reads now) and
`scan_tallies` (every answer's hash: before, and still the untallied experiment's path), each
timed `repeat` times in the same run, and checked equal. Also the memory the tallies take beside
the answers (MEMORY USAGE, summed). Prints JSON; timings are wall-clock on a shared host, upper
bounds.

    python -m recmesh.tools.bench.outcomes --answers 50000 --users 2000"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np


def _same(a: tuple, b: tuple) -> bool:
    """tallies() equal up to per-user order and the reciprocal rank's summation order."""
    def normal(t: tuple) -> tuple:
        samples, rankers, encoders = t
        return ({v: (sorted(zip(s.answers.tolist(), s.clicked.tolist(), s.converted.tolist(),
                                np.round(s.reciprocal_rank, 9).tolist(), s.degraded.tolist(), strict=True)),
                     sorted(s.latency_ms.tolist())) for v, s in samples.items()}, rankers, encoders)
    return normal(a) == normal(b)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    import redis

    from recmesh.experiments.outcomes_redis import RedisOutcomeLog
    from recmesh.tools.redisserver import RedisServer

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        log = RedisOutcomeLog(server.url, "bench", window_ms=60_000)
        items = [f"i{n}" for n in range(10)]
        rows = [dict(experiment="x", variant="AB"[n % 2], user_id=f"user-{rng.randrange(args.users)}",
                     request_id=f"req-{n}", shown_ms=1_000 + n, item_ids=items,
                     latency_ms=round(rng.lognormvariate(3.0, 0.5), 3), degraded=rng.random() < 0.02,
                     ranker_version=rng.choice(["v1", "v2", ""]), encoder_version=rng.choice(["m1", ""]))
                for n in range(args.answers)]
        start = time.perf_counter()
        for at in range(0, len(rows), 1_000):
            log.record_answers(rows[at:at + 1_000])
        record_s = time.perf_counter() - start
        feedback = 0
        start = time.perf_counter()
        for row in rows:
            if rng.random() < 0.30:
                position = rng.randrange(len(items))
                log.record_feedback(user_id=row["user_id"], item_id=items[position], at_ms=row["shown_ms"] + 500,
                                    purchase=rng.random() < 0.15, request_id=row["request_id"])
                feedback += 1
                if rng.random() < 0.1 and position:
                    log.record_feedback(user_id=row["user_id"], item_id=items[rng.randrange(position)],
                                        at_ms=row["shown_ms"] + 600, purchase=False, request_id=row["request_id"])
                    feedback += 1
        feedback_s = time.perf_counter() - start
        assert log.tallied("x")
        timings: dict[str, list[float]] = {"tallies_s": [], "scan_s": []}
        for _ in range(args.repeat):
            for name, read in (("tallies_s", log.tallies), ("scan_s", log.scan_tallies)):
                start = time.perf_counter()
                result = read("x")
                timings[name].append(round(time.perf_counter() - start, 4))
                if name == "tallies_s":
                    tallied = result
                else:
                    scanned = result
        r = redis.Redis.from_url(server.url, decode_responses=True)

        def usage(pattern: str) -> int:
            return sum(r.memory_usage(k) or 0 for k in r.scan_iter(pattern, count=1_000))

        memory = {"answers_bytes": usage("bench:outcomes:a:*"), "tallies_bytes": usage("bench:outcomes:t*")}
        r.close()
        log.close()
    out = {"answers": args.answers, "users": args.users, "feedback_calls": feedback,
           "record_answers_s": round(record_s, 2), "record_feedback_s": round(feedback_s, 2),
           **timings, "equal": _same(tallied, scanned), **memory}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
