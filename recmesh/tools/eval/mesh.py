"""The mesh's ranking function, in process over the whole catalog (full ranking), built from
the model layer the services run: the installed interest model's interest, the session
direction and category affinity (as the gateway computes them), the ranker's features and
weights (the ranker's start version unless given: the var's own blend from `recmesh train`,
else the shipped one); the gateway's and the ranker's settings. What Recommend would answer if
retrieval returned every item - the offline twin of the served path."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recmesh.events.weights import EventWeights, load_event_weights
from recmesh.models.interest.served import ServedInterestModel
from recmesh.models.ranking.features import RankInputs, compute
from recmesh.models.ranking.scorer import Scorer, load_params, newest_params
from recmesh.models.session import History, category_affinity, session_vector
from recmesh.tools.eval import datasets
from recmesh.v1 import common_pb2, encoder_pb2, retrieval_pb2
from services.gateway.config import GatewaySettings
from services.ranker.config import RankerSettings

RATE = common_pb2.EventType.EVENT_TYPE_RATE


class MeshScorer:
    """The mesh's ranking function over the whole catalog, in process, with the services' models."""

    name = "LLM-Seq+session"

    def __init__(self, s: datasets.Split, item_ids: list[str], text_vectors: np.ndarray, artifact: Path,
                 popularity: np.ndarray, categories: list[list[str]], scorer: Scorer | None = None,
                 weights: EventWeights | None = None):
        """popularity in [0, 1] and categories per item, aligned with item_ids (as the catalog has
        them); scorer: the ranker's weights (default: the version the ranker starts from);
        weights: the event weights (default: the gateway's, the var's catalog file or the
        defaults) - each interaction weighs in the session direction as a RATE of its strength,
        exactly as the gateway weighs a rating (other event types approximately: the split keeps
        their strength as a rating, not their type)."""
        self.s, self.text = s, text_vectors
        self.model = ServedInterestModel(artifact)
        self.vectors = self.model.item_vectors(text_vectors, item_ids)
        self.gateway = GatewaySettings()
        self.scorer = scorer if scorer is not None else load_params(newest_params(RankerSettings().params_dir))
        self.popularity = np.asarray(popularity, np.float32)
        self.categories = categories
        self.weights = weights if weights is not None else load_event_weights(self.gateway.event_weights_file)

    def signals(self, items: list[int], ratings: list[float], seconds: list[int],
                query: np.ndarray | None = None) -> tuple:
        """(interest, session) from a history (oldest first; may be empty) and the typed query's
        language-model vector (text dim, or None), as the gateway and Triton compute them: a
        model with query fusion takes the query into the interest and answers for an empty
        history; the session direction is None for an empty history."""
        items = items[-self.gateway.history_items :]
        n = len(items)
        vectors = self.vectors[items]
        if not n and not self.model.fuses_queries:
            return None, None  # the gateway asks no interest for it
        interest = self.model.interest(vectors, [RATE] * n, ratings[-n:] if n else [],
                                       [t * 1000 for t in seconds[-n:]] if n else [], query)
        if not n:
            return interest, None
        return interest, session_vector(vectors, event_weights=self.weights.weights([RATE] * n, ratings[-n:]))

    def features(self, items: list[int], ratings: list[float], seconds: list[int],
                 query: np.ndarray | None = None) -> np.ndarray:
        """n_items x len(FEATURES): the ranker's features of every item for this history (may be
        empty) and typed query (its language-model vector, or None: query_sim 0)."""
        interest, session = self.signals(items, ratings, seconds, query)
        items = items[-self.gateway.history_items :]
        entries = [encoder_pb2.HistoryEntry(item_id=str(i)) for i in items]
        history = History(entries, self.vectors[items], {str(i): retrieval_pb2.Candidate(categories=self.categories[i])
                                                         for i in items}, set())
        newest = list(dict.fromkeys(reversed(items)))[:10]
        return compute(RankInputs(
            candidate_vectors=self.vectors, candidate_text_vectors=self.text, candidate_categories=self.categories,
            popularity=self.popularity, interest=interest, session=session, query=query,
            recent_vectors=self.vectors[newest],
            category_affinity=category_affinity(history, self.gateway.affinity_items))).values

    def user_scores(self, user: str, stage: str, query: np.ndarray | None = None) -> np.ndarray:
        s = self.s
        full = s.history(user, stage)
        return self.scorer.for_request(bool(full), typed=query is not None).score(
            self.features(full, s.ratings[user][: len(full)], s.timestamps[user][: len(full)], query))

    def __call__(self, users: list[str], stage: str) -> np.ndarray:
        return np.stack([self.user_scores(u, stage) for u in users])


def train_popularity(s: datasets.Split) -> np.ndarray:
    """The catalog's popularity formula (log count over the top), from training interactions only."""
    counts = np.bincount(np.concatenate(list(s.train.values())), minlength=s.n_items).astype(np.float64)
    return (np.log1p(counts) / np.log1p(counts.max())).astype(np.float32)
