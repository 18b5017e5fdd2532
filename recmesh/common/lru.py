"""A bounded least-recently-used map."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    def __init__(self, size: int):
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def get_many(self, keys) -> list[V | None]:
        """get() of each key, in one pass (a Recommend looks up ~50 history items at once)."""
        items, found = self._items, []
        get, touch = items.get, items.move_to_end
        for key in keys:
            value = get(key)
            if value is not None:
                touch(key)
            found.append(value)
        return found

    def put(self, key: K, value: V) -> None:
        if self._size == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, key: K) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)
