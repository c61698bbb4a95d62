"""Exports of answers and metrics (CSV, Parquet, JSON) with a run manifest, and imports into a store.

An export folder is replaced whole and at once (a reader never sees a mixed set); CSV cells a
spreadsheet would evaluate are neutralised (csv_cells). The manifest records what is needed to re-run
the same sweep: the run's plan and cases, the
presets' file hashes, library versions, seeds, the git commit, and times.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from explorer.analysis import metrics
from explorer.analysis.sensitivity import SENSITIVITY_TABLES, sensitivity_tables
from explorer.catalog.presets import PRESETS_DIR
from explorer.runs.csv_cells import neutralise_frame
from explorer.runs.selection import plan_answers
from explorer.runs.store import Store, library_versions, utc_now

FORMATS = ("csv", "parquet", "json")
# Provenance columns kept as JSON text in exports; answers read back through study_import.read_answers_file.
_DROP_FROM_EXPORT = ("cached",)


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def presets_fingerprint(presets_dir: Path = PRESETS_DIR) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in sorted(Path(presets_dir).glob("*.yaml"))}


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
    if path.suffix == ".csv":
        # Cells a spreadsheet would evaluate get an apostrophe (csv_cells); Parquet and JSON keep them raw.
        neutralise_frame(frame).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix == ".json":
        frame.to_json(path, orient="records", indent=1, force_ascii=False)
    else:
        raise ValueError(f"unknown export format {path.suffix!r}; use one of {', '.join(FORMATS)}")


def _is_export_file(name: str) -> bool:
    stem, _, suffix = name.partition(".")
    if name.startswith((".answers.", ".metrics_", ".manifest.")) and name.endswith(".tmp"):
        return True  # a temp file an older export, killed mid-write, left behind
    return (
        stem in ("answers", "metrics_cells", "metrics_summary", "metrics_headline", *SENSITIVITY_TABLES)
        and suffix in FORMATS
    ) or name == "manifest.json"


def _check_out(out: Path) -> None:
    """An export replaces the whole folder, so it must hold nothing but an earlier export."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file, not a folder; --out must be a folder")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if not _is_export_file(p.name))
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise ValueError(
                f"{out}: holds other files ({shown}); an export replaces the whole folder, "
                "so choose an empty or new one"
            )


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _normal_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders and 0600 files; an export is shared like any file the user writes."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~mask)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace_folder(new: Path, out: Path) -> None:
    """Put the finished export at `out`: a reader sees the old export or the new one, never a mix."""
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # now the old export
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-", suffix=".tmp"))
    os.rmdir(old)
    os.rename(out, old)
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_siblings(out: Path) -> None:
    """Temp folders an export killed before its rename left beside `out`; ours by their name."""
    if not out.parent.is_dir():
        return
    for stale in out.parent.glob(f".{out.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


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
        # How much each image's answer moves with the wording: per image, per wording family, per pair.
        **sensitivity_tables(closed, n_boot=n_boot),
    }


def export_results(
    store: Store,
    out_dir: str | Path,
    run_id: Optional[str] = None,
    formats: Iterable[str] = ("csv", "parquet"),
    n_boot: int = 1000,
    catalog=None,
) -> list[Path]:
    """answers.<fmt>, metrics_*.<fmt> and manifest.json in out_dir; returns the files written.

    run_id: that run's plan, every item with its latest answer (run_selection: a retry run stands
    for the plan it retried); None: every answer in the store. The files are written into a sibling
    temp folder, the manifest last, and that folder then replaces out_dir in one rename: a reader
    (or a kill) sees the previous complete export or the new one, never a mix, never data without
    its manifest. out_dir must be new, empty or an earlier export.
    """
    formats = list(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; use {', '.join(FORMATS)}")
    out = Path(out_dir).absolute()
    _check_out(out)
    if run_id is not None:
        plan = plan_answers(store, run_id, catalog=catalog)
        answers, run_id = plan.frame, plan.run_id
    else:
        answers = store.answers_frame(catalog=catalog)
    tables = {"answers": answers_for_export(answers), **metric_tables(answers, n_boot=n_boot)}
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-", suffix=".tmp"))
    try:
        names = []
        for name, frame in tables.items():
            for fmt in formats:
                _write_frame(frame, staging / f"{name}.{fmt}")
                names.append(f"{name}.{fmt}")
        with open(staging / "manifest.json", "w", encoding="utf-8") as fh:  # last: it marks the set complete
            json.dump(run_manifest(store, run_id), fh, indent=1, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        names.append("manifest.json")
        _normal_permissions(staging)
        _replace_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]


# ------------------------------------------------------------------ import into a store
def import_answers(store: Store, frame: pd.DataFrame, origin: str, catalog=None) -> tuple[int, int]:
    """Put an answers frame (study CSVs or our exports) into the store; returns (added, already there).

    Imported rows get a fingerprint from their origin and content, so importing the same file twice
    adds nothing; they are never served as cached answers to a live model (their identity says
    "imported"). A task the catalog does not know is refused before anything is added.
    """
    if catalog is None:
        from explorer.catalog.presets import load_catalog

        catalog = load_catalog()
    tasks = frame["task"].tolist() if "task" in frame.columns else []
    unknown = [(i, t) for i, t in enumerate(tasks, start=1) if t not in catalog.tasks]
    if unknown:
        row, task = unknown[0]
        raise ValueError(
            f"{origin}: row {row}: unknown task {str(task)[:60]!r}; this explorer knows {', '.join(catalog.tasks)}"
        )
    added = existing = 0
    now = utc_now()
    for rec in frame.to_dict("records"):
        key = json.dumps(
            [
                origin,
                rec.get("model"),
                rec.get("task"),
                rec.get("case_id"),
                rec.get("prompt_id"),
                rec.get("prompt_text"),
                rec.get("answer"),
            ],
            default=str,
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
