"""Sweeps started from the app, by the visitor who started them.

A sweep runs in its own thread and belongs to an owner key (a visitor: the browser's stored id, or
the page's session hash). Its progress is kept here, so a page that reloads can find it again
(`running(owner)`) and follow it with `updates()`; when the page that follows it closes
(`release(session)`), it is cancelled after a grace period unless a new page attached to it first.
In public mode a visitor runs at most `per_owner` sweeps at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

SweepJob = Callable[[Callable[[int, int, dict], None], threading.Event], Any]  # (progress, cancel) -> summary


@dataclass(frozen=True)
class SweepSnapshot:
    owner: str
    done: int
    total: int
    info: dict
    state: str  # running | finished | cancelled | failed
    started_at: float
    run_id: Optional[str]
    error: Optional[str]


class SweepHandle:
    """One app sweep: its thread, its cancel switch and the newest progress."""

    def __init__(
        self,
        owner: str,
        session: Optional[str],
        job: SweepJob,
        spec: Any = None,
        cancel: Optional[threading.Event] = None,
    ):
        self.owner, self.session, self.spec = owner, session, spec
        self.cancel_event = cancel or threading.Event()
        self.started_at = time.time()
        self._cond = threading.Condition()
        self._progress: tuple[int, int, dict] = (0, 0, {})
        self._version = 0
        self._summary: Any = None
        self._error: Optional[BaseException] = None
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(job,), daemon=True, name=f"sweep-{owner[:8]}")
        self._thread.start()

    def _run(self, job: SweepJob) -> None:
        try:
            self._summary = job(self._on_progress, self.cancel_event)
        except BaseException as exc:  # kept for whoever follows the sweep; the thread ends here
            self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._version += 1
                self._cond.notify_all()

    def _on_progress(self, done: int, total: int, info: dict) -> None:
        with self._cond:
            self._progress = (done, total, dict(info))
            self._version += 1
            self._cond.notify_all()

    @property
    def running(self) -> bool:
        return not self._finished

    def cancel(self) -> None:
        self.cancel_event.set()

    def snapshot(self) -> SweepSnapshot:
        with self._cond:
            done, total, info = self._progress
            if not self._finished:
                state = "running"
            elif self._error is not None:
                state = "failed"
            else:
                state = "cancelled" if getattr(self._summary, "cancelled", False) else "finished"
            return SweepSnapshot(
                self.owner,
                done,
                total,
                dict(info),
                state,
                self.started_at,
                info.get("run_id") or getattr(self._summary, "run_id", None),
                None if self._error is None else f"{type(self._error).__name__}: {self._error}",
            )

    def updates(self, poll_s: float = 0.2) -> Iterator[list]:
        """[(done, total, info)] whenever progress moved, [] as a heartbeat every poll_s, until the sweep
        ends (the same shape as ui.context.Background, so a page can follow it, or re-attach to it)."""
        seen = -1
        while True:
            with self._cond:
                if self._version == seen and not self._finished:
                    self._cond.wait(timeout=poll_s)
                moved = self._version != seen
                seen = self._version
                progress, finished = self._progress, self._finished
            yield [progress] if moved and progress[1] else []
            if finished:
                return

    def result(self, timeout: Optional[float] = None) -> Any:
        """The SweepSummary (waits for the end); raises what the sweep raised."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the sweep is still running")
        if self._error is not None:
            raise self._error
        return self._summary


class RunningSweeps:
    """The registry of app sweeps by owner."""

    def __init__(self, per_owner: Optional[int] = None, grace_s: float = 60.0):
        self.per_owner = per_owner  # None: no cap (a private app)
        self.grace_s = grace_s
        self._handles: dict[str, list[SweepHandle]] = {}
        self._lock = threading.Lock()

    def start(
        self,
        owner: str,
        job: SweepJob,
        spec: Any = None,
        session: Optional[str] = None,
        cancel: Optional[threading.Event] = None,
    ) -> SweepHandle:
        if not owner:
            raise ValueError("a sweep needs an owner (the visitor's session)")
        with self._lock:
            mine = [h for h in self._handles.get(owner, []) if h.running]
            if self.per_owner is not None and len(mine) >= self.per_owner:
                raise ValueError(
                    f"You already have {len(mine)} sweep(s) running; this public app allows "
                    f"{self.per_owner} at a time. Wait for it or cancel it first."
                )
            handle = SweepHandle(owner, session, job, spec, cancel)
            # Finished sweeps beyond the newest are forgotten: their answers are in the store.
            self._handles[owner] = mine + [handle]
            return handle

    def running(self, owner: str) -> Optional[SweepHandle]:
        """The owner's newest sweep (running, or finished and not replaced yet), or None."""
        with self._lock:
            handles = self._handles.get(owner) or []
            live = [h for h in handles if h.running]
            return (live or handles or [None])[-1]

    def attach(self, owner: str, session: Optional[str]) -> Optional[SweepHandle]:
        """A new page of the same owner follows its sweep (a reload): it is no longer cancelled when the
        old page's session ends."""
        handle = self.running(owner)
        if handle is not None:
            handle.session = session
        return handle

    def release(self, session: str, grace_s: Optional[float] = None) -> int:
        """The page with this session closed: its running sweeps are cancelled after grace_s, unless a
        page attached to them by then. Returns how many were scheduled."""
        grace = self.grace_s if grace_s is None else grace_s
        with self._lock:
            followed = [h for hs in self._handles.values() for h in hs if h.running and h.session == session]

        def cancel_if_still_orphaned(handle: SweepHandle) -> None:
            if handle.session == session:
                handle.cancel()

        for handle in followed:
            if grace <= 0:
                cancel_if_still_orphaned(handle)
            else:
                timer = threading.Timer(grace, cancel_if_still_orphaned, args=(handle,))
                timer.daemon = True
                timer.start()
        return len(followed)

    def cancel(self, owner: str) -> int:
        with self._lock:
            live = [h for h in self._handles.get(owner, []) if h.running]
        for h in live:
            h.cancel()
        return len(live)

    def all_running(self) -> list[SweepSnapshot]:
        with self._lock:
            return [h.snapshot() for hs in self._handles.values() for h in hs if h.running]
