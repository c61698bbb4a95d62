"""A sweep killed with SIGKILL loses nothing it committed, and the next run finishes it without
generating any committed item again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from explorer.runs.store import Store

WORKER = Path(__file__).resolve().parent / "sweep_worker.py"
PLANNED = 48  # sweep_worker.small_plan: one model x 4 images x 12 prompts


def _worker(store: Path, log: Path, delay: float) -> list[str]:
    return [sys.executable, str(WORKER), str(store), str(log), "--delay", str(delay), "--batch-size", "2"]


def _committed_keys(store: Store) -> set[str]:
    # The fake backend's request key: model | image hash | prompt text.
    return {f"{r['model']}|{r['image_hash']}|{r['prompt_text']}" for r in store.answers(include_errors=False)}


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_killed_sweep_resumes_without_recomputing(tmp_path):
    store_path = tmp_path / "kill.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        _worker(store_path, tmp_path / "asked1.jsonl", 0.08), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        committed = 0
        while committed < 8:
            if first.poll() is not None:
                out, err = first.communicate()
                pytest.fail(
                    f"the sweep ended before it could be killed (rc {first.returncode}): {err.decode()[-2000:]}"
                )
            assert time.monotonic() < deadline, "no answers were committed within 60 s"
            if store_path.exists():
                with Store(store_path) as probe:
                    committed = probe.count()
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == -signal.SIGKILL

    with Store(store_path) as store:
        before = _committed_keys(store)
        runs = store.runs_frame()
    assert 8 <= len(before) < PLANNED
    assert list(runs["status"]) == ["running"]  # killed: never marked finished

    second = subprocess.run(
        _worker(store_path, tmp_path / "asked2.jsonl", 0.0), env=env, capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    asked_again = [json.loads(line) for line in (tmp_path / "asked2.jsonl").read_text().splitlines()]

    assert not before & set(asked_again)  # nothing committed before the kill was generated again
    assert len(asked_again) == len(set(asked_again)) == PLANNED - len(before)
    assert summary["status"] == "finished" and summary["cached"] == len(before)
    assert summary["run_id"] == runs["run_id"][0]  # the killed run was resumed, not a new one

    with Store(store_path) as store:
        assert store.integrity_ok()
        assert store.count() == PLANNED
        frame = store.answers_frame(run_id=summary["run_id"])
        assert len(frame) == PLANNED
        assert not frame.duplicated(subset=["model", "case_id", "prompt_id"]).any()
        assert not frame.duplicated(subset=["fingerprint"]).any()
        assert _committed_keys(store) >= before
        assert store.run(summary["run_id"])["status"] == "finished"
