"""Keys come only from the environment and go nowhere else.

Sentinel values in HF_TOKEN, OPENAI_API_KEY and a custom variable named by an endpoints file; the CLI
sweeps against fake servers (answers with the custom key, the LLM judge with OPENAI_API_KEY) that
misbehave the way real ones do, echoing the Authorization header or the key itself in error messages.
Then retry, export, metrics, import and models. The sentinels must appear in no stdout/stderr, no log
record (DEBUG, every library), no exported file, no manifest and no stored row, including the raw
bytes of the SQLite file and its WAL. (The app's half of this check comes with the app.)
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import pytest
import yaml
from fake_openai_server import FakeOpenAIServer, Fault
from PIL import Image, ImageDraw

from explorer.cli.main import main
from explorer.runs.store import Store
from explorer.scoring.judge import JUDGE_ERROR

CUSTOM_ENV = "EXPLORER_TEST_CUSTOM_KEY"
SENTINELS = {
    "HF_TOKEN": "hf_SENTINELhfToken0a1b2c3d4e5f",
    "OPENAI_API_KEY": "sk-proj-SENTINELopenai9z8y7x6w",
    # Not shaped like any known key: only scrubbing by value can catch it.
    CUSTOM_ENV: "SENTINELcustom-5e4d3c2b1a",
}
MARK = "SENTINEL"  # every sentinel carries it: a partial leak (a prefix, a cut) is found too


def _cli(argv: list[str], outputs: list[str]) -> int:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    outputs += [out.getvalue(), err.getvalue()]
    return rc


def _samples(root: Path) -> Path:
    for i, cls in enumerate(("negative", "positive")):
        img = Image.new("L", (40, 40), 50 + 100 * i)
        ImageDraw.Draw(img).ellipse((4, 6, 30, 28 + i), fill=230)
        (root / "pneumonia" / cls).mkdir(parents=True, exist_ok=True)
        img.save(root / "pneumonia" / cls / "x.png")
    return root


def _leaks_in_files(paths) -> list[str]:
    """Raw bytes, so a key inside an SQLite page, a WAL frame or a Parquet column is found too."""
    return [f"file {p.name}" for p in paths if p.is_file() and MARK.encode() in p.read_bytes()]


def _log_text(records: list[logging.LogRecord]) -> str:
    lines = []
    for record in records:
        lines.append(f"{record.name} {record.levelname} {record.getMessage()}")
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(lines)


def test_keys_from_the_environment_never_leak(tmp_path, monkeypatch, caplog, tmp_path_factory):
    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EXPLORER_ENDPOINTS", raising=False)
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path_factory.getbasetemp() / "explorer-cache"))
    caplog.set_level(logging.DEBUG)  # every logger, the openai client and httpx included

    outputs: list[str] = []
    store, other = tmp_path / "store.sqlite", tmp_path / "imported.sqlite"
    with FakeOpenAIServer() as answers, FakeOpenAIServer() as judge:
        endpoints = tmp_path / "endpoints.yaml"
        common = {"timeout_s": 5.0, "max_concurrency": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.02}
        endpoints.write_text(
            yaml.safe_dump(
                {
                    "demo-gemma": {
                        "base_url": answers.base_url,
                        "model": "served",
                        "api_key_env": CUSTOM_ENV,
                        "max_retries": 1,
                        **common,
                    },
                    "gpt-5": {
                        "base_url": judge.base_url,
                        "model": "judge",
                        "api_key_env": "OPENAI_API_KEY",
                        "send_temperature": False,
                        "max_retries": 0,
                        **common,
                    },
                }
            )
        )
        # Servers that echo what they were sent, as real ones do in their error messages.
        answers.add_faults(
            Fault.http(500, echo_auth=True),  # retried (a warning is logged), then answered
            Fault.delay(0.0),
            Fault.http(401, echo_auth=True),  # recorded as the item's error
            Fault.http(403, f"key {SENTINELS[CUSTOM_ENV]} is not allowed to use this model"),
        )
        judge.add_faults(
            Fault.http(401, echo_auth=True),
            Fault.reply("NEGATIVE"),
            Fault.http(400, f"org of {SENTINELS['OPENAI_API_KEY']} has no access"),
        )
        sweep = [
            "sweep",
            "--preset",
            "demo",
            "--samples",
            str(_samples(tmp_path / "samples")),
            "--tasks",
            "pneumonia",
            "--models",
            "demo-gemma",
            "--prompts",
            "abnormal,normal,mc_pos_first",
            "--per-class",
            "1",
            "--batch-size",
            "3",
            "--judge",
            "--endpoints",
            str(endpoints),
            "--store",
            str(store),
        ]
        assert _cli(sweep, outputs) == 1  # failed items: a non-zero exit with the count
        assert "6 planned" in outputs[-2] and "2 errors" in outputs[-2] and "2 of 6 items failed" in outputs[-1]
        # The errors as stored now (a retry replaces them): what the servers echoed, scrubbed.
        with Store(store) as s:
            first_errors = [r["error"] for r in s.answers() if r["error"]]
        assert len(first_errors) == 2 and all("[redacted]" in e for e in first_errors)
        assert any("not allowed to use this model" in e for e in first_errors)
        assert not _leaks_in_files(tmp_path.glob("*.sqlite*"))
        # The answers now all succeed; the judge's failed verdicts remain, so the exit stays non-zero.
        assert _cli(sweep + ["--retry-errors"], outputs) == 1
        assert "2 planned, 0 from the store, 2 generated, 0 errors" in outputs[-2]
        assert "judgements failed" in outputs[-1] and "items failed" not in outputs[-1]

        # The keys were really used: each server saw its own.
        sent_answers = {r.headers.get("authorization") for r in answers.requests}
        sent_judge = {r.headers.get("authorization") for r in judge.requests}
    assert sent_answers == {f"Bearer {SENTINELS[CUSTOM_ENV]}"}
    assert sent_judge == {f"Bearer {SENTINELS['OPENAI_API_KEY']}"}

    with Store(store) as s:
        rows = s.answers()
    errors = [r["error"] for r in rows if r["error"]]
    details = [r["verdict_detail"] for r in rows if (r["verdict_detail"] or "").startswith(JUDGE_ERROR)]
    # Failed judgements are stored as judge errors (retried first, so the reason kept is the last
    # attempt's); whatever the judge's server echoed never holds a key.
    assert not errors and details
    assert not any(value in d for d in details for value in SENTINELS.values())

    out_dir = tmp_path / "export"
    assert (
        _cli(
            ["export", "--store", str(store), "--all", "--out", str(out_dir), "--formats", "csv,parquet,json"], outputs
        )
        == 0
    )
    assert _cli(["metrics", "--store", str(store), "--all", "--cells", "--paired"], outputs) == 0
    assert _cli(["import", str(out_dir / "answers.parquet"), "--store", str(other)], outputs) == 0
    assert _cli(["models"], outputs) == 0

    # Everything a person or a program could read afterwards.
    leaks = []
    for i, text in enumerate(outputs):
        if MARK in text:
            leaks.append(f"CLI output #{i}: ...{text[max(0, text.index(MARK) - 80) : text.index(MARK) + 40]}...")
    logs = _log_text(caplog.records)
    assert any("redacted" in r.getMessage() for r in caplog.records)  # the retried echo was logged, scrubbed
    if MARK in logs:
        leaks.append(f"log: ...{logs[max(0, logs.index(MARK) - 120) : logs.index(MARK) + 40]}...")
    files = sorted(p for p in list(out_dir.rglob("*")) + list(tmp_path.glob("*.sqlite*")) if p.is_file())
    assert {"answers.csv", "answers.parquet", "answers.json", "manifest.json", "store.sqlite"} <= {
        p.name for p in files
    }
    leaks += _leaks_in_files(files)
    with Store(store) as s, Store(other) as o:
        for row in s.answers() + o.answers() + [s.run(r) for r in s.runs_frame()["run_id"]]:
            if MARK in repr(row):
                leaks.append(f"stored row {row.get('id') or row.get('run_id')}")
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize(
    "text",
    [
        "demo-gemma: {base_url: 'http://h/v1', model: m, api_key: SENTINELpasted}\n",
        "demo-gemma: {base_url: 'http://h/v1', model: m, extra: {api_key: SENTINELpasted}}\n",
        "demo-gemma: {base_url: 'http://h/v1', model: m, api_key_env: SENTINEL-pasted-value}\n",
    ],
)
def test_a_key_pasted_into_the_endpoints_file_is_refused_without_echoing_it(text, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "endpoints.yaml"
    path.write_text(text)
    outputs: list[str] = []
    assert (
        _cli(["sweep", "--preset", "demo", "--endpoints", str(path), "--store", str(tmp_path / "s.sqlite")], outputs)
        == 2
    )
    assert "error:" in outputs[1] and "environment" in outputs[1] + "NAME"
    assert MARK not in "".join(outputs) + _log_text(caplog.records)
