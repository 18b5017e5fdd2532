"""The experiments' replay check: a replayed stream in which variant B is a deliberately worse
ranker (retrieval order: the ranker is skipped) shows B behind A, with a confidence interval of
B - A that excludes zero - measured by the mesh's own experiment machinery, live.

A fresh private mesh (empty event log) runs experiment A (the ranker's order, control) against
B (retrieval order), 50/50 by the hash of the user id. Users held out of the served model's
training have their last `stream` ratings replayed in time order (as recmesh/tools/eval/
streaming.py does): each user's earlier ratings are tracked first; then, before each replayed
rating, Recommend (k 10) is asked; when the item the user rated next is in the answer, a CLICK
naming the answer's request_id is tracked (and a PURCHASE too for a rating of 4.5 or more: the
conversion); then the rating itself is tracked. The report (GetExperimentReport: CTR@k,
conversion, MRR, latency and degraded share per variant with 95 % intervals, B - A, the
guardrail's decision) is written to results/experiments/replay.json, its table to replay.txt and
its plot to replay.png. The guardrail runs live meanwhile (its settings: RECMESH_UPDATER_GUARDRAIL_*);
if it stops the experiment, the replay says when, and the answers after that count in no arm.

B may be served another interest model (--b B=0.5:interest_model=NAME): --interest-model
NAME=PATH installs an artifact of the catalog's item space in the fresh mesh, --perturb-interest
NAME=SCALE derives a deliberately worse one from the served model (its sequence weights moved by
seeded Gaussian noise of SCALE times each tensor's spread, the item tower untouched: the same
catalog space), written beside the results.

    python -m recmesh.tools.eval.experiment_replay --users 300 --stream 10
    python -m recmesh.tools.eval.experiment_replay --population all --users 400 --stream 20 \
        --b B=0.5:interest_model=noisy --perturb-interest noisy=0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recmesh.client import Event
from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact
from recmesh.experiments.report import plot, text
from recmesh.tools.catalog import movielens
from recmesh.tools.cli import _variant_flag
from recmesh.tools.eval.live import fresh_mesh, track_all
from recmesh.tools.eval.streaming import pick_users, rate_event
from recmesh.tools.extras import require

EXPERIMENT = "replay-ranker-vs-retrieval"
PURCHASE_RATING = 4.5
# The item tower's weights (served.item_space): a perturbed model keeps them, so its catalog space.
ITEM_TOWER = ("text_proj.", "ids.")


def perturbed_interest_model(source: Path, dest: Path, version: str, scale: float, seed: int = 0,
                             item_tower: bool = False) -> Path:
    """A deliberately worse interest model: the artifact at `source` with its sequence weights
    (every float tensor of 2+ values outside the item tower; with item_tower, those too: another
    catalog space) moved by seeded Gaussian noise of `scale` times each tensor's standard
    deviation, saved at `dest` under version `version`. Returns dest."""
    import torch

    blob = torch.load(source, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    for key, tensor in blob["state"].items():
        if not tensor.is_floating_point() or tensor.numel() < 2 or (key.startswith(ITEM_TOWER) and not item_tower):
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        blob["state"][key] = tensor + scale * tensor.std() * noise
    blob["version"] = version
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, dest)
    return dest


def run(n_users: int, stream: int, seed: int, out: Path, k: int = 10, population: str = "held_out",
        b_overrides: dict | None = None, interest_variants: dict[str, Path] | None = None) -> dict:
    """population: "held_out" (the served model never saw their events: an honest absolute
    CTR, but only 100 users, too few to separate close variants) or "all" (every user with
    enough ratings: the interest model was trained on the others' whole histories, replayed
    ratings included, so both arms' absolute numbers are inflated alike; the comparison of
    orderings over the same candidates stays fair). b_overrides: variant B's overrides
    (client.variant_proto's keys; default: retrieval order). interest_variants: further interest
    models {name: artifact} the fresh mesh serves (for a B naming interest_model)."""
    import torch

    catalog = movielens.load(REPO / "data" / "ml-latest-small")
    if population == "held_out":
        pool = torch.load(served_artifact(), map_location="cpu", weights_only=True)["holdout_users"]
    else:
        pool = sorted({r.user_id for r in catalog.ratings})
    users = pick_users(catalog, pool, n_users, stream, seed)
    started = time.perf_counter()
    sent = {"answers": {}, "clicks": {}, "conversions": {}}
    stopped_after = None
    with fresh_mesh(timeout_s=5.0, interest_variants=interest_variants) as rm:
        b = {"name": "B", "share": 0.5, **(b_overrides or {"ranking": "retrieval_order"})}
        rm.put_experiment(EXPERIMENT, [{"name": "A", "share": 0.5}, b])
        for done, (uid, ratings) in enumerate(users.items(), start=1):
            user = f"xr-{uid}"
            prefix, future = ratings[:-stream], ratings[-stream:]
            track_all(rm, [rate_event(user, r) for r in prefix])
            for nxt in future:
                reply = rm.recommend(user, k=k)
                arm = reply.variant.rsplit("/", 1)[-1] if reply.variant else ""
                if not arm and stopped_after is None:
                    stopped_after = sum(sent["answers"].values())
                ids = [i.item_id for i in reply.items]
                if arm:
                    sent["answers"][arm] = sent["answers"].get(arm, 0) + 1
                events = []
                if nxt.item_id in ids:
                    events.append(Event(user, nxt.item_id, "click", request_id=reply.request_id))
                    if arm:
                        sent["clicks"][arm] = sent["clicks"].get(arm, 0) + 1
                    if nxt.rating >= PURCHASE_RATING:
                        events.append(Event(user, nxt.item_id, "purchase", request_id=reply.request_id))
                        if arm:
                            sent["conversions"][arm] = sent["conversions"].get(arm, 0) + 1
                events.append(rate_event(user, nxt))
                rm.track_events(events)
            print(f"\rreplayed {done}/{len(users)} users", end="", flush=True)
        print()
        time.sleep(1.0)  # the last impressions leave in a batch, the last feedback is recorded after its commit
        summary = rm.experiment_report(EXPERIMENT)
        listed = {e.name: e for e in rm.list_experiments()}[EXPERIMENT]

    delta = summary["against_control"]["B"]["difference"]["ctr_at_k"]
    results = {
        "experiment": EXPERIMENT, "b": b, "population": population, "users": len(users),
        "interest_variants": {name: str(path) for name, path in (interest_variants or {}).items()},
        "events_per_user": stream, "k": k,
        "seconds": round(time.perf_counter() - started, 1),
        "sent": sent, "guardrail_stopped_after_answers": stopped_after,
        "stopped_reason": listed.stopped_reason,
        "b_behind_a_on_ctr": delta["high"] is not None and delta["high"] < 0,
        "report": summary,
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = "-".join(["replay", *([] if population == "held_out" else [population]),
                     *(f"{key}{value}" for key, value in (b_overrides or {}).items())])
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    (out / f"{stem}.txt").write_text(text(summary) + "\n")
    plot(summary, out / f"{stem}.png")
    return results


def _named(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name or not value:
        raise argparse.ArgumentTypeError(f"NAME=VALUE expected, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.experiment_replay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--stream", type=int, default=10, help="replayed ratings per user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--b", type=_variant_flag, default=None, metavar="B=0.5:key=value,...",
                        help="variant B's overrides, as `recmesh experiments put --variant` writes them (default: "
                             "B=0.5:ranking=retrieval_order), e.g. B=0.5:diversity=1 (MMR for variety alone)")
    parser.add_argument("--population", choices=("held_out", "all"), default="held_out",
                        help="replay the served model's held-out users (100), or every user with enough ratings "
                             "(seen in training: absolute numbers inflated alike in both arms)")
    parser.add_argument("--interest-model", action="append", default=[], type=_named, metavar="NAME=PATH",
                        help="serve this interest-model artifact (of the catalog's item space) as NAME too")
    parser.add_argument("--perturb-interest", action="append", default=[], type=_named, metavar="NAME=SCALE",
                        help="serve, as NAME, the served interest model with its sequence weights moved by seeded "
                             "noise of SCALE x each tensor's spread (a deliberately worse model, same catalog space)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "experiments")
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    b = {key: value for key, value in (args.b or {}).items() if key not in ("name", "share")} or None
    variants = {name: Path(path) for name, path in args.interest_model}
    for name, scale in args.perturb_interest:
        variants[name] = perturbed_interest_model(served_artifact(), args.out / f"interest-{name}.pt", name,
                                                  float(scale), seed=args.seed)
    results = run(args.users, args.stream, args.seed, args.out, population=args.population, b_overrides=b,
                  interest_variants=variants or None)
    print(text(results["report"]))
    print(json.dumps({key: results[key] for key in ("sent", "guardrail_stopped_after_answers", "stopped_reason",
                                                   "b_behind_a_on_ctr", "seconds")}, indent=2))


if __name__ == "__main__":
    main()
