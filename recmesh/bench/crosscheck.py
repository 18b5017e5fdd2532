"""Does `recmesh load` measure what an independent tool measures? One load point, same mesh,
same calls: the harness for `seconds` at `rate` Recommend/s, then Locust with `rate` users at
one call per second each. Writes results/crosscheck.json with both sets of percentiles and
their ratios."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from recmesh.common.local import REPO
from recmesh.devstack import Stack
from recmesh.loadtest import drive


def locust_percentiles(target: str, users: int, seconds: float, workdir: Path) -> dict:
    prefix = workdir / "locust"
    subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(Path(__file__).with_name("locustfile.py")), "--headless",
         "-u", str(users), "-r", str(users), "-t", f"{int(seconds)}s", "--host", target, "--csv", str(prefix),
         "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"],
        check=True, cwd=REPO, capture_output=True, timeout=seconds + 120,
    )
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Recommend")
    return {"calls": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "per_s": round(float(row["Requests/s"]), 1),
            "p50_ms": float(row["50%"]), "p90_ms": float(row["90%"]), "p99_ms": float(row["99%"])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recmesh.bench.crosscheck", description=__doc__)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args(argv)
    var = Path(tempfile.mkdtemp(prefix="recmesh-crosscheck-"))
    try:
        for part in ("catalog", "updater"):
            shutil.copytree(REPO / "var" / part, var / part)
        with Stack(var=var) as stack:
            target = stack.address("gateway")
            # Warm both paths first, then measure the harness and Locust back to back.
            asyncio.run(drive(target, [args.rate], 5, 100.0, 0.3, 0.0))
            harness = asyncio.run(drive(target, [args.rate], args.seconds, 100.0, 0.3, 0.0))[0]
            locust = locust_percentiles(target, args.rate, args.seconds, var)
    finally:
        shutil.rmtree(var, ignore_errors=True)
    ratios = {q: round(harness[q] / max(locust[q], 1e-9), 3) for q in ("p50_ms", "p90_ms", "p99_ms")}
    results = {"rate_per_s": args.rate, "seconds": args.seconds, "harness": harness, "locust": locust,
               "harness_over_locust": ratios}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "crosscheck.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
