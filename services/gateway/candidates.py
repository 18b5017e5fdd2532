"""Stage 4 of Recommend: candidate retrieval - retrieval's Search, one source per signal
(interest, session direction, query) - with the gateway's popular candidates as the fallback
when there is no signal or retrieval fails."""

from __future__ import annotations

from collections.abc import Callable

from recmesh.common.vectors import to_matrix
from recmesh.v1 import common_pb2, retrieval_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import CandidateSet, PopularCandidates
from services.gateway.results import Retrieved, Signals
from services.gateway.upstreams import Upstreams


class CandidateStage:
    """Retrieves a request's candidates, falling back to the gateway's popular candidates."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, popular: PopularCandidates):
        self._s = settings
        self._up = upstreams
        self._popular = popular

    async def retrieve(self, budget: Budget, filters: common_pb2.Filters, excluded: set[str], signals: Signals,
                       k: int, admit: Callable[[dict], bool] | None = None) -> Retrieved:
        """Candidates that pass the request's filters (categories, attributes) and `admit` (the
        exclude rules: services/gateway/rules.py RuleSet.admit; None: all pass), and leave out
        `excluded` (the user's exclusions: shed.excluded_ids), in retrieval order: up to
        max(settings.candidates, k) per source. Retrieval failing or late is no error: without signals, or with Search
        failed or late (stage "retrieval": `fallback:popular_candidates`), the popular ones
        (services/gateway/fallbacks.py), with their query similarity when there is a query.
        Raises InvalidArgument for a malformed matrix in retrieval's reply."""
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
                    attributes=filters.attributes,
                ),
                with_vectors=True,  # with a query, each candidate also carries its query similarity
            )
            found = await budget.call(
                "retrieval", s.retrieval_cap_ms * MS, lambda t: self._up.retrieval.Search(search, timeout=t)
            )
            if found is not None:
                version = found.index_version  # read before from_reply clears it for the wire form
                return Retrieved(CandidateSet.from_reply(found, with_query=signals.query is not None,
                                                         with_wire=True).admitted(admit), version)
            budget.trace.degrade("fallback:popular_candidates")
        popular, version = await self._popular.matching(
            budget, self._up, s.retrieval_cap_ms * MS,
            filters, excluded, want=k, limit=limit, admit=admit)
        return Retrieved(popular.for_query(signals.query), version)
