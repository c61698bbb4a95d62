"""No app-wide lock: a visitor's cached Compare returns while another visitor's sweep is generating;
new generation waits for the device slot only; app sweeps belong to their visitor (found again after
a reload, cancelled when the page is gone for good, one at a time in public mode)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.runs.running_sweeps import RunningSweeps

TASK = "pneumonia"


def _samples(root: Path) -> Path:
    for k, label in enumerate(("negative", "positive")):
        folder = root / TASK / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            rng = np.random.default_rng(10 * k + i)
            Image.fromarray(rng.integers(0, 255, (40, 44), dtype=np.uint8), "L").save(folder / f"s{i}.png")
    return root


@pytest.fixture()
def explorer(tmp_path, monkeypatch):
    from explorer.service.core import Explorer

    monkeypatch.delenv("EXPLORER_ENDPOINTS", raising=False)
    ex = Explorer(
        preset="demo",
        store_path=tmp_path / "store.sqlite",
        samples_dir=_samples(tmp_path / "samples"),
        endpoints={},
        gpu_concurrency=1,
    )
    yield ex
    ex.close()


def test_a_cached_compare_returns_while_another_sessions_sweep_generates(explorer, monkeypatch):
    from explorer.models.backends.transformers_backend import TransformersBackend

    case = explorer.example_cases(TASK)[0]
    first, second = [v for v in explorer.variants(TASK) if v.kind == "closed"][:2]
    # Visitor B asked this before: it is in the store.
    assert not any(v.cached for v in explorer.ask(case, first, ["demo-gemma"]))

    release, inside = threading.Event(), threading.Event()
    real = TransformersBackend.generate

    def held(self, requests, on_text=None):
        inside.set()
        assert release.wait(60), "the test never released generation"
        return real(self, requests, on_text)

    monkeypatch.setattr(TransformersBackend, "generate", held)
    # Visitor A starts a sweep from the app; it blocks inside generation (holding the only device slot).
    spec = explorer.sweep_spec(models=["demo-medgemma"], tasks=[TASK], prompt_ids=[first.prompt_id], per_class=1)
    handle = explorer.start_sweep("visitor-a", spec, session="page-a")
    try:
        assert inside.wait(60), "the sweep never reached generation"
        assert explorer.running_sweep("visitor-a") is handle and handle.snapshot().state == "running"

        started = time.perf_counter()
        views = explorer.ask(case, first, ["demo-gemma"])  # visitor B, same question again
        waited = time.perf_counter() - started
        assert [v.cached for v in views] == [True] and views[0].error is None
        assert waited < 5, f"a cached answer waited {waited:.1f} s behind a sweep"

        # A new answer needs the device: it waits for the slot the sweep holds (gpu_concurrency 1).
        done = threading.Event()
        worker = threading.Thread(target=lambda: (explorer.ask(case, second, ["demo-gemma"]), done.set()), daemon=True)
        worker.start()
        assert not done.wait(0.5), "new generation ran beside the sweep although gpu_concurrency is 1"
    finally:
        release.set()
    summary = handle.result(timeout=120)
    assert summary.status == "finished" and summary.computed == 2
    assert done.wait(120)
    assert handle.snapshot().state == "finished"


def _waiting_job(progress, cancel):
    progress(0, 10, {"run_id": "r1"})
    cancel.wait(30)

    class Summary:
        cancelled = cancel.is_set()
        run_id = "r1"

    return Summary()


def test_a_closed_page_cancels_its_sweep_after_the_grace_period():
    sweeps = RunningSweeps(grace_s=0.2)
    handle = sweeps.start("visitor", _waiting_job, session="page-1")
    assert sweeps.release("page-1") == 1
    assert handle.result(timeout=10).cancelled and handle.snapshot().state == "cancelled"


def test_a_reloaded_page_re_attaches_and_keeps_the_sweep():
    sweeps = RunningSweeps(grace_s=0.3)
    handle = sweeps.start("visitor", _waiting_job, session="page-1")
    sweeps.release("page-1")
    assert sweeps.attach("visitor", "page-2") is handle  # the reload, within the grace period
    time.sleep(0.6)
    snap = handle.snapshot()
    assert snap.state == "running" and (snap.done, snap.total, snap.run_id) == (0, 10, "r1")
    assert next(handle.updates(poll_s=0.05)) == [(0, 10, {"run_id": "r1"})]  # a page can follow it again
    assert sweeps.cancel("visitor") == 1
    assert handle.result(timeout=10).cancelled


def test_public_mode_runs_one_sweep_per_visitor():
    sweeps = RunningSweeps(per_owner=1)
    first = sweeps.start("visitor", _waiting_job, session="p")
    with pytest.raises(ValueError, match="already have 1 sweep"):
        sweeps.start("visitor", _waiting_job, session="p")
    other = sweeps.start("someone-else", _waiting_job, session="q")  # another visitor is not held up
    for h in (first, other):
        h.cancel()
        h.result(timeout=10)
    again = sweeps.start("visitor", _waiting_job, session="p")  # the first one ended: allowed again
    again.cancel()
    again.result(timeout=10)


def test_the_sweep_tab_holds_no_slot_of_the_gpu_queue(tmp_path, monkeypatch):
    """In the app, Compare's queue and the sweep handlers are separate, and Compare has more handlers than
    device slots: neither a running sweep nor generating Compares make a cached Compare wait in Gradio's queue."""
    from explorer.app.context import AppSettings
    from explorer.app.layout import build_demo

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build_demo(AppSettings(preset="demo", samples_dir=None, store_path=tmp_path / "s.sqlite", gpu_concurrency=3))
    by_api = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert by_api["sweep"].concurrency_id != by_api["compare"].concurrency_id
    assert by_api["compare"].concurrency_limit == 12  # handlers; generation itself is bounded by the engine
    assert any(t[1] == "unload" for fn in demo.fns.values() for t in fn.targets)
