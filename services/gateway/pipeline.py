"""The Recommend pipeline: user state (and the request's inline session events) -> history
vectors -> interest -> candidates -> ranking -> the push of disliked items' neighbours, each stage
under its own deadline, each failure answered by the next rung of the fallback ladder (README:
Fallback ladder). Each stage returns what it found and the version that found it; the reply is
assembled from those."""

from __future__ import annotations

import uuid

from recmesh.models.session import session_vector
from recmesh.v1 import recommendations_pb2
from services.gateway.budget import Budget
from services.gateway.candidates import CandidateStage
from services.gateway.config import GatewaySettings
from services.gateway.dislikes import DislikePush
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
        self._s = settings

    async def run(self, request: recommendations_pb2.RecommendRequest, k: int, query: str, budget: Budget,
                  plan: Plan = IN_FULL) -> recommendations_pb2.RecommendResponse:
        """Up to k items for the request (k a checked page size, query its visible text, "" for
        none), within the budget, skipping what the plan says. An upstream failing or late is no
        error: degraded names, in order, the plan's reasons, then each failed stage and the
        fallback that answered instead; stage_latency has one entry per stage called (ms);
        versions: "encoder", "index", "ranker" - those that took part. A guest (user_id "",
        request.session_events checked) is served from the session events alone; no impression
        is logged for one (no feedback can name them). Raises InvalidArgument for a malformed
        matrix in an upstream's reply."""
        trace = budget.trace
        for reason in plan.reasons:
            trace.degrade(reason)
        user_id = request.user_id

        history = await self.history.load(budget, user_id, request.session_events)
        # Computed here from the history's catalog vectors: it steers even when the encoder cannot.
        session = session_vector(history.vectors, event_weights=history.weights) if history.entries else None
        encoded = await self.interest.encode(budget, user_id, history, query, plan.skip_encoder)
        signals = Signals(encoded.interest, session, encoded.query)

        excluded = excluded_ids(request.filters, history.seen, history.hidden)
        retrieved = await self.candidates.retrieve(budget, request.filters, excluded, signals, k)
        push = DislikePush.of(retrieved.candidates, history, self._s)

        ranked = None
        if retrieved.candidates.items and not plan.skip_ranker:
            # Asked for as many more as are pushed: those pushed off the page leave room to fill.
            wanted = k + push.pushed if push is not None else k
            ranked = await self.ranking.rank(budget, retrieved.candidates, signals, history, wanted,
                                             request.diversity)
            if ranked is None:
                trace.degrade("fallback:retrieval_order")
            elif push is not None:
                ranked = Ranked(push.rerank(ranked.ranking, k), ranked.version)
        return self._reply(budget, user_id, k, signals, encoded, retrieved, ranked, push)

    def _reply(self, budget: Budget, user_id: str, k: int, signals: Signals, encoded: Encoded,
               retrieved: Retrieved, ranked: Ranked | None,
               push: DislikePush | None) -> recommendations_pb2.RecommendResponse:
        reply = recommendations_pb2.RecommendResponse(request_id=uuid.uuid4().hex)
        candidates = retrieved.candidates.items
        if ranked is not None:
            by_id = {c.item_id: c for c in candidates}
            for item in ranked.ranking.items[:k]:
                c = by_id[item.item_id]
                reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories,
                                score=item.score, reasons=item.reasons, attributes=c.attributes)
            if user_id:  # a guest without an id: no feedback can ever join their impression
                self._impressions.log(impression(reply.request_id, user_id, ranked.ranking, k))
        else:
            # A user with no history is steered by their query, or by the cold-start interest
            # (what people consume), not by recent activity.
            reasons = (["fits your recent activity"] if signals.session is not None
                       else ["matches what you typed"] if signals.query is not None else ["popular right now"])
            ordered, scores = (push.reorder(retrieved.candidates) if push is not None
                               else (retrieved.candidates, [c.score for c in candidates]))
            for c, score in zip(ordered.items[:k], scores, strict=False):
                why = reasons + [push.reason[c.item_id]] if push is not None and c.item_id in push.reason else reasons
                reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories, score=score,
                                reasons=why, attributes=c.attributes)
        versions = {"encoder": encoded.version, "index": retrieved.version,
                    "ranker": ranked.version if ranked is not None else None}
        reply.versions.update({name: version for name, version in versions.items() if version is not None})
        budget.report(reply)
        return reply
