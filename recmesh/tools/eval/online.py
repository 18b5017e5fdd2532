"""Prequential replay of the ranker on ml-latest-small: does learning online pay?

The users held out of the interest model's training are replayed in global time order (each
from their 11th event on). At every event the candidates are what the mesh would retrieve -
the best `candidates` items by the interest model and by the session direction, seen items
excluded - with the ranker's features; the item the user picks next is the label. Each
ranker is scored on the event before it may learn from it (prequential, "test then train"):

  online     the shipped ranker, updated as the updater does it (recmesh/models/ranking/training.py:
             rounds of Adam steps every `every` events, each candidate checked on the held-back
             window before it is published, regressions rolled back);
  frozen     the shipped ranker, never updated;
  retrieval  no ranker: the retrieval order (interest source first, then session).

NDCG@10 and AUC (the picked item against the other candidates) per window of events, as JSON
and a plot: results/eval/online.json, online.png."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.common.paths import served_artifact, var_paths
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, load_params
from recmesh.models.ranking.training import LabelledList, OnlineLearner, Round
from recmesh.tools.catalog import movielens
from recmesh.tools.eval import datasets
from recmesh.tools.eval.mesh import MeshScorer
from recmesh.tools.eval.run import item_vectors
from recmesh.tools.extras import require

POLICIES = ("online", "frozen", "retrieval")
# The hand-set version (weights chosen on validation, never trained on this stream); the
# shipped wide & deep version learned from part of this stream, so it cannot be replayed here.
START = SHIPPED_PARAMS / "ranker-linear-v2.json"


def stream(dataset: datasets.Dataset, users: set[str], skip: int):
    """(user, item index, rating, seconds) for the users' events after their first `skip`, in
    time order; and each user's first `skip` events (the history the replay starts from)."""
    index = dataset.item_index()
    by_user: dict[str, list[datasets.Interaction]] = {}
    for x in dataset.interactions:
        if x.user in users and x.item in index:
            by_user.setdefault(x.user, []).append(x)
    events, prefix = [], {}
    for user, xs in by_user.items():
        xs = sorted(xs, key=lambda x: x.timestamp)  # stable: file order on ties
        rows = [(index[x.item], x.rating, x.timestamp) for x in xs]
        prefix[user] = rows[:skip]
        events += [(user, *row, n) for n, row in enumerate(rows) if n >= skip]
    events.sort(key=lambda e: (e[3], e[0], e[4]))
    return [e[:4] for e in events], prefix


def candidates(features: np.ndarray, seen: set[int], limit: int) -> np.ndarray:
    """The mesh's retrieval: top `limit` by interest score, then by session cosine, merged."""
    out: dict[int, None] = {}
    for column in (0, 1):  # interest_sim, session_sim
        order = np.argsort(-features[:, column], kind="stable")
        picked = [i for i in order[: limit + len(seen)] if i not in seen][:limit]
        out.update(dict.fromkeys(int(i) for i in picked))
    return np.fromiter(out, dtype=np.int64)


def ranked_metrics(scores: np.ndarray, positive: int) -> tuple[float, float]:
    """(NDCG@10, AUC) of the picked item within the candidates."""
    above = int((scores > scores[positive]).sum())
    ndcg = 1 / np.log2(above + 2) if above < 10 else 0.0
    others = len(scores) - 1
    return ndcg, (int((scores < scores[positive]).sum()) / others if others else 1.0)


def mesh_world() -> tuple[datasets.Dataset, MeshScorer]:
    dataset = datasets.load(REPO / "data" / "ml-latest-small")
    catalog = movielens.load(REPO / "data" / "ml-latest-small")
    mesh = MeshScorer(datasets.split(dataset), dataset.item_ids, item_vectors(dataset, var_paths().eval_cache),
                      served_artifact(), np.asarray(catalog.popularity), [list(it.categories) for it in catalog.items])
    return dataset, mesh


def replay(mesh: MeshScorer, events, history: dict, limit: int):
    """For each event in order: (n, candidate features or None when the picked item was not
    retrieved, the picked row); the user's history grows as the replay goes."""
    for n, (user, item, rating, seconds) in enumerate(events):
        past = history[user]
        items, ratings, stamps = [p[0] for p in past], [p[1] for p in past], [p[2] for p in past]
        features = mesh.features(items, ratings, stamps)
        cands = candidates(features, set(items), limit)
        hit = np.flatnonzero(cands == item)
        past.append((item, rating, seconds))
        yield n, (features[cands] if len(hit) else None), (int(hit[0]) if len(hit) else -1)


def run(out: Path, limit: int, every: int, window: int, skip: int, max_events: int, start: Path) -> dict:
    dataset, mesh = mesh_world()
    events, history = stream(dataset, set(mesh.model.holdout_users), skip)
    events = events[: max_events or None]
    frozen = load_params(start)
    learner = OnlineLearner(frozen)
    rows: dict[str, list[tuple[float, float]]] = {p: [] for p in POLICIES}
    covered = 0
    started = time.perf_counter()
    for n, x, positive in replay(mesh, events, history, limit):
        if x is not None:
            covered += 1
            policy_scores = {"online": learner.serving.score(x), "frozen": frozen.score(x),
                             "retrieval": -np.arange(len(x), dtype=np.float32)}
            for policy, scores in policy_scores.items():
                rows[policy].append(ranked_metrics(scores, positive))
            learner.add(LabelledList(x, positive, n))
        else:  # not retrievable: a miss for every policy (AUC undefined)
            for policy in POLICIES:
                rows[policy].append((0.0, float("nan")))
        if (n + 1) % every == 0:
            job = learner.start_round(f"replay-{n + 1}")
            if isinstance(job, Round):
                learner.finish(job, *job.train())
        if (n + 1) % 500 == 0:
            print(f"\rreplayed {n + 1}/{len(events)} events", end="", flush=True)
    print()

    def summary(values: list[tuple[float, float]]) -> dict:
        a = np.array(values, dtype=np.float64)
        return {"NDCG@10": round(float(a[:, 0].mean()), 4), "AUC": round(float(np.nanmean(a[:, 1])), 4)}

    windows = {p: [summary(rows[p][i : i + window]) for i in range(0, len(rows[p]), window)] for p in POLICIES}
    results = {
        "start": frozen.version, "events": len(events), "users": len(mesh.model.holdout_users),
        "candidates_per_source": limit,
        "retrievable_share": round(covered / max(len(events), 1), 4), "round_every_events": every,
        "published": learner.published, "rejected": learner.rejected, "rollbacks": learner.rollbacks,
        "seconds": round(time.perf_counter() - started, 1),
        "overall": {p: summary(rows[p]) for p in POLICIES}, "window_events": window, "windows": windows,
    }
    o = results["overall"]
    results["online_vs_frozen_NDCG"] = round(o["online"]["NDCG@10"] / max(o["frozen"]["NDCG@10"], 1e-9), 3)
    results["frozen_vs_retrieval_NDCG"] = round(o["frozen"]["NDCG@10"] / max(o["retrieval"]["NDCG@10"], 1e-9), 3)
    out.mkdir(parents=True, exist_ok=True)
    (out / "online.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "online.png")
    return results


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
    for policy, windows in results["windows"].items():
        x = np.arange(1, len(windows) + 1) * results["window_events"]
        a.plot(x, [w["NDCG@10"] for w in windows], label=policy)
        b.plot(x, [w["AUC"] for w in windows], label=policy)
    a.set_title("NDCG@10 per window (prequential)")
    b.set_title("AUC of the picked item among candidates")
    for ax in (a, b):
        ax.set_xlabel("events replayed")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.online", description=__doc__)
    parser.add_argument("--candidates", type=int, default=100, help="per retrieval source, as the gateway")
    parser.add_argument("--every", type=int, default=50, help="events between learning rounds")
    parser.add_argument("--window", type=int, default=1000, help="events per plotted window")
    parser.add_argument("--skip", type=int, default=10, help="each user's first events are history only")
    parser.add_argument("--max-events", type=int, default=0, help="0 = the whole stream")
    parser.add_argument("--start", type=Path, default=START,
                        help="the ranker version online learning starts from, and the frozen one")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    args = parser.parse_args(argv)
    require(parser.prog, "bench")  # the plot comes last: check before the work
    results = run(args.out, args.candidates, args.every, args.window, args.skip, args.max_events, args.start)
    print(json.dumps({k: v for k, v in results.items() if k != "windows"}, indent=2))


if __name__ == "__main__":
    main()
