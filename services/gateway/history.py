"""Stages 1 and 2 of Recommend: the user's state from the updater (recent events, seen, hidden
and disliked items) with the request's inline session events after it, then the catalog vectors
of those events' items - from the gateway's item cache, the rest from retrieval.

Events enter the history the interest model, the session direction and the ranker read only
with a positive weight (recmesh/events/weights.py): a hide or a dislike is no interest. What the
user hid or disliked is kept beside it (History.hidden, .disliked)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from recmesh.common.clock import now_ms
from recmesh.common.validation import hides_item, is_item_event
from recmesh.common.vectors import from_matrix
from recmesh.models.session import History
from recmesh.v1 import common_pb2, encoder_pb2, retrieval_pb2, updater_pb2
from services.gateway.budget import MS, Budget
from services.gateway.config import GatewaySettings
from services.gateway.item_cache import ItemCache
from services.gateway.seen import SEEN_UNKNOWN, SeenItems
from services.gateway.upstreams import Upstreams

ET = common_pb2.EventType


class HistoryStage:
    """Loads a user's history; keeps what it learns in the gateway's seen-items and item caches."""

    def __init__(self, settings: GatewaySettings, upstreams: Upstreams, items: ItemCache, seen: SeenItems):
        self._s = settings
        self._up = upstreams
        self._items = items
        self._seen = seen
        self._weights = settings.event_weights()

    async def load(self, budget: Budget, user_id: str,
                   session_events: Sequence[common_pb2.Event] = ()) -> History:
        """The user's history for one Recommend: their stored events (none for a guest without
        an id, user_id ""), then the request's session_events (checked; oldest first; one whose
        event_id is among the stored ones is left out; time 0 = now) as if they had been
        tracked. Entries oldest first, at most settings.history_items, only events of positive
        weight whose items the catalog knows (vectors: one row per entry, the catalog's space;
        weights: each entry's event weight); their items; the seen, hidden and skipped items;
        the newest disliked items the catalog knows, with their vectors. An upstream failing or
        late is no error: with the updater failed or late (stage "user_state"), the stored part
        is what this gateway knows of the user's seen and hidden items (`fallback:anonymous`);
        with retrieval failed or late (stage "history_items"), the entries whose items were
        cached. Raises InvalidArgument for a malformed matrix in retrieval's reply."""
        s = self._s
        stored: list[common_pb2.Event] = []
        seen: set[str] = set()
        hidden: set[str] = set()
        disliked: list[str] = []
        skipped: dict[str, int] = {}
        count = None
        if user_id:
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
                if known is not None:
                    seen, hidden = set(known.ids), set(known.hidden)
            else:
                seen = set(state.seen_item_ids)  # read once: thousands of ids cost ~1 ms to read
                hidden = set(state.hidden_item_ids)
                self._seen.replace(user_id, seen, asked, hidden)
                disliked = list(state.disliked_item_ids)
                skipped = dict(state.skipped)
                count = state.event_count
                stored = list(state.recent)
        events = stored + self._inline(stored, session_events)
        for event in events[len(stored):]:  # the inline ones count as tracked: seen, hidden
            if is_item_event(event):
                seen.add(event.item_id)
            if hides_item(event):
                hidden.add(event.item_id)
                if event.type == ET.EVENT_TYPE_DISLIKE:
                    disliked = [i for i in disliked if i != event.item_id] + [event.item_id]
        history = History([], np.zeros((0, 0), np.float32), {}, seen, skipped, count, hidden=hidden)
        weights = self._weights.weights([e.type for e in events], [e.value for e in events])
        positive = [e for e, w in zip(events, weights, strict=True) if w > 0][-s.history_items:]
        pushing = disliked[-s.dislikes_pushing:] if s.dislike_push > 0 and s.dislikes_pushing else []
        if not positive and not pushing:
            return history
        known = await self._lookup(budget, list(dict.fromkeys([*(e.item_id for e in positive), *pushing])))
        history.items = {i: c.candidate for i, c in known.items()}
        history.disliked = [i for i in pushing if i in known]
        if history.disliked:
            history.disliked_vectors = np.stack([known[i].vector for i in history.disliked])
        # Items deleted from the catalog since the event drop out of the history.
        kept = [e for e in positive if e.item_id in known]
        if kept:
            history.entries = [encoder_pb2.HistoryEntry(item_id=e.item_id, type=e.type, value=e.value,
                                                        timestamp_ms=e.timestamp_ms) for e in kept]
            history.vectors = np.stack([known[e.item_id].vector for e in kept])
            history.weights = self._weights.weights([e.type for e in kept], [e.value for e in kept])
        return history

    @staticmethod
    def _inline(stored: list[common_pb2.Event], session_events: Sequence[common_pb2.Event]) -> list[common_pb2.Event]:
        """The session events to append: item events not already stored (by event_id; repeats
        within the request once), stamped now when they carry no time."""
        if not session_events:
            return []
        logged = {e.event_id for e in stored if e.event_id}
        now = now_ms()
        out = []
        for event in session_events:
            if event.event_id:
                if event.event_id in logged:
                    continue
                logged.add(event.event_id)
            if is_item_event(event):
                copy = common_pb2.Event()
                copy.CopyFrom(event)
                copy.timestamp_ms = event.timestamp_ms or now
                out.append(copy)
        return out

    async def _lookup(self, budget: Budget, ids: list[str]):
        """The catalog entries (metadata + vector) of ids: cached ones, the rest from retrieval
        (stage "history_items"; failing or late: the cached ones only)."""
        now = time.monotonic()
        known, missing = self._items.lookup(ids, now)
        if missing:
            found = await budget.call(
                "history_items",
                self._s.history_cap_ms * MS,
                lambda t: self._up.retrieval.GetItems(
                    retrieval_pb2.GetItemsRequest(item_ids=missing, with_vectors=True, catalog_vectors_only=True),
                    timeout=t,
                ),
            )
            if found is not None:  # else the history is what was cached, maybe nothing
                known |= self._items.add(found.candidates, from_matrix(found.vectors, "vectors"), now)
        return known
