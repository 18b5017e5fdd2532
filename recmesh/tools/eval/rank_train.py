"""Train the ranker offline from replayed logs and ship it as a new version.

The users held out of the interest model's training are replayed (as in recmesh.tools.eval.online):
at each event, the candidates the mesh retrieves with the ranker's features; positive = the
item the user picked next, negatives = the retrieved items not picked. Training uses every
held-out user's events except their first 10 (history only) and their last 20 (the streaming
replay's); the latest tenth of the training events (by time) selects the epoch; the last-20
events are the test. The wide & deep ranker starts from the hand-set version and learns with
the online learner's own trainer (listwise softmax, Adam).

Writes recmesh/models/ranking/params/<version>.json (only with --install and when it beats the
starting version on the test events) and results/eval/ranker.json. Not installed today: the
versions it trains beat the hand-set one on MovieLens but stop following a change of genre and
a typed query as the product requires (docs/results.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recmesh.common.local import REPO
from recmesh.models.ranking.scorer import SHIPPED_PARAMS, Scorer, load_params, save_params
from recmesh.models.ranking.training import LabelledList, WideDeepTrainer
from recmesh.tools.eval.online import START, mesh_world, ranked_metrics, replay, stream

TEST_EVENTS = 20  # per user: the streaming replay's


def labelled(mesh, events, history, limit) -> tuple[list[LabelledList], int]:
    out, total = [], 0
    for n, x, positive in replay(mesh, events, history, limit):
        total += 1
        if x is not None:
            out.append(LabelledList(x, positive, n))
    return out, total


def evaluate(scorer: Scorer | None, lists: list[LabelledList], total: int) -> dict:
    """NDCG@10 over all events (an unretrieved pick is a miss) and AUC over the retrieved ones."""
    rows = [ranked_metrics(scorer.score(x.features) if scorer else -np.arange(len(x.features), dtype=np.float32),
                           x.row) for x in lists]
    ndcg = sum(r[0] for r in rows) / max(total, 1)
    return {"NDCG@10": round(ndcg, 4), "AUC": round(float(np.mean([r[1] for r in rows])), 4)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m recmesh.tools.eval.rank_train", description=__doc__)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--version", default="ranker-wide-deep-v3")
    parser.add_argument("--hidden", type=int, default=16, help="deep part's width; 0 = linear")
    parser.add_argument("--install", action="store_true", help="write the version into the shipped params")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    args = parser.parse_args(argv)

    dataset, mesh = mesh_world()
    users = set(mesh.model.holdout_users)
    events, history = stream(dataset, users, 10)
    count: dict[str, int] = {}
    for e in events:
        count[e[0]] = count.get(e[0], 0) + 1
    seen: dict[str, int] = {}
    train_events, test_events = [], []
    for e in events:  # time order kept; each user's last TEST_EVENTS go to the test
        seen[e[0]] = seen.get(e[0], 0) + 1
        (test_events if seen[e[0]] > count[e[0]] - TEST_EVENTS else train_events).append(e)
    # One pass in time order: the training events' histories feed the test events' histories.
    merged = sorted([(e, "train") for e in train_events] + [(e, "test") for e in test_events],
                    key=lambda p: (p[0][3], p[0][0]))
    lists = {"train": [], "test": []}
    totals = {"train": 0, "test": 0}
    for (n, x, positive), (_, part) in zip(replay(mesh, [e for e, _ in merged], history, args.candidates), merged,
                                          strict=True):
        totals[part] += 1
        if x is not None:
            lists[part].append(LabelledList(x, positive, n))
    train = lists["train"]
    cut = int(len(train) * 0.9)
    fit, valid = train[:cut], train[cut:]
    start = load_params(START)
    trainer = WideDeepTrainer(start, hidden=args.hidden, lr=0.01)
    rng = np.random.default_rng(0)
    best, best_scorer, history_ = -1.0, None, []
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(fit))
        for i in range(0, len(order), 32):
            trainer.step([fit[j] for j in order[i : i + 32]])
        scorer = trainer.scorer(args.version, 0)
        v = evaluate(scorer, valid, len(valid))
        history_.append({"epoch": epoch, **v})
        print(f"epoch {epoch}: valid {v}", flush=True)
        if v["NDCG@10"] > best:
            best, best_scorer = v["NDCG@10"], scorer
    test = {"retrieval": evaluate(None, lists["test"], totals["test"]),
            start.version: evaluate(start, lists["test"], totals["test"]),
            args.version: evaluate(best_scorer, lists["test"], totals["test"])}
    results = {"train_lists": len(fit), "valid_lists": len(valid), "test_events": totals["test"],
               "test_lists": len(lists["test"]), "epochs": history_, "test": test}
    better = test[args.version]["NDCG@10"] > test[start.version]["NDCG@10"]
    if args.install and better:
        path = save_params(best_scorer, SHIPPED_PARAMS,
                           note="Trained offline from replayed logs (recmesh.tools.eval.rank_train): wide & deep "
                                "over the ranker's features, listwise softmax; positive = the next picked item, "
                                "negatives = retrieved and not picked. Test figures in docs/results.md.", test=test)
        results["installed"] = str(path)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ranker.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "epochs"}, indent=2))
    return results


if __name__ == "__main__":
    main()
