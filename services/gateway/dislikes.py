"""A dislike pushes the items like the disliked one down at once: each candidate's score loses
settings.dislike_push x (cos - from) / (1 - from) where cos, the cosine of its catalog vector and
the closest of the user's newest disliked items' (settings.dislikes_pushing of them), is above
`from` (settings.dislike_similar_from) - nothing below. Applied by the gateway to the ranker's
order (which is asked for as many more items as are pushed, so that the page refills) and to
retrieval's order when the ranker is skipped or down; a pushed item that is still shown says so in
its reasons. The popular answers (shed, `fallback:popular`) leave the disliked items out but are
not re-ordered."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recmesh.common.vectors import l2_normalize
from recmesh.models.session import History
from recmesh.v1 import ranker_pb2
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import CandidateSet


@dataclass(frozen=True)
class DislikePush:
    """How far each candidate of one list is pushed down, and why."""

    penalty: dict[str, float]  # item id -> score units taken off (only items pushed at all)
    reason: dict[str, str]  # item id -> the reason shown with it

    @classmethod
    def of(cls, candidates: CandidateSet, history: History, settings: GatewaySettings) -> "DislikePush | None":
        """The push on these candidates (their catalog vectors) from the user's disliked items
        (history.disliked, .disliked_vectors); None when none of them is pushed."""
        vectors = candidates.vectors
        disliked = history.disliked_vectors
        if (not history.disliked or not len(vectors) or settings.dislike_push <= 0
                or vectors.shape[1] != disliked.shape[1]):
            return None
        sims = l2_normalize(vectors) @ l2_normalize(disliked).T  # candidates x disliked
        closest = sims.argmax(axis=1)
        start = settings.dislike_similar_from
        amount = settings.dislike_push * np.clip((sims.max(axis=1) - start) / (1.0 - start), 0.0, None)
        penalty, reason = {}, {}
        for row in np.flatnonzero(amount > 0):
            item_id = candidates.items[row].item_id
            penalty[item_id] = float(amount[row])
            liked = history.items.get(history.disliked[closest[row]])
            title = liked.title if liked is not None and liked.title else "an item"
            reason[item_id] = f"ranked lower: like {title}, which you disliked"
        return cls(penalty, reason) if penalty else None

    @property
    def pushed(self) -> int:
        """How many candidates are pushed: a page of k needs that many more ranked to refill."""
        return len(self.penalty)

    def rerank(self, ranking: ranker_pb2.RankResponse, k: int) -> ranker_pb2.RankResponse:
        """The ranker's items with their scores pushed, in order of the pushed score (stable:
        equal scores keep the ranker's order), cut to k; features and propensities as served."""
        out = ranker_pb2.RankResponse(model_version=ranking.model_version, feature_names=ranking.feature_names)
        out.items.extend(ranking.items)  # copies: the ranker's reply stays as it came
        for item in out.items:
            if item.item_id in self.penalty:
                item.score -= self.penalty[item.item_id]
                item.reasons.append(self.reason[item.item_id])
        order = sorted(out.items, key=lambda item: -item.score)[:k]
        del out.items[:]
        out.items.extend(order)
        return out

    def reorder(self, candidates: CandidateSet) -> tuple[CandidateSet, list[float]]:
        """Candidates in order of their pushed retrieval score (stable), and those scores."""
        scores = [c.score - self.penalty.get(c.item_id, 0.0) for c in candidates.items]
        rows = sorted(range(len(scores)), key=lambda i: -scores[i])
        if rows == list(range(len(rows))):
            return candidates, scores
        return candidates.rows(rows), [scores[i] for i in rows]
