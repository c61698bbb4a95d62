"""A wall-clock deadline for each HTTP request of the OpenAI client, streaming included.

The client's timeout applies to each socket read: a server that trickles one byte a second never
trips a 2 s timeout and can hold a request (and whatever lock its caller holds) for as long as it
likes. Here the caller sets a deadline for its thread (`deadline(at)`), and the client's transport
  - refuses to start a request once the deadline has passed,
  - lowers every connect/read/write timeout to the time left, so a silent server cannot wait past it,
  - checks the clock at every chunk of the body as it arrives, so a trickling one cannot either.
Passing the deadline raises DeadlinePassed, a ReadTimeout of the client's HTTP library (the OpenAI
client reports it as a timeout; the backend tells it apart by the clock).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from functools import lru_cache
from typing import Any, Iterator, Optional

import openai

_local = threading.local()


@contextlib.contextmanager
def deadline(at: Optional[float]) -> Iterator[None]:
    """Requests made by this thread inside the block must finish by `at` (time.monotonic())."""
    previous = getattr(_local, "at", None)
    _local.at = at
    try:
        yield
    finally:
        _local.at = previous


def _current() -> Optional[float]:
    return getattr(_local, "at", None)


@lru_cache(maxsize=1)
def _http():
    """The HTTP library the installed OpenAI client is built on (httpx, or its fork httpx2)."""
    base = next(c for c in openai.DefaultHttpxClient.__mro__ if c.__name__ == "Client")
    return importlib.import_module(base.__module__.split(".")[0])


@lru_cache(maxsize=1)
def _classes() -> tuple[type, type, type]:
    http = _http()

    class DeadlinePassed(http.ReadTimeout):
        """The request's wall-clock deadline passed before its reply was complete."""

    class DeadlineStream(http.SyncByteStream):
        def __init__(self, inner: Any, at: float):
            self._inner, self._at = inner, at

        def __iter__(self):
            for chunk in self._inner:
                if time.monotonic() > self._at:
                    raise DeadlinePassed("the request's deadline passed while its reply was arriving")
                yield chunk

        def close(self) -> None:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()

    class DeadlineTransport(http.HTTPTransport):
        def handle_request(self, request):
            at = _current()
            if at is None:
                return super().handle_request(request)
            left = at - time.monotonic()
            if left <= 0:
                raise DeadlinePassed("the request's deadline passed before it was sent", request=request)
            timeout = dict(request.extensions.get("timeout") or {})
            for name in ("connect", "read", "write", "pool"):
                timeout[name] = left if timeout.get(name) is None else min(timeout[name], left)
            request.extensions["timeout"] = timeout
            response = super().handle_request(request)
            response.stream = DeadlineStream(response.stream, at)
            return response

    return DeadlinePassed, DeadlineStream, DeadlineTransport


def http_client(timeout_s: float):
    """An HTTP client for openai.OpenAI(http_client=...) that honours deadline()."""
    transport = _classes()[2]()
    return openai.DefaultHttpxClient(transport=transport, timeout=timeout_s)


def is_deadline_error(exc: BaseException) -> bool:
    deadline_passed = _classes()[0]
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, deadline_passed):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False
