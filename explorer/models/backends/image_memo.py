"""A few per-image results kept across generate() calls (torch-free, so a backend can hold one before
any model is loaded)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable


class ImageMemo:
    """A few per-image results (image features, prefix KV caches) kept across generate() calls,
    so the next batch of prompts about the same image skips its vision tower and prefix.

    Keyed by (model alias, kind, image key); least recently used dropped first.
    """

    def __init__(self, max_entries: int = 2):
        self.max_entries = max(0, int(max_entries))
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def drop_model(self, alias: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == alias]:
                del self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
