"""Recommends answered at the door (`shed:overload`, `shed:late_arrival`, `shed:slow_mesh`): the
popular list, under the same rules as every other answer - the request's filters, the user's
exclusions (the items they have seen, unless filters.exclude_seen is false; those they hid or
disliked, always; filters.exclude_item_ids; and the items of the request's session_events as
the full path excludes them) and the business rules (services/gateway/rules.py) - without the
pipeline.

The seen and hidden items come from the gateway's cache (services/gateway/seen.py); when it
holds no complete entry for the user, the updater is asked once (GetUserState: an in-memory read, a
fraction of a millisecond of CPU a side, against tens for the pipeline that shedding skips) -
an answer that forgets what the user just bought is wrong, not cheap. When the local popular
pool cannot fill the page (a narrow filter, many seen items), one filtered TopPopular call is
made. Every call is bounded by the client's remaining time, so the answer is never late."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from recmesh.common.validation import hides_item, is_item_event
from recmesh.v1 import common_pb2, recommendations_pb2, updater_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.rules import NO_RULES, RuleSet, RulesStep, add_items, in_order
from services.gateway.seen import SEEN_UNKNOWN, SeenItems
from services.gateway.upstreams import Upstreams


def excluded_ids(filters: common_pb2.Filters, seen: frozenset[str] | set[str],
                 hidden: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """What an answer must leave out: the request's ids, the items the user hid or disliked
    (whatever the request says), and the user's seen items unless the request opts out
    (filters.exclude_seen unset means true)."""
    excluded = set(filters.exclude_item_ids) | hidden
    if not filters.HasField("exclude_seen") or filters.exclude_seen:
        excluded |= seen
    return excluded


def inline_items(events) -> tuple[set[str], set[str]]:
    """(seen, hidden) items of a request's session_events: its item events, and those of them
    that hide their item - left out as if they had been tracked."""
    seen = {e.item_id for e in events if is_item_event(e)}
    return seen, {e.item_id for e in events if hides_item(e)}


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
        seen, hidden, complete = await self.user_seen(budget, request)
        if not complete:  # what this gateway knows is left out; the reply says the rest may not be
            budget.trace.degrade(SEEN_UNKNOWN)
        inline_seen, inline_hidden = inline_items(request.session_events)
        filters = rules.narrow(request.filters)  # the request's, and the exclude rules retrieval can apply
        excluded = excluded_ids(filters, seen | inline_seen, hidden | inline_hidden)
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

    async def user_seen(self, budget: Budget, request) -> tuple[frozenset[str], frozenset[str], bool]:
        """(the user's seen items, those they hid or disliked - as far as known -, whether that
        is all of them) for a request with a user_id (RecommendRequest, SimilarItemsRequest): all
        when this gateway holds a complete entry, or the updater answered in time, or there is
        no user to ask about (a guest without an id: their session_events are all there is)."""
        if not request.user_id:
            return frozenset(), frozenset(), True
        known = self._seen.lookup(request.user_id, time.monotonic())
        cap = self._s.user_state_cap_ms * MS
        # Not tried when too little time is left: that is what shedding is for, not a failure.
        if (known is None or not known.complete) and budget.stage_timeout(cap) is not None:
            asked = time.monotonic()
            state = await budget.call("user_state", cap, lambda t: self._up.updater.GetUserState(
                updater_pb2.GetUserStateRequest(user_id=request.user_id, max_recent=1), timeout=t))
            if state is not None:
                self._seen.add_state(request.user_id, state, asked)
                # All of them, held here or not.
                return frozenset(state.seen_item_ids), frozenset(state.hidden_item_ids), True
        if known is None:
            return frozenset(), frozenset(), False
        return known.ids, known.hidden, known.complete
