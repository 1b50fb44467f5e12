"""ArrayMemo: a value computed once per NumPy array object (its digest).

Arrays are not hashable, and id() is reused once an array dies, so entries are keyed by id() and checked
with a weak reference, which also drops an entry when its array is freed.
"""

from __future__ import annotations

import weakref
from typing import Callable


class ArrayMemo:
    def __init__(self):
        self._items: dict[int, tuple[weakref.ref, object]] = {}

    def get(self, array, compute: Callable):
        key = id(array)
        entry = self._items.get(key)
        if entry is not None and entry[0]() is array:
            return entry[1]
        value = compute(array)
        self._items[key] = (weakref.ref(array, lambda _, k=key: self._items.pop(k, None)), value)
        return value

    def clear(self) -> None:
        self._items.clear()
