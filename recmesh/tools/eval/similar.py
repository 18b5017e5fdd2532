"""SimilarItems' blend, chosen offline (`python -m recmesh.tools.eval.similar`): over the var's
shard (the catalog and text vectors retrieval serves) and MovieLens ratings, for the users the
served interest model never trained on (its holdout), each pair of consecutive liked items (rated
4 or more) is a "more like this" case - the anchor is the first, the second what the user went on
to like. Per blend: hit@10 (the second in the anchor's top 10 by the blend, the anchor left out),
and how on-topic the top 10 is (share sharing a genre with the anchor, mean genre Jaccard).

1. the behaviour weight (recmesh/models/similar.py Weights.behaviour: catalog-space cosine vs
   text cosine), over the whole catalog, no user;
2. the interest weight: the blend of 1 plus w x the cosine with the user's interest (the served
   model over their events before the anchor), the user's earlier items left out as the gateway
   leaves out seen items.
The gateway's defaults (SIMILAR_BEHAVIOUR_WEIGHT, SIMILAR_INTEREST_WEIGHT) come from this table
(docs/similar.md). results/eval/similar.json."""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from recmesh.common.paths import served_artifact, var_dir, var_paths
from recmesh.common.vectors import l2_normalize
from recmesh.tools.catalog import movielens
from recmesh.tools.catalog.bootstrap import DEFAULT_DATA, REPO
from recmesh.v1 import common_pb2

LIKED = 4.0
TOP = 10
HISTORY = 50  # events the interest model reads (the encoder's default)
BEHAVIOUR_WEIGHTS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 1.0)
CHOSEN_BEHAVIOUR = 0.6  # the interest weight is measured on top of this blend (the gateway's default)
INTEREST_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)


def shard_vectors(var: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[set[str]]]:
    """(item ids, catalog vectors, text vectors, categories) as the var's shard holds them."""
    from recmesh.index.edge import EdgeItemStore

    store = EdgeItemStore.open(var_paths(var).shard_dir)
    ids, vectors, texts, categories = [], [], [], []
    try:
        for payloads, v, t in store.export(2048, ["item_id", "categories"]):
            ids += [p["item_id"] for p in payloads]
            categories += [set(p.get("categories", [])) for p in payloads]
            vectors.append(v)
            texts.append(t)
    finally:
        store.close()
    return ids, np.concatenate(vectors), np.concatenate(texts), categories


def cases(ratings, index: dict[str, int], users: set[str]) -> list[tuple[int, int, list]]:
    """(anchor row, next liked row, the user's ratings up to the anchor: (ms, row, value)) per
    pair of consecutive liked items of `users`."""
    by_user: dict[str, list] = defaultdict(list)
    for r in ratings:
        if r.user_id in users and r.item_id in index:
            by_user[r.user_id].append((r.timestamp_ms, index[r.item_id], r.rating))
    found = []
    for events in by_user.values():
        events.sort()
        liked = [(i, e) for i, e in enumerate(events) if e[2] >= LIKED]
        for (at, (_, anchor, _)), (_, (_, then, _)) in itertools.pairwise(liked):
            if anchor != then:
                found.append((anchor, then, events[:at + 1]))
    return found


def _measure(scores: np.ndarray, anchors: np.ndarray, targets: list[int], categories: list[set[str]],
             excluded: list[list[int]] | None = None) -> dict[str, float]:
    scores = scores.copy()
    scores[np.arange(len(anchors)), anchors] = -np.inf
    if excluded is not None:
        for row, rows in enumerate(excluded):
            scores[row, rows] = -np.inf
    top = np.argpartition(-scores, TOP, axis=1)[:, :TOP]
    hits = np.mean([t in set(row) for t, row in zip(targets, top, strict=True)])
    shared = [[bool(categories[a] & categories[j]) for j in row] for a, row in zip(anchors, top, strict=True)]
    jaccard = [[len(categories[a] & categories[j]) / max(1, len(categories[a] | categories[j])) for j in row]
               for a, row in zip(anchors, top, strict=True)]
    return {"hit_at_10": round(float(hits), 4), "share_sharing_a_genre": round(float(np.mean(shared)), 3),
            "genre_jaccard": round(float(np.mean(jaccard)), 3)}


def run(var: Path, max_cases: int = 3000, seed: int = 21) -> dict:
    from recmesh.models.interest.served import ServedInterestModel

    ids, raw, texts, categories = shard_vectors(var)
    vectors, texts = l2_normalize(raw), l2_normalize(texts)
    index = {item_id: row for row, item_id in enumerate(ids)}
    model = ServedInterestModel(served_artifact(var), runtime="torch")
    found = cases(movielens.load(DEFAULT_DATA).ratings, index, set(model.holdout_users))
    random.Random(seed).shuffle(found)
    found = found[:max_cases]
    anchors = np.array([a for a, _, _ in found])
    targets = [t for _, t, _ in found]
    behaviour, text = vectors[anchors] @ vectors.T, texts[anchors] @ texts.T
    random_scores = np.random.default_rng(seed).random(behaviour.shape)
    report: dict = {"var": str(var), "cases": len(found), "users": len(model.holdout_users),
                    "random": _measure(random_scores, anchors, targets, categories), "behaviour_weight": {}}
    for w in BEHAVIOUR_WEIGHTS:
        report["behaviour_weight"][str(w)] = _measure(w * behaviour + (1 - w) * text, anchors, targets, categories)

    # The user's interest as the gateway gets it: the served model over their newest events
    # (the catalog vectors of their items, ratings as RATE events) up to the anchor.
    interests = []
    for _, _, history in found:
        history = history[-HISTORY:]
        interests.append(model.interest(raw[[row for _, row, _ in history]],
                                        [common_pb2.EVENT_TYPE_RATE] * len(history),
                                        [value for *_, value in history], [ms for ms, *_ in history]))
    interest = l2_normalize(np.stack(interests)) @ vectors.T
    seen = [[row for _, row, _ in history] for _, _, history in found]
    blend = CHOSEN_BEHAVIOUR * behaviour + (1 - CHOSEN_BEHAVIOUR) * text
    report["interest_weight"] = {str(w): _measure(blend + w * interest, anchors, targets, categories, seen)
                                 for w in INTEREST_WEIGHTS}
    report["interest_weight_over_behaviour_weight"] = CHOSEN_BEHAVIOUR
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=3000, help="pairs of liked items at most")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "eval")
    args = parser.parse_args()
    report = run(var_dir(), args.cases)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "similar.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
