"""Public mode in the app: what a stranger on a public Space can and cannot do, and what they are told.

The app runs in-process (demo preset, a temporary store, synthetic samples) with small limits:
EXPLORER_PUBLIC_MAX_UPLOAD_MB=0.05, EXPLORER_PUBLIC_MAX_PIXELS=1e6, EXPLORER_PUBLIC_MAX_SWEEP_ITEMS=4.
Public mode comes from EXPLORER_PUBLIC=1, from SPACE_ID alone (inside a Hugging Face Space), or from
the --public flag; EXPLORER_PUBLIC=0 inside a Space turns it off. In public mode:
  - the Results tab has no server-path box, and a path sent to its API ("open_results") is refused
    with the policy's message;
  - an upload over the size limit is refused by Gradio (client and server) and, should one get past
    it, by the app, which says so in the Compare tab's status; an image over the pixel limit likewise;
  - a sweep over the item limit is refused in the Sweep tab's status, and the previous sweep (its
    downloads, its resume point) is kept;
  - only the preset's models are offered.
Every refusal also raises a gr.Warning (recorded here by wrapping gradio.Warning).
"""

from __future__ import annotations

import functools
import json
import re
import socket
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

TASK = "pneumonia"
PRESET_MODELS = ["demo-llava", "demo-llava-med", "demo-gemma", "demo-medgemma"]
LIMITS = {
    "EXPLORER_PUBLIC_MAX_UPLOAD_MB": "0.05",
    "EXPLORER_PUBLIC_MAX_PIXELS": "1000000",
    "EXPLORER_PUBLIC_MAX_SWEEP_ITEMS": "4",
}
MAX_UPLOAD_BYTES = int(0.05 * 2**20)
PATH_REFUSED = "does not read files from the server by path"
BIG_SWEEP = (["demo-gemma", "demo-medgemma"], [TASK], ["abnormal", "normal"], 1, "paper")  # 2x2x2 = 8 answers
SMALL_SWEEP = (["demo-gemma"], [TASK], ["abnormal"], 1, "paper")  # 2 answers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(root: Path) -> Path:
    for k, label in enumerate(("negative", "positive")):
        folder = root / TASK / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32), 60 + 120 * k, dtype=np.uint8), "L").save(folder / "a.png")
    return root


@pytest.fixture()
def warnings(monkeypatch) -> list[str]:
    """The messages of every gr.Warning, in order; and an environment with the small limits, public
    mode not yet decided."""
    import gradio

    recorded_messages: list[str] = []
    original = gradio.Warning

    @functools.wraps(original)
    def recorded(message="", *args, **kwargs):
        recorded_messages.append(str(message))
        return original(message, *args, **kwargs)

    monkeypatch.setattr(gradio, "Warning", recorded)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    for name in ("EXPLORER_PUBLIC", "SPACE_ID", "EXPLORER_ENDPOINTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in LIMITS.items():
        monkeypatch.setenv(name, value)
    return recorded_messages


@pytest.fixture()
def start_app(tmp_path, monkeypatch, warnings):
    """start(env, public_flag=None) -> (url, settings, warnings): the app in this process under `env`."""
    from explorer.app.context import AppSettings
    from explorer.app.layout import build_demo, launch_kwargs

    demos = []

    def start(env: dict[str, str], public_flag=None):
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = AppSettings.from_env(
            preset="demo",
            samples_dir=_samples(tmp_path / "samples"),
            store_path=tmp_path / "explorer.sqlite",
            public=public_flag,
        )
        demo = build_demo(settings)
        port = _free_port()
        demo.launch(
            server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(settings)
        )
        demos.append(demo)
        return f"http://127.0.0.1:{port}/", settings, warnings

    yield start
    for demo in demos:
        demo.close()


def _config(url: str) -> tuple[dict, dict]:
    with urllib.request.urlopen(url + "config", timeout=30) as r:
        config = json.load(r)
    return config, {c["props"].get("elem_id"): c["props"] for c in config["components"] if c["props"].get("elem_id")}


def _noise_png(path: Path, side: int) -> Path:
    """Incompressible: about side*side bytes as a PNG."""
    Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side), dtype=np.uint8), "L").save(path)
    return path


def _flat_png(path: Path, width: int, height: int) -> Path:
    """Many pixels, few bytes."""
    Image.new("L", (width, height), 128).save(path)
    return path


def _offered_models(props: dict) -> list[str]:
    return [value for _, value in props["choices"]]


@pytest.mark.parametrize(
    "env,flag",
    [({"EXPLORER_PUBLIC": "1"}, None), ({"SPACE_ID": "someone/explorer"}, None), ({}, True)],
    ids=["EXPLORER_PUBLIC=1", "SPACE_ID", "--public"],
)
def test_public_mode_refuses_where_the_user_looks_and_keeps_what_was_computed(start_app, tmp_path, env, flag):
    from gradio_client import Client, handle_file

    from explorer.app.compare import CompareHandlers
    from explorer.app.context import SharedExplorer

    url, settings, warnings = start_app(env, flag)
    assert settings.public
    config, props = _config(url)
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))

    # ---- Results: no server-path box; a typed path through the API is refused with the policy's message
    assert props["results-path"]["visible"] is False and props["results-open"]["visible"] is False
    opened = client.predict(api_name="/open_store")
    assert "answers from this app" in opened[-5]
    for path in (str(settings.store_path), "/etc/passwd", "/no/such/file.csv"):
        status = client.predict(path, api_name="/open_results")[-5]
        assert PATH_REFUSED in status and "vx-notice-error" in status, status
        assert PATH_REFUSED in warnings[-1]

    # ---- uploads over the size limit: Gradio refuses them in the client and on the server...
    big = _noise_png(tmp_path / "big.png", 400)
    assert big.stat().st_size > MAX_UPLOAD_BYTES and config["max_file_size"] == MAX_UPLOAD_BYTES
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(
            handle_file(str(big)),
            TASK,
            "unknown",
            "Is this image abnormal?",
            "abnormal",
            ["demo-gemma"],
            "paper",
            api_name="/compare",
        )
    refused = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
    assert refused.status_code == 413 and "size" in refused.text
    # ...and one that got past Gradio is refused by the app, in the Compare tab's status, the case kept.
    case, preview, caption, status, upload, label, *_ = CompareHandlers(SharedExplorer(settings)).upload(
        str(big), TASK, "unknown", None
    )
    assert "too large for this public demo" in status and "vx-notice-error" in status
    assert case == preview == caption == {"__type__": "update"}  # skipped: the current image stays
    assert "too large for this public demo" in warnings[-1]
    # An image over the pixel limit (few bytes, many pixels) is refused in the status of a compare.
    wide = _flat_png(tmp_path / "wide.png", 1250, 1000)
    assert wide.stat().st_size < MAX_UPLOAD_BYTES
    _, _, status = client.predict(
        handle_file(str(wide)),
        TASK,
        "unknown",
        "Is this image abnormal?",
        "abnormal",
        ["demo-gemma"],
        "paper",
        api_name="/compare",
    )
    assert "image is too large" in status and "1 megapixel limit" in status and "vx-notice-error" in status, status
    assert "megapixel" in warnings[-1]

    # ---- sweeps: within the limit it runs; above it, refused in the status, the previous sweep kept
    done = client.predict(*SMALL_SWEEP, api_name="/sweep")
    assert 'data-state="done"' in done[0] and 'data-total="2"' in done[0], done[0]
    assert done[9]["value"].endswith("answers.csv") and done[9]["interactive"] is True
    n_warnings = len(warnings)
    job = client.submit(*BIG_SWEEP, api_name="/sweep")
    job.result()
    stream = job.outputs()  # every update the browser would have applied, not only the last
    progress, status = stream[-1][0], stream[-1][1]
    assert "This sweep has 8 answers; a public demo runs at most 4" in status and "vx-notice-error" in status
    assert 'data-state="failed"' in progress
    touched = [d for out in stream for d in out[9:] if "value" in d or "interactive" in d]
    assert not touched, f"the refused sweep changed the previous sweep's downloads: {touched}"
    assert len(warnings) == n_warnings + 1 and "at most 4" in warnings[-1]
    resumed = client.predict(api_name="/resume_sweep")  # resumes the sweep before the refused one
    assert 'data-state="done"' in resumed[0] and 'data-total="2"' in resumed[0] and "2 cached" in resumed[0]

    # ---- models: only the preset's are offered, anything else is refused
    for elem_id in ("models", "grid-models", "sweep-models", "model-pick"):
        assert _offered_models(props[elem_id]) == PRESET_MODELS, elem_id
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("demo-text", api_name="/load_model")
    table, _, settings_html = client.predict(api_name="/model_status")
    assert sorted(set(re.findall(r'data-alias="([^"]+)"', table))) == sorted(PRESET_MODELS)
    assert "Public mode" in settings_html and "sweeps up to 4 answers" in settings_html
    assert str(settings.store_path) not in settings_html  # no server paths on a public page


def test_explorer_public_0_turns_it_off_inside_a_space(start_app, tmp_path):
    from gradio_client import Client, handle_file

    url, settings, warnings = start_app({"SPACE_ID": "someone/explorer", "EXPLORER_PUBLIC": "0"})
    assert not settings.public
    config, props = _config(url)
    assert props["results-path"]["visible"] is True and props["results-open"]["visible"] is True
    assert config["max_file_size"] > 100 * 2**20
    client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))

    # The limits in the environment do not apply: a wide image runs, a sweep of 8 runs.
    wide = _flat_png(tmp_path / "wide.png", 1250, 1000)
    _, answers, status = client.predict(
        handle_file(str(wide)),
        TASK,
        "unknown",
        "Is this image abnormal?",
        "abnormal",
        ["demo-gemma"],
        "paper",
        api_name="/compare",
    )
    assert [a["model"] for a in answers] == ["demo-gemma"] and "1 answers" in status, status
    swept = client.predict(*BIG_SWEEP, api_name="/sweep")
    assert 'data-state="done"' in swept[0] and 'data-total="8"' in swept[0], swept[0]
    # A path on the server opens.
    status = client.predict(str(settings.store_path), api_name="/open_results")[-5]
    assert "9 answers from" in status and str(settings.store_path) in status, status
    _, _, settings_html = client.predict(api_name="/model_status")
    assert "no (private: no limits)" in settings_html
    assert not warnings


def test_a_refused_grid_keeps_the_grid_on_screen(warnings, tmp_path, monkeypatch):
    """The engine refuses a model the preset does not list (the API's choices stop it first; the grid
    handler must cope with the engine's refusal too): warning, status, and the previous grid stays."""
    from explorer.app.context import AppSettings, SharedExplorer
    from explorer.app.grid import GridHandlers, empty_state

    monkeypatch.setenv("EXPLORER_PUBLIC", "1")
    settings = AppSettings.from_env(preset="demo", samples_dir=None, store_path=tmp_path / "grid.sqlite")
    shared = SharedExplorer(settings)
    handlers = GridHandlers(shared)
    case = shared.get().case_from_upload(_noise_png(tmp_path / "x.png", 40), TASK)
    *_, first = handlers.run_all(case, ["demo-gemma"], "paper", empty_state())
    table, _, note, state, _ = first
    assert "vx-notice-ok" in note and len(state["views"]) == 12
    *_, refused = handlers.run_all(case, ["demo-gemma", "gemma"], "paper", state)  # gemma: not in the demo preset
    table2, _, note2, state2, _ = refused
    assert "only runs the preset&#x27;s models" in note2 and "not available here: gemma" in note2
    assert "vx-notice-error" in note2
    assert "only runs the preset's models" in warnings[-1]
    assert state2 is state and table2 == table  # the grid computed before is still there
