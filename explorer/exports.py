"""Exports of answers and metrics (CSV, Parquet, JSON) with a run manifest, and imports into a store.

The manifest records what is needed to re-run the same sweep: the run's plan and cases, the
presets' file hashes, library versions, seeds, the git commit, and times.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from . import metrics
from .presets import PRESETS_DIR
from .store import Store, library_versions, utc_now

FORMATS = ("csv", "parquet", "json")
# Provenance columns kept as JSON text in exports; answers read back through study_import.read_answers_file.
_DROP_FROM_EXPORT = ("cached",)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def presets_fingerprint(presets_dir: Path = PRESETS_DIR) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(Path(presets_dir).glob("*.yaml"))
    }


def run_manifest(store: Store, run_id: Optional[str]) -> dict:
    run = store.run(run_id) if run_id else None
    return {
        "exported_at": utc_now(),
        "run_id": run_id,
        "run": run,
        "presets": presets_fingerprint(),
        "versions": library_versions(),
        "git_commit": _git_commit(),
        "rerun": (
            "python -m explorer sweep with the models, tasks, prompts and cases of run.plan / run.manifest; "
            "the same store serves finished items from its cache"
        ),
    }


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a killed export leaves the old file or none, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif path.suffix == ".json":
            frame.to_json(tmp, orient="records", indent=1, force_ascii=False)
        else:
            raise ValueError(f"unknown export format {path.suffix!r}; use one of {', '.join(FORMATS)}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_temp_files(out: Path, prefixes: Iterable[str]) -> None:
    """Temp files an export killed mid-write left behind (os.replace never ran); ours by their name."""
    if not out.is_dir():
        return
    for prefix in prefixes:
        for stale in out.glob(f".{prefix}*.tmp"):
            stale.unlink(missing_ok=True)


def answers_for_export(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in _DROP_FROM_EXPORT if c in frame.columns])


def metric_tables(answers: pd.DataFrame, n_boot: int = 1000) -> dict[str, pd.DataFrame]:
    closed = answers[answers.get("prompt_kind", "closed").fillna("closed") == "closed"] if len(answers) else answers
    closed = closed[closed["verdict"].notna()] if len(closed) else closed
    cells = metrics.cell_metrics(closed, n_boot=n_boot)
    return {
        "metrics_cells": cells,
        "metrics_summary": metrics.model_task_summary(closed, n_boot=n_boot, cells=cells),
        "metrics_headline": metrics.headline(closed, n_boot=n_boot),
    }


def export_results(
    store: Store,
    out_dir: str | Path,
    run_id: Optional[str] = None,
    formats: Iterable[str] = ("csv", "parquet"),
    n_boot: int = 1000,
    catalog=None,
) -> list[Path]:
    """answers.<fmt>, metrics_*.<fmt> and manifest.json in out_dir; returns the files written."""
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; use {', '.join(FORMATS)}")
    out = Path(out_dir)
    _remove_stale_temp_files(out, ["answers.", "metrics_", "manifest."])
    answers = store.answers_frame(catalog=catalog, run_id=run_id)
    tables = {"answers": answers_for_export(answers), **metric_tables(answers, n_boot=n_boot)}
    written = []
    for name, frame in tables.items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            _write_frame(frame, path)
            written.append(path)
    manifest = out / "manifest.json"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(run_manifest(store, run_id), fh, indent=1, default=str)
    os.replace(tmp, manifest)
    written.append(manifest)
    return written


# ------------------------------------------------------------------ import into a store
def import_answers(store: Store, frame: pd.DataFrame, origin: str) -> tuple[int, int]:
    """Put an answers frame (study CSVs or our exports) into the store; returns (added, already there).

    Imported rows get a fingerprint from their origin and content, so importing the same file twice
    adds nothing; they are never served as cached answers to a live model (their identity says
    "imported").
    """
    added = existing = 0
    now = utc_now()
    for rec in frame.to_dict("records"):
        key = json.dumps(
            [origin, rec.get("model"), rec.get("task"), rec.get("case_id"), rec.get("prompt_id"),
             rec.get("prompt_text"), rec.get("answer")], default=str,
        )
        row = {
            "fingerprint": "import:" + hashlib.sha256(key.encode()).hexdigest(),
            "deterministic": 1,
            "run_id": None,
            "model": rec["model"],
            "model_identity": json.dumps({"backend": "imported", "origin": origin, "model_id": rec.get("model_id")}),
            "backend": "imported",
            "task": rec["task"],
            "case_id": rec.get("case_id"),
            "image_hash": _text(rec.get("image_hash")),
            "label": _text(rec.get("label")),
            "source": _text(rec.get("source_file")) or origin,
            "row_id": None if pd.isna(rec.get("row_id")) else int(rec["row_id"]),
            "prompt_id": rec["prompt_id"],
            "prompt_family": _text(rec.get("prompt_family")),
            "prompt_kind": _text(rec.get("prompt_kind")) or "closed",
            "prompt_text": _text(rec.get("prompt_text")) or "",
            "one_word": None if pd.isna(rec.get("one_word")) else int(bool(rec.get("one_word"))),
            "answer": _text(rec.get("answer")),
            "error": _text(rec.get("error")),
            "verdict": _text(rec.get("verdict")),
            "verdict_method": _text(rec.get("verdict_method")) or "imported",
            "verdict_detail": _text(rec.get("verdict_detail")),
            "p_positive": None if pd.isna(rec.get("p_positive")) else float(rec["p_positive"]),
            "versions": json.dumps(library_versions()),
            "created_at": now,
        }
        _, written = store.record_answer(row)
        added += written
        existing += not written
    return added, existing


def _text(value) -> Optional[str]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value)
    return text if text.strip() else None
