"""Recommend and SimilarItems: admission, then the pipeline (services/gateway/pipeline.py,
services/gateway/similar.py) or, shed, the popular list at once (services/gateway/shed.py; for
SimilarItems its own pipeline's shed path); the gateway's per-user and per-item state they share."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import prometheus_client as prom

from recmesh.v1 import common_pb2, recommendations_pb2
from services.gateway.anchor import AnchorStage
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.experiments import Experiments
from services.gateway.fallbacks import PopularCandidates
from services.gateway.impressions import ImpressionLog
from services.gateway.item_cache import ItemCache
from services.gateway.pipeline import Pipeline
from services.gateway.rules import RuleSet, compile_rules, request_labels
from services.gateway.seen import SeenItems
from services.gateway.shed import ShedAnswers
from services.gateway.shedding import AdaptiveShedding, Plan
from services.gateway.similar import SimilarItemsPipeline
from services.gateway.stored_rules import StoredRules
from services.gateway.upstreams import Upstreams

DEGRADED = prom.Counter("recmesh_degraded_total", "Recommends and SimilarItems answered degraded, by reason",
                       ["reason"])
# Answers naming at least one degraded reason (one answer may name several above): the console's
# degraded share is this over the OK answers.
DEGRADED_ANSWERS = prom.Counter("recmesh_degraded_answers_total",
                                "Recommends and SimilarItems answered with at least one degraded reason")
RECOMMENDS_IN_FLIGHT = prom.Gauge("recmesh_gateway_recommends_in_flight",
                                  "Recommends and SimilarItems admitted and in progress")
SHED_PRESSURE = prom.Gauge("recmesh_gateway_shed_pressure",
                           "Adaptive shedding: 0 = every Recommend in full; 1 = all skip the ranker; 2 = all skip "
                           "the encoder too; 2 + x = a share x gets the popular list at once")


class Recommender:
    """Admission and the state Recommends share: in-flight count, adaptive shedding, seen items,
    the item cache (forget_items) and each user's last interest (forget_user)."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, popular: PopularCandidates):
        self._s = settings
        self._up = upstreams
        # What each user has seen, for answers made without the updater (shed, anonymous).
        self.seen = SeenItems(settings.seen_cache_users, settings.seen_cache_ids, settings.seen_cache_ttl_s)
        self._items = ItemCache(settings.item_cache_items, settings.item_cache_ttl_s)
        self._shed_answers = ShedAnswers(settings, upstreams, popular, self.seen)
        self.impressions = ImpressionLog(upstreams, settings.impression_queue, settings.impression_flush_ms * MS)
        self.pipeline = Pipeline(settings, upstreams, popular, self.seen, self._items, self.impressions)
        self.similar = SimilarItemsPipeline(settings, upstreams, popular,
                                            AnchorStage(settings, upstreams, self._items, popular),
                                            self.pipeline.history, self.pipeline.interest, self._shed_answers)
        self.in_flight = 0
        RECOMMENDS_IN_FLIGHT.set_function(lambda: self.in_flight)
        self.shedding = AdaptiveShedding(settings.shed_slow, settings.shed_slow_share)
        SHED_PRESSURE.set_function(lambda: self.shedding.pressure)
        # The updater's stored business rules, as this gateway last listed them (server.py keeps them fresh).
        self.stored_rules = StoredRules()
        # The updater's experiments, kept fresh the same way: which variant each user is in.
        self.experiments = Experiments()

    def rules_for(self, surface: str, rules: Sequence[common_pb2.Rule], field: str = "rules") -> RuleSet:
        """The business rules an answer on `surface` obeys: the stored ones of that surface, then
        the request's own (checked already; `field` names them in reasons when unnamed)."""
        stored = self.stored_rules.for_surface(surface)
        return stored.then(compile_rules(rules, request_labels(rules, field))) if rules else stored

    def forget_user(self, user_id: str) -> None:
        """The user was deleted through this gateway."""
        self.pipeline.interest.forget(user_id)
        self.seen.forget(user_id, time.monotonic())

    def merged(self, from_user: str, into_user: str) -> None:
        """from_user's events moved to into_user through this gateway: from_user has nothing
        left, and into_user's seen items and interest are asked afresh (the hides learned of either
still hold)."""
        self.seen.merge(from_user, into_user, time.monotonic())
        self.pipeline.interest.forget(from_user)
        self.pipeline.interest.forget(into_user)

    def forget_items(self, item_ids: Iterable[str]) -> None:
        """Items changed or deleted through this gateway: looked up afresh next time."""
        self._items.forget(item_ids)

    async def recommend(self, request: recommendations_pb2.RecommendRequest, k: int, query: str,
                        client_remaining_s: float | None, preview: bool = False
                        ) -> recommendations_pb2.RecommendResponse:
        """Admission first: past max_in_flight Recommends, with too little of the client's time
        left to do real work, the answer is the popular list (degraded, saying why; services/
        gateway/shed.py) - shed fast rather than queued past its deadline. While the mesh is slow,
        adaptive shedding has a share skip the ranker, the encoder, or everything (the popular
        list). Every answer leaves out the user's exclusions, applies the request's filters, then
        the business rules (the surface's stored ones, then the request's: services/gateway/rules.py).
        k: a checked page size; query: its visible text, "" for none; client_remaining_s: the
        client's deadline from now in seconds, None for none; preview: not shown to the user, so
        no impression is logged (PREVIEW_HEADER). An upstream failing or late is no error: the
        answer is degraded and says why (Pipeline.run). A user in a running experiment's variant
        is served its overrides (services/gateway/experiments.py); the reply names the variant
        (reply.variant) and, unless a preview, every answer of theirs - whatever its path - goes
        to the experiment's outcomes with its items, latency and degraded flag."""
        rules = self.rules_for(request.context.surface, request.rules)
        arm = self.experiments.assign(request.user_id)

        async def answer(plan: Plan, budget: Budget) -> recommendations_pb2.RecommendResponse:
            if plan.shed:
                return await self._shed_answers.answer(request, k, plan.reasons, budget, rules)
            if arm is not None:
                plan = arm.serve(request, plan)
            return await self.pipeline.run(request, k, query, budget, plan, rules, log_impression=not preview)

        reply = await self._admitted(client_remaining_s, answer)
        if arm is not None:
            reply.variant = arm.label
            if not preview:
                self.impressions.log(arm.impression(request.user_id, reply))
        return reply

    async def similar_items(self, request: recommendations_pb2.SimilarItemsRequest, k: int, text: str,
                            client_remaining_s: float | None) -> recommendations_pb2.RecommendResponse:
        """SimilarItems under Recommend's admission, budget, shedding (they share the mesh's CPU)
        and business rules (the surface's stored ones, then the request's): services/gateway/
        similar.py. k: a checked page size; text: a free-text anchor's visible text, "" for an
        item anchor. Raises NotFound naming item_id for an unknown item."""
        rules = self.rules_for(request.context.surface, request.rules)
        return await self._admitted(client_remaining_s,
                                    lambda plan, budget: self.similar.run(request, k, text, budget, plan, rules))

    async def _admitted(self, client_remaining_s: float | None,
                        answer: Callable[[Plan, Budget], Awaitable[recommendations_pb2.RecommendResponse]]
                        ) -> recommendations_pb2.RecommendResponse:
        """answer(plan, budget) under admission: the plan (_admit), a budget starting now, the
        in-flight count and adaptive shedding's observation of answers not shed."""
        plan = self._admit(client_remaining_s)
        budget = Budget.for_recommend(self._s, client_remaining_s)
        if plan.shed:
            reply = await answer(plan, budget)
        else:
            self.in_flight += 1
            try:
                reply = await answer(plan, budget)
            finally:
                self.in_flight -= 1
            # Only answers the pipeline made tell how slow the mesh is: a shed one skipped it.
            self.shedding.observe(budget.share_used(reply.total_ms), others_in_flight=self.in_flight)
        for reason in reply.degraded:
            DEGRADED.labels(reason).inc()
        if reply.degraded:
            DEGRADED_ANSWERS.inc()
        return reply

    def _admit(self, client_remaining_s: float | None) -> Plan:
        """This call's plan: shed at the door for overload or a late arrival, else adaptive
        shedding's (which draws only for calls that get that far)."""
        s = self._s
        if self.in_flight >= s.max_in_flight:
            return Plan.shed_at_door("shed:overload")
        if client_remaining_s is not None and client_remaining_s < s.min_admit_ms * MS:
            return Plan.shed_at_door("shed:late_arrival")
        return self.shedding.plan()
