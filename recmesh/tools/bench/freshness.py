"""Feedback to served ranker version, under load: on a fresh mesh (online learning and
exploration on, as shipped), a load generator sends `rate` events/s of background events while
a feedback loop asks Recommend and clicks a shown item (with its request_id), and a probe asks
Recommend every 20 ms noting the ranker version served. For each click: the time until the
first Recommend served by a version whose training data reaches past it (each published
version records the arrival time of the newest feedback it learned from).

Writes results/freshness.json and results/freshness.png."""

from __future__ import annotations

import argparse
import asyncio
import json
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

ET = common_pb2.EventType


async def background(stub, rate: int, seconds: float, sent: list[int]) -> None:
    """`rate` events/s in batches of 10 every 10 ms (paced against the clock, not by sleeps alone)."""
    started = time.monotonic()
    n = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate)
        while n < due:
            events = [common_pb2.Event(event_id=uuid.uuid4().hex, user_id=f"bg-{(n + i) % 997}",
                                       item_id=str(1 + (n + i) % 3000), type=ET.EVENT_TYPE_VIEW, timestamp_ms=now_ms())
                      for i in range(10)]
            await stub.TrackEvents(recommendations_pb2.TrackEventsRequest(events=events), timeout=5)
            n += 10
            sent[0] = n
        await asyncio.sleep(0.005)


async def feedback(stub, seconds: float, clicks: list[int]) -> None:
    started, u = time.monotonic(), 0
    while time.monotonic() - started < seconds:
        user = f"fb-{u % 300}"
        reply = await stub.Recommend(recommendations_pb2.RecommendRequest(user_id=user, k=10), timeout=2)
        if reply.items:
            chosen = reply.items[u % len(reply.items)]
            event = common_pb2.Event(event_id=uuid.uuid4().hex, user_id=user, item_id=chosen.item_id,
                                     type=ET.EVENT_TYPE_CLICK, request_id=reply.request_id, timestamp_ms=now_ms())
            await stub.TrackEvents(recommendations_pb2.TrackEventsRequest(events=[event]), timeout=5)
            clicks.append(now_ms())
        u += 1
        await asyncio.sleep(0.05)


async def probe(stub, seconds: float, seen: list[tuple[int, str]]) -> None:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        reply = await stub.Recommend(recommendations_pb2.RecommendRequest(user_id="probe", k=10), timeout=2)
        seen.append((now_ms(), reply.versions.get("ranker", "")))
        await asyncio.sleep(0.02)


async def drive(target: str, rate: int, seconds: float):
    sent, clicks, seen = [0], [], []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = recommendations_pb2_grpc.RecommendationsStub(channel)
        await asyncio.gather(background(stub, rate, seconds, sent), feedback(stub, seconds, clicks),
                             probe(stub, seconds + 3, seen))
    return sent[0], clicks, seen


def run(out: Path, rate: int, seconds: float) -> dict:
    with fresh_stack() as stack:
        sent, clicks, seen = asyncio.run(drive(stack.address("gateway"), rate, seconds))
        published = {}
        for path in sorted((stack.var / "ranker" / "params").glob("*.json")):
            spec = json.loads(path.read_text())
            published[spec["version"]] = spec["trained_through_ms"]
    lags = []
    for clicked in clicks:
        served = next((t for t, v in seen if published.get(v, 0) >= clicked), None)
        if served is not None:
            lags.append(served - clicked)
    lag = np.asarray(lags, dtype=np.float64) / 1000
    results = {
        "background_events_per_s": round(sent / seconds), "seconds": seconds, "clicks": len(clicks),
        "clicks_served_by_a_version_trained_past_them": len(lags), "versions_published": len(published),
        "freshness_s": {q: round(float(np.percentile(lag, int(q[1:]))), 2) for q in ("p50", "p90", "p99")}
        | {"max": round(float(lag.max()), 2)} if len(lag) else {},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "freshness.json").write_text(json.dumps(results, indent=2))
    if len(lag):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(lag, bins=30)
        ax.axvline(5, color="grey", linestyle="--", label="5 s")
        ax.set_xlabel("feedback → first Recommend served by a version trained past it (s)")
        ax.set_title(f"Freshness at {results['background_events_per_s']} events/s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "freshness.png", dpi=120)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.bench.freshness", description=__doc__)
    parser.add_argument("--rate", type=int, default=1000, help="background events per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    print(json.dumps(run(args.out, args.rate, args.seconds), indent=2))


if __name__ == "__main__":
    main()
