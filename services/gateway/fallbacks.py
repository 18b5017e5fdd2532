"""Candidates with their vectors, and the popular ones the gateway keeps to answer when
retrieval or the encoder cannot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from recmesh.common.vectors import from_matrix
from recmesh.index.base import ATTRIBUTES, SearchFilter
from recmesh.index.layout import attribute_values
from recmesh.v1 import common_pb2, retrieval_pb2
from services.gateway.budget import Budget


def candidate_payload(candidate: retrieval_pb2.Candidate) -> dict:
    """What a filter reads of a candidate, shaped as the index's payload: {item_id, categories,
    attributes: {name: str | float | bool}} - for `Conditions.admits`, the filter rule the
    index applies (recmesh.index.base), so that the gateway decides it the same way."""
    return {"item_id": candidate.item_id, "categories": list(candidate.categories),
            ATTRIBUTES: attribute_values(candidate)}


@dataclass(frozen=True)
class CandidateSet:
    items: list[retrieval_pb2.Candidate] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # the catalog's space
    text_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # Each candidate's text . query when the list answers a query (None: no query).
    query_similarity: list[float] | None = None
    # candidate_payload of each item, when the list is filtered more than once (the popular pool):
    # read from the protos once per refresh, not per request. None: not made.
    payloads: list[dict] | None = None
    # The items and their catalog vectors serialised as a RankRequest's fields 1 and 2
    # (`candidates`, `candidate_vectors`: the same numbers and types as a CandidateList's
    # `candidates` and `vectors`), for the ranker; None: not made (ranking then builds the
    # message from items and vectors).
    wire: bytes | None = None

    @classmethod
    def from_reply(cls, reply: retrieval_pb2.CandidateList, with_query: bool = False,
                   with_payloads: bool = False, with_wire: bool = False) -> "CandidateSet":
        """with_wire: also make `wire` - from the reply itself, whose index_version and
        text_vectors are cleared for it (read them before)."""
        items = list(reply.candidates)
        vectors = from_matrix(reply.vectors, "vectors")
        text_vectors = from_matrix(reply.text_vectors, "text_vectors")
        wire = None
        if with_wire and len(vectors) == len(items):
            # One serialisation of what came in, instead of copying each candidate into a
            # RankRequest: parsed, these bytes and RankRequest(candidates=items,
            # candidate_vectors=to_matrix(vectors)) are the same message.
            reply.ClearField("index_version")
            reply.ClearField("text_vectors")
            wire = reply.SerializeToString()
        return cls(items, vectors, text_vectors,
                   [c.query_similarity for c in reply.candidates] if with_query else None,
                   [candidate_payload(c) for c in items] if with_payloads else None, wire)

    def for_query(self, query: np.ndarray | None) -> "CandidateSet":
        """This list with each candidate's similarity to the query, from the text vectors."""
        if query is None or not len(self.text_vectors):
            return self
        return replace(self, query_similarity=(self.text_vectors @ query).tolist())

    def rows(self, rows: list[int]) -> "CandidateSet":
        def pick(matrix: np.ndarray) -> np.ndarray:  # a list without vectors stays without
            return matrix[rows] if len(matrix) else matrix

        return CandidateSet([self.items[i] for i in rows], pick(self.vectors), pick(self.text_vectors),
                            None if self.query_similarity is None else [self.query_similarity[i] for i in rows],
                            None if self.payloads is None else [self.payloads[i] for i in rows])

    def admitted(self, admit: Callable[[dict], bool] | None) -> "CandidateSet":
        """The candidates `admit` passes (a test of candidate_payload; None: all), in order."""
        if admit is None:
            return self
        payloads = self.payloads
        keep = [i for i, c in enumerate(self.items)
                if admit(payloads[i] if payloads is not None else candidate_payload(c))]
        return self if len(keep) == len(self.items) else self.rows(keep)


class PopularCandidates:
    """The most popular items with their vectors, refreshed from retrieval in the background.
    The pool is the top of the whole catalog: a narrow filter, or a user who has seen much of
    it, can leave fewer than a page - then `matching` asks retrieval for the filtered list."""

    def __init__(self) -> None:
        # Replaced whole, never mutated: readers never see items and matrices that disagree.
        self.current = CandidateSet()
        self.index_version = ""
        # The pool holds every item of the catalog (retrieval returned fewer than asked).
        self.whole_catalog = False

    def replace(self, reply: retrieval_pb2.CandidateList, asked: int | None = None) -> None:
        """asked: the limit the reply answered (None: unknown, the pool may be a cut)."""
        self.current = CandidateSet.from_reply(reply, with_payloads=True)
        self.index_version = reply.index_version
        self.whole_catalog = asked is not None and len(reply.candidates) < asked

    def items_added(self) -> None:
        """Items were upserted: the pool may no longer hold the whole catalog (until the next
        refresh says again)."""
        self.whole_catalog = False

    def forget(self, item_ids: set[str]) -> None:
        current = self.current
        keep = [i for i, c in enumerate(current.items) if c.item_id not in item_ids]
        if len(keep) != len(current.items):
            self.current = current.rows(keep)

    def select(self, flt: SearchFilter, exclude_ids: set[str], limit: int,
               admit: Callable[[dict], bool] | None = None) -> CandidateSet:
        """Up to `limit` popular candidates that pass flt (its rule, SearchFilter.conditions,
        decided on each candidate's categories and attributes: as retrieval would) and `admit`
        (a test of the payload; None: all pass), and are none of exclude_ids nor of
        flt.exclude_item_ids, most popular first."""
        current = self.current
        conditions = flt.conditions(with_ids=False)
        excluded = exclude_ids.union(flt.exclude_item_ids) if flt.exclude_item_ids else exclude_ids
        payloads = current.payloads
        rows = []
        for i, c in enumerate(current.items):
            if len(rows) == limit:
                break
            if c.item_id in excluded:
                continue
            if conditions is None and admit is None:
                rows.append(i)
                continue
            payload = payloads[i] if payloads is not None else candidate_payload(c)
            if (conditions is None or conditions.admits(payload)) and (admit is None or admit(payload)):
                rows.append(i)
        return current.rows(rows)

    async def matching(self, budget: Budget, upstreams, cap_s: float, filters: common_pb2.Filters,
                       exclude_ids: set[str], want: int, limit: int,
                       with_vectors: bool = True,
                       admit: Callable[[dict], bool] | None = None) -> tuple[CandidateSet, str]:
        """(candidates, index version): up to `limit` popular items that pass the request's
        filters (categories and attributes; checked) and `admit` (the exclude rules:
        services/gateway/rules.py RuleSet.admit; None: all pass), and leave out exclude_ids, most
        popular first. From the local pool when it holds at least `want` of them (or is the
        whole catalog); else from one `upstreams.retrieval.TopPopular` call with the same filters
        within the budget (stage "popular", at most cap_s seconds; with `admit`, twice `limit`
        asked, what it leaves out dropped) - failing that, what the pool has (fewer; the trace
        says why)."""
        flt = SearchFilter.from_proto(filters, exclude_item_ids=())  # the ids: exclude_ids, a set already
        local = self.select(flt, exclude_ids, limit, admit)
        if len(local.items) >= min(want, limit) or self.whole_catalog:
            return local, self.index_version
        request = retrieval_pb2.TopPopularRequest(
            limit=limit if admit is None else 2 * limit, with_vectors=with_vectors,
            filters=common_pb2.Filters(include_categories=filters.include_categories,
                                       exclude_categories=filters.exclude_categories,
                                       exclude_item_ids=sorted(exclude_ids), attributes=filters.attributes))
        reply = await budget.call("popular", cap_s, lambda t: upstreams.retrieval.TopPopular(request, timeout=t))
        if reply is None:
            return local, self.index_version
        found = CandidateSet.from_reply(reply).admitted(admit)
        if len(found.items) > limit:
            found = found.rows(list(range(limit)))
        return found, reply.index_version
