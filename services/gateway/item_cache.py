"""Catalog items this gateway looked up lately (metadata and catalog vector), so that a returning
user's history costs no GetItems call to retrieval - on a loaded host, the hop most often late -
and an item page's SimilarItems none for its anchor (kept with its text vector too).
An entry lives `ttl_s` at most: an item changed or deleted through another gateway replica is
seen within that; through this one, at once (forget)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from recmesh.common.lru import LruCache
from recmesh.v1 import retrieval_pb2


@dataclass(frozen=True)
class CachedItem:
    candidate: retrieval_pb2.Candidate
    vector: np.ndarray  # the catalog's space
    at: float  # time.monotonic() when fetched
    # The language-model vector, when it was fetched too (a SimilarItems anchor); None: not fetched.
    text_vector: np.ndarray | None = None


class ItemCache:
    def __init__(self, size: int, ttl_s: float):
        self._items: LruCache[str, CachedItem] = LruCache(size if ttl_s > 0 else 0)
        self._ttl_s = ttl_s

    def lookup(self, item_ids: Iterable[str], now: float) -> tuple[dict[str, CachedItem], list[str]]:
        """The fresh entries among item_ids, and the ids to fetch."""
        known, missing = {}, []
        item_ids = list(item_ids)
        ttl_s = self._ttl_s
        for item_id, cached in zip(item_ids, self._items.get_many(item_ids), strict=True):
            if cached is not None and now - cached.at < ttl_s:
                known[item_id] = cached
            else:
                missing.append(item_id)
        return known, missing

    def add(self, candidates: Iterable[retrieval_pb2.Candidate], vectors: np.ndarray,
            now: float, text_vectors: np.ndarray | None = None) -> dict[str, CachedItem]:
        """Cache fetched items (row i of vectors, and of text_vectors when given, is candidate
        i's); returns them as entries."""
        fetched = {c.item_id: CachedItem(c, vectors[i].copy(), now,
                                         None if text_vectors is None else text_vectors[i].copy())
                   for i, c in enumerate(candidates)}
        for item_id, cached in fetched.items():
            self._items.put(item_id, cached)
        return fetched

    def forget(self, item_ids: Iterable[str]) -> None:
        for item_id in item_ids:
            self._items.forget(item_id)
