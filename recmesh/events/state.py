"""Per-user state that the very next Recommend reads: recent item events, seen items, queries,
and the items the user hid or disliked.

Everything is in the order of the events' own time (timestamp_ms), not of their arrival: a
client's offline queue or a retry can deliver an older event after newer ones, and it takes its
place in time. Among events of the same millisecond, arrival order decides."""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass, field

from recmesh.common import limits
from recmesh.common.validation import hides_item, is_item_event
from recmesh.events.eventlog import LoggedEvent
from recmesh.v1 import common_pb2

ET = common_pb2.EventType


@dataclass
class LatestTimes:
    """Items by the time of their newest event, bounded: past `bound`, the item whose newest
    event is oldest goes (among equal times, the lowest id - as a Redis sorted set drops)."""

    at: dict[str, int] = field(default_factory=dict)  # item -> the time of its newest event
    order: list[tuple[int, str]] = field(default_factory=list)  # (that time, item), ascending

    def note(self, item: str, ts: int, bound: int) -> None:
        last = self.at.get(item)
        if last is not None:
            if last >= ts:
                return  # already noted at this time or later
            del self.order[bisect_left(self.order, (last, item))]
        self.at[item] = ts
        insort(self.order, (ts, item))
        while len(self.order) > bound:
            _, dropped = self.order.pop(0)
            del self.at[dropped]

    @property
    def items(self) -> list[str]:
        """The one noted longest ago first."""
        return [item for _, item in self.order]


@dataclass
class UserState:
    # Sorted ascending by (timestamp_ms, arrival): the arrival number breaks ties, and being
    # unique it keeps comparisons from ever reaching the payload.
    timeline: list[tuple[int, int, LoggedEvent]] = field(default_factory=list)
    query_times: list[tuple[int, int, str]] = field(default_factory=list)
    seen_times: LatestTimes = field(default_factory=LatestTimes)
    # Items hidden or disliked (by the time of the newest such event), and those disliked.
    hidden_times: LatestTimes = field(default_factory=LatestTimes)
    disliked_times: LatestTimes = field(default_factory=LatestTimes)
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
        return self.seen_times.items

    @property
    def hidden(self) -> list[str]:
        """Items hidden or disliked, the one hidden longest ago first."""
        return self.hidden_times.items

    @property
    def disliked(self) -> list[str]:
        """Items disliked, the newest dislike last."""
        return self.disliked_times.items

    @property
    def queries(self) -> list[str]:
        """Typed queries, newest by time first."""
        return [query for _, _, query in reversed(self.query_times)]


@dataclass
class UserStateStore:
    recent_items: int = 200
    seen_items: int = 5000
    recent_queries: int = 20
    hidden_items: int = limits.HIDDEN_ITEMS
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
        state.seen_times.note(event.item_id, ts, self.seen_items)
        if hides_item(event):
            state.hidden_times.note(event.item_id, ts, self.hidden_items)
            if event.type == ET.EVENT_TYPE_DISLIKE:
                state.disliked_times.note(event.item_id, ts, self.hidden_items)

    def rebuild(self, user_id: str, events: Iterable[LoggedEvent]) -> None:
        """The user's state made afresh from all of their events, in log order (after a merge)."""
        self._users.pop(user_id, None)
        for event in events:
            self.apply(event)

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
