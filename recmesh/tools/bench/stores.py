"""The updater's two event stores side by side, in one run: SQLite + memory (one replica) and
Redis (shared by replicas; a redis-server with appendfsync always started here). For batch
sizes 1, 10 and 100 from one writer: acknowledged (durable) events per second and time per
append; and the time of one user-state read. Writes results/stores.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from recmesh.common.local import REPO
from recmesh.events.eventlog import LoggedEvent
from recmesh.events.state import UserStateStore
from recmesh.events.stores import EventStore, LocalStore, RedisStore
from recmesh.tools.redisserver import RedisServer

RATE = 3


def events(n: int, first: int) -> list[LoggedEvent]:
    return [LoggedEvent(f"e{first + i}", f"u{(first + i) % 1000}", str(i % 500), RATE, "", 4.0, 1, "")
            for i in range(n)]


async def measure(store: EventStore, batches: list[int], events_per_batch_size: int) -> dict:
    await store.open()
    out: dict = {"append": []}
    try:
        for batch in batches:
            first, n = batch * 10**7, max(events_per_batch_size // (1 if batch > 1 else 3), batch)
            started = time.perf_counter()
            for i in range(0, n, batch):
                await store.append_groups([events(batch, first + i)])
            seconds = time.perf_counter() - started
            out["append"].append({"batch": batch, "events_per_s": round(n / seconds),
                                  "ms_per_append": round(seconds / (n / batch) * 1000, 3)})
        started = time.perf_counter()
        for i in range(1000):
            await store.user_view(f"u{i}", 50)
        out["user_view_ms"] = round((time.perf_counter() - started), 4)  # 1000 reads: seconds == ms each
    finally:
        await store.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=3000, help="per batch size (a third for batch 1)")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    batches = [1, 10, 100]
    work = Path(tempfile.mkdtemp(prefix="recmesh-stores-"))
    results = {"sqlite": asyncio.run(measure(LocalStore(work / "events.sqlite", UserStateStore()), batches,
                                             args.events))}
    with RedisServer(work / "redis") as server:
        results["redis"] = asyncio.run(measure(RedisStore(server.url, "bench", 200, 5000, 20, 3600), batches,
                                               args.events))
    for a, b in zip(results["sqlite"]["append"], results["redis"]["append"], strict=True):
        a["redis_over_sqlite"] = round(b["events_per_s"] / a["events_per_s"], 2)
    print(json.dumps(results, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stores.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
