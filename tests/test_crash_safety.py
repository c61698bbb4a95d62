"""kill -9 in the middle of a sweep and in the middle of an export, a few times over.

After every kill the store passes PRAGMA integrity_check and holds every item the sweep reported
finished exactly once; an export folder holds the previous complete files or the new complete files,
never a truncated one (exports are written to a temp file and moved into place with os.replace).
bench/soak.py runs the same rounds many more times.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from crash_worker import (
    check_export,
    check_store,
    crash_plan,
    done_keys,
    item_key,
    run_and_kill,
    stdout_has,
    temp_files,
    worker_command,
)
from sweep_worker import FakeBackend

from explorer.analysis.exports import export_results
from explorer.runs.store import Store
from explorer.runs.sweep import run_sweep

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

ROUNDS = int(os.environ.get("EXPLORER_CRASH_ROUNDS", "3"))
EXTRA = 6
SEED = int(os.environ.get("EXPLORER_CRASH_SEED", "20260415"))
CASES = 4  # 2 models x 4 images x 12 prompts = 96 items
N_BOOT = 200  # bootstrap resamples of the exported metrics: fewer than the default, to keep CI quick


def test_a_sweep_killed_again_and_again_loses_nothing_and_stores_nothing_twice(tmp_path):
    rng = random.Random(SEED)
    store, log = tmp_path / "crash.sqlite", tmp_path / "done.jsonl"
    planned = {item_key(it.model, it.case.case_id, it.variant.prompt_id) for it in crash_plan(CASES)}
    kills = 0
    for round_ in range(ROUNDS):
        lines_before = len(done_keys(log))
        stored_before = check_store(store, set())["rows"] if store.exists() else 0
        # Fire once this round has committed something new (earlier items come back as cached first).
        threshold = lines_before + stored_before + 1
        outcome = run_and_kill(
            worker_command(
                "sweep", str(store), str(log), "--delay", "0.02", "--batch-size", "4", "--cases", str(CASES)
            ),
            fire_when=lambda proc: len(done_keys(log)) >= threshold,
            delay_s=rng.uniform(0.0, 0.3),
        )
        kills += outcome["killed"]
        finished = set(done_keys(log))
        report = check_store(store, finished)
        assert not report["problems"], f"round {round_}: {report['problems']}"
        assert finished <= planned and report["rows"] <= len(planned)
    assert kills >= max(1, ROUNDS - 1), "the sweep kept finishing before it could be killed"

    # The last run finishes the plan: every item once, in the one run that was resumed each time.
    outcome = run_and_kill(
        worker_command("sweep", str(store), str(log), "--delay", "0", "--cases", str(CASES)),
        fire_when=lambda proc: False,
        delay_s=0.0,
    )
    assert not outcome["killed"] and outcome["returncode"] == 0
    report = check_store(store, set(done_keys(log)))
    assert not report["problems"] and report["rows"] == len(planned) and report["runs"] == 1
    with Store(store) as s:
        frame = s.answers_frame(run_id=s.runs_frame()["run_id"].iloc[0])
        assert len(frame) == len(planned) and s.run(frame["run_id"].iloc[0])["status"] == "finished"


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """A store with a few hundred answers, so an export takes long enough to be killed inside."""
    path = tmp_path_factory.mktemp("export-kill") / "big.sqlite"
    with Store(path) as store:
        run_sweep(crash_plan(24), FakeBackend(), store, batch_size=32)
        assert store.count() == 2 * 24 * 12
    return path


def test_an_export_killed_midway_leaves_complete_files_only(big_store, tmp_path):
    rng = random.Random(SEED + 1)
    formats = ("csv", "parquet", "json")
    out = tmp_path / "export"
    with Store(big_store) as store:
        started = time.perf_counter()
        export_results(store, out, formats=formats, n_boot=N_BOOT)  # the previous complete export
        took = time.perf_counter() - started
        expected = {"answers": store.count()}
    assert not check_export(out, formats, expected)["problems"]

    mid_export = while_writing = 0
    left: set[str] = set()
    # A kill is a race: a few extra rounds (at most EXTRA) make sure both kinds of kill land at least
    # once, so the test does not pass or fail by luck.
    for round_ in range(ROUNDS + EXTRA):
        if round_ >= ROUNDS and mid_export and while_writing:
            break
        seen: list[str] = []
        if round_ % 2 == 0 or (round_ >= ROUNDS and not while_writing):
            # Most of an export is computing metrics; the files are written in its last ~5%. Fire as
            # soon as the first temp file appears, so the kill lands while files are being written.
            fire, delay = (lambda proc: bool(temp_files(out) - left)), rng.uniform(0.0, 0.02)
        else:
            fire, delay = (lambda proc: stdout_has(proc, "ready", seen)), rng.uniform(0.05, 0.95) * took
        outcome = run_and_kill(
            worker_command("export", str(big_store), str(out), "--formats", ",".join(formats), "--n-boot", str(N_BOOT)),
            fire_when=fire,
            delay_s=delay,
            poll_s=0.002,
        )
        report = check_export(out, formats, expected)
        assert not report["problems"], f"round {round_}: {report['problems']}"
        mid_export += outcome["killed"] and "done" not in outcome["stdout"]
        new_temp = set(report["temp_files"]) - left
        while_writing += outcome["killed"] and bool(new_temp)
        left |= new_temp
    assert mid_export >= 1, "no kill landed inside an export"
    assert while_writing >= 1, "no kill landed while export files were being written"
    # What a kill leaves behind: a sibling temp folder, never a file inside the complete export.
    assert all(name.startswith(f".{out.name}.export-") for name in left)
