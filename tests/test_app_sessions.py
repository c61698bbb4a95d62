"""Ten people at once: the app's sessions keep their own images and answers, generation runs at most
settings.gpu_concurrency at a time (the engine's device gate; no app-wide lock), and every answer
lands in the store exactly once.

The app runs in-process (demo preset, a temporary store, a synthetic samples folder) with the Compare
and Sweep handlers and the engine's generation call wrapped in counters. Ten gradio_client sessions
(threads), each with a different image, ask two prompts of every demo model and then the first prompt
again (which must come back from the store); an eleventh session runs a small sweep through the Sweep
tab's API at the same time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import functools
import socket
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

N_SESSIONS = 10
GPU_CONCURRENCY = 2  # above 1, so the test shows the queue takes its limit from the settings
MODELS = ["demo-llava", "demo-llava-med", "demo-gemma", "demo-medgemma"]
TASK = "pneumonia"
N_PROMPTS = 2
SWEEP_PER_CLASS = 1  # one image of each class: 2 images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gauge:
    """How many calls are inside at once, and the most there ever were."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = self.peak = self.calls = 0

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


def _counted_generator(fn, gauge: Gauge):
    @functools.wraps(fn)  # Gradio reads the wrapped signature; this is still a generator function
    def wrapper(*args, **kwargs):
        with gauge.held():
            yield from fn(*args, **kwargs)

    return wrapper


def _counted(fn, gauge: Gauge):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with gauge.held():
            return fn(*args, **kwargs)

    return wrapper


def _samples(root: Path) -> Path:
    """pneumonia/{negative,positive}: two small synthetic images each (never the uploads' images)."""
    for k, label in enumerate(("negative", "positive")):
        folder = root / TASK / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            y, x = np.mgrid[0:48, 0:48]
            pixels = (120 + 60 * np.sin(x / (3 + i)) * np.cos(y / (4 + k))).clip(0, 255).astype("uint8")
            Image.fromarray(pixels, "L").save(folder / f"s{i}.png")
    return root


@pytest.fixture()
def app(tmp_path, monkeypatch):
    """The app in this process, with counters on the gpu-queue handlers and on generation itself."""
    import explorer.service.core as service
    from explorer.app.compare import CompareHandlers
    from explorer.app.context import AppSettings
    from explorer.app.layout import build_demo, launch_kwargs
    from explorer.app.sweep_tab import SweepHandlers

    for name in ("EXPLORER_PUBLIC", "SPACE_ID", "EXPLORER_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from explorer.models.backends.transformers_backend import TransformersBackend

    handlers, sweeps, engine, generation = Gauge(), Gauge(), Gauge(), Gauge()
    monkeypatch.setattr(CompareHandlers, "run", _counted_generator(CompareHandlers.run, handlers))
    monkeypatch.setattr(SweepHandlers, "run", _counted_generator(SweepHandlers.run, sweeps))
    # Explorer.grid and Explorer.sweep both go through service.run_sweep; generation itself is a
    # generate() call of the local backend.
    monkeypatch.setattr(service, "run_sweep", _counted(service.run_sweep, engine))
    monkeypatch.setattr(TransformersBackend, "generate", _counted(TransformersBackend.generate, generation))

    store = tmp_path / "explorer.sqlite"
    settings = AppSettings(
        preset="demo",
        samples_dir=_samples(tmp_path / "samples"),
        store_path=store,
        public=False,
        gpu_concurrency=GPU_CONCURRENCY,
    )
    demo = build_demo(settings)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(settings)
    )
    try:
        yield {
            "url": f"http://127.0.0.1:{port}/",
            "store": store,
            "handlers": handlers,
            "engine": engine,
            "sweeps": sweeps,
            "generation": generation,
        }
    finally:
        demo.close()


def _image(path: Path, seed: int) -> str:
    """A different image per session; returns the content hash the engine gives it."""
    from explorer.cases.images import load_image

    rng = np.random.default_rng(1000 + seed)
    Image.fromarray(rng.integers(0, 255, (40 + seed, 48), dtype=np.uint8), "L").save(path)
    return load_image(path).image_hash


def test_ten_sessions_and_a_sweep_keep_their_own_state(app, tmp_path):
    from gradio_client import Client, handle_file

    from explorer.catalog.presets import load_catalog
    from explorer.prompts.variants import closed_variants

    catalog = load_catalog()
    variants = closed_variants(catalog, TASK, catalog.study("demo").prompts)[:N_PROMPTS]
    uploads = {}
    for i in range(N_SESSIONS):
        path = tmp_path / f"upload_{i}.png"
        uploads[i] = (path, _image(path, i))
    assert len({h for _, h in uploads.values()}) == N_SESSIONS
    start = threading.Barrier(N_SESSIONS + 1, timeout=120)

    def session(i: int):
        path, _ = uploads[i]
        client = Client(app["url"], verbose=False, download_files=str(tmp_path / f"dl_{i}"))
        start.wait()
        calls = []
        for v in (*variants, variants[0]):  # the first prompt again: from the store this time
            html, answers, status = client.predict(
                handle_file(str(path)), TASK, "unknown", v.text, v.prompt_id, MODELS, "paper", api_name="/compare"
            )
            calls.append((v.prompt_id, html, answers, status))
        return calls

    def sweeper():
        client = Client(app["url"], verbose=False, download_files=str(tmp_path / "dl_sweep"))
        start.wait()
        return client.predict(
            MODELS, [TASK], [v.prompt_id for v in variants], SWEEP_PER_CLASS, "paper", api_name="/sweep"
        )

    with concurrent.futures.ThreadPoolExecutor(N_SESSIONS + 1) as pool:
        sweep_future = pool.submit(sweeper)
        futures = {i: pool.submit(session, i) for i in range(N_SESSIONS)}
        results = {i: f.result(timeout=240) for i, f in futures.items()}
        sweep_out = sweep_future.result(timeout=240)

    # ---- each session got answers for its own image, nobody else's
    for i, calls in results.items():
        _, image_hash = uploads[i]
        for n, (prompt_id, html, answers, status) in enumerate(calls):
            assert [a["model"] for a in answers] == MODELS, (i, n, status)
            for a in answers:
                assert a["image_hash"] == image_hash, f"session {i} got an answer for another image"
                assert a["case_id"] == f"{TASK}:upload:{image_hash[:16]}"
                assert a["prompt_id"] == prompt_id and a["error"] is None
            assert html.count('class="vx-card vx-done"') == len(MODELS)
            assert f"{len(MODELS)} answers" in status
        first, _, again = (c[2] for c in calls)
        assert not any(a["cached"] for a in first) and all(a["cached"] for a in again)
        assert [a["answer"] for a in again] == [a["answer"] for a in first]

    # ---- the sweep session: done, every planned item, its export on disk
    progress, status = sweep_out[0], sweep_out[1]
    n_sweep = len(MODELS) * N_PROMPTS * 2 * SWEEP_PER_CLASS
    assert 'data-state="done"' in progress and f'data-done="{n_sweep}" data-total="{n_sweep}"' in progress, progress
    assert "Sweep finished" in status
    download = sweep_out[3 + 6]  # progress, status, table, 6 charts, then the downloads (gr.update dicts)
    answers_csv = Path(download["value"] if isinstance(download, dict) else download)
    assert answers_csv.name == "answers.csv"
    with answers_csv.open(newline="") as f:
        exported = list(csv.DictReader(f))
    assert len(exported) == n_sweep
    assert not {r["image_hash"] for r in exported} & {h for _, h in uploads.values()}

    # ---- Compare's queue holds 4 x gpu_concurrency handlers and the sweep none of them; generate()
    # calls overlap up to gpu_concurrency (the engine's device gate), never more
    handlers, engine, generation = app["handlers"], app["engine"], app["generation"]
    assert handlers.calls == N_SESSIONS * (N_PROMPTS + 1) and app["sweeps"].calls == 1
    assert GPU_CONCURRENCY <= handlers.peak <= 4 * GPU_CONCURRENCY, f"{handlers.peak} Compare jobs ran at once"
    assert engine.calls == handlers.calls + 1
    assert 1 <= generation.peak <= GPU_CONCURRENCY, f"{generation.peak} generate() calls at once"

    # ---- the store: every answer once, exactly the expected rows
    with contextlib.closing(sqlite3.connect(app["store"])) as db:
        dupes = db.execute(
            "SELECT fingerprint, COUNT(*) FROM answers GROUP BY fingerprint HAVING COUNT(*) > 1"
        ).fetchall()
        total = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        stored = {
            (h, m, p): (a, n)
            for h, m, p, a, n in db.execute(
                "SELECT image_hash, model, prompt_id, answer, COUNT(*) FROM answers GROUP BY image_hash, model, prompt_id"
            )
        }
        errors = db.execute("SELECT COUNT(*) FROM answers WHERE error IS NOT NULL").fetchone()[0]
    assert dupes == [] and errors == 0
    assert total == N_SESSIONS * N_PROMPTS * len(MODELS) + n_sweep
    for i, calls in results.items():
        _, image_hash = uploads[i]
        for prompt_id, _, answers, _ in calls[:N_PROMPTS]:
            for a in answers:  # what the session was shown is what was generated for its image
                assert stored[(image_hash, a["model"], prompt_id)] == (a["answer"], 1)
