"""What a user's recent behaviour says without the interest model: the session direction (the
newest items' recency- and event-weighted mean) and the category affinity. The gateway computes
both for every Recommend; the offline twin (recmesh eval's mesh) computes them the same way.

History is what the gateway knows of the user for one Recommend (oldest first, only items the
catalog knows, only events of positive weight - recmesh/events/weights.py), as those signals and
the ranker's inputs read it; beside it what the user hid or disliked."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from recmesh.common.vectors import l2_normalize
from recmesh.v1 import encoder_pb2, retrieval_pb2

# The session direction: what the user's last few items have in common. Chosen on validation
# NDCG (docs/results.md): the last 10 items, each event half as important as the next newer one.
SESSION_ITEMS = 10
SESSION_HALF_LIFE_EVENTS = 1.0


def session_vector(item_vectors: np.ndarray, last_n: int = SESSION_ITEMS,
                   half_life_events: float = SESSION_HALF_LIFE_EVENTS,
                   event_weights: np.ndarray | None = None) -> np.ndarray | None:
    """Unit, weighted mean of the unit vectors of the newest last_n items (oldest first in, None
    when empty): each weighs its recency (half as much as the next newer one, per
    half_life_events) times its event's weight (event_weights, one per row, > 0: recmesh.events.
    weights; None: all alike)."""
    recent = l2_normalize(np.asarray(item_vectors, np.float32)[-last_n:])
    if len(recent) == 0:
        return None
    weights = 0.5 ** (np.arange(len(recent))[::-1] / half_life_events)
    if event_weights is not None:
        weights = weights * np.asarray(event_weights, np.float64)[-last_n:]
    return l2_normalize((weights[:, None] * recent).sum(axis=0)).astype(np.float32)


@dataclass
class History:
    entries: list[encoder_pb2.HistoryEntry]  # oldest first, only items the catalog knows
    vectors: np.ndarray
    items: dict[str, retrieval_pb2.Candidate]
    seen: set[str]
    skipped: dict[str, int] = field(default_factory=dict)  # recently shown, not chosen
    # Every event the user has (the updater's count; None: unknown). It only grows - unless the
    # user was deleted and started afresh.
    event_count: int | None = None
    # Each entry's event weight (> 0, recmesh.events.weights); None: all alike.
    weights: np.ndarray | None = None
    # Items the user hid or disliked: left out of every answer, whatever exclude_seen says.
    hidden: set[str] = field(default_factory=set)
    # The newest disliked items the catalog knows (oldest first; their metadata in `items`) and
    # their catalog vectors: items like them are pushed down (services/gateway/dislikes.py).
    disliked: list[str] = field(default_factory=list)
    disliked_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))


def category_affinity(history: History, last_n: int) -> dict[str, float]:
    """Share of each category among the user's last_n item events."""
    counts: Counter[str] = Counter()
    for entry in history.entries[-last_n:]:
        counts.update(history.items[entry.item_id].categories)
    total = sum(counts.values())
    return {c: n / total for c, n in counts.items()} if total else {}
