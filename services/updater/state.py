"""Per-user state that the very next Recommend reads: recent item events, seen items, queries."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from recmesh.v1 import common_pb2
from services.updater.eventlog import LoggedEvent

SEARCH = common_pb2.EventType.EVENT_TYPE_SEARCH


@dataclass
class UserState:
    recent: deque[LoggedEvent]
    seen: OrderedDict[str, None]
    queries: deque[str]
    event_count: int = 0


@dataclass
class UserStateStore:
    recent_items: int = 200
    seen_items: int = 5000
    recent_queries: int = 20
    _users: dict[str, UserState] = field(default_factory=dict)

    def apply(self, event: LoggedEvent) -> None:
        state = self._users.get(event.user_id)
        if state is None:
            state = UserState(deque(maxlen=self.recent_items), OrderedDict(), deque(maxlen=self.recent_queries))
            self._users[event.user_id] = state
        state.event_count += 1
        if event.query:
            state.queries.appendleft(event.query)
        if event.type == SEARCH or not event.item_id:
            return
        state.recent.append(event)
        state.seen[event.item_id] = None
        state.seen.move_to_end(event.item_id)
        while len(state.seen) > self.seen_items:
            state.seen.popitem(last=False)

    def get(self, user_id: str) -> UserState | None:
        return self._users.get(user_id)

    def delete(self, user_id: str) -> None:
        self._users.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._users)
