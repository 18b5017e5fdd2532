"""The Recommend pipeline: user state (and the request's inline session events) -> history
vectors -> interest -> candidates -> ranking -> the push of disliked items' neighbours ->
business rules, each stage under its own deadline, each failure answered by the next rung of the
fallback ladder (README: Fallback ladder). Each stage returns what it found and the version that
found it; the reply is assembled from those, through the business rules (services/gateway/
rules.py: the last step of every answer path)."""

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
from services.gateway.rules import NO_RULES, Entry, RuleSet, RulesStep, add_items, from_ranking, in_order
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
        self.rules = RulesStep(settings, upstreams)
        self._impressions = impressions
        self._s = settings

    async def run(self, request: recommendations_pb2.RecommendRequest, k: int, query: str, budget: Budget,
                  plan: Plan = IN_FULL, rules: RuleSet = NO_RULES,
                  log_impression: bool = True) -> recommendations_pb2.RecommendResponse:
        """Up to k items for the request (k a checked page size, query its visible text, "" for
        none), within the budget, skipping what the plan says, under `rules` (the business rules
        of the request's surface and its own: services/gateway/rules.py, the last step). An
        upstream failing or late is no error: degraded names, in order, the plan's reasons, then
        each failed stage and the fallback that answered instead; stage_latency has one entry per
        stage called (ms); versions: "encoder", "index", "ranker" - those that took part. A guest
        (user_id "", request.session_events checked) is served from the session events alone; no
        impression is logged for one (no feedback can name them), nor when log_impression is
        False (a preview). Raises InvalidArgument for a malformed matrix in an upstream's reply."""
        trace = budget.trace
        for reason in plan.reasons:
            trace.degrade(reason)
        user_id = request.user_id

        history = await self.history.load(budget, user_id, request.session_events)
        # Computed here from the history's catalog vectors: it steers even when the encoder cannot.
        session = session_vector(history.vectors, event_weights=history.weights) if history.entries else None
        encoded = await self.interest.encode(budget, user_id, history, query, plan.skip_encoder,
                                             plan.interest_model_version)
        signals = Signals(encoded.interest, session, encoded.query)

        filters = rules.narrow(request.filters)  # the request's, and the exclude rules retrieval can apply
        excluded = excluded_ids(filters, history.seen, history.hidden)
        retrieved = await self.candidates.retrieve(budget, filters, excluded, signals, k, rules.admit)
        push = DislikePush.of(retrieved.candidates, history, self._s)

        ranked = None
        reorders = rules.reorders
        if retrieved.candidates.items and not plan.skip_ranker:
            # Rules that re-order (boost, promote) need every candidate's score (k 0: all), and pick
            # the diverse slots themselves, over the boosted scores (services/gateway/rules.py).
            # Otherwise as many more as are pushed: those pushed off the page leave room to fill.
            wanted = 0 if reorders else k + push.pushed if push is not None else k
            ranked = await self.ranking.rank(budget, retrieved.candidates, signals, history, wanted,
                                             0.0 if reorders else request.diversity, plan.exploration,
                                             plan.parameters_version)
            if ranked is None:
                trace.degrade("fallback:retrieval_order")
            elif push is not None:
                ranked = Ranked(push.rerank(ranked.ranking, wanted or len(ranked.ranking.items)), ranked.version)
        entries = self._entries(signals, retrieved, ranked, push, None if rules else k)
        shown = await self.rules.apply(budget, rules, entries, k, filters, excluded,
                                       request.diversity if ranked is not None and reorders else 0.0,
                                       retrieved.candidates.vectors)
        return self._reply(budget, user_id, k, encoded, retrieved, ranked, shown, bool(rules), log_impression)

    @staticmethod
    def _entries(signals: Signals, retrieved: Retrieved, ranked: Ranked | None, push: DislikePush | None,
                 limit: int | None) -> list[Entry]:
        """The answer's items before the rules: the ranker's order (pushed already), else
        retrieval order with the push applied (the first `limit`; None: all)."""
        candidates = retrieved.candidates
        if ranked is not None:
            return from_ranking(ranked.ranking, candidates.items)
        # A user with no history is steered by their query, or by the cold-start interest
        # (what people consume), not by recent activity.
        reasons = (["fits your recent activity"] if signals.session is not None
                   else ["matches what you typed"] if signals.query is not None else ["popular right now"])
        if push is not None:
            ordered, scores = push.reorder(candidates)
        else:
            ordered, scores = candidates, [c.score for c in candidates.items]
        listed = ordered.items[:limit]
        # Rows name the candidates' vectors: only retrieval's own order keeps them.
        entries = in_order(listed, scores[:len(listed)], reasons, rows=ordered is candidates)
        if push is not None:
            for e in entries:
                if e.item_id in push.reason:
                    e.reasons.append(push.reason[e.item_id])
        return entries

    def _reply(self, budget: Budget, user_id: str, k: int, encoded: Encoded, retrieved: Retrieved,
               ranked: Ranked | None, shown: list[Entry], ruled: bool,
               log_impression: bool = True) -> recommendations_pb2.RecommendResponse:
        reply = recommendations_pb2.RecommendResponse(request_id=uuid.uuid4().hex)
        add_items(reply, shown)
        # Not for a guest without an id (no feedback can ever join their impression), nor for a
        # preview (the console: nobody was shown these).
        if ranked is not None and user_id and log_impression:
            # Under rules, what was shown where (items the ranker did not score are left out).
            self._impressions.log(impression(reply.request_id, user_id, ranked.ranking, k,
                                             [e.ranked for e in shown] if ruled else None))
        versions = {"encoder": encoded.version, "index": retrieved.version,
                    "ranker": ranked.version if ranked is not None else None}
        reply.versions.update({name: version for name, version in versions.items() if version is not None})
        budget.report(reply)
        return reply
