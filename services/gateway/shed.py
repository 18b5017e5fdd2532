"""Recommends answered at the door (`shed:overload`, `shed:late_arrival`, `shed:slow_mesh`): the
popular list, under the same rules as every other answer - the request's filters, the user's
exclusions (the items they have seen, unless filters.exclude_seen is false, and
filters.exclude_item_ids) and the business rules (services/gateway/rules.py) - without the
pipeline.

The seen items come from the gateway's cache (services/gateway/seen.py); when it holds no
complete entry for the user, the updater is asked once (GetUserState: an in-memory read, a
fraction of a millisecond of CPU a side, against tens for the pipeline that shedding skips) -
an answer that forgets what the user just bought is wrong, not cheap. When the local popular
pool cannot fill the page (a narrow filter, many seen items), one filtered TopPopular call is
made. Every call is bounded by the client's remaining time, so the answer is never late."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from recmesh.v1 import common_pb2, recommendations_pb2, updater_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.rules import NO_RULES, RuleSet, RulesStep, add_items, in_order
from services.gateway.seen import SEEN_UNKNOWN, SeenItems
from services.gateway.upstreams import Upstreams


def excluded_ids(filters: common_pb2.Filters, seen: frozenset[str] | set[str]) -> set[str]:
    """What an answer must leave out: the request's ids, and the user's seen items unless the
    request opts out (filters.exclude_seen unset means true)."""
    excluded = set(filters.exclude_item_ids)
    if not filters.HasField("exclude_seen") or filters.exclude_seen:
        excluded |= seen
    return excluded


class ShedAnswers:
    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, popular: PopularCandidates,
                 seen: SeenItems):
        self._s = settings
        self._up = upstreams
        self._popular = popular
        self._seen = seen
        self._rules = RulesStep(settings, upstreams)

    async def answer(self, request, k: int, reasons: Sequence[str], budget: Budget,
                     rules: RuleSet = NO_RULES) -> recommendations_pb2.RecommendResponse:
        """Up to k popular items for the request (k whenever k pass its filters, exclusions and
        exclude rules and retrieval answers in time), within the budget (the client's remaining
        time), under `rules` (services/gateway/rules.py: the last step of every answer path),
        degraded [reasons (why it was shed: its Plan's), then any stage that failed]: an
        upstream failing or late is no error."""
        s = self._s
        seen, complete = await self._user_seen(budget, request)
        if not complete:  # what this gateway knows is left out; the reply says the rest may not be
            budget.trace.degrade(SEEN_UNKNOWN)
        filters = rules.narrow(request.filters)  # the request's, and the exclude rules retrieval can apply
        excluded = excluded_ids(filters, seen)
        # Rules that re-order (boost, promote) choose among more than the page: the pool's best.
        limit = max(k, s.candidates) if rules.reorders else k
        found, version = await self._popular.matching(
            budget, self._up, s.retrieval_cap_ms * MS, filters,
            excluded, want=k, limit=limit, with_vectors=False, admit=rules.admit)
        entries = in_order(found.items, [c.popularity for c in found.items], ["popular right now"],
                           found.payloads, rows=False)
        shown = await self._rules.apply(budget, rules, entries, k, filters, excluded)
        reply = recommendations_pb2.RecommendResponse(request_id=uuid.uuid4().hex)
        add_items(reply, shown)
        reply.versions["index"] = version
        reply.degraded.extend(reasons)
        budget.report(reply)
        return reply

    async def _user_seen(self, budget: Budget, request) -> tuple[frozenset[str], bool]:
        """(the user's seen items as far as known, whether that is all of them): all when the
        request lets them back, or this gateway holds a complete entry, or the updater answered
        in time."""
        filters = request.filters
        if filters.HasField("exclude_seen") and not filters.exclude_seen:
            return frozenset(), True
        known = self._seen.lookup(request.user_id, time.monotonic())
        cap = self._s.user_state_cap_ms * MS
        # Not tried when too little time is left: that is what shedding is for, not a failure.
        if (known is None or not known.complete) and budget.stage_timeout(cap) is not None:
            asked = time.monotonic()
            state = await budget.call("user_state", cap, lambda t: self._up.updater.GetUserState(
                updater_pb2.GetUserStateRequest(user_id=request.user_id, max_recent=1), timeout=t))
            if state is not None:
                self._seen.add_state(request.user_id, state, asked)
                return frozenset(state.seen_item_ids), True  # all of them, held here or not
        if known is None:
            return frozenset(), False
        return known.ids, known.complete
