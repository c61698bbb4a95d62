"""Results someone already has, opened for browsing: a store, an export, or the study code's CSVs;
and the cases worth a look in them (base and medical disagree, or the wording flips the answer).

Nothing here needs a model, so the Results tab works on a machine that cannot run any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import pandas as pd

from explorer.runs.bounded_read import ReadBudget, ReadLimits, read_sqlite_answers
from explorer.runs.study_import import (
    ResultFileError,
    import_study_results,
    read_answers_file,
    validate_answers,
)

DISAGREEMENT_COLUMNS = ["task", "case_id", "image_hash", "label", "kind", "models", "n"]
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def _is_study_csv(path: Path) -> bool:
    """The study code writes {model}_{task}_vqa_results.csv with a `judgment` column (its first upload:
    eval_output*.csv with `gpt5_judgment`); our exports have `verdict`."""
    if path.name.endswith("_vqa_results.csv") or (
        path.name.startswith("eval_output") and path.suffix.lower() == ".csv"
    ):
        return True
    if path.suffix.lower() != ".csv":
        return False
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (ValueError, OSError, UnicodeDecodeError):
        return False
    return ("judgment" in header or "gpt5_judgment" in header) and "verdict" not in header


def open_results(path: Union[str, Path], catalog=None, limits: Optional[ReadLimits] = None) -> pd.DataFrame:
    """Any results file as an answers frame; a folder is read as the study code's output folder.

    Every format is read within `limits` (bounded_read: size, rows, memory, time, cancel; the
    defaults when None). Raises ResultFileError (a ValueError) with the file name and the problem.
    """
    path = Path(path)
    budget = (limits or ReadLimits()).start()
    if path.is_dir():
        return import_study_results(path, catalog, budget)
    if not path.is_file():
        raise ResultFileError(f"{path}: no such file")
    if path.suffix.lower() in (".sqlite", ".sqlite3", ".db") and not _is_sqlite(path):
        raise ResultFileError(f"{path.name}: not an SQLite database (a results store is one)")
    if _is_sqlite(path):
        return _store_answers(path, catalog, budget)
    if _is_study_csv(path):
        return import_study_results(path, catalog, budget)
    return read_answers_file(path, budget)


def _store_answers(path: Path, catalog, budget: ReadBudget) -> pd.DataFrame:
    """A results store's answers, read-only and bounded, with pair and role from the catalog."""
    from explorer.runs.store import SCHEMA_VERSION

    frame = read_sqlite_answers(path, budget, SCHEMA_VERSION)
    if catalog is None:
        from explorer.catalog.presets import load_catalog

        catalog = load_catalog()
    specs = getattr(catalog, "models", {})
    models = frame["model"] if "model" in frame.columns else []
    frame["pair"] = [getattr(specs.get(m), "pair", None) for m in models]
    frame["role"] = [getattr(specs.get(m), "role", None) for m in models]
    return validate_answers(frame, path.name)


def _reading(verdict) -> str:
    return verdict if verdict in ("positive", "negative") else "non-answer"


def disagreements(frame: pd.DataFrame) -> pd.DataFrame:
    """Cases where a base model and its medical twin read the same prompt differently ("pair"), and
    cases where one model's reading changes with the wording ("wording"); most disagreement first.

    n is the number of prompts on which the pair differs, or the number of variants that leave the
    model's majority reading. Description prompts and failed answers are left out.
    """
    if frame is None or frame.empty or not {"task", "case_id", "model", "prompt_id"} <= set(frame.columns):
        return pd.DataFrame(columns=DISAGREEMENT_COLUMNS)
    rows = frame
    if "prompt_kind" in rows.columns:
        rows = rows[rows["prompt_kind"].fillna("closed") == "closed"]
    if "error" in rows.columns:
        rows = rows[rows["error"].isna()]
    rows = rows.assign(reading=[_reading(v) for v in rows.get("verdict", pd.Series(index=rows.index, dtype=object))])
    found: list[dict] = []
    for (task, case_id), case in rows.groupby(["task", "case_id"], sort=False):
        first = case.iloc[0]
        base = {"task": task, "case_id": case_id, "image_hash": first.get("image_hash"), "label": first.get("label")}
        for model, answers in case.groupby("model", sort=False):
            counts = answers["reading"].value_counts()
            if len(counts) > 1:
                found.append({**base, "kind": "wording", "models": model, "n": int(len(answers) - counts.iloc[0])})
        if "pair" in case.columns and "role" in case.columns:
            for _, pair in case[case["pair"].notna()].groupby("pair", sort=False):
                by_role = {role: grp for role, grp in pair.groupby("role")}
                if not {"base", "medical"} <= set(by_role):
                    continue
                b = by_role["base"].drop_duplicates("prompt_id").set_index("prompt_id")
                m = by_role["medical"].drop_duplicates("prompt_id").set_index("prompt_id")
                shared = b.index.intersection(m.index)
                differ = int((b.loc[shared, "reading"] != m.loc[shared, "reading"]).sum())
                if differ:
                    names = f"{b['model'].iloc[0]} vs {m['model'].iloc[0]}"
                    found.append({**base, "kind": "pair", "models": names, "n": differ})
    if not found:
        return pd.DataFrame(columns=DISAGREEMENT_COLUMNS)
    out = pd.DataFrame(found, columns=DISAGREEMENT_COLUMNS)
    return out.sort_values(["n", "kind"], ascending=[False, True], kind="stable").reset_index(drop=True)
