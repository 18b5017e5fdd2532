"""Short human-readable reasons from what each feature contributed to an item's score."""

from __future__ import annotations

import numpy as np

from recmesh.models.ranking.features import FEATURES, Features

# Below this contribution a feature is not worth mentioning.
MIN_CONTRIBUTION = 0.05


def explain(
    contributions: np.ndarray,
    features: Features,
    index: int,
    categories: list[str],
    category_affinity: dict[str, float],
    recent_titles: list[str],
    max_reasons: int,
    mean: np.ndarray | None = None,
) -> list[str]:
    """mean: contributions.mean(axis=0), when the caller explains many items of one list (computed
    once, not per item)."""
    # Compare with the average candidate: a feature everyone shares explains nothing.
    lift = contributions[index] - (contributions.mean(axis=0) if mean is None else mean)
    reasons: list[str] = []
    for f in np.argsort(-lift):
        if lift[f] <= 0 or contributions[index, f] < MIN_CONTRIBUTION:
            break
        text = _phrase(FEATURES[f], features, index, categories, category_affinity, recent_titles)
        if text:
            reasons.append(text)
        if len(reasons) == max_reasons:
            break
    return reasons or ["broadly matches your profile"]


def _phrase(name, features, index, categories, affinity, recent_titles) -> str | None:
    if name == "query_sim":
        return "matches what you typed"
    if name == "interest_sim":
        return "fits your recent activity"
    if name in ("recent_sim_max", "session_sim"):
        j = int(features.closest_recent[index])
        if 0 <= j < len(recent_titles) and recent_titles[j]:
            return f"similar to {recent_titles[j]}"
        return "in line with what you just did" if name == "session_sim" else None
    if name == "category_affinity":
        liked = max(categories, key=lambda c: affinity.get(c, 0.0), default=None)
        return f"you like {liked}" if liked else None
    if name == "popularity":
        return "popular right now"
    return None
