"""Online learning's input, on the updater: what a Recommend showed (with the features the
ranker scored it on) meets the feedback that follows (the event's request_id, else the user's
newest impression of the item within a time window) and becomes a labelled list - the item the
feedback is about against the others shown with it, labelled by the event's weight
(recmesh/events/weights.py): a click or a purchase chose it (a positive counting that much), a
dislike rejected it (a negative). Training on those lists is the model layer's
(recmesh/models/ranking/training.py)."""

from __future__ import annotations

from collections import deque

import numpy as np

from recmesh.common.validation import is_item_event
from recmesh.events.eventlog import LoggedEvent
from recmesh.events.weights import DEFAULT, EventWeights
from recmesh.models.ranking.training import LabelledList
from recmesh.v1 import updater_pb2


class ImpressionJoiner:
    """Feedback that names its request_id may arrive before the impression (the gateway sends
    impressions in batches, after the reply): it waits up to early_ms for it."""

    def __init__(self, window_ms: int, per_user: int = 20, early_ms: int = 10_000, max_entries: int = 10_000,
                 weights: EventWeights = DEFAULT):
        self.window_ms = window_ms
        self._weights = weights
        self._by_user: dict[str, deque[tuple[updater_pb2.Impression, int, set[str]]]] = {}
        self._per_user = per_user
        self._early_ms = early_ms
        # request_id -> feedback events that came first (at most max_entries events in all);
        # user_id -> when they were deleted (an impression of theirs from before that, still on
        # its way from a gateway, must not bring them back; at most max_entries users). Dicts
        # keep insertion order: past the bound, the oldest go first.
        self._early: dict[str, list[tuple[LoggedEvent, int]]] = {}
        self._early_events = 0
        self._deleted: dict[str, int] = {}
        self._max_entries = max_entries

    def add(self, impression: updater_pb2.Impression, arrived_ms: int) -> list[LabelledList]:
        """The impression's features are in FEATURES order (LogImpressions checks it); returns
        the lists labelled by feedback that was waiting for it."""
        deleted_at = self._deleted.get(impression.user_id)
        if deleted_at is not None and impression.timestamp_ms <= deleted_at:
            return []
        shown = self._by_user.setdefault(impression.user_id, deque(maxlen=self._per_user))
        shown.append((impression, arrived_ms, set()))
        waiting = self._release(impression.request_id)
        return [labelled for event, when in waiting if arrived_ms - when <= self._early_ms
                if (labelled := self.join(event, arrived_ms, hold=False)) is not None]

    def _hold(self, event: LoggedEvent, arrived_ms: int) -> None:
        while self._early_events >= self._max_entries:
            self._early_events -= len(self._early.pop(next(iter(self._early))))
        self._early.setdefault(event.request_id, []).append((event, arrived_ms))
        self._early_events += 1

    def _release(self, request_id: str) -> list[tuple[LoggedEvent, int]]:
        waiting = self._early.pop(request_id, [])
        self._early_events -= len(waiting)
        return waiting

    def join(self, event: LoggedEvent, arrived_ms: int, hold: bool = True) -> LabelledList | None:
        """An item event on a shown item labels it with the event's weight: a positive one is
        the user choosing it (a view of a recommendation is its click-through), a negative one
        (a dislike, a hide) rejecting it; an event of weight 0 labels nothing. Each shown item
        is labelled once. Feedback naming a request not seen yet is held for its impression
        (hold). The window runs on this clock (client clocks may be skewed); an event whose own
        time is older than the window (a backfill, a client's offline queue) arrives now but
        answers nothing shown now."""
        label = self._weights.weight(event.type, event.value)
        if not is_item_event(event) or not label or event.timestamp_ms < arrived_ms - self.window_ms:
            return None
        shown = self._by_user.get(event.user_id)
        if event.request_id and hold and not any(i.request_id == event.request_id for i, _, _ in shown or ()):
            self._hold(event, arrived_ms)
            return None
        if not shown:
            return None
        for impression, when, labelled in reversed(shown):
            if arrived_ms - when > self.window_ms:
                break
            if event.request_id and impression.request_id != event.request_id:
                continue
            rows = [i for i, item in enumerate(impression.items) if item.item_id == event.item_id]
            if rows and event.item_id not in labelled:
                labelled.add(event.item_id)
                features = np.array([list(item.features) for item in impression.items], np.float32)
                return LabelledList(features, rows[0], arrived_ms, impression.items[rows[0]].propensity or 1.0,
                                    label)
        return None

    def skipped(self, user_id: str, now: int) -> dict[str, int]:
        """Items shown to the user within the window and not chosen: how many times."""
        counts: dict[str, int] = {}
        for impression, when, labelled in self._by_user.get(user_id, ()):
            if now - when <= self.window_ms:
                for item in impression.items:
                    if item.item_id not in labelled:
                        counts[item.item_id] = counts.get(item.item_id, 0) + 1
        return counts

    def merge_users(self, from_user: str, into_user: str) -> None:
        """from_user's events now belong to into_user (a guest who signed in): what was shown
        to from_user is joined with into_user's feedback from now on."""
        shown = self._by_user.pop(from_user, None)
        if shown:
            into = self._by_user.setdefault(into_user, deque(maxlen=self._per_user))
            # Oldest first, as they were shown (the newest are looked at first, and kept).
            merged = sorted([*into, *shown], key=lambda entry: entry[1])
            into.clear()
            into.extend(merged)

    def forget_user(self, user_id: str, now_ms: int) -> None:
        self._by_user.pop(user_id, None)
        self._deleted.pop(user_id, None)
        if len(self._deleted) >= self._max_entries:
            del self._deleted[next(iter(self._deleted))]
        self._deleted[user_id] = now_ms
        for request_id in [r for r, held in self._early.items() if held[0][0].user_id == user_id]:
            self._release(request_id)
