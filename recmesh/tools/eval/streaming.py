"""Streaming evaluation through the live mesh (gateway -> Triton -> Qdrant -> ranker).

Users held out of the served model's training (none of their events was seen; the model
artifact names them) have their last events replayed in time order: before each event, Recommend (k = 10)
is asked and scored on whether it contains the item the user picked next; then the event is
sent with TrackEvents. Conditions, on the same users and events:

  realtime        events are tracked as they happen (the product);
  realtime+query  the same, and the user types the next item's genres and tags (the typed-
                  query scenario: how much an instant query lifts the answer);
  frozen          the profile stops at the split point (no stream event is tracked);
  popularity      no profile at all (the popular fallback, seen items excluded).

Writes results/eval/streaming.json and streaming.png."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from recmesh.client import Event
from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact
from recmesh.tools.catalog import movielens
from recmesh.tools.eval.live import fresh_mesh, track_all
from recmesh.tools.eval.protocol import top_k_metrics
from recmesh.tools.extras import require

CONDITIONS = ("realtime", "realtime+query", "frozen", "popularity")


def pick_users(catalog: movielens.Catalog, held_out: list[str], n: int, stream: int,
               seed: int) -> dict[str, list[movielens.Rating]]:
    by_user: dict[str, list[movielens.Rating]] = {}
    for r in catalog.ratings:
        by_user.setdefault(r.user_id, []).append(r)
    eligible = sorted(u for u in held_out if len(by_user.get(u, ())) >= stream + 10)
    chosen = random.Random(seed).sample(eligible, min(n, len(eligible)))
    return {u: sorted(by_user[u], key=lambda r: r.timestamp_ms) for u in chosen}  # stable: file order on ties


def rate_event(user: str, r: movielens.Rating) -> Event:
    return Event(user, r.item_id, "rate", value=r.rating, timestamp_ms=r.timestamp_ms,
                 event_id=f"{user}-{r.item_id}")


def run(n_users: int, stream: int, seed: int, out: Path) -> dict:
    catalog = movielens.load(REPO / "data" / "ml-latest-small")
    items = {it.item_id: it for it in catalog.items}
    held_out = torch.load(served_artifact(), map_location="cpu", weights_only=True)["holdout_users"]
    users = pick_users(catalog, held_out, n_users, stream, seed)
    outcome: dict[str, list[int]] = {c: [] for c in CONDITIONS}  # rank of the next item, or -1
    latency: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    degraded = {c: 0 for c in CONDITIONS}
    started = time.perf_counter()
    with fresh_mesh() as rm:
        for done, (uid, ratings) in enumerate(users.items(), start=1):
            prefix, future = ratings[:-stream], ratings[-stream:]
            live, frozen = f"rt-{uid}", f"fz-{uid}"
            for user in (live, frozen):
                track_all(rm, [rate_event(user, r) for r in prefix])
            seen = [r.item_id for r in prefix]
            for step, nxt in enumerate(future):
                streamed = [r.item_id for r in future[:step]]
                item = items[nxt.item_id]
                query = " ".join([*item.categories, *list(item.tags)[:3]])
                asks = {
                    "realtime": (live, {}),
                    "realtime+query": (live, {"query": query}),
                    "frozen": (frozen, {"exclude_item_ids": streamed}),
                    "popularity": (f"pop-{uid}", {"exclude_item_ids": seen + streamed}),
                }
                for condition, (user, extra) in asks.items():
                    t0 = time.perf_counter()
                    reply = rm.recommend(user, k=10, **extra)
                    latency[condition].append((time.perf_counter() - t0) * 1000)
                    degraded[condition] += bool(reply.degraded)
                    ids = [i.item_id for i in reply.items]
                    outcome[condition].append(ids.index(nxt.item_id) if nxt.item_id in ids else -1)
                rm.track_events([rate_event(live, nxt)])
            print(f"\rreplayed {done}/{len(users)} users", end="", flush=True)
        print()

    results = {
        "users": len(users), "events_per_user": stream, "recommends_per_condition": len(outcome["realtime"]),
        "seconds": round(time.perf_counter() - started, 1),
        "conditions": {c: {**top_k_metrics(outcome[c]),
                           "p50_ms": round(float(np.percentile(latency[c], 50)), 1),
                           "p99_ms": round(float(np.percentile(latency[c], 99)), 1),
                           "degraded_share": round(degraded[c] / len(outcome[c]), 4)} for c in CONDITIONS},
    }
    base = results["conditions"]
    results["realtime_vs_frozen_HR"] = round(base["realtime"]["HR@10"] / max(base["frozen"]["HR@10"], 1e-9), 2)
    results["query_lift_HR"] = round(base["realtime+query"]["HR@10"] / max(base["realtime"]["HR@10"], 1e-9), 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "streaming.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "streaming.png")
    return results


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cond = results["conditions"]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(cond))
    ax.bar(x - 0.2, [c["HR@10"] for c in cond.values()], 0.4, label="HR@10")
    ax.bar(x + 0.2, [c["NDCG@10"] for c in cond.values()], 0.4, label="NDCG@10")
    ax.set_xticks(x, list(cond))
    ax.set_title(f"Streaming replay through the live mesh ({results['users']} users x "
                 f"{results['events_per_user']} events)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.streaming", description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--stream", type=int, default=20, help="replayed events per user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    print(json.dumps(run(args.users, args.stream, args.seed, args.out), indent=2))


if __name__ == "__main__":
    main()
