"""Case sources: the study's Hugging Face samples, a folder of class subfolders, a CSV manifest, an upload.

The local sources (a folder of class subfolders, a CSV manifest, one upload) live in local_cases.py;
this module re-exports folder_cases, manifest_cases and upload_case at its end.

Every multi-case source returns a CaseLoadReport: the cases, the files or rows it skipped with the
reason, and notices (a class smaller than asked for, an unknown subfolder, a duplicate image...).
A bad file never stops a load; only an unusable source (missing, offline, gated, wrong columns)
raises CaseSourceError, with a message a user can act on.

The Hugging Face sampler reproduces the study exactly (michalg04/medical-vlm-fragility,
src/create_dataset.py): per class, `frame[frame[column] == value].sample(k, random_state=42)`,
negatives first, row_id = position in the split. It samples a frame of the label columns only,
which picks the same rows as the study's frame of whole rows (pandas' choice depends only on the
number of rows of the class), then decodes just the chosen rows' images.
"""

from __future__ import annotations

import bisect
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import pandas as pd
from PIL import Image

from explorer.cases.images import load_image
from explorer.catalog.presets import PresetError, TaskSpec, load_catalog
from explorer.schema import Case, Reading

Progress = Optional[Callable[[int, int], None]]  # (done, total)
READINGS: tuple[Reading, Reading] = ("negative", "positive")  # the study's order: negatives first

# CheXpert presence codes (presets/tasks.yaml): 0 unlabeled, 1 uncertain, 2 absent, 3 present.
# The study's embedding analysis takes "absent" pneumonia as its negative class.
CHEXPERT_ABSENT = 2
CHEXPERT_VIEW_COLUMN = "Frontal/Lateral"  # ClassLabel: 0 Frontal, 1 Lateral
CHEXPERT_FRONTAL = 0

# Folder names people give the study's tasks (the shared samples use "histopathology").
TASK_ALIASES = {
    "histopathology": "histo_idc",
    "histo": "histo_idc",
    "idc": "histo_idc",
    "breast_histopathology": "histo_idc",
    "brain": "brain_tumor",
    "brain_mri": "brain_tumor",
    "chest_xray": "pneumonia",
    "chexpert": "pneumonia",
    "skin": "skin_cancer",
    "dermatoscopy": "skin_cancer",
}

# Class names that mean the same for every task; each task adds its own (class_names, judge tokens,
# option texts). Disease names of other tasks are deliberately absent: a "pneumonia" folder under a
# brain task is reported as unknown, not guessed.
_GENERIC_LABELS: dict[str, Reading] = {
    **{w: "positive" for w in ("positive", "pos", "1", "yes", "true", "abnormal", "malignant", "present", "diseased")},
    **{
        w: "negative"
        for w in ("negative", "neg", "0", "no", "false", "normal", "benign", "healthy", "absent", "no_finding")
    },
}


class CaseSourceError(ValueError):
    """A case source that cannot be used at all; the message says why and what to do."""


@dataclass
class CaseLoadReport:
    """What a source produced: cases, what it skipped (where, why) and things worth knowing."""

    cases: list[Case] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self):
        return iter(self.cases)

    def counts(self) -> dict[str, int]:
        out = {"negative": 0, "positive": 0, "unlabeled": 0}
        for case in self.cases:
            out[case.label or "unlabeled"] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{len(self.cases)} cases ({c['negative']} negative, {c['positive']} positive"]
        parts[0] += f", {c['unlabeled']} unlabeled)" if c["unlabeled"] else ")"
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.notices:
            parts.append(f"{len(self.notices)} notice{'s' if len(self.notices) != 1 else ''}")
        return "; ".join(parts)


# ---------------------------------------------------------------- shared helpers
def task_spec(task: Union[TaskSpec, str]) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    return resolve_task(task)


def resolve_task(name: str, catalog=None) -> TaskSpec:
    """A task by key or by a common alias (e.g. the samples' folder name "histopathology")."""
    catalog = catalog or load_catalog()
    key = normalized_name(name)
    key = key if key in catalog.tasks else TASK_ALIASES.get(key, key)
    try:
        return catalog.task(key)
    except PresetError as exc:
        raise CaseSourceError(str(exc)) from None


def normalized_name(text: Any) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(text).strip().lower()).strip("_")


def label_names(task: TaskSpec) -> dict[str, Reading]:
    """Every name (normalized) that a folder or manifest may use for each class of this task."""
    names = dict(_GENERIC_LABELS)
    for reading in READINGS:
        for text in (
            getattr(task.class_names, reading),
            getattr(task.judge_tokens, reading),
            getattr(task.prompts.options, reading),
        ):
            names[normalized_name(text)] = reading
    # "no_tumor" is also written "notumor" (the Kaggle brain MRI folders): accept both spellings.
    names.update({k.replace("_", ""): v for k, v in list(names.items()) if "_" in k})
    return names


def parse_label(text: Any, task: Union[TaskSpec, str]) -> Optional[Reading]:
    """'positive'/'negative' for a class name of this task (tumor, No tumor, 1, benign...); None if unknown."""
    key = normalized_name(text)
    if not key:
        return None
    names = label_names(task_spec(task))
    return names.get(key) or names.get(key.replace("_", ""))


def case_from(
    loaded: Any,
    *,
    case_id: str,
    task: TaskSpec,
    label: Optional[Reading],
    where: str,
    row_id: Optional[int] = None,
    meta: Optional[dict] = None,
) -> Case:
    info = dict(meta or {})
    info["format"] = getattr(loaded, "format", None)
    notes = getattr(loaded, "notes", None)
    if notes:
        info["image_notes"] = [notes] if isinstance(notes, str) else list(notes)
    return Case(
        case_id=case_id,
        task=task.key,
        image=loaded.image,
        image_hash=loaded.image_hash,
        label=label,
        source=where,
        row_id=row_id,
        meta=info,
    )


def loaded_case(source: Any, **kwargs: Any) -> Case:
    return case_from(load_image(source), **kwargs)


def image_error_types() -> tuple[type[BaseException], ...]:
    # Decoders raise many things on a bad file; each is reported against that file, never raised.
    return (ValueError, OSError, SyntaxError, Image.DecompressionBombError)


def note_duplicates(cases: list[Case], report: CaseLoadReport) -> None:
    seen: dict[str, Case] = {}
    for case in cases:
        first = seen.setdefault(case.image_hash, case)
        if first is not case:
            clash = "" if first.label == case.label else f" with a different label ({first.label} vs {case.label})"
            report.notices.append(f"{case.source} is the same image as {first.source}{clash}")


# ---------------------------------------------------------------- study sampling (pure pandas)
def label_columns(task: TaskSpec) -> list[str]:
    scheme = task.labels
    if scheme.scheme == "single_column":
        return [scheme.column]
    return [scheme.negative_column, scheme.positive_column]


def class_rule(task: TaskSpec, reading: Reading) -> str:
    """The study's filter for one class, as a human-readable rule."""
    s = task.labels
    if s.scheme == "single_column":
        return f"{s.column} == {getattr(s, reading)}"
    return f"{getattr(s, reading + '_column')} == {s.present}"


def class_mask(frame: pd.DataFrame, task: TaskSpec, reading: Reading) -> pd.Series:
    s = task.labels
    if s.scheme == "single_column":
        return frame[s.column] == getattr(s, reading)
    return frame[getattr(s, reading + "_column")] == s.present


def study_sample(
    frame: pd.DataFrame, task: TaskSpec, per_class: int = 50, seed: int = 42
) -> tuple[pd.DataFrame, list[str]]:
    """The study's VQA sample of a label frame whose index is the row position in the split.

    Returns (rows with columns row_id and label, negatives first in sampled order; notices).
    A class with fewer rows than per_class gives all its rows (in the order pandas would sample
    them) and a notice, where the study's code would have stopped with an error.
    """
    if per_class < 1:
        raise CaseSourceError(f"per_class must be at least 1, got {per_class}")
    notices: list[str] = []
    parts = []
    for reading in READINGS:
        rows = frame[class_mask(frame, task, reading)]
        k = min(per_class, len(rows))
        if k < per_class:
            notices.append(_short_class_notice(frame, task, reading, len(rows), per_class))
        chosen = rows.sample(k, random_state=seed)
        parts.append(pd.DataFrame({"row_id": chosen.index.astype(int), "label": reading}))
    sample = pd.concat(parts, ignore_index=True)
    both = set(parts[0]["row_id"]) & set(parts[1]["row_id"])
    if both:
        notices.append(
            f"{task.key}: rows {sorted(both)} satisfy both {class_rule(task, 'negative')} and "
            f"{class_rule(task, 'positive')}; like the study, they appear once in each class"
        )
    return sample, notices


def study_embedding_sample(
    frame: pd.DataFrame, task: TaskSpec, per_class: int = 300, seed: int = 42, frontal_only: bool = True
) -> tuple[pd.DataFrame, list[str]]:
    """The study's embedding sample (src/tsne_analysis.py), which differs from the VQA sample.

    Chest X-rays: positives Pneumonia == present, negatives Pneumonia == absent (not "No Finding"),
    frontal views only when asked. Each class: up to per_class rows sampled with the seed; the classes
    are taken in the sorted order of their names and the union is shuffled with the same seed.
    """
    notices: list[str] = []
    s = task.labels
    if s.scheme == "two_columns":
        codes = frame[s.positive_column]
        keep = codes.isin([CHEXPERT_ABSENT, s.present])
        if frontal_only:
            if CHEXPERT_VIEW_COLUMN in frame.columns:
                view = frame[CHEXPERT_VIEW_COLUMN]
                keep &= view.isna() | (view == CHEXPERT_FRONTAL)
            else:
                notices.append(f"{task.key}: no {CHEXPERT_VIEW_COLUMN!r} column, so lateral views cannot be excluded")
        frame = frame[keep]
        readings = pd.Series(
            ["positive" if c == s.present else "negative" for c in frame[s.positive_column]],
            index=frame.index,
            dtype=object,
        )
    else:
        values = frame[s.column]
        frame = frame[values.isin([s.negative, s.positive])]
        readings = pd.Series(
            ["positive" if v == s.positive else "negative" for v in frame[s.column]], index=frame.index, dtype=object
        )
    # The study groups by its diagnosis names (no_tumor/tumor, idc/no_idc, ...): sorted name order.
    order = sorted(READINGS, key=lambda r: getattr(task.class_names, r))
    parts = []
    for reading in order:
        rows = frame[readings == reading]
        k = min(per_class, len(rows))
        if k < per_class:
            notices.append(f"{task.key}: {len(rows)} {reading} rows available for embeddings; took all")
        chosen = rows.sample(k, random_state=seed)
        parts.append(pd.DataFrame({"row_id": chosen.index.astype(int), "label": reading}))
    sample = pd.concat(parts, ignore_index=True).sample(frac=1, random_state=seed).reset_index(drop=True)
    return sample, notices


def _short_class_notice(frame: pd.DataFrame, task: TaskSpec, reading: str, n: int, asked: int) -> str:
    msg = f"{task.key}: only {n} {reading} rows ({class_rule(task, reading)}); took all {n} instead of {asked}"
    if n == 0:
        column = label_columns(task)[0 if task.labels.scheme == "single_column" else READINGS.index(reading)]
        values = sorted(map(str, frame[column].dropna().unique()))[:10]
        msg += f"; values of {column!r} found: {', '.join(values) or 'none'}"
    return msg


# ---------------------------------------------------------------- Hugging Face tables
class _Table:
    """A split that can give label columns as a frame and raw image cells by row position."""

    describe: str
    columns: list[str]

    def frame(self, columns: list[str]) -> pd.DataFrame:
        raise NotImplementedError

    def cells(self, column: str, row_ids: list[int]) -> dict[int, Any]:
        raise NotImplementedError


class _DatasetTable(_Table):
    def __init__(self, ds, describe: str):
        self.ds, self.describe, self.columns = ds, describe, list(ds.column_names)

    def frame(self, columns: list[str]) -> pd.DataFrame:
        frame = self.ds.select_columns(columns).to_pandas()
        frame.index = pd.RangeIndex(len(frame))
        return frame

    def cells(self, column: str, row_ids: list[int]) -> dict[int, Any]:
        # The arrow view returns the stored cell ({"bytes", "path"} for an Image column) undecoded,
        # so images.load_image does the one decoding, with its format notes and hash.
        arrow = self.ds.select_columns([column]).with_format("arrow")
        return {i: arrow[int(i)].column(column).to_pylist()[0] for i in row_ids}


class _ParquetTable(_Table):
    """Parquet files read with pyarrow: label columns for the frame, single row groups for images."""

    def __init__(self, files: list[Path], describe: str):
        import pyarrow.parquet as pq

        self.files, self.describe = files, describe
        self._handles = [pq.ParquetFile(f) for f in files]
        self.columns = list(self._handles[0].schema_arrow.names)
        # (global start row, file index, row group index), for bisecting a row position.
        self._groups: list[tuple[int, int, int]] = []
        start = 0
        for fi, handle in enumerate(self._handles):
            meta = handle.metadata
            for gi in range(meta.num_row_groups):
                self._groups.append((start, fi, gi))
                start += meta.row_group(gi).num_rows
        self.n_rows = start

    def frame(self, columns: list[str]) -> pd.DataFrame:
        import pyarrow as pa

        table = pa.concat_tables([h.read(columns=columns) for h in self._handles])
        frame = table.to_pandas()
        frame.index = pd.RangeIndex(len(frame))
        return frame

    def cells(self, column: str, row_ids: list[int]) -> dict[int, Any]:
        starts = [g[0] for g in self._groups]
        wanted: dict[int, list[int]] = defaultdict(list)
        for rid in row_ids:
            if not 0 <= rid < self.n_rows:
                raise IndexError(f"row {rid} is outside {self.describe} ({self.n_rows} rows)")
            wanted[bisect.bisect_right(starts, rid) - 1].append(rid)
        out: dict[int, Any] = {}
        for g, rids in wanted.items():
            start, fi, gi = self._groups[g]
            values = self._handles[fi].read_row_group(gi, columns=[column]).column(column).to_pylist()
            out.update({rid: values[rid - start] for rid in rids})
        return out


_SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev")


def _parquet_files(folder: Path, split: str) -> list[Path]:
    files = sorted(folder.rglob("*.parquet"), key=lambda p: p.relative_to(folder).as_posix())

    def split_of(p: Path) -> Optional[str]:
        rel = p.relative_to(folder)
        for name in (*rel.parent.parts, p.stem):
            head = re.split(r"[-_.]", name, maxsplit=1)[0].lower()
            if head in _SPLIT_NAMES:
                return head
        return None

    tagged = {p: split_of(p) for p in files}
    matching = [p for p in files if tagged[p] == split.lower()]
    if matching:
        return matching
    if any(tagged.values()):
        found = sorted({s for s in tagged.values() if s})
        raise CaseSourceError(f"{folder} has no parquet files for split {split!r} (found splits: {', '.join(found)})")
    return files


def _hub_table(task: TaskSpec) -> _Table:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    spec = task.dataset
    where = spec.id + (f"@{spec.revision}" if spec.revision else "")
    try:
        ds = datasets.load_dataset(spec.id, revision=spec.revision, split=spec.split)
    except ConnectionError as exc:
        why = "offline mode, HF_HUB_OFFLINE=1" if "Offline" in str(exc) else "no network"
        raise CaseSourceError(
            f"{spec.id} is not in the local Hugging Face cache and the Hub is unreachable ({why}). "
            f"Load it once on a connected machine, or give a local copy (a save_to_disk folder or parquet files)."
        ) from None
    except DatasetNotFoundError as exc:
        if "gated" in str(exc) or spec.gated:
            raise CaseSourceError(
                f"{spec.id} is gated on the Hugging Face Hub: accept its terms at "
                f"https://huggingface.co/datasets/{spec.id} and set HF_TOKEN (or run `hf auth login`). ({exc})"
            ) from None
        raise CaseSourceError(f"{where} was not found on the Hugging Face Hub: {exc}") from None
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise CaseSourceError(f"{where} has no split {spec.split!r}: {exc}") from None
        raise CaseSourceError(f"could not load {where}: {exc}") from None
    except Exception as exc:  # the Hub client raises many HTTP error types; all mean "cannot load"
        raise CaseSourceError(f"could not load {where}: {type(exc).__name__}: {exc}") from None
    return _DatasetTable(ds, f"{where} ({spec.split})")


def _open_table(task: TaskSpec, source: Any) -> _Table:
    """The split named by the task, from the Hub (source None), a local copy or an in-memory dataset."""
    import datasets

    split = task.dataset.split
    if source is None:
        return _hub_table(task)
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise CaseSourceError(f"the dataset has no split {split!r} (splits: {', '.join(source)})")
        return _DatasetTable(source[split], f"in-memory dataset ({split})")
    if isinstance(source, datasets.Dataset):
        return _DatasetTable(source, "in-memory dataset")
    if isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise CaseSourceError("streaming datasets cannot be sampled by row position; load the split without streaming")
    if not isinstance(source, (str, os.PathLike)):
        raise CaseSourceError(f"cannot read cases from a {type(source).__name__}")
    path = Path(source).expanduser()
    if not path.exists():
        raise CaseSourceError(f"no such file or folder: {path}")
    if path.is_file():
        if path.suffix.lower() != ".parquet":
            raise CaseSourceError(f"{path} is not a parquet file")
        return _ParquetTable([path], f"{path} ({split})")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # a damaged save: report it as a source problem
            raise CaseSourceError(f"cannot read the saved dataset at {path}: {exc}") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise CaseSourceError(f"{path} has no split {split!r} (splits: {', '.join(loaded)})")
            loaded = loaded[split]
        return _DatasetTable(loaded, f"{path} ({split})")
    files = _parquet_files(path, split)
    if not files:
        raise CaseSourceError(f"{path} is neither a save_to_disk folder nor a folder of parquet files")
    return _ParquetTable(files, f"{path} ({split})")


def _check_columns(table: _Table, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise CaseSourceError(
            f"{table.describe} has no column {', '.join(repr(c) for c in missing)} "
            f"(columns: {', '.join(table.columns)})"
        )


def _image_source(cell: Any) -> Any:
    """What images.load_image gets for a stored image cell: a PIL image, bytes or a path."""
    if cell is None:
        raise ValueError("the row has no image")
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            path = Path(cell["path"])
            if not path.exists():
                raise ValueError(f"the row stores no image bytes and its path {path} does not exist here")
            return path
        raise ValueError("the row's image cell is empty")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, str):
        return Path(cell)
    if hasattr(cell, "__array__") and not isinstance(cell, Image.Image):
        import numpy as np

        return Image.fromarray(np.asarray(cell))
    return cell


def _plain(value: Any) -> Any:
    # numpy scalars from pandas -> plain Python, so meta stays JSON-serializable.
    return value.item() if hasattr(value, "item") else value


def _rows_to_cases(
    table: _Table,
    task: TaskSpec,
    sample: pd.DataFrame,
    frame: pd.DataFrame,
    report: CaseLoadReport,
    progress: Progress,
    sampling: str,
) -> None:
    column = task.dataset.image_column
    row_ids = [int(r) for r in dict.fromkeys(sample["row_id"])]
    cells = table.cells(column, row_ids)
    total = len(sample)
    seen_ids: set[str] = set()
    for done, (row_id, reading) in enumerate(zip(sample["row_id"], sample["label"]), start=1):
        row_id = int(row_id)
        case_id = f"{task.key}:hf:{row_id}"
        if case_id in seen_ids:  # a row in both classes (see study_sample): keep both, ids distinct
            case_id += f":{reading}"
        seen_ids.add(case_id)
        where = f"{table.describe} row {row_id}"
        meta = {
            "dataset": task.dataset.id,
            "revision": task.dataset.revision,
            "split": task.dataset.split,
            "labels": {c: _plain(frame.at[row_id, c]) for c in frame.columns},
            "class_name": getattr(task.class_names, reading),
            "sampling": sampling,
        }
        try:
            case = loaded_case(
                _image_source(cells[row_id]),
                case_id=case_id,
                task=task,
                label=reading,
                where=where,
                row_id=row_id,
                meta=meta,
            )
        except image_error_types() as exc:
            report.skipped.append((where, f"{type(exc).__name__}: {exc}"))
        else:
            report.cases.append(case)
        if progress:
            progress(done, total)


def hf_cases(
    task: Union[TaskSpec, str], per_class: int = 50, seed: int = 42, *, source: Any = None, progress: Progress = None
) -> CaseLoadReport:
    """The study's VQA sample of a task: per_class negatives then per_class positives.

    source: None (datasets.load_dataset of the task's id, revision and split), a save_to_disk folder,
    a parquet file or folder of parquet files, or an in-memory datasets.Dataset / DatasetDict.
    """
    task = task_spec(task)
    table = _open_table(task, source)
    _check_columns(table, [*label_columns(task), task.dataset.image_column])
    frame = table.frame(label_columns(task))
    sample, notices = study_sample(frame, task, per_class, seed)
    report = CaseLoadReport(notices=notices)
    _rows_to_cases(table, task, sample, frame, report, progress, sampling="study_vqa")
    return report


def embedding_cases(
    task: Union[TaskSpec, str],
    per_class: int = 300,
    seed: int = 42,
    *,
    frontal_only: bool = True,
    source: Any = None,
    progress: Progress = None,
    main_branch: bool = True,
) -> CaseLoadReport:
    """The study's sample for the vision-embedding analysis (see study_embedding_sample).

    From the Hub, main_branch reads each dataset's main branch as the study's t-SNE script did (its VQA
    scripts read the parquet conversion of brain MRI and skin lesions, which tasks.yaml names); rows
    and their order can differ between the two, and with them the sample."""
    task = task_spec(task)
    if source is None and main_branch and task.dataset.revision:
        task = task.model_copy(update={"dataset": task.dataset.model_copy(update={"revision": None})})
    table = _open_table(task, source)
    _check_columns(table, [*label_columns(task), task.dataset.image_column])
    columns = label_columns(task)
    if task.labels.scheme == "two_columns" and CHEXPERT_VIEW_COLUMN in table.columns:
        columns.append(CHEXPERT_VIEW_COLUMN)
    frame = table.frame(columns)
    sample, notices = study_embedding_sample(frame, task, per_class, seed, frontal_only)
    report = CaseLoadReport(notices=notices)
    _rows_to_cases(table, task, sample, frame, report, progress, sampling="study_embedding")
    return report


_LOCAL_SOURCES = ("folder_cases", "manifest_cases", "upload_case")


def __getattr__(name: str):
    """datasets.folder_cases / manifest_cases / upload_case live in local_cases.py; looked up on first use so
    that either module can be imported first."""
    if name in _LOCAL_SOURCES:
        from explorer.cases import folders as local_cases

        return getattr(local_cases, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
