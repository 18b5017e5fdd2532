"""Stage 5 of Recommend: the ranker orders the candidates from their features (the candidates'
vectors and query similarity, the user's interest, session direction, category affinity, recent
items and skipped ones)."""

from __future__ import annotations

from recmesh.common.vectors import to_matrix
from recmesh.models.session import History, category_affinity
from recmesh.v1 import ranker_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import CandidateSet
from services.gateway.results import Ranked, Signals
from services.gateway.upstreams import Upstreams

RECENT_ITEMS = 10  # the user's newest distinct items the ranker compares candidates with


class RankingStage:
    """Asks the ranker to order a request's candidates."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams):
        self._s = settings
        self._up = upstreams

    async def rank(self, budget: Budget, candidates: CandidateSet, signals: Signals, history: History, k: int,
                   diversity: float, exploration: float | None = None, parameters_version: str = "") -> Ranked | None:
        """The ranker's top k of the candidates (k 0: all of them, ordered - what business rules
        that re-order need; diversity in 0..1; exploration in 0..1, None: the ranker's setting),
        parameters_version: the ranker version to score with, "": its current),
        or None when it failed or was late (stage "ranker"; the trace says why)."""
        wire = getattr(self._up, "rank_wire", None)
        if wire is not None and candidates.wire is not None:
            # Retrieval's candidates go on as the bytes they came in (CandidateSet.wire), the
            # rest of the request serialised after them: the same RankRequest, parsed.
            def call(t):
                rest = self._request(candidates, signals, history, k, diversity, with_candidates=False,
                                     exploration=exploration, parameters_version=parameters_version)
                return wire(candidates.wire + rest.SerializeToString(), timeout=t)
        else:
            def call(t):
                return self._up.ranker.Rank(self._request(candidates, signals, history, k, diversity,
                                                          exploration=exploration,
                                                          parameters_version=parameters_version), timeout=t)
        # Built only when the ranker is called: not when too little time is left for it.
        ranking = await budget.call("ranker", self._s.ranker_cap_ms * MS, call)
        return None if ranking is None else Ranked(ranking, ranking.model_version)

    def _request(self, found: CandidateSet, signals: Signals, history: History, k: int,
                 diversity: float, with_candidates: bool = True,
                 exploration: float | None = None, parameters_version: str = "") -> ranker_pb2.RankRequest:
        """The RankRequest for these candidates; with_candidates False: all of it but
        `candidates` and `candidate_vectors` (found.wire holds those)."""
        last = {e.item_id: i for i, e in enumerate(history.entries)}  # later events win
        recent_ids = sorted(last, key=last.__getitem__, reverse=True)[:RECENT_ITEMS]
        recent_rows = [last[i] for i in recent_ids]
        # The user's few skipped items looked up among the candidates, not every candidate among them.
        skipped = {}
        if history.skipped:
            ids = {c.item_id for c in found.items}
            skipped = {i: n for i, n in history.skipped.items() if i in ids}
        with_found = {"candidates": found.items, "candidate_vectors": to_matrix(found.vectors)} if with_candidates \
            else {}
        if exploration is not None:
            with_found["exploration"] = exploration
        return ranker_pb2.RankRequest(
            **with_found,
            query_similarity=found.query_similarity,
            interest=to_matrix(signals.interest),
            session=to_matrix(signals.session),
            category_affinity=category_affinity(history, self._s.affinity_items),
            recent=[ranker_pb2.RecentItem(item_id=i, title=history.items[i].title) for i in recent_ids],
            recent_vectors=to_matrix(history.vectors[recent_rows] if recent_rows else None),
            k=k,
            diversity=diversity,
            skipped=skipped,
            parameters_version=parameters_version,
        )
