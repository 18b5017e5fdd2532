"""`make chaos` / `recmesh chaos`: faults under steady load.

A local mesh with a supervisor (crashed processes are started again at once) and two gateway
replicas takes open-loop Recommend load (sessions from MovieLens, 30 % with typed text, client
deadline = the 100 ms budget) through recmesh.replicas, the way a backend calls the gateway
Deployment: round robin, a call that finds its gateway gone is sent to the other at once, one
not answered in 50 ms is hedged there. Each service in turn, Triton, and one gateway is
SIGKILLed (the supervisor restarts it) and SIGSTOPped for a few seconds (then SIGCONT). For
each fault: the share of Recommends answered within their deadline and the share degraded while
it lasts, and the recovery time - from the restart (or SIGCONT) to the first moment after which
answers stay undegraded for 2 s. Writes results/chaos.json and results/chaos.png."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from recmesh.common.heap import freeze_heap
from recmesh.common.local import REPO
from recmesh.replicas import Replicas
from recmesh.tools.devstack import Stack, private_stack
from recmesh.tools.extras import require
from recmesh.tools.loadtest import Sessions, arrivals

TARGETS = ("updater", "retrieval", "ranker", "encoder", "triton", "gateway")
STEADY_S = 2.0  # undegraded for this long = recovered


@dataclass
class Record:
    scheduled: float  # monotonic
    latency_s: float
    in_time: bool
    degraded: bool


class SteadyLoad(threading.Thread):
    def __init__(self, targets: list[str], rate: float, budget_s: float, query_share: float, hedge_after_s: float):
        super().__init__(name="chaos-load", daemon=True)
        self.targets, self.hedge_after_s = targets, hedge_after_s
        self.rate, self.budget_s, self.query_share = rate, budget_s, query_share
        self.records: list[Record] = []
        self.extra_attempts = 0  # hedged or retried Recommends
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def run(self) -> None:
        asyncio.run(self._drive())

    async def _drive(self) -> None:
        sessions = Sessions.from_movielens()
        freeze_heap()
        loop = asyncio.get_running_loop()
        async with Replicas(self.targets, self.hedge_after_s) as gateways:
            tasks = []

            async def one(started: float) -> None:  # loop.time() is time.monotonic()
                degraded, ok = True, False
                try:
                    reply = await gateways.call("Recommend", sessions.recommend(self.query_share, self.budget_s),
                                                self.budget_s)
                    degraded, ok = bool(reply.degraded), True
                except grpc.aio.AioRpcError:
                    pass
                latency = loop.time() - started
                self.records.append(Record(started, latency, ok and latency <= self.budget_s, degraded))

            async for started in arrivals(self.rate, halt=self._halt.is_set):
                tasks.append(loop.create_task(one(started)))
                if len(tasks) > 1000:
                    tasks = [t for t in tasks if not t.done()]
            await asyncio.gather(*tasks)
            self.extra_attempts = gateways.extra_attempts


def pid_of(stack: Stack, name: str):
    return stack.triton.proc if name == "triton" else stack.procs[name]


def inject(stack: Stack, supervisor, name: str, sig: int, hold_s: float) -> float:
    """Apply the fault; return when the target is back (restarted and serving, or continued)."""
    proc = pid_of(stack, name)
    if sig == signal.SIGSTOP:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(hold_s)
        proc.send_signal(signal.SIGCONT)
        return time.monotonic()
    known = len(supervisor.restarts)
    proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 180
    while len(supervisor.restarts) == known:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} was not restarted")
        time.sleep(0.05)
    return supervisor.restarts[-1][2]


def summarise(records: list[Record], start: float, back: float, until: float) -> dict:
    during = [r for r in records if start <= r.scheduled < back]
    after = sorted((r for r in records if back <= r.scheduled < until), key=lambda r: r.scheduled)
    recovery = None
    for i, r in enumerate(after):
        window = [x for x in after[i:] if x.scheduled < r.scheduled + STEADY_S]
        if window[-1].scheduled - r.scheduled >= STEADY_S * 0.9 and all(x.in_time and not x.degraded for x in window):
            recovery = round(r.scheduled - back, 2)
            break
    n = max(len(during), 1)
    return {"fault_s": round(back - start, 2), "calls_during": len(during),
            "in_time_share": round(sum(r.in_time for r in during) / n, 4),
            "degraded_share": round(sum(r.degraded for r in during) / n, 4),
            "recovery_s": recovery}


def run(args: argparse.Namespace) -> dict:
    faults = []
    with private_stack() as stack:
        supervisor = stack.supervise()
        gateways = [stack.address("gateway"), stack.start_replica("gateway", "b")]
        load = SteadyLoad(gateways, args.rate, args.budget_ms / 1000, args.query_share, args.hedge_after_ms / 1000)
        load.start()
        time.sleep(args.settle_s)
        for name in TARGETS:
            for sig in (signal.SIGKILL, signal.SIGSTOP):
                started = time.monotonic()
                back = inject(stack, supervisor, name, sig, args.hold_s)
                time.sleep(args.observe_s)
                faults.append({"target": name, "signal": signal.Signals(sig).name, "start": started,
                               "back": back, "until": time.monotonic()})
                print(f"{name} {signal.Signals(sig).name}: back after {back - started:.1f} s", flush=True)
        load.stop()
    records = load.records
    report = []
    for f in faults:
        row = {"target": f["target"], "signal": f["signal"], **summarise(records, f["start"], f["back"], f["until"])}
        report.append(row)
        print(json.dumps(row), flush=True)
    results = {"rate_per_s": args.rate, "budget_ms": args.budget_ms, "query_share": args.query_share,
               "hold_s": args.hold_s, "gateway_replicas": len(gateways), "hedge_after_ms": args.hedge_after_ms,
               "extra_attempts_share": round(load.extra_attempts / max(len(records), 1), 4), "faults": report,
               "worst_in_time_share": min(r["in_time_share"] for r in report),
               # None: some service never gave undegraded answers again (0.0 is a real figure).
               "worst_recovery_s": None if any(r["recovery_s"] is None for r in report)
               else max(r["recovery_s"] for r in report)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos.json").write_text(json.dumps(results, indent=2))
    _plot(records, faults, args.out / "chaos.png")
    return results


def _plot(records: list[Record], faults: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t0 = min(r.scheduled for r in records)
    t = np.array([r.scheduled - t0 for r in records])
    bins = np.arange(0, t.max() + 0.5, 0.5)
    idx = np.digitize(t, bins)
    missed = np.array([np.mean([not records[j].in_time for j in np.flatnonzero(idx == b)] or [0]) for b in
                       range(1, len(bins))])
    degraded = np.array([np.mean([records[j].degraded for j in np.flatnonzero(idx == b)] or [0]) for b in
                         range(1, len(bins))])
    fig, ax = plt.subplots(figsize=(13, 4))
    ax.plot(bins[1:], degraded, label="degraded share")
    ax.plot(bins[1:], missed, label="missed deadline share")
    for f in faults:
        ax.axvspan(f["start"] - t0, f["back"] - t0, alpha=0.15, color="red")
        ax.text(f["start"] - t0, 1.02, f"{f['target']}\n{f['signal'][3:]}", fontsize=7)
    ax.set_xlabel("seconds")
    ax.set_ylim(0, 1.15)
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=30.0, help="Recommend/s, steady")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--query-share", type=float, default=0.3)
    parser.add_argument("--hold-s", type=float, default=3.0, help="how long a SIGSTOP lasts")
    parser.add_argument("--hedge-after-ms", type=float, default=50.0,
                        help="the client sends a Recommend to the other gateway when one has not answered by then")
    parser.add_argument("--observe-s", type=float, default=6.0, help="load kept on after each recovery")
    parser.add_argument("--settle-s", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=REPO / "results")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recmesh chaos", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    results = run(args)
    print(json.dumps({k: v for k, v in results.items() if k != "faults"}, indent=2))


if __name__ == "__main__":
    main()
