"""The app under ZeroGPU: with a stand-in `spaces` module whose GPU decorator does what ZeroGPU needs
(every argument and every result must pickle, since the call runs in another process), a Compare runs
through the decorated path, and the state values the tabs keep all pickle."""

from __future__ import annotations

import functools
import inspect
import pickle
import socket
import sys
import threading
import types

import numpy as np
import pytest
from PIL import Image

MODELS = ["demo-gemma", "demo-medgemma"]


class StandInSpaces(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("spaces")
        self.calls: list[str] = []

    def GPU(self, duration: int = 60):  # noqa: N802 - the real package's name
        def decorate(fn):
            def check(values):
                pickle.dumps(values)  # raises on anything ZeroGPU could not send across processes
                return values

            if inspect.isgeneratorfunction(fn):

                @functools.wraps(fn)
                def wrapper(*args, **kwargs):
                    self.calls.append(fn.__name__)
                    check((args, kwargs))  # the handler is a bound method: every argument is a Gradio input
                    for out in fn(*args, **kwargs):
                        yield check(out)

                return wrapper

            @functools.wraps(fn)
            def plain(*args, **kwargs):
                self.calls.append(fn.__name__)
                check((args, kwargs))
                return check(fn(*args, **kwargs))

            return plain

        return decorate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def zerogpu_app(tmp_path, monkeypatch):
    spaces = StandInSpaces()
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    for name in ("EXPLORER_PUBLIC", "SPACE_ID", "EXPLORER_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from explorer.app.context import AppSettings
    from explorer.app.layout import build_demo, launch_kwargs

    folder = tmp_path / "samples" / "pneumonia"
    for label in ("negative", "positive"):
        (folder / label).mkdir(parents=True)
        Image.fromarray(np.full((32, 32), 80 if label == "negative" else 160, np.uint8), "L").save(
            folder / label / "a.png"
        )
    settings = AppSettings(
        preset="demo",
        samples_dir=tmp_path / "samples",
        store_path=tmp_path / "s.sqlite",
        public=False,
        gpu_concurrency=1,
    )
    demo = build_demo(settings)
    port = _free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(settings)
    )
    try:
        yield f"http://127.0.0.1:{port}/", spaces, tmp_path
    finally:
        demo.close()


def test_compare_runs_through_the_gpu_decorated_path(zerogpu_app):
    from gradio_client import Client, handle_file

    url, spaces, tmp_path = zerogpu_app
    image = tmp_path / "upload.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8), "L").save(image)
    client = Client(url, verbose=False, download_files=str(tmp_path / "dl"))
    html, answers, status = client.predict(
        handle_file(str(image)),
        "pneumonia",
        "unknown",
        "Is this image abnormal?",
        "abnormal",
        MODELS,
        "paper",
        api_name="/compare",
    )
    assert "run" in spaces.calls
    assert len(answers) == len(MODELS) and all(a["error"] is None for a in answers)


def test_every_state_value_pickles(tmp_path):
    from explorer.app.context import CancelTokens
    from explorer.service.core import Explorer

    ex = Explorer(preset="demo", store_path=tmp_path / "s.sqlite")
    try:
        tokens = CancelTokens()
        event = threading.Event()
        token = tokens.token(event)
        sweep_state = {"spec": ex.sweep_spec(), "cancel_token": token}
        diagnose_state = {"cancel_token": tokens.token(threading.Event()), "runs": ["run-1"]}
        case = ex.case_from_upload(Image.new("RGB", (8, 8), (1, 2, 3)), "pneumonia")
        for value in (sweep_state, diagnose_state, case, {"views": [], "case": "k"}, [], {}, "auto"):
            assert pickle.loads(pickle.dumps(value)) is not None
        assert tokens.event(token) is event and tokens.event("unknown") is None
    finally:
        ex.store.close()
