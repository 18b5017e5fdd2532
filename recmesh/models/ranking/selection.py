"""Which candidates fill the k slots, in what order: by score, optionally diversified (maximal
marginal relevance), and with a small logged exploration share."""

from __future__ import annotations

import numpy as np

from recmesh.common.vectors import l2_normalize


def mmr(scores: np.ndarray, vectors: np.ndarray, k: int, diversity: float, pool_factor: int) -> np.ndarray:
    """Greedy MMR over the best k * pool_factor candidates: each next item maximises
    (1 - diversity) * relevance - diversity * (its highest cosine to the items already chosen),
    relevance being the score rescaled to [0, 1] within the pool. diversity 0 = plain order."""
    order = np.argsort(-scores, kind="stable")
    if diversity <= 0 or k <= 1:
        return order[:k]
    pool = order[: k * pool_factor]
    s = scores[pool]
    relevance = (s - s.min()) / max(float(s.max() - s.min()), 1e-9)
    unit = l2_normalize(vectors[pool])
    chosen = [0]
    closest = unit @ unit[0]  # highest similarity to anything chosen so far
    for _ in range(1, min(k, len(pool))):
        gain = (1 - diversity) * relevance - diversity * closest
        gain[chosen] = -np.inf
        nxt = int(np.argmax(gain))
        chosen.append(nxt)
        closest = np.maximum(closest, unit @ unit[nxt])
    return pool[chosen]


def explore(top: np.ndarray, n: int, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """With probability `share`, the last slot shows a candidate drawn uniformly from those
    below the top; returns the slots and each one's propensity (the probability that this item
    was put in this slot by this policy, as logged for off-policy learning)."""
    propensity = np.ones(len(top), np.float32)
    rest = np.setdiff1d(np.arange(n), top, assume_unique=False)
    if len(top) == 0 or len(rest) == 0 or rng.random() >= share:
        return top, propensity
    top = top.copy()
    top[-1] = rng.choice(rest)
    propensity[-1] = share / len(rest)
    return top, propensity
