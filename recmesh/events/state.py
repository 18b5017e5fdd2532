"""Per-user state that the very next Recommend reads: recent item events, seen items, queries.

Everything is in the order of the events' own time (timestamp_ms), not of their arrival: a
client's offline queue or a retry can deliver an older event after newer ones, and it takes its
place in time. Among events of the same millisecond, arrival order decides."""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field

from recmesh.common.validation import is_item_event
from recmesh.events.eventlog import LoggedEvent


@dataclass
class UserState:
    # Sorted ascending by (timestamp_ms, arrival): the arrival number breaks ties, and being
    # unique it keeps comparisons from ever reaching the payload.
    timeline: list[tuple[int, int, LoggedEvent]] = field(default_factory=list)
    query_times: list[tuple[int, int, str]] = field(default_factory=list)
    # item -> the time of its newest event; seen_order: (that time, item), ascending.
    seen_at: dict[str, int] = field(default_factory=dict)
    seen_order: list[tuple[int, str]] = field(default_factory=list)
    event_count: int = 0
    arrivals: int = 0

    @property
    def recent(self) -> list[LoggedEvent]:
        """Item events, oldest first by time."""
        return [event for _, _, event in self.timeline]

    @property
    def seen(self) -> list[str]:
        """Item ids, the one seen longest ago first (by the time of its newest event; among equal
        times by item id)."""
        return [item for _, item in self.seen_order]

    @property
    def queries(self) -> list[str]:
        """Typed queries, newest by time first."""
        return [query for _, _, query in reversed(self.query_times)]


@dataclass
class UserStateStore:
    recent_items: int = 200
    seen_items: int = 5000
    recent_queries: int = 20
    _users: dict[str, UserState] = field(default_factory=dict)

    def apply(self, event: LoggedEvent) -> None:
        """One new event (each event_id once: the log dedupes). Past a bound, what is oldest by
        time goes: a late event older than everything kept does not enter."""
        state = self._users.get(event.user_id)
        if state is None:
            state = self._users[event.user_id] = UserState()
        state.event_count += 1
        state.arrivals += 1
        ts = event.timestamp_ms
        if event.query:
            _insert_bounded(state.query_times, (ts, state.arrivals, event.query), self.recent_queries)
        if not is_item_event(event):
            return
        _insert_bounded(state.timeline, (ts, state.arrivals, event), self.recent_items)
        self._see(state, event.item_id, ts)

    def _see(self, state: UserState, item: str, ts: int) -> None:
        last = state.seen_at.get(item)
        if last is not None:
            if last >= ts:
                return  # already seen at this time or later
            del state.seen_order[bisect_left(state.seen_order, (last, item))]
        state.seen_at[item] = ts
        insort(state.seen_order, (ts, item))
        while len(state.seen_order) > self.seen_items:
            _, dropped = state.seen_order.pop(0)
            del state.seen_at[dropped]

    def get(self, user_id: str) -> UserState | None:
        return self._users.get(user_id)

    def delete(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._users)


def _insert_bounded(ordered: list, entry: tuple, bound: int) -> None:
    """Insert into an ascending list, then drop from the front past bound (entries are unique)."""
    if len(ordered) >= bound and entry < ordered[0]:
        return  # older than all kept: it would be the one dropped
    insort(ordered, entry)  # in-order arrivals land at the end: O(log n) to find, no shifting
    if len(ordered) > bound:
        del ordered[0]
