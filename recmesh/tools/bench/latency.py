"""Recommend latency through the real mesh: N sequential calls without and with typed query text,
MovieLens users with their history, distinct queries (taken from the users' tags) so the
encoder's query cache does not flatter the figures."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np

from recmesh.client import RecmeshClient
from recmesh.tools.catalog import movielens
from recmesh.tools.catalog.bootstrap import DEFAULT_DATA, REPO
from recmesh.tools.devstack import private_stack
from recmesh.tools.extras import require


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    a = np.asarray(samples_ms)
    return {f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)} | {
        "mean": round(float(a.mean()), 2), "max": round(float(a.max()), 2), "n": len(a)
    }


def queries_from_tags(data: Path, n: int, rng: random.Random) -> list[str]:
    catalog = movielens.load(data)
    tags = sorted({t for item in catalog.items for t in item.tags if len(t) > 3})
    genres = sorted({g.lower() for item in catalog.items for g in item.categories})
    phrases = [f"{rng.choice(tags)} {rng.choice(genres)}" for _ in range(n)]
    return phrases


def run(calls: int, out: Path, seed: int = 7) -> dict:
    rng = random.Random(seed)
    users = [str(rng.randint(1, 610)) for _ in range(calls)]
    queries = queries_from_tags(DEFAULT_DATA, calls, rng)
    results: dict = {"calls": calls, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    samples: dict[str, list[float]] = {}
    with private_stack() as stack, RecmeshClient(stack.address("gateway"), timeout_s=1.0) as rm:
        for u in users[:50]:  # warm connections and caches that any running server has warm
            rm.recommend(u, k=10)
        for mode in ("no_query", "query"):
            wall, server, degraded = [], [], 0
            stages: dict[str, list[float]] = {}
            for user, query in zip(users, queries, strict=True):
                started = time.perf_counter()
                reply = rm.recommend(user, k=10, query=query if mode == "query" else "")
                wall.append((time.perf_counter() - started) * 1000)
                server.append(reply.total_ms)
                for stage in reply.stage_latency:
                    stages.setdefault(stage.stage, []).append(stage.ms)
                degraded += bool(reply.degraded)
            samples[mode] = wall
            results[mode] = {"client_ms": percentiles(wall), "gateway_ms": percentiles(server),
                             "degraded_share": degraded / calls,
                             "stage_ms": {name: percentiles(ms) for name, ms in stages.items()}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "recommend_latency.json").write_text(json.dumps(results, indent=2))
    _plot(samples, out / "recommend_latency.png")
    return results


def _plot(samples: dict[str, list[float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, wall in samples.items():
        xs = np.sort(wall)
        ax.plot(xs, np.linspace(0, 1, len(xs)), label=mode.replace("_", " "))
    ax.axvline(100, color="grey", linestyle="--", label="100 ms budget")
    ax.set_xlabel("Recommend latency seen by the client (ms)")
    ax.set_ylabel("share of calls")
    ax.set_title("Recommend, sequential calls, all services on one host")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args()
    require(parser.prog, "bench")  # the plot comes last: check before the work
    print(json.dumps(run(args.calls, args.out), indent=2))


if __name__ == "__main__":
    main()
