"""Cases from files on this machine: a folder of class subfolders, a CSV manifest, one upload.

Split out of datasets.py; datasets re-exports folder_cases, manifest_cases and upload_case, so
callers keep using datasets.*.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Optional, Union

import pandas as pd
from PIL import Image

from explorer.cases.hub import (
    READINGS,
    TASK_ALIASES,
    CaseLoadReport,
    CaseSourceError,
    Progress,
    case_from,
    image_error_types,
    loaded_case,
    normalized_name,
    note_duplicates,
    parse_label,
    resolve_task,
    task_spec,
)
from explorer.cases.images import load_image
from explorer.catalog.presets import TaskSpec, load_catalog
from explorer.schema import Case, Reading


# ---------------------------------------------------------------- folder of class subfolders
def _image_files(folder: Path) -> list[Path]:
    # Hidden files (.DS_Store, ._x.jpg from macOS archives) are never images someone meant to add.
    return sorted(
        (
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def folder_cases(
    root: Union[str, Path],
    task: Union[TaskSpec, str],
    per_class: Optional[int] = None,
    seed: int = 42,
    *,
    progress: Progress = None,
) -> CaseLoadReport:
    """Cases from root/<class>/... where <class> names a class (positive, tumor, no_tumor, 0, normal...)."""
    task = task_spec(task)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CaseSourceError(f"no such folder: {root}")
    report = CaseLoadReport()
    by_label: dict[Reading, list[Path]] = {"negative": [], "positive": []}
    folders: dict[Reading, list[str]] = {"negative": [], "positive": []}
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        reading = parse_label(sub.name, task)
        if reading is None and normalized_name(sub.name) in {*load_catalog().tasks, *TASK_ALIASES}:
            report.notices.append(f"subfolder {sub.name!r} is a task, not a class: load {sub} instead; ignored")
            continue
        if reading is None:
            report.notices.append(
                f"subfolder {sub.name!r} is not a class name of {task.key} "
                f"(use positive/negative, {task.class_names.positive}/{task.class_names.negative}, 1/0); ignored"
            )
            continue
        folders[reading].append(sub.name)
        by_label[reading].extend(_image_files(sub))
    loose = [p.name for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        report.notices.append(f"{len(loose)} files directly in {root} have no class subfolder; ignored")
    for reading, names in folders.items():
        if len(names) > 1:
            report.notices.append(f"subfolders {', '.join(map(repr, names))} all mean {reading}; merged")
    if not folders["negative"] and not folders["positive"]:
        report.notices.append(f"{root} has no class subfolders for {task.key}")

    chosen: list[tuple[Reading, Path]] = []
    for reading in READINGS:
        files = by_label[reading]
        if per_class is not None and len(files) > per_class:
            files = list(pd.Series(files, dtype=object).sample(per_class, random_state=seed))
        elif per_class is not None and folders[reading] and len(files) < per_class:
            report.notices.append(f"only {len(files)} {reading} files; took all")
        chosen.extend((reading, f) for f in files)

    for done, (reading, path) in enumerate(chosen, start=1):
        rel = path.relative_to(root).as_posix()
        try:
            case = loaded_case(
                path,
                case_id=f"{task.key}:file:{rel}",
                task=task,
                label=reading,
                where=str(path),
                meta={"path": str(path), "class_folder": path.relative_to(root).parts[0]},
            )
        except image_error_types() as exc:
            report.skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
        else:
            report.cases.append(case)
        if progress:
            progress(done, len(chosen))
    note_duplicates(report.cases, report)
    return report


# ---------------------------------------------------------------- CSV manifest
_COLUMN_ALIASES = {
    "path": ("path", "file", "filename", "file_name", "image", "image_path"),
    "label": ("label", "class", "diagnosis"),
    "task": ("task",),
}


def _manifest_columns(header: list[str], csv_path: Path) -> dict[str, Optional[str]]:
    by_norm = {normalized_name(h): h for h in header if h is not None}
    found = {}
    for role, aliases in _COLUMN_ALIASES.items():
        found[role] = next((by_norm[a] for a in aliases if a in by_norm), None)
    for role in ("path", "label"):
        if found[role] is None:
            also = "/".join(_COLUMN_ALIASES[role][1:])
            raise CaseSourceError(
                f"{csv_path} has no {role!r} column (or {also}); its columns are: {', '.join(header) or 'none'}"
            )
    return found


def manifest_cases(
    csv_path: Union[str, Path], task: Union[TaskSpec, str, None] = None, *, progress: Progress = None
) -> CaseLoadReport:
    """Cases listed in a CSV with columns path,label[,task]; paths are relative to the CSV's folder.

    With task given, rows of other tasks (task column) are left out; without it, every row needs a
    task. An empty label makes an unlabeled case.
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise CaseSourceError(f"no such manifest: {csv_path}")
    fixed = task_spec(task) if task is not None else None
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            cols = _manifest_columns(list(reader.fieldnames or []), csv_path)
            rows = [(reader.line_num, row) for row in reader]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CaseSourceError(f"{csv_path} is not a readable CSV file: {exc}") from None
    if fixed is None and cols["task"] is None:
        raise CaseSourceError(f"{csv_path} has no 'task' column; choose the task these images belong to")

    report = CaseLoadReport()
    base = csv_path.parent
    other_tasks: dict[str, int] = defaultdict(int)
    seen_paths: dict[Path, int] = {}
    todo: list[tuple[int, str, TaskSpec, Optional[Reading], Path]] = []
    unlabeled = 0
    for line, row in rows:
        where = f"{csv_path.name} line {line}"
        written = (row.get(cols["path"]) or "").strip()
        raw_task = (row.get(cols["task"]) or "").strip() if cols["task"] else ""
        if fixed is not None:
            if raw_task and normalized_name(TASK_ALIASES.get(normalized_name(raw_task), raw_task)) != fixed.key:
                other_tasks[raw_task] += 1
                continue
            row_task = fixed
        else:
            if not raw_task:
                report.skipped.append((where, "the task cell is empty"))
                continue
            try:
                row_task = resolve_task(raw_task)
            except CaseSourceError:
                report.skipped.append((where, f"unknown task {raw_task!r}"))
                continue
        if not written:
            report.skipped.append((where, "the path cell is empty"))
            continue
        raw_label = (row.get(cols["label"]) or "").strip()
        reading = parse_label(raw_label, row_task) if raw_label else None
        if raw_label and reading is None:
            report.skipped.append(
                (
                    f"{where} ({written})",
                    f"unknown label {raw_label!r} for {row_task.key} "
                    f"(use positive/negative, {row_task.class_names.positive}/{row_task.class_names.negative}, 1/0)",
                )
            )
            continue
        unlabeled += reading is None
        path = Path(written).expanduser()
        path = path if path.is_absolute() else base / path
        resolved = path.resolve()
        if resolved in seen_paths:
            report.skipped.append((f"{where} ({written})", f"same file as line {seen_paths[resolved]}; listed twice"))
            continue
        seen_paths[resolved] = line
        if not path.is_file():
            report.skipped.append((f"{where} ({written})", f"file not found: {path}"))
            continue
        todo.append((line, written, row_task, reading, path))

    for task_name, n in sorted(other_tasks.items()):
        report.notices.append(f"{n} rows of task {task_name!r} left out (loading {fixed.key})")
    if unlabeled:
        report.notices.append(f"{unlabeled} rows have no label; they are loaded as unlabeled cases")

    hashes: dict[str, tuple[int, Optional[Reading]]] = {}
    for done, (line, written, row_task, reading, path) in enumerate(todo, start=1):
        where = f"{csv_path.name} line {line} ({written})"
        rel = Path(written).as_posix()
        try:
            case = loaded_case(
                path,
                case_id=f"{row_task.key}:file:{rel}",
                task=row_task,
                label=reading,
                where=str(path),
                meta={"path": str(path), "manifest": str(csv_path), "manifest_line": line},
            )
        except image_error_types() as exc:
            report.skipped.append((where, f"{type(exc).__name__}: {exc}"))
        else:
            if case.image_hash in hashes:
                first, first_label = hashes[case.image_hash]
                clash = "" if first_label == reading else f", with a different label ({first_label} vs {reading})"
                report.notices.append(f"{where}: same image as line {first}{clash}")
            else:
                hashes[case.image_hash] = (line, reading)
            report.cases.append(case)
        if progress:
            progress(done, len(todo))
    return report


# ---------------------------------------------------------------- a single upload
UPLOAD_ID = ":upload:"  # in the case id of every upload ("pneumonia:upload:<hash>")


def is_upload(case_id: str) -> bool:
    return UPLOAD_ID in str(case_id)


def upload_case(
    source: Union[str, Path, bytes, bytearray, io.IOBase, Image.Image],
    task: Union[TaskSpec, str],
    label: Optional[str] = None,
    name: Optional[str] = None,
    max_pixels: Optional[int] = None,
) -> Case:
    """One uploaded image (path, bytes, file object or PIL image); its case_id comes from the image hash.

    Raises images.ImageLoadError when the file cannot be read as an image, CaseSourceError for an
    unknown label.
    """
    task = task_spec(task)
    reading = None
    if label is not None and str(label).strip():
        reading = parse_label(label, task)
        if reading is None:
            raise CaseSourceError(f"unknown label {label!r} for {task.key}")
    if name is None:
        if isinstance(source, (str, os.PathLike)):
            name = Path(source).name
        else:
            name = getattr(source, "name", None) or "upload"
            name = Path(str(name)).name
    if isinstance(source, bytearray):
        source = bytes(source)
    limits = {"max_pixels": max_pixels} if max_pixels else {}
    loaded = load_image(Path(source) if isinstance(source, str) else source, **limits)
    return case_from(
        loaded,
        case_id=f"{task.key}{UPLOAD_ID}{loaded.image_hash[:16]}",
        task=task,
        label=reading,
        where=f"upload: {name}",
        meta={"name": name},
    )
