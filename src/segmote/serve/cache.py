"""An LRU of encoded slices, bounded in bytes.

The encoder is the slow part (seconds per slice on a laptop CPU); a prompt against an encoded
slice is one decoder pass. Each session keeps the features of the slices it encoded, evicting
the least recently used once their total size passes the budget, so scrolling back and forth
never re-encodes while memory stays bounded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import torch


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in `value` (a tensor, or a tuple / NamedTuple of them)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 0


class FeatureCache:
    """key -> (features, size) with least-recently-used eviction past `budget_bytes`.

    Thread-safe: the background encoder fills it while requests read it. An entry larger than
    the whole budget is still kept alone (the slice being prompted must stay)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = int(budget_bytes)
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.total = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def put(self, key: Hashable, value: Any) -> None:
        size = nbytes(value)
        with self._lock:
            if key in self._items:
                self.total -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self.total += size
            while self.total > self.budget and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self.total -= dropped

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.total = 0
