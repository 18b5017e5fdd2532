"""Candidates with their vectors, and the popular ones the gateway keeps to answer when
retrieval or the encoder cannot."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from recmesh.common.vectors import from_matrix
from recmesh.v1 import common_pb2, retrieval_pb2
from services.gateway.budget import Budget


@dataclass(frozen=True)
class CandidateSet:
    items: list[retrieval_pb2.Candidate] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # the catalog's space
    text_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # Each candidate's text . query when the list answers a query (None: no query).
    query_similarity: list[float] | None = None

    @classmethod
    def from_reply(cls, reply: retrieval_pb2.CandidateList, with_query: bool = False) -> "CandidateSet":
        return cls(list(reply.candidates), from_matrix(reply.vectors, "vectors"),
                   from_matrix(reply.text_vectors, "text_vectors"),
                   [c.query_similarity for c in reply.candidates] if with_query else None)

    def for_query(self, query: np.ndarray | None) -> "CandidateSet":
        """This list with each candidate's similarity to the query, from the text vectors."""
        if query is None or not len(self.text_vectors):
            return self
        return replace(self, query_similarity=(self.text_vectors @ query).tolist())

    def rows(self, rows: list[int]) -> "CandidateSet":
        def pick(matrix: np.ndarray) -> np.ndarray:  # a list without vectors stays without
            return matrix[rows] if len(matrix) else matrix

        return CandidateSet([self.items[i] for i in rows], pick(self.vectors), pick(self.text_vectors))


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
        self.current, self.index_version = CandidateSet.from_reply(reply), reply.index_version
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

    def select(self, include: set[str], exclude: set[str], exclude_ids: set[str], limit: int) -> CandidateSet:
        """Popular candidates that pass the request's filters, most popular first."""
        current = self.current
        rows = [
            i
            for i, c in enumerate(current.items)
            if c.item_id not in exclude_ids
            and not exclude.intersection(c.categories)
            and (not include or include.intersection(c.categories))
        ][:limit]
        return current.rows(rows)

    async def matching(self, budget: Budget, upstreams, cap_s: float, filters: common_pb2.Filters,
                       exclude_ids: set[str], want: int, limit: int,
                       with_vectors: bool = True) -> tuple[CandidateSet, str]:
        """(candidates, index version): up to `limit` popular items that pass the request's
        category filters and leave out exclude_ids, most popular first. From the local pool when
        it holds at least `want` of them (or is the whole catalog); else from one filtered
        `upstreams.retrieval.TopPopular` call within the budget (stage
        "popular", at most cap_s seconds) - failing that, what the pool has (fewer; the trace
        says why)."""
        include, exclude = set(filters.include_categories), set(filters.exclude_categories)
        local = self.select(include, exclude, exclude_ids, limit)
        if len(local.items) >= min(want, limit) or self.whole_catalog:
            return local, self.index_version
        request = retrieval_pb2.TopPopularRequest(
            limit=limit, with_vectors=with_vectors,
            filters=common_pb2.Filters(include_categories=sorted(include), exclude_categories=sorted(exclude),
                                       exclude_item_ids=sorted(exclude_ids)))
        reply = await budget.call("popular", cap_s, lambda t: upstreams.retrieval.TopPopular(request, timeout=t))
        if reply is None:
            return local, self.index_version
        return CandidateSet.from_reply(reply), reply.index_version
