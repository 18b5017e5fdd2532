"""Zero-shot interest: recency- and event-type-weighted mean of recent items' LLM vectors,
blended with the typed query. The mesh served this before the learned model
(recmesh/models/interest/served.py); it stays as the evaluation's zero-shot baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmesh.common.vectors import l2_normalize
from recmesh.events.weights import DEFAULT


def event_weight(event_type: int, value: float) -> float:
    """How strongly the event says "more like this": its weight in recmesh/events/weights.py's
    table (the defaults), 0 for one that says "not this" (a hide, a dislike is no interest)."""
    return max(DEFAULT.weight(event_type, value), 0.0)


@dataclass(frozen=True)
class InterestRule:
    query_weight: float = 0.6
    recency_half_life_events: float = 2.0

    def combine(
        self,
        item_vectors: np.ndarray,
        event_types: list[int],
        values: list[float],
        query_vector: np.ndarray | None,
    ) -> np.ndarray | None:
        """item_vectors are oldest first. Returns a unit vector, or None with no signal."""
        history = None
        if len(item_vectors):
            n = len(item_vectors)
            age = np.arange(n - 1, -1, -1, dtype=np.float32)  # 0 for the newest
            recency = 0.5 ** (age / self.recency_half_life_events)
            kind = np.array([event_weight(t, v) for t, v in zip(event_types, values, strict=False)], dtype=np.float32)
            weights = recency * kind
            if weights.sum() > 0:
                history = l2_normalize(weights @ item_vectors)
        if query_vector is None:
            return history
        if history is None:
            return l2_normalize(query_vector)
        return l2_normalize(self.query_weight * query_vector + (1.0 - self.query_weight) * history)
