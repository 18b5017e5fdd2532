"""`recmesh load` / `make load`: open-loop load on the gateway from sessions replayed from
MovieLens, in steps of constant arrival rate.

Open loop: arrivals are scheduled at fixed intervals whether or not earlier calls came back,
and each call's latency is measured from its *scheduled* start - a stalled system cannot hide
its queueing (no coordinated omission). Per Recommend: the client deadline is the budget
(100 ms); 30 % carry typed text. Alongside, TrackEvents sends each session's next rating.
Latencies go to HDR histograms; per step: percentiles, achieved rate, and the shares answered
in time, degraded (and of those, shed at the door), missed (deadline exceeded or later than
the budget) and failed. The highest sustainable rate is the highest step whose p99 is within
the budget with >= 99.5 % answered in time; the highest full-service rate also has <= 1 %
degraded. On its own local mesh, each step reports the CPU ms per Recommend of every process,
and after the steps the compute floor of the same requests is measured (recmesh/tools/bench/
floor.py: the same models, searches and ranking in one process, no RPCs) with each step's
ratio to it. Writes results/load.json and results/load.png."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc

from recmesh.common.clock import now_ms
from recmesh.common.heap import freeze_heap
from recmesh.common.local import REPO
from recmesh.common.paths import VAR_ENV
from recmesh.replicas import Replicas
from recmesh.tools.catalog import movielens
from recmesh.tools.extras import require
from recmesh.v1 import common_pb2, recommendations_pb2

RATE = common_pb2.EventType.EVENT_TYPE_RATE
IN_TIME_BAR = 0.995
FULL_SERVICE_DEGRADED = 0.01
TIMER_SLACK_S = 0.001


@dataclass
class Sessions:
    """MovieLens users replayed: each Recommend is for a user with history; each TrackEvents
    sends that user's next rating; typed text comes from the items' genres and tags."""

    users: list[str]
    next_ratings: dict[str, list[movielens.Rating]]
    phrases: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    @classmethod
    def from_movielens(cls, folder: Path = REPO / "data" / "ml-latest-small") -> "Sessions":
        catalog = movielens.load(folder)
        by_user: dict[str, list[movielens.Rating]] = {}
        for r in catalog.ratings:
            by_user.setdefault(r.user_id, []).append(r)
        phrases = sorted({" ".join([*it.categories[:2], *list(it.tags)[:2]]).lower() for it in catalog.items
                          if it.tags})
        return cls(sorted(by_user), {u: sorted(rs, key=lambda r: r.timestamp_ms) for u, rs in by_user.items()},
                   phrases)

    def recommend(self, query_share: float, budget_s: float) -> recommendations_pb2.RecommendRequest:
        query = self.rng.choice(self.phrases) if self.rng.random() < query_share else ""
        return recommendations_pb2.RecommendRequest(user_id=self.rng.choice(self.users), query=query, k=10)

    def track(self) -> recommendations_pb2.TrackEventsRequest:
        user = self.rng.choice(self.users)
        r = self.rng.choice(self.next_ratings[user])
        return recommendations_pb2.TrackEventsRequest(events=[common_pb2.Event(
            event_id=uuid.uuid4().hex, user_id=user, item_id=r.item_id, type=RATE, value=r.rating,
            timestamp_ms=now_ms())])


class Tally:
    def __init__(self) -> None:
        from hdrh.histogram import HdrHistogram

        self.latency = HdrHistogram(1, 60_000_000, 3)  # microseconds
        self.counts = {"in_time": 0, "degraded": 0, "shed": 0, "missed": 0, "failed": 0, "rejected": 0}
        self.errors: dict[str, int] = {}
        self.degraded_reasons: dict[str, int] = {}

    def record(self, micros: int, outcome: str, degraded_reasons=()) -> None:
        self.latency.record_value(max(1, micros))
        self.counts[outcome] += 1
        self.counts["degraded"] += bool(degraded_reasons)
        self.counts["shed"] += any(reason.startswith("shed:") for reason in degraded_reasons)
        for reason in degraded_reasons:
            self.degraded_reasons[reason] = self.degraded_reasons.get(reason, 0) + 1

    def summary(self, offered: float, seconds: float, budget_ms: float) -> dict:
        total = sum(self.counts[k] for k in ("in_time", "missed", "failed", "rejected"))
        h = self.latency
        return {
            "offered_per_s": offered, "achieved_per_s": round(total / seconds, 1), "calls": total,
            "p50_ms": h.get_value_at_percentile(50) / 1000, "p90_ms": h.get_value_at_percentile(90) / 1000,
            "p99_ms": h.get_value_at_percentile(99) / 1000, "p999_ms": h.get_value_at_percentile(99.9) / 1000,
            "max_ms": h.get_max_value() / 1000,
            "in_time_share": round(self.counts["in_time"] / max(total, 1), 4),
            "degraded_share": round(self.counts["degraded"] / max(total, 1), 4),
            "shed_share": round(self.counts["shed"] / max(total, 1), 4),  # degraded to the popular list at the door
            "missed_share": round(self.counts["missed"] / max(total, 1), 4),
            "failed_share": round(self.counts["failed"] / max(total, 1), 4),
            "rejected_share": round(self.counts["rejected"] / max(total, 1), 4),
            "degraded_reasons": dict(sorted(self.degraded_reasons.items())),
            "errors": self.errors, "budget_ms": budget_ms,
        }


async def arrivals(rate: float, count: int | None = None, halt: Callable[[], bool] = lambda: False):
    """Open-loop arrivals at `rate` per second (`count` of them, or until `halt()`): yields
    each call's start - its scheduled time, or the time it is sent if that is earlier. Wakes
    are aimed TIMER_SLACK_S early because asyncio's timers fire up to a millisecond late
    (measured here: median 0.8 ms), which would otherwise be added to every latency; a driver
    that falls further behind still counts its lag (no coordinated omission)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    i = 0
    while (count is None or i < count) and not halt():
        scheduled = start + i / rate
        delay = scheduled - loop.time() - TIMER_SLACK_S
        if delay > 0:
            await asyncio.sleep(delay)
        yield min(scheduled, loop.time())
        i += 1


async def step(gateways: Replicas, sessions: Sessions, rate: float, seconds: float, budget_ms: float,
               query_share: float, track_ratio: float) -> dict:
    loop = asyncio.get_running_loop()
    tally, budget_s = Tally(), budget_ms / 1000
    tasks: list[asyncio.Task] = []

    async def recommend(started: float) -> None:
        try:
            reply = await gateways.call("Recommend", sessions.recommend(query_share, budget_s), budget_s)
            late = loop.time() - started > budget_s
            tally.record(int((loop.time() - started) * 1e6), "missed" if late else "in_time", reply.degraded)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            outcome = {grpc.StatusCode.DEADLINE_EXCEEDED: "missed",
                       grpc.StatusCode.RESOURCE_EXHAUSTED: "rejected"}.get(code, "failed")
            tally.errors[code.name] = tally.errors.get(code.name, 0) + 1
            tally.record(int((loop.time() - started) * 1e6), outcome)

    async def track() -> None:
        try:
            await gateways.call("TrackEvents", sessions.track(), 2.0, hedge=False)
        except grpc.aio.AioRpcError:
            pass  # ingest is measured by recmesh.tools.bench.ingest; here it is background load

    owed = 0.0
    async for started in arrivals(rate, int(rate * seconds)):
        tasks.append(loop.create_task(recommend(started)))
        owed += track_ratio
        while owed >= 1:
            owed -= 1
            tasks.append(loop.create_task(track()))
    await asyncio.gather(*tasks)
    return tally.summary(rate, seconds, budget_ms)


def sustainable(steps: list[dict], max_degraded: float = 1.0) -> float:
    """The highest step with p99 within the budget and >= 99.5 % answered in time (and at most
    max_degraded of them degraded: 0.01 gives the rate answered in full)."""
    ok = [s["offered_per_s"] for s in steps if s["p99_ms"] <= s["budget_ms"] and s["in_time_share"] >= IN_TIME_BAR
          and s["degraded_share"] <= max_degraded]
    return max(ok, default=0.0)


def cpu_per_call(before: dict[str, float], after: dict[str, float], calls: int) -> dict[str, float]:
    """CPU milliseconds each process spent per Recommend over a step (its share of TrackEvents
    included): where the 2 cores go."""
    used = {name: (after[name] - before[name]) * 1000 / max(calls, 1) for name in after if name in before}
    used["total"] = sum(used.values())
    return {name: round(ms, 2) for name, ms in used.items()}


async def drive(targets: list[str], rates: list[float], seconds: float, budget_ms: float, query_share: float,
                track_ratio: float, cpu: Callable[[], dict[str, float]] | None = None, warm_up: bool = True
                ) -> list[dict]:
    """targets: gateway replicas (recmesh.replicas: round robin, failover, hedging); cpu: CPU
    seconds so far per process of the mesh under test (when it is local) - each step then
    reports CPU ms per Recommend per process, this load generator's included."""
    def cpu_now() -> dict[str, float]:
        return {**(cpu() if cpu else {}), "load_generator": time.process_time()}

    sessions = Sessions.from_movielens()
    freeze_heap()
    results = []
    async with Replicas(targets) as gateways:
        if warm_up:  # not reported
            await step(gateways, sessions, 20, 2.0, budget_ms, query_share, track_ratio)
        for rate in rates:
            before = cpu_now()
            summary = await step(gateways, sessions, rate, seconds, budget_ms, query_share, track_ratio)
            summary["cpu_ms_per_recommend"] = cpu_per_call(before, cpu_now(), summary["calls"])
            print(json.dumps({k: v for k, v in summary.items() if k != "errors"}), flush=True)
            results.append(summary)
    return results


def plot(steps: list[dict], path: Path, floor_ms: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cpu = [s["cpu_ms_per_recommend"]["total"] for s in steps if "cpu_ms_per_recommend" in s]
    fig, axes = plt.subplots(1, 3 if cpu else 2, figsize=(18 if cpu else 12, 4))
    a, b = axes[0], axes[1]
    x = [s["offered_per_s"] for s in steps]
    for q in ("p50_ms", "p90_ms", "p99_ms", "p999_ms"):
        a.plot(x, [s[q] for s in steps], marker="o", label=q.removesuffix("_ms"))
    a.axhline(steps[0]["budget_ms"], color="grey", linestyle="--", label="budget")
    a.set_xlabel("offered Recommend/s")
    a.set_ylabel("latency from scheduled start (ms)")
    a.set_yscale("log")
    a.legend()
    for key in ("in_time_share", "degraded_share", "shed_share", "missed_share"):
        b.plot(x, [s[key] for s in steps], marker="o", label=key.removesuffix("_share"))
    b.set_xlabel("offered Recommend/s")
    b.set_ylabel("share of Recommends")
    b.legend()
    if cpu:
        c = axes[2]
        c.plot(x[:len(cpu)], cpu, marker="o", label="mesh, all processes")
        if floor_ms:
            c.axhline(floor_ms, color="grey", linestyle="--", label="compute floor (one process, no RPCs)")
        c.set_xlabel("offered Recommend/s")
        c.set_ylabel("CPU ms per Recommend")
        c.set_ylim(bottom=0)
        c.legend()
    fig.suptitle("Open-loop load through the gateway (everything on one 2-core host)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def measure_floor(stack, args: argparse.Namespace) -> dict | None:
    """The compute floor of the load's requests (recmesh/tools/bench/floor.py) over the stack's
    var as the load left it, in a process of its own - only its CPU is counted, with one
    thread for numpy, ONNX Runtime and torch. Call it with the stack stopped: the floor opens
    the same shard and event log. None (and why, on stderr) when it failed."""
    with tempfile.TemporaryDirectory(prefix="recmesh-floor-") as tmp:
        out = Path(tmp) / "floor.json"
        command = [sys.executable, "-m", "recmesh.tools.bench.floor", "--var", str(stack.var), "--in-place",
                   "--interest-model", str(stack.interest_model), "--start-params", str(stack.start_params),
                   "--requests", str(args.floor_requests), "--warm-up", str(args.floor_warm_up),
                   "--query-share", str(args.query_share), "--track-ratio", str(args.track_ratio), "--out", str(out)]
        # The services' settings as the mesh's processes read them (stack.env: tests' overrides).
        env = {**os.environ, **stack.env, VAR_ENV: str(stack.var), "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
        try:
            subprocess.run(command, env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:  # the steps are kept
            print(f"compute floor not measured: {exc}", file=sys.stderr, flush=True)
            return None
        return json.loads(out.read_text())


def with_floor(steps: list[dict], floor: dict | None) -> None:
    """Each step's CPU per Recommend (all processes) as a multiple of the floor's."""
    if floor is None:
        return
    for s in steps:
        total = s.get("cpu_ms_per_recommend", {}).get("total")
        if total is not None:
            s["cpu_to_floor_ratio"] = round(total / floor["compute_floor_ms_per_recommend"], 2)


def summary_lines(results: dict, budget_ms: float) -> list[str]:
    """What `recmesh load` prints last: the highest full-service rate first, then the mesh's CPU
    per Recommend against the compute floor at that rate (the lowest step when none was in
    full), then the highest sustainable rate."""
    steps, floor = results["steps"], results.get("compute_floor")
    full = results["highest_full_service_per_s"]
    lines = [f"highest full-service rate (<= {FULL_SERVICE_DEGRADED:.0%} degraded, p99 <= {budget_ms:g} ms, "
             f">= {IN_TIME_BAR:.1%} in time): {full:g} Recommend/s"]
    at = next((s for s in steps if s["offered_per_s"] == full), None) if full else None
    where = "at that rate" if at is not None else "at the lowest step (none in full)"
    at = at if at is not None else (steps[0] if steps else None)
    if floor is not None and at is not None and "cpu_to_floor_ratio" in at:
        lines.append(f"CPU per Recommend {where}, {at['offered_per_s']:g}/s: {at['cpu_ms_per_recommend']['total']} ms "
                     f"in all processes = {at['cpu_to_floor_ratio']}x the compute floor of "
                     f"{floor['compute_floor_ms_per_recommend']} ms (same requests, one process, no RPCs)")
    elif at is not None and "cpu_ms_per_recommend" in at:
        lines.append(f"CPU per Recommend {where}, {at['offered_per_s']:g}/s: {at['cpu_ms_per_recommend']['total']} "
                     f"ms in all processes (compute floor not measured)")
    lines.append(f"highest sustainable rate (p99 <= {budget_ms:g} ms, >= {IN_TIME_BAR:.1%} in time, degraded or "
                 f"not): {results['highest_sustainable_per_s']:g} Recommend/s")
    return lines


def run(args: argparse.Namespace) -> dict:
    rates = [float(r) for r in args.rates.split(",")]

    def go(targets: list[str], cpu=None) -> list[dict]:
        return asyncio.run(drive(targets, rates, args.seconds, args.budget_ms, args.query_share, args.track_ratio,
                                 cpu))

    floor, rss = None, None
    if args.target:
        steps = go(args.target.split(","))
    else:  # our own mesh over a private copy of the bootstrapped catalog and event log
        from recmesh.tools.devstack import private_stack

        with private_stack(start_timeout_s=args.start_timeout_s) as stack:
            gateways = [stack.address("gateway"),
                        *(stack.start_replica("gateway", str(i)) for i in range(2, args.gateways + 1))]
            steps = go(gateways, stack.cpu_seconds)
            rss = stack.rss_mib()  # after the steps: caches as full as the load made them
            if not args.no_floor:
                stack.stop()  # the floor runs alone, over the shard and log the load left
                floor = measure_floor(stack, args)
    with_floor(steps, floor)
    results = {"query_share": args.query_share, "track_per_recommend": args.track_ratio,
               "seconds_per_step": args.seconds, "steps": steps, "highest_sustainable_per_s": sustainable(steps),
               "highest_full_service_per_s": sustainable(steps, FULL_SERVICE_DEGRADED), "compute_floor": floor,
               "rss_mib_after_steps": rss}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=2))
    plot(steps, args.out / "load.png", floor["compute_floor_ms_per_recommend"] if floor else None)
    print("\n".join(summary_lines(results, args.budget_ms)), flush=True)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="",
                        help="running gateway replicas, comma-separated (default: start a local mesh)")
    parser.add_argument("--gateways", type=int, default=1, help="gateway replicas of the local mesh")
    parser.add_argument("--rates", default="20,40,60,80,100,120,150", help="Recommend/s per step")
    parser.add_argument("--seconds", type=float, default=20.0, help="per step")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="the client deadline")
    parser.add_argument("--query-share", type=float, default=0.3)
    parser.add_argument("--track-ratio", type=float, default=0.5, help="TrackEvents per Recommend")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the compute floor (measured after the steps on the local mesh only)")
    parser.add_argument("--floor-requests", type=int, default=400, help="Recommends the floor measures")
    parser.add_argument("--floor-warm-up", type=int, default=50, help="Recommends before the floor measures")
    parser.add_argument("--start-timeout-s", type=float, default=180.0,
                        help="seconds each process of the local mesh gets to serve (a large catalog loads first)")
    parser.add_argument("--out", type=Path, default=REPO / "results")


def check_mix(parser: argparse.ArgumentParser, query_share: float, track_ratio: float, requests: int,
              warm_up: int, requests_flag: str, warm_up_flag: str) -> None:
    """The request mix and the floor's counts, checked before any work: parser.error naming
    the flag (exits 2)."""
    if not 0.0 <= query_share <= 1.0:
        parser.error(f"--query-share must be in 0..1, got {query_share}")
    if not track_ratio >= 0.0:
        parser.error(f"--track-ratio must be >= 0, got {track_ratio}")
    if requests < 1:
        parser.error(f"{requests_flag} must be >= 1, got {requests}")
    if warm_up < 0:
        parser.error(f"{warm_up_flag} must be >= 0, got {warm_up}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recmesh load", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_mix(parser, args.query_share, args.track_ratio, args.floor_requests, args.floor_warm_up,
              "--floor-requests", "--floor-warm-up")
    if not args.start_timeout_s > 0:
        parser.error(f"--start-timeout-s must be > 0, got {args.start_timeout_s}")
    require(parser.prog, "bench")  # the plot comes last: check before the work
    run(args)


if __name__ == "__main__":
    main()
