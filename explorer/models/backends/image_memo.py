"""A few per-image results kept across generate() calls (torch-free, so a backend can hold one before
any model is loaded)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Hashable


class ImageMemo:
    """A few per-image results (image features, prefix KV caches) kept across generate() calls, so
    the next batch of prompts about the same image skips its vision tower and prefix.

    Keyed by (model alias, kind, image key). Each model keeps its own `per_model` most recent
    entries: Compare asks four models about one image, and one shared list of two let every model
    push out another's, so an edited wording re-ran every prefix. 3 per model covers a batch of 3
    images (transformers_backend.SHARED_PREFIX_IMAGES).
    """

    def __init__(self, per_model: int = 3):
        self.per_model = max(0, int(per_model))
        self._by_model: dict[Any, OrderedDict[Hashable, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            kept = self._by_model.get(key[0])
            if kept is None or key not in kept:
                return None
            kept.move_to_end(key)
            return kept[key]

    def put(self, key: Hashable, value: Any) -> None:
        if self.per_model == 0:
            return
        with self._lock:
            kept = self._by_model.setdefault(key[0], OrderedDict())
            kept[key] = value
            kept.move_to_end(key)
            while len(kept) > self.per_model:
                kept.popitem(last=False)

    def drop_model(self, alias: str) -> None:
        with self._lock:
            self._by_model.pop(alias, None)

    def clear(self) -> None:
        with self._lock:
            self._by_model.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(len(kept) for kept in self._by_model.values())
