"""The app's half of the secrets check: keys come from the environment and show up nowhere.

`python app.py` runs in a subprocess with sentinel values in HF_TOKEN, HUGGING_FACE_HUB_TOKEN,
OPENAI_API_KEY and a custom variable, and an endpoints file (EXPLORER_ENDPOINTS) whose api_key_env
names two of them. The endpoints are fake OpenAI-compatible servers that echo the key back in their
error messages, as real ones do; the openai client logs at debug level (OPENAI_LOG=debug). Through the
app's API: compare (failing, then answering), describe, grid, a small sweep with its downloads, the
Results tab's store, the Models & settings tab's handlers (model_status, load_model); over HTTP: the
page, /config and /gradio_api/info. Then the app's stdout/stderr, every stored row and the raw bytes
of the SQLite files. No sentinel may appear in any of them, and the servers must have received the keys.
"""

from __future__ import annotations

import importlib.util
import json
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from fake_openai_server import FakeOpenAIServer, Fault
from PIL import Image

from explorer.runs.store import Store

CUSTOM_ENV = "EXPLORER_TEST_CUSTOM_KEY"
SENTINELS = {
    "HF_TOKEN": "hf_SENTINELhfToken0a1b2c3d4e5f",
    "HUGGING_FACE_HUB_TOKEN": "hf_SENTINELhubToken6g7h8i9j",
    "OPENAI_API_KEY": "sk-proj-SENTINELopenai9z8y7x6w",
    CUSTOM_ENV: "SENTINELcustom-5e4d3c2b1a",  # shaped like no known key: only scrubbing by value finds it
}
MARK = "SENTINEL"  # in every sentinel: a partial leak (a prefix, a cut) is found too
TASK = "pneumonia"
MODELS = ["demo-gemma", "demo-medgemma", "demo-llava"]  # two on the fake endpoints, one local


def _tools():
    spec = importlib.util.spec_from_file_location(
        "explorer_screenshots", Path(__file__).parent / "browser" / "screenshots.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode("utf-8", "replace")


def _where(text: str) -> str:
    i = text.index(MARK)
    return text[max(0, i - 120) : i + 40]


def test_no_key_reaches_the_app_pages_api_logs_store_or_exports(tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    tools = _tools()
    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OPENAI_LOG", "debug")  # the openai client logs requests and retries to stderr
    for name in ("EXPLORER_PUBLIC", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    samples = tools.synthetic_samples(tmp_path / "samples")
    image = tmp_path / "upload.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (48, 48), dtype=np.uint8), "L").save(image)
    store, log = tmp_path / "store.sqlite", tmp_path / "app.log"
    seen: dict[str, str] = {}  # what a person or a program could read, by where it came from
    common = {"timeout_s": 10.0, "max_concurrency": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02, "max_retries": 1}

    with FakeOpenAIServer() as gemma, FakeOpenAIServer() as medgemma:
        endpoints = tmp_path / "endpoints.yaml"
        endpoints.write_text(
            yaml.safe_dump(
                {
                    "demo-gemma": {
                        "base_url": gemma.base_url,
                        "model": "served-gemma",
                        "api_key_env": "OPENAI_API_KEY",
                        **common,
                    },
                    "demo-medgemma": {
                        "base_url": medgemma.base_url,
                        "model": "served-medgemma",
                        "api_key_env": CUSTOM_ENV,
                        **common,
                    },
                }
            )
        )
        monkeypatch.setenv("EXPLORER_ENDPOINTS", str(endpoints))
        # First compare: gemma's server refuses the key and echoes it back, medgemma's names the key in
        # its message (neither is retried: each becomes the answer's error, shown on its card).
        gemma.add_faults(Fault.http(401, echo_auth=True))
        medgemma.add_faults(Fault.http(403, f"key {SENTINELS[CUSTOM_ENV]} is not allowed to use this model"))

        with tools.running_app(store, samples=samples, log=log) as url:
            for path in ("", "config", "gradio_api/info", "gradio_api/info?all_endpoints=true"):
                seen[f"GET /{path}"] = _get(url + path)
            client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
            seen["view_api"] = json.dumps(client.view_api(print_info=False, return_format="dict"))

            def call(name: str, *args, api_name: str):
                out = client.predict(*args, api_name=api_name)
                seen[name] = json.dumps(out, default=str)
                return out

            _, failed, status = call(
                "compare (servers refuse)",
                handle_file(str(image)),
                TASK,
                "unknown",
                "Is this image abnormal?",
                "abnormal",
                MODELS,
                "paper",
                api_name="/compare",
            )
            errors = {a["model"]: a["error"] for a in failed}
            assert errors["demo-gemma"] and errors["demo-medgemma"] and not errors["demo-llava"], status
            assert "[redacted]" in errors["demo-gemma"] + errors["demo-medgemma"]
            _, answered, _ = call(
                "compare (answered)",
                handle_file(str(image)),
                TASK,
                "unknown",
                "Is this image normal?",
                "normal",
                MODELS,
                "paper",
                api_name="/compare",
            )
            assert not any(a["error"] for a in answered), [a["error"] for a in answered]
            assert answered[0]["answer"].startswith("echo served-gemma")  # it really went to the endpoint
            call("describe", handle_file(str(image)), TASK, "unknown", MODELS, "paper", api_name="/describe")
            call("grid", ["demo-gemma"], "paper", api_name="/grid")
            gemma.add_faults(Fault.http(500, echo_auth=True))  # retried (and logged), then answered
            sweep = call("sweep", ["demo-gemma", "demo-medgemma"], [TASK], ["abnormal"], 1, "paper", api_name="/sweep")
            assert 'data-state="done"' in sweep[0], sweep[0]
            downloads = [Path(d["value"] if isinstance(d, dict) else d) for d in sweep[9:]]
            assert {p.name for p in downloads} >= {"answers.csv", "answers.parquet", "manifest.json"}
            call("open_store", api_name="/open_store")
            table, endpoints_html, settings_html = call("model_status", api_name="/model_status")
            assert "$OPENAI_API_KEY is set" in endpoints_html and f"${CUSTOM_ENV} is set" in endpoints_html
            assert "set in the environment" in settings_html  # the HF token: that it is set, not what it is
            call("load_model", "demo-gemma", api_name="/load_model")
        # The keys were really used, each by its own endpoint.
        assert {r.headers.get("authorization") for r in gemma.requests} == {f"Bearer {SENTINELS['OPENAI_API_KEY']}"}
        assert {r.headers.get("authorization") for r in medgemma.requests} == {f"Bearer {SENTINELS[CUSTOM_ENV]}"}

    seen["app stdout/stderr"] = log.read_text(errors="replace")
    assert "[redacted] (attempt 1 of 2); retrying" in seen["app stdout/stderr"]  # the echo was logged, scrubbed
    leaks = [f"{where}: ...{_where(text)}..." for where, text in seen.items() if MARK in text]
    files = sorted(p for p in [*tmp_path.glob("store.sqlite*"), *downloads] if p.is_file())
    assert "store.sqlite" in {p.name for p in files}
    leaks += [f"file {p.name}" for p in files if MARK.encode() in p.read_bytes()]
    with Store(store) as s:
        rows = s.answers() + [s.run(r) for r in s.runs_frame()["run_id"]]
    assert len(rows) > 10
    leaks += [f"stored row {r.get('id') or r.get('run_id')}" for r in rows if MARK in repr(r)]
    assert not leaks, "\n".join(leaks)
