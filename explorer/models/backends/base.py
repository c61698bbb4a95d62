"""The one protocol every backend follows, and the error it raises for configuration problems.

A backend turns a batch of requests into one response per request, in order. A failure that
belongs to one request (a timeout, an HTTP error, an empty reply) is recorded in that request's
Response.error; only a problem with the setup itself (unknown model, missing endpoint or key)
raises BackendError, whose message is written for the user.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Protocol, Sequence

from explorer.schema import Request, Response

# on_text(index in the batch, text so far): partial output while a backend streams.
# The scheduler's name for the machine's own accelerator (or CPU): local models share its slots.
LOCAL_DEVICE = "local"

OnText = Callable[[int, str], None]


class BackendError(RuntimeError):
    """A setup problem to show the user as is (never contains a secret)."""


class Backend(Protocol):
    name: str  # "transformers" | "openai" | ...

    def identity(self, model_alias: str) -> dict[str, Any]:
        """What determines this model's outputs (backend kind, model id, revision, dtype, endpoint
        host; never a key). Goes into cache keys and provenance."""
        ...

    def generate(self, requests: Sequence[Request], on_text: Optional[OnText] = None) -> list[Response]:
        """One Response per request, same order; per-request failures go in Response.error."""
        ...

    def close(self) -> None:
        """Release models, clients and threads; later calls may fail."""
        ...


class timed:
    """Wall-clock seconds of a block: `with timed() as t: ...; t.seconds`."""

    def __enter__(self) -> "timed":
        self._start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = time.perf_counter() - self._start
