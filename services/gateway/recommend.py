"""The Recommend pipeline: user state -> history vectors -> interest -> candidates -> ranking,
each stage under its own deadline, each failure answered by the next rung of the fallback ladder."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

import numpy as np
import prometheus_client as prom

from recmesh.common.lru import LruCache
from recmesh.common.vectors import first_row, from_matrix, to_matrix
from recmesh.models.session import History, category_affinity, session_vector
from recmesh.v1 import (
    common_pb2,
    encoder_pb2,
    ranker_pb2,
    recommendations_pb2,
    retrieval_pb2,
    updater_pb2,
)
from services.gateway.budget import Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import CandidateSet, PopularCandidates
from services.gateway.impressions import ImpressionLog
from services.gateway.item_cache import ItemCache
from services.gateway.seen import SeenItems
from services.gateway.shed import ShedAnswers, excluded_ids
from services.gateway.shedding import FULL, RUNGS, SHED, SKIP_ENCODER, SKIP_RANKER, AdaptiveShedding
from services.gateway.upstreams import Upstreams

MS = 1e-3
DEGRADED = prom.Counter("recmesh_degraded_total", "Recommends answered degraded, by reason", ["reason"])
RECOMMENDS_IN_FLIGHT = prom.Gauge("recmesh_gateway_recommends_in_flight", "Recommends admitted and in progress")
SHED_PRESSURE = prom.Gauge("recmesh_gateway_shed_pressure",
                           "Adaptive shedding: 0 = every Recommend in full; 1 = all skip the ranker; 2 = all skip "
                           "the encoder too; 2 + x = a share x gets the popular list at once")


@dataclass(frozen=True)
class Signals:
    """What the request knows of the user's intent; any of them may be missing."""

    interest: np.ndarray | None  # the interest model's vector
    session: np.ndarray | None  # unit direction of the last few items
    query: np.ndarray | None  # the typed query's language-model vector

    def any(self) -> bool:
        return self.interest is not None or self.session is not None or self.query is not None


@dataclass(frozen=True)
class KnownInterest:
    """The encoder's interest vector for one exact encoder input (the history's events and
    their item vectors), under one model version."""

    fingerprint: bytes
    vector: np.ndarray
    model_version: str
    at: float  # time.monotonic()


class Recommender:
    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, popular: PopularCandidates):
        self._s = settings
        # What each user has seen, for answers made without the updater (shed, anonymous).
        self.seen = SeenItems(settings.seen_cache_users, settings.seen_cache_ids, settings.seen_cache_ttl_s)
        self._shed_answers = ShedAnswers(settings, upstreams, popular, self.seen)
        self._up = upstreams
        self._popular = popular
        self._impressions = ImpressionLog(upstreams, settings.impression_queue)
        self.in_flight = 0
        RECOMMENDS_IN_FLIGHT.set_function(lambda: self.in_flight)
        self._interest_cache: LruCache[str, KnownInterest] = LruCache(settings.interest_cache_users)
        self._items = ItemCache(settings.item_cache_items, settings.item_cache_ttl_s)
        self.shedding = AdaptiveShedding(settings.shed_slow, settings.shed_slow_share)
        SHED_PRESSURE.set_function(lambda: self.shedding.pressure)

    def forget_user(self, user_id: str) -> None:
        """The user was deleted through this gateway."""
        self._interest_cache.forget(user_id)
        self.seen.forget(user_id, time.monotonic())

    def forget_items(self, item_ids) -> None:
        """Items changed or deleted through this gateway: looked up afresh next time."""
        self._items.forget(item_ids)

    async def recommend(self, request, k: int, query: str, client_remaining_s: float | None):
        """Admission first: past max_in_flight Recommends, with too little of the client's time
        left to do real work, the answer is the popular list (degraded, saying why; services/
        gateway/shed.py) - shed fast rather than queued past its deadline. While the mesh is slow,
        adaptive shedding has a share skip the ranker, the encoder, or everything (the popular
        list). Every answer leaves out the user's exclusions and applies the request's filters."""
        s = self._s
        if self.in_flight >= s.max_in_flight:
            return await self._shed(request, k, "shed:overload", client_remaining_s)
        if client_remaining_s is not None and client_remaining_s < s.min_admit_ms * MS:
            return await self._shed(request, k, "shed:late_arrival", client_remaining_s)
        rung = self.shedding.rung()
        if rung == SHED:
            return await self._shed(request, k, RUNGS[SHED - 1], client_remaining_s)
        self.in_flight += 1
        try:
            reply = await self._recommend(request, k, query, client_remaining_s, rung)
        finally:
            self.in_flight -= 1
        used = reply.total_ms * MS / Budget.total(s.budget_ms * MS, client_remaining_s)
        self.shedding.observe(used, others_in_flight=self.in_flight)
        return reply

    async def _shed(self, request, k: int, reason: str, client_remaining_s: float | None):
        reply = await self._shed_answers.answer(request, k, reason, client_remaining_s)
        for why in reply.degraded:
            DEGRADED.labels(why).inc()
        return reply

    async def _recommend(self, request, k: int, query: str, client_remaining_s: float | None, rung: int = FULL):
        s = self._s
        budget = Budget(s.budget_ms * MS, client_remaining_s, s.reply_margin_ms * MS, s.min_stage_ms * MS)
        trace = budget.trace
        for reason in RUNGS[:rung]:
            trace.degrade(reason)
        versions: dict[str, str] = {}
        user_id = request.user_id

        history = await self._history(budget, user_id)
        # Computed here from the history's catalog vectors: it steers even when the encoder cannot.
        session = session_vector(history.vectors) if history.entries else None
        interest, query_vec = await self._interest(budget, user_id, history, query, versions, rung >= SKIP_ENCODER)
        signals = Signals(interest, session, query_vec)

        excluded = excluded_ids(request.filters, history.seen)
        found = await self._candidates(budget, request.filters, excluded, signals, versions, k)
        candidates = found.items

        ranked = None
        if candidates and rung < SKIP_RANKER:
            ranked = await budget.call(
                "ranker",
                s.ranker_cap_ms * MS,
                lambda t: self._up.ranker.Rank(self._rank_request(found, signals, history, k, request.diversity),
                                               timeout=t),
            )
        reply = recommendations_pb2.RecommendResponse(request_id=uuid.uuid4().hex)
        by_id = {c.item_id: c for c in candidates}
        if ranked is not None:
            versions["ranker"] = ranked.model_version
            for item in ranked.items[:k]:
                c = by_id[item.item_id]
                reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories,
                                score=item.score, reasons=item.reasons)
            self._impressions.log(self._impression(reply.request_id, user_id, ranked, k))
        else:
            if candidates and rung < SKIP_RANKER:
                trace.degrade("fallback:retrieval_order")
            personal = interest is not None or session is not None or query_vec is not None
            for c in candidates[:k]:
                reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories, score=c.score,
                                reasons=["fits your recent activity"] if personal else ["popular right now"])
        reply.versions.update(versions)
        reply.degraded.extend(trace.degraded)
        for reason in trace.degraded:
            DEGRADED.labels(reason).inc()
        for stage, ms in trace.latencies:
            reply.stage_latency.add(stage=stage, ms=ms)
        reply.total_ms = budget.elapsed_ms()
        return reply

    async def _history(self, budget: Budget, user_id: str) -> History:
        s = self._s
        empty = History([], np.zeros((0, 0), np.float32), {}, set())
        asked = time.monotonic()
        state = await budget.call(
            "user_state",
            s.user_state_cap_ms * MS,
            lambda t: self._up.updater.GetUserState(
                updater_pb2.GetUserStateRequest(user_id=user_id, max_recent=s.history_items), timeout=t
            ),
        )
        if state is None:
            budget.trace.degrade("fallback:anonymous")
            # Anonymous for the model, not for the exclusions: what this gateway knows they saw.
            known = self.seen.lookup(user_id, time.monotonic())
            return History([], empty.vectors, {}, set(known.ids) if known is not None else set())
        seen = set(state.seen_item_ids)  # built once: thousands of ids cost ~1 ms to read
        self.seen.replace(user_id, seen, asked)
        skipped = dict(state.skipped)
        if not state.recent:
            return History([], empty.vectors, {}, seen, skipped)
        ids = list(dict.fromkeys(e.item_id for e in state.recent))
        now = time.monotonic()
        known, missing = self._items.lookup(ids, now)
        if missing:
            found = await budget.call(
                "history_items",
                s.history_cap_ms * MS,
                lambda t: self._up.retrieval.GetItems(
                    retrieval_pb2.GetItemsRequest(item_ids=missing, with_vectors=True, catalog_vectors_only=True),
                    timeout=t,
                ),
            )
            if found is not None:  # else the history is what was cached, maybe nothing
                known |= self._items.add(found.candidates, from_matrix(found.vectors, "vectors"), now)
        # Items deleted from the catalog since the event drop out of the history.
        entries = [
            encoder_pb2.HistoryEntry(item_id=e.item_id, type=e.type, value=e.value, timestamp_ms=e.timestamp_ms)
            for e in state.recent
            if e.item_id in known
        ]
        if not entries:
            return History([], empty.vectors, {}, seen, skipped)
        vectors = np.stack([known[e.item_id].vector for e in entries])
        return History(entries, vectors, {i: c.candidate for i, c in known.items()}, seen, skipped)

    async def _interest(self, budget, user_id, history: History, query: str, versions, browned_out: bool = False):
        """(interest, query vector). Browned out, the encoder is asked for the query's vector only
        (the interest the user had last stands in, or none: the session direction still steers)."""
        if not history.entries and not query:
            return None, None  # a cold user with no query: popularity is the right answer, not a degradation
        request = encoder_pb2.EncodeInterestRequest(history=history.entries, item_vectors=to_matrix(history.vectors))
        fingerprint = hashlib.blake2b(request.SerializeToString(deterministic=True), digest_size=16).digest()
        known = self._interest_cache.get(user_id)
        # The interest is a function of exactly this input: the same input gives it again.
        reuse = (known is not None and bool(history.entries) and known.fingerprint == fingerprint
                 and time.monotonic() - known.at < self._s.interest_reuse_s)
        if reuse or browned_out:
            if known is not None:
                versions["encoder"] = known.model_version
            interest = known.vector if known is not None else None
            if not query:
                return interest, None
            request = encoder_pb2.EncodeInterestRequest()  # only the query's vector is needed
        request.query = query
        reply = await budget.call(
            "encoder", self._s.encoder_cap_ms * MS, lambda t: self._up.encoder.EncodeInterest(request, timeout=t)
        )
        if reuse or browned_out:
            if reply is not None and known is not None and reply.model_version != known.model_version:
                self._interest_cache.forget(user_id)  # a new model: the next call recomputes the interest
            return interest, (first_row(reply.query_vector, "query_vector") if reply is not None else None)
        if reply is None:
            cached = known.vector if known is not None else None
            if cached is not None:
                budget.trace.degrade("fallback:cached_interest")
            else:  # the session direction (computed here) still steers when there is history
                budget.trace.degrade("fallback:session" if history.entries else "fallback:popular")
            return cached, None
        versions["encoder"] = reply.model_version
        interest = first_row(reply.interest, "interest")
        if interest is not None and history.entries:
            self._interest_cache.put(user_id, KnownInterest(fingerprint, interest, reply.model_version,
                                                            time.monotonic()))
        return interest, first_row(reply.query_vector, "query_vector")

    async def _candidates(self, budget, filters: common_pb2.Filters, excluded: set[str], signals: Signals,
                          versions, k: int) -> CandidateSet:
        s = self._s
        limit = max(s.candidates, k)  # a page of k is cut from these: never fewer than k per source
        if signals.any():
            search = retrieval_pb2.SearchRequest(
                interest=to_matrix(signals.interest),
                session=to_matrix(signals.session),
                query=to_matrix(signals.query),
                limit=limit,
                filters=common_pb2.Filters(
                    include_categories=filters.include_categories,
                    exclude_categories=filters.exclude_categories,
                    exclude_item_ids=sorted(excluded),
                ),
                with_vectors=True,  # with a query, each candidate also carries its query similarity
            )
            found = await budget.call(
                "retrieval", s.retrieval_cap_ms * MS, lambda t: self._up.retrieval.Search(search, timeout=t)
            )
            if found is not None:
                versions["index"] = found.index_version
                return CandidateSet.from_reply(found, with_query=signals.query is not None)
            budget.trace.degrade("fallback:popular_candidates")
        found, versions["index"] = await self._popular.matching(
            budget, lambda request, t: self._up.retrieval.TopPopular(request, timeout=t), s.retrieval_cap_ms * MS,
            filters, excluded, want=k, limit=limit)
        return found.for_query(signals.query)

    @staticmethod
    def _impression(request_id: str, user_id: str, ranked, k: int) -> updater_pb2.Impression:
        return updater_pb2.Impression(
            request_id=request_id, user_id=user_id, timestamp_ms=int(time.time() * 1000),
            ranker_version=ranked.model_version, feature_names=ranked.feature_names,
            items=[updater_pb2.ImpressedItem(item_id=item.item_id, position=i, features=item.features,
                                             propensity=item.propensity) for i, item in enumerate(ranked.items[:k])],
        )

    def _rank_request(self, found: CandidateSet, signals: Signals, history: History, k: int, diversity: float):
        last = {e.item_id: i for i, e in enumerate(history.entries)}  # later events win
        recent_ids = sorted(last, key=last.__getitem__, reverse=True)[:10]
        recent_rows = [last[i] for i in recent_ids]
        return ranker_pb2.RankRequest(
            candidates=found.items,
            candidate_vectors=to_matrix(found.vectors),
            query_similarity=found.query_similarity,
            interest=to_matrix(signals.interest),
            session=to_matrix(signals.session),
            category_affinity=category_affinity(history, self._s.affinity_items),
            recent=[ranker_pb2.RecentItem(item_id=i, title=history.items[i].title) for i in recent_ids],
            recent_vectors=to_matrix(history.vectors[recent_rows] if recent_rows else None),
            k=k,
            diversity=diversity,
            skipped={c.item_id: history.skipped[c.item_id] for c in found.items if c.item_id in history.skipped},
        )
