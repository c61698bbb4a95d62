"""What every tab shares: the app settings, one lazily created Explorer, GPU wrapping, background jobs.

There is no app-wide generation lock: the Explorer bounds generation per device and per model
(settings.gpu_concurrency), so answers already in the store never wait behind a running sweep.

Per-user state lives in gr.State inside the tabs; only the Explorer (which owns the loaded models,
shared by everyone) lives here, and it is created on first use, never at import time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SAMPLES = REPO.parent / "shared" / "samples"
DEFAULT_STORE = REPO / "runs" / "explorer.sqlite"


def hub_reachable(timeout_s: float = 1.5) -> bool:
    """False when HF_HUB_OFFLINE is set or huggingface.co cannot be reached quickly."""
    from explorer.models.availability import hub_offline

    if hub_offline():
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class AppSettings:
    preset: str
    samples_dir: Optional[Path]
    store_path: Path
    public: bool = False
    gpu_concurrency: int = 1

    @classmethod
    def from_env(cls, **overrides: Any) -> "AppSettings":
        """Defaults for `import app` (a Space): env vars EXPLORER_PRESET / _SAMPLES / _STORE, and public
        mode as explorer.service.public decides it (EXPLORER_PUBLIC, or inside a Hugging Face Space)."""
        from explorer.service.public import public_mode_enabled

        samples = os.environ.get("EXPLORER_SAMPLES") or (str(DEFAULT_SAMPLES) if DEFAULT_SAMPLES.is_dir() else "")
        settings = cls(
            preset=os.environ.get("EXPLORER_PRESET") or ("paper" if hub_reachable() else "demo"),
            samples_dir=Path(samples) if samples else None,
            store_path=Path(os.environ.get("EXPLORER_STORE") or DEFAULT_STORE),
            public=public_mode_enabled(),
        )
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


class SharedExplorer:
    """One Explorer for the whole app, built on first use (models are shared by all sessions)."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self._explorer = None
        self._lock = threading.Lock()
        self._reads: dict[Optional[str], set[threading.Event]] = {}  # session -> its reads in progress

    def get(self):
        with self._lock:
            if self._explorer is None:
                from explorer.service.core import Explorer

                self.settings.store_path.parent.mkdir(parents=True, exist_ok=True)
                self._explorer = Explorer(
                    preset=self.settings.preset,
                    store_path=str(self.settings.store_path),
                    samples_dir=str(self.settings.samples_dir) if self.settings.samples_dir else None,
                    public=self.settings.public,
                    gpu_concurrency=self.settings.gpu_concurrency,
                )
            return self._explorer

    def end_session(self, session: Optional[str]) -> None:
        """A page closed (demo.unload): the sweeps it followed are cancelled after a grace period, in
        which a reload re-attaches to them, and any results file it is still reading is abandoned."""
        with self._lock:
            for cancel in self._reads.pop(session, ()):
                cancel.set()
        if session and self._explorer is not None:
            self._explorer.end_session(session)

    @contextlib.contextmanager
    def session_read(self, session: Optional[str]) -> Iterator[threading.Event]:
        """An event set when the page `session` closes while the block runs (a read it abandoned)."""
        cancel = threading.Event()
        with self._lock:
            self._reads.setdefault(session, set()).add(cancel)
        try:
            yield cancel
        finally:
            with self._lock:
                self._reads.get(session, set()).discard(cancel)


def gpu(duration_s: int = 120) -> Callable[[Callable], Callable]:
    """spaces.GPU on ZeroGPU Spaces (the package is only present there); a no-op elsewhere."""
    try:
        import spaces  # type: ignore
    except ImportError:
        return lambda fn: fn
    return spaces.GPU(duration=duration_s)


_DONE = object()


class Background:
    """Run `job(emit)` in a thread; the event handler iterates `updates()` to stream what it emits.

    Gradio streams by generator; the engine streams by callback. This joins the two without
    holding per-user state anywhere but the handler's own frame.
    """

    def __init__(self, job: Callable[[Callable[[Any], None]], Any]):
        self._queue: queue.Queue = queue.Queue()
        self._result: Any = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=True)
        self._thread.start()

    def _run(self, job: Callable) -> None:
        try:
            self._result = job(self._queue.put)
        except BaseException as exc:  # handed to the consumer, which shows it to the user
            self._error = exc
        finally:
            self._queue.put(_DONE)

    def updates(self, poll_s: float = 0.2) -> Iterator[list]:
        """Lists of emitted items (possibly empty: a heartbeat every poll_s) until the job ends."""
        done = False
        while not done:
            items: list = []
            try:
                items.append(self._queue.get(timeout=poll_s))
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if items and items[-1] is _DONE:
                items.pop()
                done = True
            yield items

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def warn(message: str) -> None:
    """A toast for a refusal or failure; the tab's status line keeps the message after the toast goes."""
    import gradio as gr

    gr.Warning(message, duration=6)


def user_message(exc: BaseException) -> str:
    """What to show for an exception: our own ValueErrors carry user-facing text already."""
    if isinstance(exc, (ValueError, KeyError, FileNotFoundError, PermissionError)):
        return str(exc).strip("'\"") or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class CancelTokens:
    """Cancel events by token. A page's gr.State keeps only the token (plain data that pickles, as
    ZeroGPU needs); the event stays with the handler that runs the job."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def token(self, event: threading.Event) -> str:
        with self._lock:
            for token, known in self._events.items():
                if known is event:
                    return token
            # Jobs long over are forgotten, so the map does not grow with every job ever run.
            for token in [t for t, e in self._events.items() if e.is_set()]:
                del self._events[token]
            token = uuid.uuid4().hex
            self._events[token] = event
            return token

    def event(self, token: Optional[str]) -> Optional[threading.Event]:
        with self._lock:
            return self._events.get(token or "")
