"""The evaluation protocol (never change silently): full ranking over all items, the user's
history excluded, HR@10 / NDCG@10 / MRR@10 on the held-out item, plus catalogue coverage.
Validation ranks the second-last item from the train history; test ranks the last item from
train + validation (a sequential model sees the validation item as history)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from recmesh.tools.eval.datasets import Split

K = 10
# scorer(users, stage) -> scores (len(users) x n_items); called in chunks of users.
Scorer = Callable[[list[str], str], np.ndarray]


def evaluate(scorer: Scorer, s: Split, stage: str, chunk: int = 256) -> dict[str, float]:
    assert stage in ("valid", "test")
    targets = s.valid if stage == "valid" else s.test
    users = sorted(s.train)
    hr = ndcg = mrr = 0.0
    shown: set[int] = set()
    for start in range(0, len(users), chunk):
        batch = users[start : start + chunk]
        scores = np.array(scorer(batch, stage), dtype=np.float64, copy=True)
        for row, user in enumerate(batch):
            scores[row, s.history(user, stage)] = -np.inf
            target = targets[user]
            # A NaN score must never count as a hit (NaN > x is False for every x).
            rank = int((scores[row] > scores[row, target]).sum()) if np.isfinite(scores[row, target]) \
                else s.n_items + K
            top = np.argpartition(-scores[row], min(K, s.n_items - 1))[:K]
            shown.update(top.tolist())
            if rank < K:
                hr += 1
                ndcg += 1 / np.log2(rank + 2)
                mrr += 1 / (rank + 1)
    n = len(users)
    return {"HR@10": round(hr / n, 4), "NDCG@10": round(ndcg / n, 4), "MRR@10": round(mrr / n, 4),
            "coverage@10": round(len(shown) / s.n_items, 4), "users": n}


def top_k_metrics(ranks: list[int]) -> dict[str, float]:
    """HR@10, NDCG@10 and MRR@10 from the held-out item's rank in each top-10 list shown
    (0-based, -1 when absent) - for evaluations that see lists, not scores."""
    r = np.array(ranks)
    hit = r >= 0
    return {"HR@10": round(float(hit.mean()), 4),
            "NDCG@10": round(float(np.where(hit, 1 / np.log2(np.maximum(r, 0) + 2), 0).mean()), 4),
            "MRR@10": round(float(np.where(hit, 1 / (np.maximum(r, 0) + 1), 0).mean()), 4)}
