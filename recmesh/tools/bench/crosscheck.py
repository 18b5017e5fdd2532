"""Does `recmesh load` measure what an independent tool measures? One load point, one mesh,
both tools at once: the harness offers half of `rate` Recommend/s (open loop, asyncio) while
Locust offers the other half (rate/2 users at one call per second each, blocking gRPC calls),
the same calls (sessions, 30 % with text, 100 ms deadline). Running them
side by side rather than one after the other puts both in the same mesh state (warm caches,
host noise) - what remains is the difference between the tools. Percentiles of the two sets
of latencies are compared; Locust's own CSV figures (whole milliseconds) are kept beside.
Writes results/crosscheck.json."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.tools.devstack import private_stack
from recmesh.tools.extras import require
from recmesh.tools.loadtest import drive

QUANTILES = {"p50_ms": 50, "p90_ms": 90, "p99_ms": 99}
SPAWN_S = 1.0  # Locust spawns its users at `users` per second


def start_locust(target: str, users: int, seconds: float, workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless",
         "-u", str(users), "-r", str(users), "-t", f"{int(seconds + SPAWN_S)}s", "--host", target,
         "--csv", str(workdir / "locust"), "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"],
        cwd=REPO, env={**os.environ, "RECMESH_LOCUST_SAMPLES": str(workdir / "locust_samples.json")},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def locust_results(proc: subprocess.Popen, seconds: float, workdir: Path) -> dict:
    _, stderr = proc.communicate(timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"locust exited with {proc.returncode}:\n{stderr.decode()[-3000:]}")
    samples = np.array(json.loads((workdir / "locust_samples.json").read_text()))
    with open(workdir / "locust_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Recommend")
    # inverted_cdf: the value at that rank, as the harness's HDR histogram reports it.
    return {"calls": len(samples), "failures": int(row["Failure Count"]),
            **{q: round(float(np.percentile(samples, p, method="inverted_cdf")), 3) for q, p in QUANTILES.items()},
            "locust_csv": {"per_s": round(float(row["Requests/s"]), 1),
                           **{q: float(row[f"{p}%"]) for q, p in QUANTILES.items()}}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.bench.crosscheck", description=__doc__)
    parser.add_argument("--rate", type=int, default=40, help="Recommend/s in all, half from each tool")
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    half = args.rate // 2
    with private_stack() as stack:
        target = stack.address("gateway")
        asyncio.run(drive([target], [args.rate], 10, 100.0, 0.3, 0.0))  # warm the caches
        locust = start_locust(target, half, args.seconds, stack.var)
        time.sleep(SPAWN_S)
        harness = asyncio.run(drive([target], [half], args.seconds, 100.0, 0.3, 0.0, warm_up=False))[0]
        locust_figures = locust_results(locust, args.seconds, stack.var)
    ratios = {q: round(harness[q] / max(locust_figures[q], 1e-9), 3) for q in QUANTILES}
    results = {"rate_per_s": args.rate, "seconds": args.seconds, "harness": harness, "locust": locust_figures,
               "harness_over_locust": ratios, "within_10_percent": all(abs(r - 1) <= 0.1 for r in ratios.values())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crosscheck.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
