"""SimilarItems: "more like this" for an item page or a free text, under Recommend's rules - one
budget with per-stage deadlines, the same admission and shedding (services/gateway/recommend.py),
the request's filters and the user's exclusions on every path, and `degraded` naming what failed.

    1. the anchor (services/gateway/anchor.py)      and, with a user_id, the user's state
       (updater: recent events, seen items - or, shed, the seen items alone)        at once
    2. retrieval.Search for the anchor's neighbours  and the user's interest (encoder;
       (session source: its catalog vector, warm     the session direction stands in)  at once
       items only; query source: its text vector)
    3. scores and reasons (recmesh/models/similar.py)
    4. business rules (services/gateway/rules.py: the last step of every answer, Recommend's too)

Fallback ladder: the anchor unknown in time (retrieval or, for a text, the encoder failing or
late) or Search failing or late - the gateway's popular pool with the request's filters and the
user's exclusions (one filtered TopPopular call when it holds fewer than k that pass), items
sharing a category with the anchor first, each group by similarity to the anchor when its
vectors are known, else by popularity (`fallback:popular_candidates`). Shed at the door: the
same, from what the gateway holds and what one call each (anchor, seen items) can fetch in the
client's remaining time. The encoder late or browned out for the interest: the user's last
interest, else the session direction re-orders (`fallback:cached_interest`, `fallback:session`)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from typing import TypeVar

import numpy as np

from recmesh.common.vectors import to_matrix
from recmesh.models.session import History, session_vector
from recmesh.models.similar import POPULAR, Anchor, Weights, reasons, score
from recmesh.v1 import common_pb2, recommendations_pb2, retrieval_pb2
from services.gateway.anchor import AnchorStage
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.dislikes import DislikePush
from services.gateway.fallbacks import CandidateSet, PopularCandidates
from services.gateway.history import HistoryStage
from services.gateway.interest import InterestStage
from services.gateway.rules import NO_RULES, Entry, RuleSet, RulesStep, add_items, position_logit
from services.gateway.seen import SEEN_UNKNOWN
from services.gateway.shed import ShedAnswers, excluded_ids
from services.gateway.shedding import RUNGS, SKIP_RANKER, Plan
from services.gateway.upstreams import Upstreams

A = TypeVar("A")
B = TypeVar("B")
NO_ANCHOR = Anchor("", "", (), None, None)
# SimilarItems calls no ranker: a plan that skips it skips nothing here, and does not say so.
_RANKER_BROWNOUT = RUNGS[SKIP_RANKER - 1]


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both awaited at once; the first exception raised (e.g. NotFound) after both ended."""
    results = await asyncio.gather(first, second, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results[0], results[1]


class SimilarItemsPipeline:
    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, popular: PopularCandidates,
                 anchors: AnchorStage, history: HistoryStage, interest: InterestStage, shed: ShedAnswers):
        self._s = settings
        self._up = upstreams
        self._popular = popular
        self._anchors = anchors
        self._history = history
        self._interest = interest
        self._shed = shed
        self._weights = Weights(settings.similar_behaviour_weight, settings.similar_interest_weight)
        self._rules = RulesStep(settings, upstreams)

    async def run(self, request: recommendations_pb2.SimilarItemsRequest, k: int, text: str, budget: Budget,
                  plan: Plan, rules: RuleSet = NO_RULES) -> recommendations_pb2.RecommendResponse:
        """Up to k items like the request's anchor (k a checked page size; text the visible text
        of a free-text anchor, "" for an item), never the anchor itself, within the budget,
        skipping what the plan says, under `rules` (the business rules of the request's surface
        and its own: services/gateway/rules.py, the last step). Each item passed the request's
        filters and the user's exclusions (seen items unless filters.exclude_seen is false;
        hidden and disliked ones always; filters.exclude_item_ids) - the anchor is one of them.
        An upstream failing or late is no error: degraded names, in order, the plan's reasons,
        then each failed stage and the fallback that answered instead. Raises NotFound naming
        item_id for an item retrieval does not hold; InvalidArgument for a malformed matrix in
        an upstream's reply."""
        trace = budget.trace
        for reason in plan.reasons:
            if reason != _RANKER_BROWNOUT:
                trace.degrade(reason)
        item_id = request.item_id if request.WhichOneof("anchor") == "item_id" else ""
        versions: dict[str, str | None] = {}

        (anchor, anchor_version), (history, seen, hidden) = await _both(
            self._anchor(budget, item_id, text, plan), self._user(budget, request, plan))
        if anchor is None:
            anchor = NO_ANCHOR
        versions["index" if item_id else "encoder"] = anchor_version
        filters = rules.narrow(request.filters)  # the request's, and the exclude rules retrieval can apply
        excluded = excluded_ids(filters, seen, hidden)
        if item_id:
            excluded.add(item_id)

        wants_interest = (not plan.shed and history is not None and bool(history.entries)
                          and self._weights.interest > 0)
        # The candidates' catalog vectors: for the interest, and for the push of disliked items' likes.
        with_vectors = wants_interest or (history is not None and bool(history.disliked))
        (found, index_version), (interest, interest_version) = await _both(
            self._neighbours(budget, anchor, filters, excluded, k, plan, with_vectors=with_vectors),
            self._user_interest(budget, request.user_id, history, plan) if wants_interest else _nothing())
        versions["index"] = index_version or versions.get("index")
        versions["encoder"] = versions.get("encoder") or interest_version

        from_pool = found is None
        if from_pool:
            if not plan.shed:
                trace.degrade("fallback:popular_candidates")
            found, pool_version = await self._popular.matching(
                budget, self._up, self._s.retrieval_cap_ms * MS, filters, excluded, want=k,
                limit=self._s.popular_pool, admit=rules.admit)
            found = found.for_query(anchor.text_vector)
            versions["index"] = versions.get("index") or pool_version
        else:
            found = found.admitted(rules.admit)

        # The page: k entries, or the best max(k, candidates) when rules may re-order or drop some.
        ordered = self._ordered(anchor, found, interest, history, from_pool, k)
        entries = list(itertools.islice(ordered, max(k, self._s.candidates) if rules else k))
        shown = await self._rules.apply(budget, rules, entries, k, filters, excluded)
        reply = recommendations_pb2.RecommendResponse(request_id=uuid.uuid4().hex)
        add_items(reply, shown)
        reply.versions.update({name: version for name, version in versions.items() if version})
        budget.report(reply)
        return reply

    async def _anchor(self, budget: Budget, item_id: str, text: str, plan: Plan) -> tuple[Anchor | None, str | None]:
        if item_id:
            return await self._anchors.item(budget, item_id, shed=plan.shed)
        if plan.shed:  # encoding is the work shedding saves: the popular list answers
            return NO_ANCHOR, None
        return await self._anchors.text(budget, text)

    async def _user(self, budget: Budget, request,
                    plan: Plan) -> tuple[History | None, frozenset[str] | set[str], frozenset[str] | set[str]]:
        """(the user's history: None without a user or when shed, what they have seen, what they
        hid or disliked)."""
        if not request.user_id:
            return None, frozenset(), frozenset()
        if plan.shed:
            seen, hidden, complete = await self._shed.user_seen(budget, request)
            if not complete:
                budget.trace.degrade(SEEN_UNKNOWN)
            return None, seen, hidden
        history = await self._history.load(budget, request.user_id)
        return history, history.seen, history.hidden

    async def _user_interest(self, budget: Budget, user_id: str, history: History,
                             plan: Plan) -> tuple[np.ndarray | None, str | None]:
        """(the user's interest vector - the encoder's, else their last one, else their session
        direction - and the model version behind it)."""
        encoded = await self._interest.encode(budget, user_id, history, "", plan.skip_encoder)
        if encoded.interest is not None:
            return encoded.interest, encoded.version
        return session_vector(history.vectors, event_weights=history.weights), None

    async def _neighbours(self, budget: Budget, anchor: Anchor, filters: common_pb2.Filters, excluded: set[str],
                          k: int, plan: Plan, with_vectors: bool) -> tuple[CandidateSet | None, str | None]:
        """Retrieval's items nearest the anchor that pass the filters and leave out `excluded`:
        up to max(candidates, k) per source (stage "retrieval"); None when shed, without an
        anchor vector, or when Search failed or was late (the trace says why)."""
        if plan.shed or not anchor.searchable:
            return None, None
        search = retrieval_pb2.SearchRequest(
            session=to_matrix(anchor.vector),  # cosine in the catalog space: behaviour
            query=to_matrix(anchor.text_vector),  # cosine of the text vectors; every candidate's is returned
            limit=max(self._s.candidates, k),
            filters=common_pb2.Filters(include_categories=filters.include_categories,
                                       exclude_categories=filters.exclude_categories,
                                       exclude_item_ids=sorted(excluded), attributes=filters.attributes),
            with_vectors=with_vectors or anchor.vector is not None,
        )
        found = await budget.call("retrieval", self._s.retrieval_cap_ms * MS,
                                  lambda t: self._up.retrieval.Search(search, timeout=t))
        if found is None:
            return None, None
        version = found.index_version
        return CandidateSet.from_reply(found, with_query=anchor.text_vector is not None), version

    def _ordered(self, anchor: Anchor, found: CandidateSet, interest: np.ndarray | None, history: History | None,
                 from_pool: bool, k: int) -> Iterator[Entry]:
        """The candidates best first, as the rules step takes them (the score shown: the blend's;
        the order the rules move: a position's logit, as for every list no ranker scored), with
        their reasons (made as the page takes them: a page is k of hundreds). Items like the
        user's disliked ones are pushed down (services/gateway/dislikes.py), saying so. From the
        pool, items sharing a category with the anchor come first (each group by score)."""
        items = found.items
        if not items:
            return
        scored = score(anchor, found.vectors, found.query_similarity, interest, self._weights,
                       popularity=[c.popularity for c in items], page=k)
        push = DislikePush.of(found, history, self._s) if history is not None else None
        if push is not None:
            scored = replace(scored, scores=scored.scores - np.array(
                [push.penalty.get(c.item_id, 0.0) for c in items], np.float32))
        order = scored.order()
        if from_pool and anchor.categories:
            on_topic = set(anchor.categories)
            order.sort(key=lambda row: not on_topic.intersection(items[row].categories))  # stable
        for position, row in enumerate(order):
            said = reasons(anchor, scored, row, items[row].categories) or [POPULAR]
            if push is not None and items[row].item_id in push.reason:
                said.append(push.reason[items[row].item_id])
            yield Entry(items[row], float(scored.scores[row]), position_logit(position), said, row=row)


async def _nothing() -> tuple[None, None]:
    return None, None
