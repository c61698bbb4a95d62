"""How many generations may run at once: per device and per model, from the settings.

There is no app-wide lock: a cached answer never passes a gate, and generation is bounded where the
memory is (a device runs `per_device` generate calls at once, each model `per_model`). Endpoints
bound themselves (their max_concurrency), so they pass no device gate here.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional


class GenerationGates:
    """Semaphores by device name and by model alias, created on first use."""

    def __init__(self, per_device: int = 1, per_model: int = 1):
        if per_device < 1 or per_model < 1:
            raise ValueError("generation concurrency must be at least 1")
        self.per_device = int(per_device)
        self.per_model = int(per_model)
        self._devices: dict[str, threading.BoundedSemaphore] = {}
        self._models: dict[str, threading.BoundedSemaphore] = {}
        self._lock = threading.Lock()
        self._inside: dict[str, int] = {}  # device -> generate calls inside now (for status and tests)

    def device(self, name: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._devices.setdefault(name, threading.BoundedSemaphore(self.per_device))

    def model(self, alias: str) -> threading.BoundedSemaphore:
        with self._lock:
            return self._models.setdefault(alias, threading.BoundedSemaphore(self.per_model))

    def try_model(self, alias: str) -> bool:
        """Take the model's gate when it is free now (the caller must release_model)."""
        return self.model(alias).acquire(blocking=False)

    def release_model(self, alias: str) -> None:
        self.model(alias).release()

    @contextlib.contextmanager
    def on_device(self, device: Optional[str]) -> Iterator[None]:
        """Hold a slot of the device (None: an endpoint, which limits itself)."""
        if device is None:
            yield
            return
        with self.device(device):
            with self._lock:
                self._inside[device] = self._inside.get(device, 0) + 1
            try:
                yield
            finally:
                with self._lock:
                    self._inside[device] -= 1

    @contextlib.contextmanager
    def for_model(self, alias: str, device: Optional[str]) -> Iterator[None]:
        """Both gates, model first (as the scheduler takes them), for callers outside a sweep."""
        with self.model(alias), self.on_device(device):
            yield

    def busy(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._inside.items() if v}
