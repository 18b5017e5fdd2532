"""SimilarItems' first stage: the anchor's vectors (recmesh/models/similar.py's Anchor) - a
catalog item's from the gateway's item cache, else from retrieval (GetItems, both vectors), or a
free text's from the encoder (EncodeInterest with the text as its query: the typed-query path,
its cache included).

Retrieval failing or late is no error: the item is then looked up where this gateway holds it
already (its item cache, even without the text vector; the popular pool), else the anchor is
unknown (None) and the answer falls back to the popular list. An item retrieval answered without
is NOT_FOUND."""

from __future__ import annotations

import time

import numpy as np

from recmesh.common.errors import NotFound
from recmesh.common.vectors import first_row, from_matrix
from recmesh.models.similar import Anchor
from recmesh.v1 import encoder_pb2, retrieval_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.fallbacks import PopularCandidates
from services.gateway.item_cache import ItemCache
from services.gateway.upstreams import Upstreams

STAGE = "anchor"


def item_anchor(candidate: retrieval_pb2.Candidate, vector: np.ndarray | None,
                text_vector: np.ndarray | None) -> Anchor:
    """An item as an anchor: its catalog vector only when it is warm (popularity > 0: it had
    events when the catalog was built, so its vector carries behaviour; see
    recmesh/models/similar.py)."""
    warm = candidate.popularity > 0
    return Anchor(candidate.item_id, candidate.title, tuple(candidate.categories),
                  vector if warm else None, text_vector)


class AnchorStage:
    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, items: ItemCache,
                 popular: PopularCandidates):
        self._s = settings
        self._up = upstreams
        self._items = items
        self._popular = popular

    async def item(self, budget: Budget, item_id: str, shed: bool = False) -> tuple[Anchor | None, str | None]:
        """(the item as an anchor, the index version that answered: None when it came from this
        gateway's caches). From the item cache when it holds both vectors; else one GetItems
        within the budget (stage "anchor", at most anchor_cap_ms) - failing that, what the
        caches hold (maybe only the catalog vector, or nothing: None). shed: an answer made at
        the door - the call is skipped, not named a failure, when too little time is left.
        Raises NotFound naming item_id when retrieval answered without the item."""
        now = time.monotonic()
        known, _ = self._items.lookup([item_id], now)
        cached = known.get(item_id)
        if cached is not None and cached.text_vector is not None:
            return item_anchor(cached.candidate, cached.vector, cached.text_vector), None
        cap = self._s.anchor_cap_ms * MS
        if not shed or budget.stage_timeout(cap) is not None:
            request = retrieval_pb2.GetItemsRequest(item_ids=[item_id], with_vectors=True)
            found = await budget.call(STAGE, cap, lambda t: self._up.retrieval.GetItems(request, timeout=t))
            if found is not None:
                if not found.candidates:
                    raise NotFound("item_id", f"no item {item_id!r} in the catalog")
                vectors = from_matrix(found.vectors, "vectors")
                text_vectors = from_matrix(found.text_vectors, "text_vectors")
                if len(vectors) and len(text_vectors):
                    entry = self._items.add(found.candidates[:1], vectors, now, text_vectors)[item_id]
                    return item_anchor(entry.candidate, entry.vector, entry.text_vector), found.index_version
                return item_anchor(found.candidates[0], None, None), found.index_version
        if cached is not None:  # a history's item: its catalog vector, no text vector
            return item_anchor(cached.candidate, cached.vector, None), None
        return self._from_pool(item_id), None

    def _from_pool(self, item_id: str) -> Anchor | None:
        pool = self._popular.current
        for row, candidate in enumerate(pool.items):
            if candidate.item_id == item_id:
                vector = pool.vectors[row] if len(pool.vectors) else None
                text_vector = pool.text_vectors[row] if len(pool.text_vectors) else None
                return item_anchor(candidate, vector, text_vector)
        return None

    async def text(self, budget: Budget, text: str) -> tuple[Anchor, str | None]:
        """(a free text as an anchor, the encoder's model version): its language-model vector,
        encoded as a typed query is (stage "anchor", at most encoder_cap_ms);
        the encoder failing or late leaves it without one (the trace says why)."""
        cap = self._s.encoder_cap_ms * MS
        request = encoder_pb2.EncodeInterestRequest(query=text)
        reply = await budget.call(STAGE, cap, lambda t: self._up.encoder.EncodeInterest(request, timeout=t))
        if reply is None:
            return Anchor("", "", (), None, None), None
        return Anchor("", "", (), None, first_row(reply.query_vector, "query_vector")), reply.model_version
