"""The items each user has interacted with, and those they hid or disliked, as this gateway last
learned them, so that answers made without the updater - shed at the door, or the anonymous
fallback when the updater is down or late - still leave out what the user has seen, and never
show what they hid.

Filled from every GetUserState reply (the updater's whole seen and hidden sets: a complete entry)
and from every item event acknowledged by TrackEvents through this gateway (added to the entry;
without one, an incomplete entry: what was tracked here, the older history unknown); forgotten
on DeleteUser through this gateway, asked afresh after a MergeUsers through it. An entry lives
`ttl_s` from its snapshot at most.

Hidden and disliked items are also held apart, past the TTL and past an entry's invalidation
(duplicates acknowledged, a merge): a hide is never taken back, so an old set of them can only
lack newer hides - never hold one too many - and an answer made without the updater still leaves
out every hide this gateway has learned (the updater keeps the newest limits.HIDDEN_ITEMS; so
does this set). Forgotten on DeleteUser through this gateway; a merge moves them to the target.

Consistency across gateway replicas: the full pipeline asks the updater on every Recommend, so
it sees every event acknowledged by any replica. An answer made from this cache holds what the
updater said at this replica's last GetUserState for the user (at most `ttl_s` ago) plus every
event tracked through this replica since; events tracked through another replica since that
snapshot, and a DeleteUser through another replica, reach it when the entry expires or the
user's next full Recommend here refreshes it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from recmesh.common import limits
from recmesh.common.validation import hides_item, is_item_event
from recmesh.v1 import common_pb2, updater_pb2

# The degraded reason of an answer made without knowing all the items the user has seen (the
# updater not reachable in time, and this gateway holding no complete entry): the exclusion of
# seen items may not hold, and the reply says so.
SEEN_UNKNOWN = "seen_items:unknown"


@dataclass(frozen=True)
class Seen:
    ids: frozenset[str]
    # False: only items tracked through this gateway are known; the user's older history is not.
    complete: bool
    # Items hidden or disliked (as complete as ids).
    hidden: frozenset[str] = frozenset()


@dataclass
class _Entry:
    # At most limits.SEEN_ITEMS: past it, which items the updater keeps depends on event times
    # this cache does not have - such a user is not held here (asked of the updater instead).
    ids: set[str]
    complete: bool
    # time.monotonic(): when the updater was asked for this snapshot (complete), or when the
    # first event was tracked (incomplete). The entry expires ttl_s after it.
    as_of: float
    # Items tracked through this gateway, and when: a snapshot asked before then may lack them.
    tracked: dict[str, float] = field(default_factory=dict)
    # Items hidden or disliked (at most limits.HIDDEN_ITEMS, as the updater keeps), and those of
    # them tracked through this gateway, and when.
    hidden: set[str] = field(default_factory=set)
    tracked_hidden: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.ids) + len(self.hidden)


class SeenItems:
    """A TTL'd LRU of user id -> seen item ids, bounded in users and in ids held in all."""

    def __init__(self, users: int, max_ids: int, ttl_s: float):
        self._users = users if ttl_s > 0 else 0
        self._max_ids = max_ids
        self._ttl_s = ttl_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._held = 0  # ids held over all entries
        # user id -> every hidden or disliked item learned here (LRU in users, as many as entries)
        self._hidden: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._hidden_held = 0

    def _learn_hidden(self, user_id: str, item_ids: Iterable[str]) -> None:
        if self._users == 0:
            return
        held = self._hidden.pop(user_id, None) or {}
        self._hidden_held -= len(held)
        for item_id in item_ids:
            held.pop(item_id, None)
            held[item_id] = None  # newest last
        while len(held) > limits.HIDDEN_ITEMS:
            del held[next(iter(held))]
        if held:
            self._hidden[user_id] = held
            self._hidden_held += len(held)
        while self._hidden and (len(self._hidden) > self._users or self._hidden_held > self._max_ids):
            _, evicted = self._hidden.popitem(last=False)
            self._hidden_held -= len(evicted)

    def _forget_hidden(self, user_id: str) -> dict[str, None]:
        held = self._hidden.pop(user_id, None) or {}
        self._hidden_held -= len(held)
        return held

    def lookup(self, user_id: str, now: float) -> Seen | None:
        """The user's seen items, or None when this gateway knows nothing of them; without a
        fresh entry, the hidden items it learned (an incomplete Seen)."""
        entry = self._live(user_id, now)
        hidden = self._hidden.get(user_id)
        if hidden is not None:
            self._hidden.move_to_end(user_id)
        if entry is None:
            return None if hidden is None else Seen(frozenset(), False, frozenset(hidden))
        return Seen(frozenset(entry.ids), entry.complete, frozenset(entry.hidden).union(hidden or ()))

    def replace(self, user_id: str, item_ids: Iterable[str], asked_at: float, hidden: Iterable[str] = ()) -> None:
        """The updater's seen and hidden sets for the user, as asked for at `asked_at`
        (time.monotonic()). A snapshot older than the one held (or than a deletion) is ignored;
        items tracked here after it was asked are kept."""
        old = self._entries.get(user_id)
        if old is not None and old.complete and old.as_of > asked_at:
            return
        tracked = {i: t for i, t in old.tracked.items() if t >= asked_at} if old is not None else {}
        tracked_hidden = {i: t for i, t in old.tracked_hidden.items() if t >= asked_at} if old is not None else {}
        ids = set(item_ids) | tracked.keys()  # from a set: a copy, ~0.1 ms for 5000 ids
        hidden = set(hidden) | tracked_hidden.keys()
        self._learn_hidden(user_id, hidden)
        self._put(user_id, _Entry(ids, True, asked_at, tracked, hidden, tracked_hidden))

    def add(self, user_id: str, item_ids: Iterable[str], now: float, hidden: Iterable[str] = ()) -> None:
        """Items the user just interacted with, and those of them hidden or disliked (events
        acknowledged through this gateway)."""
        entry = self._live(user_id, now)
        if entry is None:
            entry = _Entry(set(), False, now)
        else:
            self._drop(user_id)
        for item_id in item_ids:
            entry.ids.add(item_id)
            entry.tracked[item_id] = now
        for item_id in hidden:
            entry.hidden.add(item_id)
            entry.tracked_hidden[item_id] = now
        self._learn_hidden(user_id, entry.tracked_hidden)
        self._put(user_id, entry)

    def add_events(self, events: Iterable[common_pb2.Event], now: float) -> None:
        """The item events among acknowledged events (a search names no item)."""
        by_user: dict[str, tuple[list[str], list[str]]] = {}
        for event in events:
            if is_item_event(event):
                seen, hidden = by_user.setdefault(event.user_id, ([], []))
                seen.append(event.item_id)
                if hides_item(event):
                    hidden.append(event.item_id)
        for user_id, (item_ids, hidden) in by_user.items():
            self.add(user_id, item_ids, now, hidden)

    def note_ingested(self, events: Iterable[common_pb2.Event], duplicates: int, now: float) -> None:
        """Events the updater acknowledged (Ingest; `duplicates` of them already known): answers
        made without the updater leave their items out from now on. With duplicates among them -
        already applied, or retries of a deleted user's events, which are not - what this
        gateway holds of these users is asked afresh next time."""
        if duplicates:
            self.invalidate(event.user_id for event in events)
            for event in events:  # acknowledged: applied now or before (a hide is never taken back)
                if hides_item(event):
                    self._learn_hidden(event.user_id, (event.item_id,))
        else:
            self.add_events(events, now)

    def add_state(self, user_id: str, state: updater_pb2.UserState, asked_at: float) -> None:
        self.replace(user_id, state.seen_item_ids, asked_at, state.hidden_item_ids)

    def forget(self, user_id: str, now: float) -> None:
        """The user was deleted: nothing seen, and no snapshot asked before now comes back."""
        self._forget_hidden(user_id)
        self._put(user_id, _Entry(set(), True, now))

    def merge(self, from_user: str, into_user: str, now: float) -> None:
        """from_user's events moved to into_user: from_user has nothing left; what this gateway
        holds of into_user is asked afresh, but the hides it learned of either still hold."""
        moved = self._forget_hidden(from_user)
        self.forget(from_user, now)
        self.invalidate([into_user])
        self._learn_hidden(into_user, moved)

    def invalidate(self, user_ids: Iterable[str]) -> None:
        """What this gateway holds of these users may be wrong (e.g. events acknowledged as
        duplicates: already applied, or retries of a deleted user's events, which are not):
        the next answer that needs them asks the updater."""
        for user_id in set(user_ids):
            self._drop(user_id)

    def _live(self, user_id: str, now: float) -> _Entry | None:
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        if now - entry.as_of >= self._ttl_s:
            self._drop(user_id)
            return None
        self._entries.move_to_end(user_id)
        return entry

    def _put(self, user_id: str, entry: _Entry) -> None:
        self._drop(user_id)
        if (self._users == 0 or len(entry.ids) > min(self._max_ids, limits.SEEN_ITEMS)
                or len(entry.hidden) > limits.HIDDEN_ITEMS or entry.size > self._max_ids):
            return  # too large to hold (or to mirror the updater's choice of): asked every time
        self._entries[user_id] = entry
        self._held += entry.size
        while len(self._entries) > self._users or self._held > self._max_ids:
            _, evicted = self._entries.popitem(last=False)
            self._held -= evicted.size

    def _drop(self, user_id: str) -> None:
        entry = self._entries.pop(user_id, None)
        if entry is not None:
            self._held -= entry.size

    def __len__(self) -> int:
        return len(self._entries)
