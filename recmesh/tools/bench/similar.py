"""SimilarItems latency through the real mesh: N sequential calls per kind of anchor - a warm
MovieLens item, the same with a user (exclusions and interest re-ordering), a new item (upserted,
no events: text only), a free text (distinct texts, so the encoder's query cache does not
flatter the figures) - and `recmesh batch` throughput (users/s) over the MovieLens users at a
few concurrencies. results/similar.json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from recmesh.client import RecmeshClient
from recmesh.tools.batch import run_batch
from recmesh.tools.bench.latency import percentiles, queries_from_tags
from recmesh.tools.catalog import movielens
from recmesh.tools.catalog.bootstrap import DEFAULT_DATA, REPO
from recmesh.tools.devstack import private_stack
from recmesh.v1 import common_pb2

NEW_ITEMS = 20


def _latency(rm: RecmeshClient, calls: list[dict]) -> dict:
    wall, server, degraded = [], [], 0
    stages: dict[str, list[float]] = {}
    for kwargs in calls:
        started = time.perf_counter()
        reply = rm.similar_items(k=10, **kwargs)
        wall.append((time.perf_counter() - started) * 1000)
        server.append(reply.total_ms)
        degraded += bool(reply.degraded)
        for stage in reply.stage_latency:
            stages.setdefault(stage.stage, []).append(stage.ms)
    return {"client_ms": percentiles(wall), "gateway_ms": percentiles(server), "degraded_share": degraded / len(calls),
            "stage_ms": {name: percentiles(ms) for name, ms in stages.items()}}


def measure(target: str, calls: int, concurrencies: list[int], seed: int = 21) -> dict:
    rng = random.Random(seed)
    catalog = movielens.load(DEFAULT_DATA)
    popular = sorted(range(len(catalog.items)), key=lambda i: -catalog.popularity[i])[:2000]
    warm = [catalog.items[i].item_id for i in rng.choices(popular, k=calls)]
    users = [str(rng.randint(1, 610)) for _ in range(calls)]
    # Tagged per run: a gateway reused across runs (--target) must not answer from the encoder's
    # query cache what a fresh one encodes.
    run = f"{random.getrandbits(16):04x}"
    texts = [f"{text} {run}" for text in queries_from_tags(DEFAULT_DATA, calls, rng)]
    results: dict = {"calls_per_kind": calls, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                        "load_average_at_start": os.getloadavg()}}
    with RecmeshClient(target, timeout_s=2.0) as rm:
        new = [f"bench-new-{i}" for i in range(NEW_ITEMS)]
        rm.upsert_items([{"item_id": item, "title": f"{text.title()} ({2030 + i})", "categories": ["Drama"],
                          "description": f"A film about {text}."} for i, (item, text) in enumerate(zip(
                              new, queries_from_tags(DEFAULT_DATA, NEW_ITEMS, rng), strict=True))])
        for item in warm[:50]:  # warm connections and caches that any running server has warm
            rm.similar_items(item)
        kinds = {
            "warm_item": [{"item_id": item} for item in warm],
            "warm_item_with_user": [{"item_id": item, "user_id": user} for item, user in zip(warm, users, strict=True)],
            "new_item": [{"item_id": new[i % NEW_ITEMS]} for i in range(calls)],
            "free_text": [{"text": text} for text in texts],
        }
        results["similar_items"] = {kind: _latency(rm, kwargs) for kind, kwargs in kinds.items()}
        rm.delete_items(new)
    results["batch"] = {}
    all_users = [str(u) for u in range(1, 611)]
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in concurrencies:
            out = Path(tmp) / f"c{concurrency}.jsonl"
            report = asyncio.run(run_batch(target, all_users, out, Path(tmp) / "failed.jsonl", 10,
                                           common_pb2.Filters(), concurrency=concurrency, progress=False))
            results["batch"][f"concurrency_{concurrency}"] = {
                "users": report.answered, "failed": report.failed, "degraded": report.degraded,
                "degraded_answers_asked_again": report.asked_again,
                "seconds": round(report.seconds, 2), "users_per_s": round(report.answered / report.seconds, 1)}
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="SimilarItems calls per kind of anchor")
    parser.add_argument("--concurrency", type=int, action="append",
                        help="recmesh batch concurrencies to measure (repeatable; default 1, 2, 4, 8)")
    parser.add_argument("--target", help="a running gateway (default: a private mesh over the var's catalog)")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args()
    concurrencies = args.concurrency or [1, 2, 4, 8]
    with contextlib.ExitStack() as stack:
        target = args.target or stack.enter_context(private_stack()).address("gateway")
        results = measure(target, args.calls, concurrencies)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "similar.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
