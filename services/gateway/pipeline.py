"""The Recommend pipeline: user state -> history vectors -> interest -> candidates -> ranking,
each stage under its own deadline, each failure answered by the next rung of the fallback ladder
(README: Fallback ladder). Each stage returns what it found and the version that found it; the
reply is assembled from those."""

from __future__ import annotations

import uuid

from recmesh.models.session import session_vector
from recmesh.v1 import recommendations_pb2
from services.gateway.budget import Budget
from services.gateway.candidates import CandidateStage
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.history import HistoryStage
from services.gateway.impressions import ImpressionLog, impression
from services.gateway.interest import InterestStage
from services.gateway.item_cache import ItemCache
from services.gateway.ranking import RankingStage
from services.gateway.results import Encoded, Ranked, Retrieved, Signals
from services.gateway.seen import SeenItems
from services.gateway.shed import excluded_ids
from services.gateway.shedding import IN_FULL, Plan
from services.gateway.upstreams import Upstreams


class Pipeline:
    """The stages in order, and the reply made from what they found (impressions logged for ranked ones)."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, popular: PopularCandidates,
                 seen: SeenItems, items: ItemCache, impressions: ImpressionLog):
        self.history = HistoryStage(settings, upstreams, items, seen)
        self.interest = InterestStage(settings, upstreams)
        self.candidates = CandidateStage(settings, upstreams, popular)
        self.ranking = RankingStage(settings, upstreams)
        self._impressions = impressions

    async def run(self, request: recommendations_pb2.RecommendRequest, k: int, query: str, budget: Budget,
                  plan: Plan = IN_FULL, log_impression: bool = True) -> recommendations_pb2.RecommendResponse:
        """Up to k items for the request (k a checked page size, query its visible text, "" for
        none), within the budget, skipping what the plan says. An upstream failing or late is no
        error: degraded names, in order, the plan's reasons, then each failed stage and the
        fallback that answered instead; stage_latency has one entry per stage called (ms);
        versions: "encoder", "index", "ranker" - those that took part. Raises InvalidArgument
        for a malformed matrix in an upstream's reply."""
        trace = budget.trace
        for reason in plan.reasons:
            trace.degrade(reason)
        user_id = request.user_id

        history = await self.history.load(budget, user_id)
        # Computed here from the history's catalog vectors: it steers even when the encoder cannot.
        session = session_vector(history.vectors) if history.entries else None
        encoded = await self.interest.encode(budget, user_id, history, query, plan.skip_encoder)
        signals = Signals(encoded.interest, session, encoded.query)

        excluded = excluded_ids(request.filters, history.seen)
        retrieved = await self.candidates.retrieve(budget, request.filters, excluded, signals, k)

        ranked = None
        if retrieved.candidates.items and not plan.skip_ranker:
            ranked = await self.ranking.rank(budget, retrieved.candidates, signals, history, k, request.diversity)
            if ranked is None:
                trace.degrade("fallback:retrieval_order")
        return self._reply(budget, user_id, k, signals, encoded, retrieved, ranked, log_impression)

    def _reply(self, budget: Budget, user_id: str, k: int, signals: Signals, encoded: Encoded,
               retrieved: Retrieved, ranked: Ranked | None,
               log_impression: bool = True) -> recommendations_pb2.RecommendResponse:
        reply = recommendations_pb2.RecommendResponse(request_id=uuid.uuid4().hex)
        candidates = retrieved.candidates.items
        if ranked is not None:
            by_id = {c.item_id: c for c in candidates}
            for item in ranked.ranking.items[:k]:
                c = by_id[item.item_id]
                reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories,
                                score=item.score, reasons=item.reasons, attributes=c.attributes)
            if log_impression:  # False for a preview (the console): nobody was shown these
                self._impressions.log(impression(reply.request_id, user_id, ranked.ranking, k))
        else:
            # A user with no history is steered by their query, or by the cold-start interest
            # (what people consume), not by recent activity.
            reasons = (["fits your recent activity"] if signals.session is not None
                       else ["matches what you typed"] if signals.query is not None else ["popular right now"])
            for c in candidates[:k]:
                reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories, score=c.score,
                                reasons=reasons, attributes=c.attributes)
        versions = {"encoder": encoded.version, "index": retrieved.version,
                    "ranker": ranked.version if ranked is not None else None}
        reply.versions.update({name: version for name, version in versions.items() if version is not None})
        budget.report(reply)
        return reply
