"""Findings 4, 6-10 and 14 as a user of the command line meets them: every number covers what it
claims, every failure is a non-zero exit, every error one line naming the file.

Sweeps go to a local OpenAI-compatible test server (tests/fake_openai_server.py) scripted to fail
some requests, so runs are fast and failures exact; a few commands run as real subprocesses
(`python -m explorer ...`) where the process itself is what is tested (exit code, disk full).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fake_openai_server import Fault, fake_openai  # noqa: F401  (fixture)
from PIL import Image, ImageDraw

from explorer.analysis.exports import export_results, import_answers
from explorer.cli.main import main
from explorer.runs.store import Store

REPO = Path(__file__).resolve().parent.parent
KEY_ENV = "EXPLORER_RELIABILITY_TEST_KEY"
MODEL = "demo-gemma"
PASS = Fault.delay(0.0)


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv(KEY_ENV, "sk-reliability-test-key")
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path_factory.getbasetemp() / "explorer-cache"))


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "explorer", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=kwargs.pop("cwd", REPO),
        **kwargs,
    )


def _samples(root: Path, per_class: int = 1) -> Path:
    for i, cls in enumerate(("negative", "positive")):
        (root / "pneumonia" / cls).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = Image.new("L", (48, 48), 30 + 60 * i + k)
            ImageDraw.Draw(img).rectangle((8, 8, 30 + i, 30 - k), fill=220)
            img.save(root / "pneumonia" / cls / f"{k}.png")
    return root


def _sweep_args(server, tmp_path, per_class: int = 1) -> list[str]:
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        yaml.safe_dump(
            {
                MODEL: {
                    "base_url": server.base_url,
                    "model": "served",
                    "api_key_env": KEY_ENV,
                    "timeout_s": 5.0,
                    "max_retries": 0,
                    "max_concurrency": 1,
                }
            }
        )
    )
    return [
        "sweep",
        "--preset",
        "demo",
        "--samples",
        str(_samples(tmp_path / "samples", per_class)),
        "--tasks",
        "pneumonia",
        "--models",
        MODEL,
        "--prompts",
        "abnormal,normal,evidence",
        "--per-class",
        str(per_class),
        "--batch-size",
        "2",
        "--endpoints",
        str(endpoints),
        "--store",
        str(tmp_path / "cli.sqlite"),
    ]


def _one_line_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("error: "), err
    return lines[-1]


# ---------------------------------------------------------------- 9: failed items exit non-zero
def test_a_sweep_with_failed_items_exits_non_zero_with_the_count(fake_openai, tmp_path):
    fake_openai.add_faults(*[Fault.http(500)] * 4)
    rc, out, err = _cli(_sweep_args(fake_openai, tmp_path, per_class=2))
    assert rc == 1
    assert "12 planned, 0 from the store, 8 generated, 4 errors" in out
    assert _one_line_error(err).startswith("error: 4 of 12 items failed")
    rc, out, err = _cli(_sweep_args(fake_openai, tmp_path, per_class=2) + ["--retry-errors"])
    assert rc == 0 and "error:" not in err and "4 planned, 0 from the store, 4 generated, 0 errors" in out


def test_ask_exits_non_zero_when_an_answer_failed(fake_openai, tmp_path, monkeypatch):
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        yaml.safe_dump(
            {MODEL: {"base_url": fake_openai.base_url, "model": "served", "api_key_env": KEY_ENV, "max_retries": 0}}
        )
    )
    monkeypatch.setenv("EXPLORER_ENDPOINTS", str(endpoints))
    fake_openai.add_faults(Fault.http(500))
    rc, out, err = _cli(
        [
            "ask",
            "--task",
            "pneumonia",
            "--images",
            str(_samples(tmp_path / "s") / "pneumonia"),
            "--models",
            MODEL,
            "--prompts",
            "abnormal",
            "--store",
            str(tmp_path / "a.sqlite"),
        ]
    )
    assert rc == 1 and "ERROR:" in out
    assert _one_line_error(err).startswith("error: 1 of 2 answers failed")


def test_describe_exits_non_zero_when_every_diagnosis_fails(tmp_path):
    """12 descriptions? No: 2 cases x 2 description prompts x 3 templates; the diagnoser is a server
    that refuses every connection, so all diagnoses fail."""
    proc = _run(
        [
            "describe",
            "--preset",
            "demo",
            "--models",
            "demo-gemma",
            "--tasks",
            "pneumonia",
            "--samples",
            str(_samples(tmp_path / "samples")),
            "--per-class",
            "1",
            "--no-closed",
            "--max-new-tokens",
            "4",
            "--store",
            str(tmp_path / "d.sqlite"),
            "--diagnoser",
            "openai:gpt-test",
            "--diagnoser-base-url",
            "http://127.0.0.1:9/v1",
            "--diagnoser-api",
            "chat",
        ]
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "12 of 12 diagnoses failed" in _one_line_error(proc.stderr)


# ---------------------------------------------------------------- 4: metrics and export after a retry
def test_after_retry_errors_metrics_and_export_cover_the_whole_plan(fake_openai, tmp_path):
    args = _sweep_args(fake_openai, tmp_path, per_class=2)
    fake_openai.add_faults(*[Fault.http(500)] * 5)
    assert _cli(args)[0] == 1
    rc, out, _ = _cli(args + ["--retry-errors"])
    assert rc == 0 and "5 planned, 0 from the store, 5 generated, 0 errors" in out
    store = str(tmp_path / "cli.sqlite")

    rc, out, err = _cli(["metrics", "--store", store, "--cells"])
    assert rc == 0 and "retried failed items of run" in err
    per_prompt = out.split("Per prompt:")[1]
    assert all(f" {p} " in per_prompt for p in ("abnormal", "normal", "evidence"))
    assert per_prompt.count(" 4 ") >= 3  # n = 4 images for each of the 3 prompts, not the 5 retried items

    out_dir = tmp_path / "export"
    rc, _, err = _cli(["export", "--store", store, "--out", str(out_dir), "--formats", "csv"])
    assert rc == 0, err
    answers = pd.read_csv(out_dir / "answers.csv")
    assert len(answers) == 12 and answers["error"].isna().all()
    manifest = json.loads((out_dir / "manifest.json").read_text())
    with Store(store) as s:
        runs = list(s.runs_frame()["run_id"])
    assert manifest["run_id"] == runs[0] and len(runs) == 2  # the full run, not the retry run


# ---------------------------------------------------------------- 10: --max-new-tokens caps
def test_max_new_tokens_caps_a_models_limit_and_never_raises_it(fake_openai, tmp_path):
    from explorer.catalog.presets import load_catalog

    own = load_catalog().model(MODEL).generation.settings().max_new_tokens
    rc, _, err = _cli(_sweep_args(fake_openai, tmp_path) + ["--max-new-tokens", str(own * 10)])
    assert rc == 0, err
    rc, _, err = _cli(_sweep_args(fake_openai, tmp_path) + ["--max-new-tokens", "5"])
    assert rc == 0, err
    sent = [r.body["max_completion_tokens"] for r in fake_openai.requests]
    assert sent == [own] * 6 + [5] * 6


# ---------------------------------------------------------------- 8: one line naming the file
def _truncated_store(tmp_path: Path) -> Path:
    good = tmp_path / "good.sqlite"
    with Store(good):
        pass
    bad = tmp_path / "truncated.sqlite"
    bad.write_bytes(good.read_bytes()[:3000])
    return bad


@pytest.mark.parametrize(
    "store,expect",
    [
        (lambda tmp: tmp, "cannot be opened as a results store: it is a folder"),
        (lambda tmp: "", "(empty path) cannot be opened as a results store"),
        (lambda tmp: _devnull_link(tmp), "null.sqlite"),
        (_truncated_store, "truncated.sqlite"),
        (lambda tmp: tmp / "file.txt" / "s.sqlite", "cannot create its folder"),
    ],
    ids=["a folder", "empty path", "/dev/null symlink", "truncated file", "under a file"],
)
def test_every_store_open_problem_in_sweep_is_one_line_naming_the_store(tmp_path, store, expect):
    (tmp_path / "file.txt").write_text("x")
    path = store(tmp_path)
    rc, _, err = _cli(
        [
            "sweep",
            "--preset",
            "demo",
            "--samples",
            str(_samples(tmp_path / "samples")),
            "--models",
            MODEL,
            "--tasks",
            "pneumonia",
            "--prompts",
            "abnormal",
            "--per-class",
            "1",
            "--store",
            str(path),
        ]
    )
    assert rc == 2 and expect in _one_line_error(err)


def _devnull_link(tmp: Path) -> Path:
    link = tmp / "null.sqlite"
    link.symlink_to("/dev/null")
    return link


def test_a_read_only_store_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only files")
    path = tmp_path / "ro.sqlite"
    with Store(path):
        pass
    path.chmod(0o444)
    rc, _, err = _cli(["metrics", "--store", str(path)])
    assert rc == 2 and "ro.sqlite" in _one_line_error(err)


def test_disk_full_mid_sweep_is_one_line_and_keeps_what_was_stored(fake_openai, tmp_path):
    """The store may grow only a little (RLIMIT_FSIZE, with SIGXFSZ ignored: writes past it fail as a
    full disk does); the sweep stops with one line, and every answer stored before it stays."""
    args = _sweep_args(fake_openai, tmp_path, per_class=4)
    with Store(tmp_path / "cli.sqlite"):
        pass
    limit = (tmp_path / "cli.sqlite").stat().st_size + 24_000

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = _run(args[:-1] + [str(tmp_path / "cli.sqlite")], preexec_fn=small_disk)
    line = _one_line_error(proc.stderr)
    assert proc.returncode == 2 and "cli.sqlite" in line and "kept" in line, proc.stderr[-1500:]
    with Store(tmp_path / "cli.sqlite") as s:
        assert s.integrity_ok() and 0 < s.count() < 24


def test_memory_budget_inf_and_nan_are_one_line(tmp_path):
    for value in ("inf", "nan", "-1"):
        rc, _, err = _cli(["sweep", "--memory-budget-gb", value, "--store", str(tmp_path / "s.sqlite")])
        assert rc == 2 and "--memory-budget-gb must be a positive, finite number" in _one_line_error(err)


def test_metrics_on_an_empty_or_foreign_sqlite_file_is_not_a_traceback(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    rc, out, err = _cli(["metrics", "--store", str(empty)])
    assert rc == 0 and "no closed-form answers" in out and "Traceback" not in err
    foreign = tmp_path / "foreign.sqlite"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE notes (x)")
        conn.commit()
    rc, _, err = _cli(["metrics", "--store", str(foreign)])
    assert rc == 2 and "foreign.sqlite" in _one_line_error(err) and "not an explorer results store" in err


def test_a_100k_deep_json_import_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    proc = _run(["import", str(deep), "--store", str(tmp_path / "s.sqlite")])
    assert proc.returncode == 2 and "deep.json: not an answers file (JSON nested too deeply)" in _one_line_error(
        proc.stderr
    )


# ---------------------------------------------------------------- 6 and 7: what an export writes
def _store_with_answers(path: Path, answers: list[str]) -> Path:
    from explorer.analysis.exports import import_answers

    frame = pd.DataFrame(
        [
            {
                "model": MODEL,
                "task": "pneumonia",
                "prompt_id": "abnormal",
                "case_id": f"c{i}",
                "label": "positive",
                "verdict": "positive",
                "answer": text,
                "prompt_text": "Is it?",
            }
            for i, text in enumerate(answers)
        ]
    )
    with Store(path) as store:
        import_answers(store, frame, origin="test")
    return path


FORMULAS = ['=HYPERLINK("http://x","click")', "+1+1", "-2+3", "@SUM(A1)", "\t=1", "'=already", "plain"]


def test_csv_export_neutralises_formulas_and_keeps_them_raw_in_parquet_and_json(tmp_path):
    store = _store_with_answers(tmp_path / "s.sqlite", FORMULAS)
    rc, _, err = _cli(
        ["export", "--store", str(store), "--all", "--out", str(tmp_path / "x"), "--formats", "csv,parquet,json"]
    )
    assert rc == 0, err
    cells = pd.read_csv(tmp_path / "x" / "answers.csv", dtype=str, keep_default_na=False)["answer"].tolist()
    assert all(not c.startswith(("=", "+", "-", "@", "\t")) for c in cells)
    assert cells[0] == "'" + FORMULAS[0] and cells[-1] == "plain" and cells[5] == "''=already"
    assert pd.read_parquet(tmp_path / "x" / "answers.parquet")["answer"].tolist() == FORMULAS
    assert [r["answer"] for r in json.loads((tmp_path / "x" / "answers.json").read_text())] == FORMULAS
    # Importing the CSV export gives the raw values back.
    rc, _, err = _cli(["import", str(tmp_path / "x" / "answers.csv"), "--store", str(tmp_path / "back.sqlite")])
    assert rc == 0, err
    with Store(tmp_path / "back.sqlite") as s:
        assert sorted(s.answers_frame()["answer"]) == sorted(FORMULAS)


def test_an_export_that_dies_leaves_the_previous_complete_export_and_no_mix(tmp_path, monkeypatch):
    import explorer.analysis.exports as exports

    store = Store(_store_with_answers(tmp_path / "s.sqlite", ["first"]))
    out = tmp_path / "export"
    export_results(store, out, formats=["csv", "json"], n_boot=10)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import_answers(
        store,
        pd.DataFrame(
            [{"model": MODEL, "task": "pneumonia", "prompt_id": "normal", "case_id": "c9", "answer": "second"}]
        ),
        origin="more",
    )
    real = exports._write_frame
    written = []

    def dies_after_two(frame, path):
        if len(written) == 2:
            raise OSError(28, "No space left on device", str(path))
        written.append(path.name)
        real(frame, path)

    monkeypatch.setattr(exports, "_write_frame", dies_after_two)
    with pytest.raises(OSError):
        export_results(store, out, formats=["csv", "json"], n_boot=10)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, whole
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError):
        export_results(store, fresh, formats=["csv"], n_boot=10)
    assert not fresh.exists()  # no data files without their manifest
    assert not list(tmp_path.glob(".*.tmp"))  # the staging folders are gone
    monkeypatch.setattr(exports, "_write_frame", real)
    export_results(store, out, formats=["csv", "json"], n_boot=10)
    assert len(pd.read_csv(out / "answers.csv")) == 2
    store.close()


def test_exports_get_normal_permissions_under_the_umask(tmp_path):
    store = _store_with_answers(tmp_path / "s.sqlite", ["a"])
    old = os.umask(0o022)
    try:
        proc = _run(["export", "--store", str(store), "--all", "--out", str(tmp_path / "x"), "--formats", "csv"])
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "x").iterdir()} == {0o644}


# ---------------------------------------------------------------- 14: smaller ones
def test_import_refuses_an_unknown_task(tmp_path):
    path = tmp_path / "answers.csv"
    pd.DataFrame(
        [
            {
                "model": MODEL,
                "task": "astrology",
                "prompt_id": "abnormal",
                "prompt_family": "abnormal",
                "case_id": "c1",
                "label": "positive",
                "verdict": "positive",
            }
        ]
    ).to_csv(path, index=False)
    rc, _, err = _cli(["import", str(path), "--store", str(tmp_path / "s.sqlite")])
    assert rc == 2 and "row 1: unknown task 'astrology'" in _one_line_error(err)
    with Store(tmp_path / "s.sqlite") as s:
        assert s.count() == 0


def test_a_file_name_with_terminal_escapes_is_printed_escaped(tmp_path):
    name = tmp_path / "\x1b[2K\x1b[1Afine.csv"
    name.write_text("not,an\nexport,file\n")
    rc, _, err = _cli(["import", str(name), "--store", str(tmp_path / "s.sqlite")])
    assert rc == 2 and "\x1b" not in err and "\\x1b[2K\\x1b[1Afine.csv" in err


def test_a_1mb_label_is_not_echoed_in_full(tmp_path):
    path = tmp_path / "answers.csv"
    pd.DataFrame(
        [
            {
                "model": MODEL,
                "task": "pneumonia",
                "prompt_id": "abnormal",
                "prompt_family": "abnormal",
                "case_id": "c1",
                "label": "L" * 1_000_000,
                "verdict": "positive",
            }
        ]
    ).to_csv(path, index=False)
    rc, _, err = _cli(["import", str(path), "--store", str(tmp_path / "s.sqlite")])
    line = _one_line_error(err)
    assert rc == 2 and "column 'label'" in line and len(line) < 1_000


def test_duplicate_yaml_keys_and_alias_bombs_in_endpoints_files_are_refused(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text(f"{MODEL}:\n  base_url: http://a:8000/v1\n  model: one\n  model: two\n")
    rc, _, err = _cli(["sweep", "--endpoints", str(dup), "--store", str(tmp_path / "s.sqlite")])
    assert rc == 2 and "line 4: key 'model' appears twice (first on line 3)" in _one_line_error(err)
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)
    ]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(levels) + f"\n{MODEL}: {{base_url: 'http://a:8000/v1', model: m, extra: {{x: *i}}}}\n")
    rc, _, err = _cli(["sweep", "--endpoints", str(bomb), "--store", str(tmp_path / "s.sqlite")])
    assert rc == 2 and "alias bomb" in _one_line_error(err)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("base_url", "http://gpu:99999/v1", "the port must be between 1 and 65535"),
        ("timeout_s", float("inf"), "timeout_s must be a finite number of seconds"),
        ("deadline_s", float("nan"), "deadline_s must be a finite number of seconds"),
    ],
    ids=["port 99999", "timeout .inf", "deadline nan"],
)
def test_endpoint_ports_and_timeouts_are_validated(tmp_path, field, value, message):
    cfg = {"base_url": "http://gpu:8000/v1", "model": "m", field: value}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump({MODEL: cfg}))
    rc, _, err = _cli(["sweep", "--endpoints", str(path), "--store", str(tmp_path / "s.sqlite")])
    assert rc == 2 and message in _one_line_error(err)


def test_duplicate_keys_in_a_preset_are_refused(tmp_path):
    from explorer.catalog.presets import PresetError, load_catalog

    presets = tmp_path / "presets"
    presets.mkdir()
    for f in (REPO / "presets").glob("*.yaml"):
        (presets / f.name).write_text(f.read_text())
    demo = presets / "demo.yaml"
    demo.write_text(demo.read_text() + "\ntasks: [pneumonia]\n")
    with pytest.raises(PresetError, match=r"demo.yaml: line \d+: key 'tasks' appears twice"):
        load_catalog(str(presets)).study("demo")
