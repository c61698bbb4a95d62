"""Processes to kill with SIGKILL, and the checks that follow (test_crash_safety.py, bench/soak.py).

  python tests/crash_worker.py sweep STORE DONE_LOG [--delay S] [--batch-size N] [--cases N]
      sweeps 2 models x N images x 12 prompts with the deterministic fake backend; every item the
      sweep reports finished (after its commit) is appended to DONE_LOG as a JSON line.
  python tests/crash_worker.py export STORE OUT [--formats csv,parquet,json] [--n-boot N]
      exports the whole store to OUT; prints "ready" before it starts and "done" after.

The checks: a store passes PRAGMA integrity_check and holds every finished item exactly once; an
export folder holds only complete files (each parses, with all its rows), never a truncated one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

MODELS = ("demo-gemma", "demo-medgemma")
EXPORT_TABLES = ("answers", "metrics_cells", "metrics_summary", "metrics_headline")


def crash_plan(n_cases: int):
    from sweep_worker import small_plan

    from explorer.catalog.presets import load_catalog

    return small_plan(load_catalog(), models=MODELS, n_cases=n_cases)


def item_key(model: str, case_id: str, prompt_id: str) -> str:
    return f"{model}|{case_id}|{prompt_id}"


# ------------------------------------------------------------------ the processes
def _sweep(args: argparse.Namespace) -> int:
    from sweep_worker import FakeBackend

    from explorer.runs.store import Store
    from explorer.runs.sweep import run_sweep

    plan = crash_plan(args.cases)
    done = open(args.done_log, "a", encoding="utf-8", buffering=1)  # a line reaches the OS at once

    def finished(item, row) -> None:
        done.write(json.dumps(item_key(item.model, item.case.case_id, item.variant.prompt_id)) + "\n")

    print("ready", flush=True)
    with Store(args.store) as store:
        summary = run_sweep(plan, FakeBackend(delay_s=args.delay), store, batch_size=args.batch_size, on_item=finished)
    print(json.dumps(summary.as_dict()), flush=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    from explorer.analysis.exports import export_results
    from explorer.runs.store import Store

    with Store(args.store) as store:
        print("ready", flush=True)
        export_results(store, args.out, run_id=None, formats=args.formats.split(","), n_boot=args.n_boot)
    print("done", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("store")
    p.add_argument("done_log")
    p.add_argument("--delay", type=float, default=0.02)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cases", type=int, default=4)
    p.set_defaults(func=_sweep)
    p = sub.add_parser("export")
    p.add_argument("store")
    p.add_argument("out")
    p.add_argument("--formats", default="csv,parquet,json")
    p.add_argument("--n-boot", type=int, default=1000)
    p.set_defaults(func=_export)
    args = parser.parse_args(argv)
    return args.func(args)


# ------------------------------------------------------------------ driving them
def worker_command(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def run_and_kill(
    cmd: list[str],
    fire_when: Callable[[subprocess.Popen], bool],
    delay_s: float,
    timeout_s: float = 120.0,
    poll_s: float = 0.01,
) -> dict:
    """Start cmd; once fire_when(proc) is true, wait delay_s and SIGKILL it (unless it ended first).

    Returns {"killed": bool, "returncode": int, "stdout": str}.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not fire_when(proc):
            if proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[2:4]} never reached the point to kill it")
            time.sleep(poll_s)
        time.sleep(delay_s)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if not killed and proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:4]} failed (rc {proc.returncode}): {err[-2000:]}")
    return {"killed": killed, "returncode": proc.returncode, "stdout": out}


def stdout_has(proc: subprocess.Popen, word: str, seen: list[str]) -> bool:
    """Non-blocking enough for our workers: they print one short line, then work."""
    if seen:
        return True
    line = proc.stdout.readline() if proc.poll() is None else ""
    if line.strip() == word:
        seen.append(line)
        return True
    return False


def temp_files(out_dir: Path) -> set[str]:
    """The files an export writes into its sibling temp folder (".export.export-x1y2.tmp/answers.csv")
    before that folder replaces out_dir, and any temp file inside out_dir itself."""
    found = set()
    if out_dir.parent.is_dir():
        for folder in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):
            if folder.is_dir():
                found |= {f"{folder.name}/{p.name}" for p in folder.iterdir()}
    if out_dir.is_dir():
        found |= {p.name for p in out_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")}
    return found


def done_keys(done_log: Path) -> list[str]:
    if not done_log.exists():
        return []
    keys = []
    for line in done_log.read_text(encoding="utf-8").splitlines():
        try:
            keys.append(json.loads(line))
        except ValueError:  # a line cut by the kill is not a finished item
            pass
    return keys


def check_store(store_path: Path, finished: set[str]) -> dict:
    """Integrity, and each finished item stored exactly once. Returns counts and problems."""
    from explorer.runs.store import Store

    problems: list[str] = []
    with Store(store_path) as store:
        integrity = store.integrity_report()
        if integrity != ["ok"]:
            problems.append(f"integrity_check: {integrity[:3]}")
        rows = store.answers()
        runs = store.runs_frame()
    per_item = Counter(item_key(r["model"], r["case_id"], r["prompt_id"]) for r in rows)
    doubles = [k for k, n in per_item.items() if n > 1]
    if doubles:
        problems.append(f"{len(doubles)} items stored more than once, e.g. {doubles[0]}")
    lost = sorted(finished - set(per_item))
    if lost:
        problems.append(f"{len(lost)} finished items missing from the store, e.g. {lost[0]}")
    fingerprints = Counter(r["fingerprint"] for r in rows)
    if any(n > 1 for n in fingerprints.values()):
        problems.append("a fingerprint is stored twice")
    return {"rows": len(rows), "lost": len(lost), "duplicates": len(doubles), "runs": len(runs), "problems": problems}


def read_export(path: Path):
    """Parse one exported file completely; raises when it is truncated or malformed."""
    import pandas as pd

    if path.suffix == ".csv":
        return len(pd.read_csv(path, dtype=str, keep_default_na=False))
    if path.suffix == ".parquet":
        return len(pd.read_parquet(path))
    data = json.loads(path.read_text(encoding="utf-8"))
    return len(data) if isinstance(data, list) else data["exported_at"]


def check_export(out_dir: Path, formats: Sequence[str], expected: dict[str, int]) -> dict:
    """Every final file present and complete (expected: table -> rows); temp files counted."""
    problems = []
    for table in EXPORT_TABLES:
        for fmt in formats:
            path = out_dir / f"{table}.{fmt}"
            if not path.exists():
                problems.append(f"{path.name} missing")
                continue
            try:
                rows = read_export(path)
            except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
                problems.append(f"{path.name} unreadable: {type(exc).__name__}: {str(exc)[:120]}")
                continue
            if table in expected and rows != expected[table]:
                problems.append(f"{path.name} has {rows} rows, expected {expected[table]}")
    try:
        json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))["run_id"]
    except Exception as exc:  # noqa: BLE001
        problems.append(f"manifest.json unreadable: {type(exc).__name__}")
    return {"problems": problems, "temp_files": sorted(temp_files(out_dir))}


if __name__ == "__main__":
    raise SystemExit(main())
