"""One work queue for a sweep: every backend pulls what it can run, all at the same time.

Concurrency is separate from batching. A unit of work is what one generate() call takes: a local
model's batch, or one request to an endpoint. Lanes pull units:
  - a device (local models) has as many workers as the gates allow per device; a worker takes the
    next unit, in plan order, whose model gate is free, so one model's batches run back to back
    (loaded once) and a second slot can run another model beside it;
  - an endpoint model has max_concurrency workers, each with one request in flight, so two servers
    (or two models on one server) are busy side by side and no batch waits for its slowest request.
Results come back to the caller's thread, which alone writes the store and calls the callbacks. A
worker takes its next unit only after its last one was handed over, so a cancel (checked before
each pull) loses at most the units in flight.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from explorer.models.backends.base import LOCAL_DEVICE
from explorer.models.gates import GenerationGates


@dataclass(frozen=True)
class LaneShape:
    """How a backend wants a model's work: None device = an endpoint that limits itself."""

    device: Optional[str]
    unit_size: int
    workers: int


def lane_shape(backend: Any, alias: str, batch_size: int) -> LaneShape:
    """The backend's own answer (a `scheduling(alias, batch_size)` method), else a local device."""
    ask = getattr(backend, "scheduling", None)
    if ask is None:
        return LaneShape(LOCAL_DEVICE, max(1, batch_size), 1)
    shape = ask(alias, batch_size)
    return LaneShape(
        shape.get("device"), max(1, int(shape.get("batch", batch_size))), max(1, int(shape.get("workers", 1)))
    )


@dataclass
class Unit:
    alias: str
    items: list  # SweepItems, one generate() call
    responses: Optional[list] = None
    error: Optional[BaseException] = None
    handled: threading.Event = field(default_factory=threading.Event)


class WorkQueue:
    """Units waiting, in plan order; a pull takes the first one a lane may run now."""

    def __init__(
        self,
        units: Sequence[Unit],
        gates: GenerationGates,
        shapes: dict[str, LaneShape],
        cancel: Optional[threading.Event],
        stop: threading.Event,
    ):
        self._units = list(units)
        self._gates, self._shapes = gates, shapes
        self._cancel, self._stop = cancel, stop
        self._cond = threading.Condition()
        self.skipped: list[Unit] = []

    def _halted(self) -> bool:
        return self._stop.is_set() or (self._cancel is not None and self._cancel.is_set())

    def pull(self, device: Optional[str], alias: Optional[str]) -> Optional[Unit]:
        """The next unit for a device worker (any model on that device whose gate is free, taken) or
        for an endpoint worker of `alias`; None when there is nothing more for it."""
        with self._cond:
            while True:
                if self._halted():
                    self.skipped += self._units
                    self._units = []
                    self._cond.notify_all()
                    return None
                mine = [
                    u
                    for u in self._units
                    if (u.alias == alias if alias is not None else self._shapes[u.alias].device == device)
                ]
                if not mine:
                    return None
                for unit in mine:
                    if alias is not None or self._gates.try_model(unit.alias):
                        self._units.remove(unit)
                        return unit
                # Every model left here is busy (another sweep or slot holds its gate): wait a little.
                self._cond.wait(timeout=0.05)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


def run_units(
    units: Sequence[Unit],
    shapes: dict[str, LaneShape],
    generate: Callable[[Unit], list],
    handle: Callable[[Unit, Any], None],
    gates: GenerationGates,
    cancel: Optional[threading.Event] = None,
    judge: Optional[Callable[[Unit], Any]] = None,
    poll_s: float = 0.1,
) -> list[Unit]:
    """Run every unit through `generate` on worker threads, then (when given) through `judge` on one
    judge thread of its own, and `handle(unit, judged)` each on this thread as they finish.
    Returns the units not run because of a cancel."""
    stop = threading.Event()
    work = WorkQueue(units, gates, shapes, cancel, stop)
    events: queue.Queue = queue.Queue()
    to_judge: queue.Queue = queue.Queue()

    def worker(device: Optional[str], alias: Optional[str]) -> None:
        while not stop.is_set():
            unit = work.pull(device, alias)
            if unit is None:
                break
            try:
                with gates.on_device(device):
                    unit.responses = generate(unit)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                unit.error = exc
            finally:
                if alias is None:
                    gates.release_model(unit.alias)
                    work.wake()
            events.put(("generated", unit, None))
            unit.handled.wait()

    def judge_worker() -> None:
        while True:
            unit = to_judge.get()
            if unit is None:
                return
            try:
                judged: Any = judge(unit)
            except Exception as exc:  # noqa: BLE001 - the handler records it per item
                judged = exc
            events.put(("judged", unit, judged))

    threads = []
    for device in dict.fromkeys(s.device for s in shapes.values() if s.device is not None):
        for _ in range(gates.per_device):
            threads.append(threading.Thread(target=worker, args=(device, None), daemon=True))
    for alias, shape in shapes.items():
        if shape.device is None:
            for _ in range(shape.workers):
                threads.append(threading.Thread(target=worker, args=(None, alias), daemon=True))
    judge_thread = threading.Thread(target=judge_worker, daemon=True) if judge is not None else None
    for t in threads + ([judge_thread] if judge_thread else []):
        t.start()
    try:
        pending = len(units)
        while pending:
            try:
                kind, unit, judged = events.get(timeout=poll_s)
            except queue.Empty:
                waiting = pending - len(work.skipped)
                if waiting <= 0 and not any(t.is_alive() for t in threads) and events.empty():
                    break  # what is left was never started (cancelled)
                continue
            if kind == "generated":
                if unit.error is not None and not isinstance(unit.error, Exception):
                    unit.handled.set()
                    raise unit.error  # KeyboardInterrupt and the like stop the sweep
                if judge is not None:
                    unit.handled.set()  # generation goes on while the judge works
                    to_judge.put(unit)
                    continue
            pending -= 1
            try:
                handle(unit, judged)
            finally:
                unit.handled.set()
    finally:
        stop.set()
        work.wake()
        to_judge.put(None)
        for unit in units:
            unit.handled.set()  # no worker waits on a hand-over that will not come
    return list(work.skipped)
