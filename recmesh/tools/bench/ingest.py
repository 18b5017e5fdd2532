"""Durable ingest throughput: TrackEvents through the gateway into the updater's event log
(fsynced before each acknowledgement, group commit across concurrent calls), on a fresh mesh.

For each (concurrency, batch size): as many calls as possible for a fixed time from one asyncio
client, counting acknowledged events per second and call latency. Writes
results/ingest.json and results/ingest.png."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

from recmesh.common.clock import now_ms
from recmesh.common.local import REPO
from recmesh.tools.eval.live import fresh_stack
from recmesh.tools.extras import require
from recmesh.v1 import common_pb2, recommendations_pb2, recommendations_pb2_grpc

VIEW = common_pb2.EventType.EVENT_TYPE_VIEW


async def measure(target: str, concurrency: int, batch: int, seconds: float) -> dict:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = recommendations_pb2_grpc.RecommendationsStub(channel)
        latencies: list[float] = []
        acked = 0
        deadline = time.monotonic() + seconds

        async def worker(w: int) -> None:
            nonlocal acked
            n = 0
            while time.monotonic() < deadline:
                now = now_ms()
                events = [common_pb2.Event(event_id=uuid.uuid4().hex, user_id=f"bench-{w}-{n % 50}",
                                           item_id=str(1 + (n + i) % 2000), type=VIEW, timestamp_ms=now)
                          for i in range(batch)]
                started = time.perf_counter()
                reply = await stub.TrackEvents(recommendations_pb2.TrackEventsRequest(events=events), timeout=10)
                latencies.append((time.perf_counter() - started) * 1000)
                acked += reply.accepted
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    lat = np.asarray(latencies)
    return {"concurrency": concurrency, "batch": batch, "events_per_s": round(acked / elapsed),
            "calls": len(lat), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def run(out: Path, seconds: float) -> dict:
    grid = [(1, 1), (16, 1), (16, 10), (64, 10), (16, 100)]
    rows = []
    with fresh_stack() as stack:
        target = stack.address("gateway")
        for concurrency, batch in grid:
            row = asyncio.run(measure(target, concurrency, batch, seconds))
            print(json.dumps(row), flush=True)
            rows.append(row)
    results = {"cpus": os.cpu_count(), "seconds_per_point": seconds, "fsync": "every commit (synchronous=FULL)",
               "points": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ingest.json").write_text(json.dumps(results, indent=2))
    _plot(rows, out / "ingest.png")
    return results


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"c={r['concurrency']}\nbatch={r['batch']}" for r in rows]
    ax.bar(labels, [r["events_per_s"] for r in rows])
    ax.axhline(5000, color="grey", linestyle="--", label="5,000 events/s")
    ax.set_ylabel("acknowledged events / s")
    ax.set_title("Durable ingest through the gateway (fsync before ack, group commit)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.bench.ingest", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    run(args.out, args.seconds)


if __name__ == "__main__":
    main()
