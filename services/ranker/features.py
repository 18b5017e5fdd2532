"""Ranking features for each candidate, computed together as one matrix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURES = ("interest_sim", "query_sim", "recent_sim_max", "category_affinity", "popularity")


@dataclass
class RankInputs:
    candidate_vectors: np.ndarray  # n x d, unit rows
    candidate_categories: list[list[str]]
    popularity: np.ndarray  # n, in [0, 1]
    interest: np.ndarray | None  # d
    query: np.ndarray | None  # d
    recent_vectors: np.ndarray  # m x d, newest first
    category_affinity: dict[str, float]


@dataclass
class Features:
    values: np.ndarray  # n x len(FEATURES)
    closest_recent: np.ndarray  # n: index into recent, -1 when none

    def column(self, name: str) -> np.ndarray:
        return self.values[:, FEATURES.index(name)]


def compute(inputs: RankInputs) -> Features:
    n = len(inputs.candidate_vectors)
    values = np.zeros((n, len(FEATURES)), dtype=np.float32)
    cv = inputs.candidate_vectors
    if inputs.interest is not None:
        values[:, 0] = cv @ inputs.interest
    if inputs.query is not None:
        values[:, 1] = cv @ inputs.query
    closest = np.full(n, -1, dtype=np.int64)
    if len(inputs.recent_vectors):
        sims = cv @ inputs.recent_vectors.T  # n x m
        closest = sims.argmax(axis=1)
        values[:, 2] = sims.max(axis=1)
    if inputs.category_affinity:
        values[:, 3] = [
            sum(inputs.category_affinity.get(c, 0.0) for c in cats) for cats in inputs.candidate_categories
        ]
    values[:, 4] = inputs.popularity
    return Features(values, closest)
