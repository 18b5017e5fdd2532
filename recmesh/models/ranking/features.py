"""Ranking features for each candidate, computed together as one matrix.

Scale-free on purpose: the interest score is taken against the unit interest direction (a
ranking per request does not change with the interest's norm), the rest are cosines, shares
and popularity in [0, 1] - so one set of weights serves every user."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmesh.common.vectors import l2_normalize

FEATURES = ("interest_sim", "session_sim", "query_sim", "recent_sim_max", "category_affinity", "popularity",
            "skipped")


@dataclass
class RankInputs:
    candidate_vectors: np.ndarray  # n x d, the catalog's space
    candidate_text_vectors: np.ndarray  # n x t, unit rows (language model)
    candidate_categories: list[list[str]]
    popularity: np.ndarray  # n, in [0, 1]
    interest: np.ndarray | None  # d
    session: np.ndarray | None  # d, unit
    query: np.ndarray | None  # t, unit
    recent_vectors: np.ndarray  # m x d, newest first
    category_affinity: dict[str, float]
    skipped: np.ndarray | None = None  # n: times recently shown to this user and not chosen
    query_similarity: np.ndarray | None = None  # n: candidate text . query, when computed upstream


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
    unit = l2_normalize(cv)
    if inputs.interest is not None:
        values[:, 0] = cv @ l2_normalize(inputs.interest)
    if inputs.session is not None:
        values[:, 1] = unit @ inputs.session
    if inputs.query_similarity is not None:
        values[:, 2] = inputs.query_similarity
    elif inputs.query is not None:
        values[:, 2] = inputs.candidate_text_vectors @ inputs.query
    closest = np.full(n, -1, dtype=np.int64)
    if len(inputs.recent_vectors):
        sims = unit @ l2_normalize(inputs.recent_vectors).T  # n x m
        closest = sims.argmax(axis=1)
        values[:, 3] = sims.max(axis=1)
    if inputs.category_affinity:
        values[:, 4] = [
            sum(inputs.category_affinity.get(c, 0.0) for c in cats) for cats in inputs.candidate_categories
        ]
    values[:, 5] = inputs.popularity
    if inputs.skipped is not None:
        values[:, 6] = np.log1p(inputs.skipped)
    return Features(values, closest)
