"""The app's API through gradio_client: one compare call on the offline demo models, then the same
call again, which must come back from the store (cached)."""

from __future__ import annotations

import importlib
import socket
import sys

import numpy as np
import pytest
from PIL import Image

from explorer.schema import VERDICT_LABELS

MODELS = ["demo-gemma", "demo-medgemma"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def app_url(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_PRESET", "demo")
    monkeypatch.setenv("EXPLORER_STORE", str(tmp_path / "explorer.sqlite"))
    monkeypatch.setenv("EXPLORER_SAMPLES", "")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    app = importlib.reload(sys.modules["app"]) if "app" in sys.modules else importlib.import_module("app")
    port = _free_port()
    settings = app.AppSettings.from_env()
    app.demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app.launch_kwargs(settings)
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.demo.close()


def test_compare_api_answers_then_serves_from_cache(app_url, tmp_path):
    from gradio_client import Client, handle_file

    rng = np.random.default_rng(0)
    path = tmp_path / "xray.png"
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").save(path)
    client = Client(app_url, verbose=False)
    args = (handle_file(str(path)), "pneumonia", "positive", "Is this image abnormal?", "abnormal", MODELS, "paper")

    html, answers, status = client.predict(*args, api_name="/compare")
    assert [a["model"] for a in answers] == MODELS
    for a in answers:
        assert a["prompt_id"] == "abnormal" and a["label"] == "positive"
        assert a["error"] is None and a["verdict"] in VERDICT_LABELS
        # "yes" to "abnormal?" means positive: correct exactly when the verdict is positive.
        assert a["correct"] == (a["verdict"] == "positive" if a["verdict"] in ("positive", "negative") else None)
        assert a["random_weights"] is True and a["cached"] is False
    assert html.count('class="vx-card vx-done"') == 2 and 'data-verdict="' in html
    assert "2 answers" in status

    html2, again, status2 = client.predict(*args, api_name="/compare")
    assert all(a["cached"] for a in again)
    assert [a["answer"] for a in again] == [a["answer"] for a in answers]
    assert html2.count(">cached<") == 2 and "from the store" in status2

    _, _, bad = client.predict(
        handle_file(str(path)), "pneumonia", "unknown", "   ", "abnormal", MODELS, "paper", api_name="/compare"
    )
    assert "prompt is empty" in bad
