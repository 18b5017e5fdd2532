"""The last step of every SimilarItems answer, whichever path made it (full, browned out, shed,
each fallback): the ordered list becomes the reply's page. The one place where that list passes,
so that what must hold on every path is applied once, here: the page size k, the anchor never
shown - and business rules (RecommendRequest.rules / SimilarItemsRequest.rules and the stored
rules of the request's surface) when they join, after the filters and exclusions, which they
never override."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from recmesh.v1 import recommendations_pb2, retrieval_pb2


@dataclass(frozen=True)
class OrderedItem:
    """One item of an ordered list: the candidate (as retrieval or the popular pool holds it),
    its score and its reasons, strongest first."""

    candidate: retrieval_pb2.Candidate
    score: float
    reasons: list[str]


def final_step(reply: recommendations_pb2.RecommendResponse, ordered: Iterable[OrderedItem], k: int,
               never: frozenset[str] = frozenset()) -> None:
    """Up to k items of `ordered` (best first; every one passed the request's filters and the
    user's exclusions already - retrieval or the pool applied them) into reply.items, leaving
    out the ids in `never` (the anchor) and any repeated id."""
    shown = set(never)
    for item in ordered:
        if len(reply.items) == k:
            break
        c = item.candidate
        if c.item_id in shown:
            continue
        shown.add(c.item_id)
        reply.items.add(item_id=c.item_id, title=c.title, categories=c.categories, score=item.score,
                        reasons=item.reasons, attributes=c.attributes)
