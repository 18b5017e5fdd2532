"""Stages 1 and 2 of Recommend: the user's state from the updater (recent events, seen items),
then the catalog vectors of those events' items - from the gateway's item cache, the rest from
retrieval."""

from __future__ import annotations

import time

import numpy as np

from recmesh.common.vectors import from_matrix
from recmesh.models.session import History
from recmesh.v1 import encoder_pb2, retrieval_pb2, updater_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.item_cache import ItemCache
from services.gateway.seen import SEEN_UNKNOWN, SeenItems
from services.gateway.upstreams import Upstreams


class HistoryStage:
    """Loads a user's history; keeps what it learns in the gateway's seen-items and item caches."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, items: ItemCache, seen: SeenItems):
        self._s = settings
        self._up = upstreams
        self._items = items
        self._seen = seen

    async def load(self, budget: Budget, user_id: str) -> History:
        """The user's history for one Recommend: entries oldest first, only items the catalog
        knows (vectors: one row per entry, the catalog's space), their items, the seen items and
        the skipped ones. An upstream failing or late is no error: with the updater failed or late
        (stage "user_state"), an anonymous history - no entries, the seen items this gateway
        knows (`fallback:anonymous`); with retrieval failed or late (stage "history_items"), the
        entries whose items were cached. Raises InvalidArgument for a malformed matrix in
        retrieval's reply."""
        s = self._s
        no_vectors = np.zeros((0, 0), np.float32)
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
            known = self._seen.lookup(user_id, time.monotonic())
            if known is None or not known.complete:  # exclusions of older history may not hold: say so
                budget.trace.degrade(SEEN_UNKNOWN)
            return History([], no_vectors, {}, set(known.ids) if known is not None else set())
        seen = set(state.seen_item_ids)  # read once: thousands of ids cost ~1 ms to read
        self._seen.replace(user_id, seen, asked)
        skipped = dict(state.skipped)
        count = state.event_count
        if not state.recent:
            return History([], no_vectors, {}, seen, skipped, count)
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
            return History([], no_vectors, {}, seen, skipped, count)
        vectors = np.stack([known[e.item_id].vector for e in entries])
        return History(entries, vectors, {i: c.candidate for i, c in known.items()}, seen, skipped, count)
