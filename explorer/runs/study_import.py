"""Read answer tables from files: the original study's result CSVs, and the explorer's own exports.

The study's evaluate_vqa.py writes one `{model}_{task}_vqa_results.csv` per run with the columns
STUDY_COLUMNS. What those columns hold, as that script writes them:
  model        the Hugging Face id the script resolved (e.g. "google/medgemma-4b-it")
  row_id       position of the image in the dataset's train split; label 0/1 (1 = positive class)
  prompt_type  "yesno" (the four yes/no questions) or "ab" (the two multiple-choice orderings): the
               family is read from the prompt text itself, see study_family()
  one_word     True/False; the prompt text then ends with "\\nAnswer in one word."
  judgment     the judge's token (e.g. TUMOR / NO_TUMOR), AMBIGUOUS, ERROR (a failed judge call),
               or empty (a run with --no_judge)
  pred         1 / 0 for the positive / negative token, -1 for AMBIGUOUS or ERROR, empty without a judge
  correct      1 / 0 when pred is 1 / 0, empty otherwise
The study's first upload (de96238, which produced the paper's numbers) wrote `eval_output*.csv` from its
judging/gpt5_judge_*.py scripts instead, one file per task with EVAL_OUTPUT_COLUMNS: model_id,
prompt_idx (position in the generation script's prompt list), prompt (the text, stripped), row_id,
label 0/1, label_str, response, gpt5_judgment (the token, AMBIGUOUS or ERROR), pred 1/0/-1, correct.
The task is not in the file: it is read from label_str and the prompts; each prompt is matched to the
paper-as-run prompt set (explorer/prompts/variants.py) for its id, family and kind (description prompts were
judged too; they are kept without a verdict).
Verdicts, as the judge module reads its own: the positive / negative token -> positive / negative,
AMBIGUOUS -> hedge (detail "AMBIGUOUS: ..."), ERROR or empty -> refusal (a failed call the study counted
as a refusal; its number cannot be had any other way from the file). Both are non-answers, so the
refusal rate is the study's.
Both readers return the answers frame that explorer.analysis.metrics takes (schema.ANSWER_COLUMNS and more), and both
raise ResultFileError naming the file, the column and the row (rows count from 1, header excluded).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import pandas as pd

from explorer.printable import short_repr
from explorer.runs.bounded_read import (
    ReadBudget,
    ReadLimits,
    ResultFileError,
    read_csv_text,
    read_json_records,
    read_parquet,
)
from explorer.runs.csv_cells import restore_frame
from explorer.schema import ANSWER_COLUMNS, VERDICT_LABELS

STUDY_COLUMNS = (
    "task",
    "model",
    "row_id",
    "label",
    "label_name",
    "prompt_type",
    "one_word",
    "prompt",
    "response",
    "judgment",
    "pred",
    "correct",
)
STUDY_FILE_GLOB = "*_vqa_results.csv"
EVAL_OUTPUT_COLUMNS = (
    "model_id",
    "prompt_idx",
    "prompt",
    "row_id",
    "label",
    "label_str",
    "response",
    "gpt5_judgment",
    "pred",
    "correct",
)
EVAL_OUTPUT_GLOB = "eval_output*.csv"
# label_str of the first upload's judge scripts -> candidate tasks (skin and IDC share malignant/benign).
_EVAL_LABEL_TASKS = {
    frozenset({"tumor", "no_tumor"}): ("brain_tumor",),
    frozenset({"pneumonia", "no_pneumonia"}): ("pneumonia",),
    frozenset({"malignant", "benign"}): ("skin_cancer", "histo_idc"),
}
STUDY_METHOD = "judge:study-import"
STUDY_PROMPT_TYPES = {"yesno": "yes/no", "ab": "multiple choice"}
NO_ANSWER_JUDGMENTS = ("", "AMBIGUOUS", "ERROR")
ONE_WORD_SUFFIX = "Answer in one word."
MC_FAMILIES = ("mc_pos_first", "mc_neg_first")

# The columns of an imported or read answers frame, in this order (extra columns of an export follow).
OUTPUT_COLUMNS = [
    *ANSWER_COLUMNS,
    "p_positive",
    "pair",
    "role",
    "one_word",
    "prompt_kind",
    "prompt_text",
    "answer",
    "verdict_method",
    "verdict_detail",
    "row_id",
    "model_id",
    "source_file",
    "source_row",
]
_TEXT_COLUMNS = ("model", "task", "prompt_id", "prompt_family", "case_id", "label", "verdict", "pair", "role")
_ROLES = ("base", "medical")
_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no"}


__all__ = ["ResultFileError", "import_study_results", "read_answers_file", "read_study_results", "validate_answers"]


def _fail(path: Path, message: str, column: Optional[str] = None, row: Optional[int] = None) -> ResultFileError:
    where = [str(path)]
    if column is not None:
        where.append(f"column {column!r}")
    if row is not None:
        where.append(f"row {row}")
    return ResultFileError(f"{', '.join(where)}: {message}")


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


# ---------------------------------------------------------------- typed cell parsers
def _int_cell(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, np.integer)):
        return int(value)
    number = float(str(value).strip())
    if not number.is_integer():
        raise ValueError
    return int(number)


def _bool_cell(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


def _one_of(allowed: Iterable[str]) -> Callable[[Any], str]:
    allowed = set(allowed)

    def parse(value: Any) -> str:
        text = str(value).strip()
        if text not in allowed:
            raise ValueError
        return text

    return parse


def _parse(
    frame: pd.DataFrame, column: str, parse: Callable[[Any], Any], path: Path, expected: str, allow_blank: bool = False
) -> list[Any]:
    """Parse one column cell by cell; the first bad cell raises with its row and value."""
    values = []
    for row, value in enumerate(frame[column].tolist(), start=1):
        if _blank(value):
            if allow_blank:
                values.append(None)
                continue
            raise _fail(path, f"empty; expected {expected}", column, row)
        try:
            values.append(parse(value))
        except (TypeError, ValueError, KeyError, OverflowError):
            raise _fail(path, f"bad value {short_repr(value)}; expected {expected}", column, row) from None
    return values


def _require_columns(frame: pd.DataFrame, needed: Iterable[str], path: Path, what: str) -> None:
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise _fail(
            path,
            f"missing column(s) {', '.join(repr(c) for c in missing)}; a {what} needs {', '.join(needed)} "
            f"(found: {', '.join(map(str, frame.columns)) or 'no columns'})",
        )


# ---------------------------------------------------------------- the study's prompts
def _normalise_prompt(text: str) -> tuple[str, bool]:
    """Prompt text with per-line whitespace trimmed and the one-word suffix removed (and whether it had one)."""
    lines = [" ".join(line.split()) for line in str(text).strip().splitlines()]
    body = "\n".join(line for line in lines if line)
    one_word = body.lower().endswith(ONE_WORD_SUFFIX.lower())
    if one_word:
        body = body[: -len(ONE_WORD_SUFFIX)].rstrip()
    return body, one_word


def _option_reading(option: str, task) -> str:
    """Which class a multiple-choice option names, from the task's option texts (then common words)."""
    text = option.strip().rstrip(".").lower()
    if task is not None:
        if text == task.prompts.options.negative.lower():
            return "negative"
        if text == task.prompts.options.positive.lower():
            return "positive"
    return "negative" if re.match(r"(no|not|normal|benign|healthy)\b", text) else "positive"


def study_family(prompt: str, task=None) -> str:
    """The explorer's prompt family of one of the study's prompt texts.

    "Which does this image show?" with option A naming the positive class -> mc_pos_first, the negative
    class -> mc_neg_first; "... Consider signs of ..." -> guided; "contain evidence of" -> evidence;
    "... abnormal?" -> abnormal; "... normal?" -> normal. Any other text -> "custom" ("custom_mc" when
    it has lettered options). `task` (a presets TaskSpec) makes the option check exact.
    """
    body, _ = _normalise_prompt(prompt)
    options = re.findall(r"^\(?([A-D])[).:]\s*(.+?)\s*$", body, flags=re.M)
    if options:
        first = dict(options).get("A")
        if first is None or not re.search(r"which does this image show", body, re.I):
            return "custom_mc"
        # The study's missing comma glued a description prompt to option B: only option A is read.
        return "mc_pos_first" if _option_reading(first, task) == "positive" else "mc_neg_first"
    if re.search(r"consider signs of", body, re.I):
        return "guided"
    if re.search(r"contain evidence of", body, re.I):
        return "evidence"
    if re.search(r"\babnormal\?", body, re.I):
        return "abnormal"
    if re.search(r"\bnormal\?", body, re.I):
        return "normal"
    return "custom"


def study_prompt_id(prompt: str, family: str, one_word: bool) -> str:
    """family (+ "_ow"); custom wordings get a short hash of their text so different ones stay apart."""
    stem = family
    if family.startswith("custom"):
        body, _ = _normalise_prompt(prompt)
        stem = f"custom_{hashlib.sha256(body.encode()).hexdigest()[:8]}"
    return stem + ("_ow" if one_word else "")


# ---------------------------------------------------------------- the study's result files
def _catalog(catalog):
    if catalog is not None:
        return catalog
    from explorer.catalog.presets import load_catalog

    return load_catalog()


def _model_alias(model_id: str, catalog) -> Optional[str]:
    for alias, spec in catalog.models.items():
        if model_id == alias or model_id == spec.hf_id or model_id in spec.alt_ids:
            return alias
    return None


def _budget(budget: Optional[ReadBudget]) -> ReadBudget:
    return budget if budget is not None else ReadLimits().start()


def _read_csv_text(path: Path, budget: Optional[ReadBudget] = None) -> pd.DataFrame:
    if not path.is_file():
        raise _fail(path, "no such file")
    return read_csv_text(path, _budget(budget))


def _study_verdict(judgment: str, pred: Optional[int], task, path: Path, row: int) -> str:
    """positive / negative / hedge (AMBIGUOUS) / refusal (ERROR, empty) from the study's judgment and pred,
    checking they agree."""
    if judgment in NO_ANSWER_JUDGMENTS:
        if pred in (0, 1):
            raise _fail(path, f"pred is {pred} but the judgment {judgment or '(empty)'!r} is no answer", "pred", row)
        return "hedge" if judgment == "AMBIGUOUS" else "refusal"
    tokens = {task.judge_tokens.positive.upper(): 1, task.judge_tokens.negative.upper(): 0}
    if judgment in tokens and pred != tokens[judgment]:
        raise _fail(path, f"pred is {pred} but the judgment is {judgment!r}", "pred", row)
    if pred in (0, 1):
        return "positive" if pred == 1 else "negative"
    return "refusal"  # a judgment the study's parser would not recognise, with pred -1: AMBIGUOUS


def read_study_results(path: Union[str, Path], catalog=None, budget: Optional[ReadBudget] = None) -> pd.DataFrame:
    """One `{model}_{task}_vqa_results.csv` of the study as an answers frame (columns OUTPUT_COLUMNS).

    Verdicts: pred 1 / 0 -> positive / negative; judgment AMBIGUOUS, ERROR or empty -> refusal (the
    study counts all of these as refusals). verdict_method is "judge:study-import"; verdict_detail keeps
    the study's judgment. case_id follows the explorer's Hugging Face case ids ("{task}:hf:{row_id}"),
    so imported answers line up with the explorer's own sweeps of the same images. Raises
    ResultFileError for missing columns, unknown tasks, prompt types or labels, bad numbers, judgments
    that disagree with pred, duplicated answers, and files with no judgements at all (--no_judge runs).
    budget: the read limits (bounded_read), shared by the files of one import.
    """
    path = Path(path)
    catalog = _catalog(catalog)
    raw = _read_csv_text(path, budget)
    if "gpt5_judgment" in raw.columns and "judgment" not in raw.columns:
        return _eval_output_frame(raw, path, catalog)
    _require_columns(raw, STUDY_COLUMNS, path, "study results file")
    if raw.empty:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)

    tasks = _parse(raw, "task", _one_of(catalog.tasks), path, f"a task key ({', '.join(catalog.tasks)})")
    models = _parse(raw, "model", lambda v: str(v).strip(), path, "a model id")
    row_ids = _parse(raw, "row_id", _int_cell, path, "a row number (integer)")
    labels = _parse(
        raw, "label", lambda v: {0: "negative", 1: "positive"}[_int_cell(v)], path, "0 (negative) or 1 (positive)"
    )
    one_words = _parse(raw, "one_word", _bool_cell, path, "True or False")
    prompt_types = _parse(raw, "prompt_type", _one_of(STUDY_PROMPT_TYPES), path, "yesno or ab")
    prompts = _parse(raw, "prompt", str, path, "the prompt text")
    preds = _parse(
        raw, "pred", lambda v: {1: 1, 0: 0, -1: -1}[_int_cell(v)], path, "1, 0, -1 or empty", allow_blank=True
    )
    corrects = _parse(raw, "correct", lambda v: {1: 1, 0: 0}[_int_cell(v)], path, "1, 0 or empty", allow_blank=True)
    judgments = [str(v).strip().upper() for v in raw["judgment"].tolist()]
    if all(j == "" for j in judgments) and all(p is None for p in preds):
        raise _fail(path, "no judgements at all (the study ran with --no_judge); judge the answers first", "judgment")

    records = []
    for i in range(len(raw)):
        row = i + 1
        task = catalog.task(tasks[i])
        verdict = _study_verdict(judgments[i], preds[i], task, path, row)
        if corrects[i] is not None:
            if preds[i] not in (0, 1):
                raise _fail(path, f"correct is {corrects[i]} but pred is {preds[i]}", "correct", row)
            if corrects[i] != int(verdict == labels[i]):
                raise _fail(path, f"correct is {corrects[i]} but pred {preds[i]} vs label {labels[i]}", "correct", row)
        family = study_family(prompts[i], task)
        is_mc = family in MC_FAMILIES or family == "custom_mc"
        if is_mc != (prompt_types[i] == "ab"):
            raise _fail(
                path, f"prompt_type {prompt_types[i]!r} does not fit the prompt {prompts[i][:60]!r}", "prompt_type", row
            )
        alias = _model_alias(models[i], catalog)
        spec = catalog.models.get(alias) if alias else None
        records.append(
            dict(
                model=alias or models[i],
                task=task.key,
                prompt_id=study_prompt_id(prompts[i], family, one_words[i]),
                prompt_family=family,
                case_id=f"{task.key}:hf:{row_ids[i]}",
                label=labels[i],
                verdict=verdict,
                p_positive=np.nan,
                pair=spec.pair if spec else None,
                role=spec.role if spec else None,
                one_word=one_words[i],
                prompt_kind="closed",
                prompt_text=prompts[i],
                answer=raw.at[i, "response"],
                verdict_method=STUDY_METHOD,
                verdict_detail=_study_detail(judgments[i]),
                row_id=row_ids[i],
                model_id=models[i],
                source_file=str(path),
                source_row=row,
            )
        )
    out = pd.DataFrame.from_records(records, columns=OUTPUT_COLUMNS)
    out["case_id"] = _split_double_rows(out)
    _check_unique(out, path)
    return out


def _study_detail(judgment: str) -> str:
    shown = f"study judgment: {judgment or '(empty)'}"
    if judgment == "AMBIGUOUS":
        return f"AMBIGUOUS: {shown}"
    if judgment == "ERROR":
        return f"{shown} (a failed judge call, counted as a refusal by the study)"
    return shown


def _eval_task(raw: pd.DataFrame, path: Path, catalog) -> str:
    """The task of a first-upload eval_output file: from label_str, then (skin or IDC) the prompts."""
    names = frozenset(str(v).strip().lower() for v in raw["label_str"].tolist() if not _blank(v))
    candidates = next((t for k, t in _EVAL_LABEL_TASKS.items() if names and names <= k), ())
    candidates = tuple(t for t in candidates if t in catalog.tasks)
    if not candidates:
        raise _fail(path, f"label_str values {sorted(names)} name none of the study's tasks", "label_str")
    if len(candidates) == 1:
        return candidates[0]
    text = " ".join(str(p).lower() for p in raw["prompt"].tolist())
    matched = [
        t for t, word in (("skin_cancer", "skin"), ("histo_idc", "carcinoma")) if t in candidates and word in text
    ]
    if len(matched) != 1:
        raise _fail(path, "cannot tell skin lesions from histopathology: the prompts name neither (or both)", "prompt")
    return matched[0]


def _eval_output_frame(raw: pd.DataFrame, path: Path, catalog) -> pd.DataFrame:
    """A first-upload eval_output*.csv (judging/gpt5_judge_*.py) as an answers frame."""
    from explorer.prompts.variants import prompt_set_variants

    _require_columns(raw, EVAL_OUTPUT_COLUMNS, path, "first-upload judge output (eval_output*.csv)")
    if raw.empty:
        return pd.DataFrame(columns=OUTPUT_COLUMNS)
    task = catalog.task(_eval_task(raw, path, catalog))
    # The judge scripts wrote prompt.strip(): match on that, to the strings the models were sent.
    as_run = {v.text.strip(): v for v in prompt_set_variants("paper-as-run", task.key)}
    models = _parse(raw, "model_id", lambda v: str(v).strip(), path, "a model id")
    row_ids = _parse(raw, "row_id", _int_cell, path, "a row number (integer)")
    labels = _parse(
        raw, "label", lambda v: {0: "negative", 1: "positive"}[_int_cell(v)], path, "0 (negative) or 1 (positive)"
    )
    prompt_idx = _parse(raw, "prompt_idx", _int_cell, path, "a prompt position (integer)")
    preds = _parse(raw, "pred", lambda v: {1: 1, 0: 0, -1: -1}[_int_cell(v)], path, "1, 0 or -1")
    corrects = _parse(raw, "correct", lambda v: {1: 1, 0: 0}[_int_cell(v)], path, "1, 0 or empty", allow_blank=True)
    judgments = [str(v).strip().upper() if not _blank(v) else "" for v in raw["gpt5_judgment"].tolist()]
    records = []
    for i in range(len(raw)):
        row = i + 1
        prompt = "" if _blank(raw.at[i, "prompt"]) else str(raw.at[i, "prompt"])
        variant = as_run.get(prompt.strip())
        judged = _study_verdict(judgments[i], preds[i], task, path, row)
        if corrects[i] is not None and corrects[i] != int(judged == labels[i]):
            raise _fail(path, f"correct is {corrects[i]} but pred {preds[i]} vs label {labels[i]}", "correct", row)
        if variant is not None:
            prompt_id, family, kind, one_word = variant.prompt_id, variant.family, variant.kind, variant.one_word
            text = variant.text  # what the model was sent, whitespace included
        else:  # a wording the first upload did not have: read like the later files
            family = study_family(prompt, task)
            _, one_word = _normalise_prompt(prompt)
            prompt_id, kind, text = study_prompt_id(prompt, family, one_word), "closed", prompt
        alias = _model_alias(models[i], catalog)
        spec = catalog.models.get(alias) if alias else None
        records.append(
            dict(
                model=alias or models[i],
                task=task.key,
                prompt_id=prompt_id,
                prompt_family=family,
                case_id=f"{task.key}:hf:{row_ids[i]}",
                label=labels[i],
                verdict=judged if kind == "closed" else None,
                p_positive=np.nan,
                pair=spec.pair if spec else None,
                role=spec.role if spec else None,
                one_word=one_word,
                prompt_kind=kind,
                prompt_text=text,
                answer="" if _blank(raw.at[i, "response"]) else str(raw.at[i, "response"]),
                verdict_method=STUDY_METHOD,
                verdict_detail=_study_detail(judgments[i])
                + (
                    f" (prompt {prompt_idx[i]})"
                    if kind == "closed"
                    else f" (prompt {prompt_idx[i]}, a description: not scored)"
                ),
                row_id=row_ids[i],
                model_id=models[i],
                source_file=str(path),
                source_row=row,
            )
        )
    out = pd.DataFrame.from_records(records, columns=OUTPUT_COLUMNS)
    out["case_id"] = _split_double_rows(out)
    _check_unique(out, path)
    return out


def _split_double_rows(frame: pd.DataFrame) -> pd.Series:
    """A dataset row sampled into both classes (possible with CheXpert's two label columns) becomes two
    cases; like explorer.cases.hub, the positive one gets the ":positive" suffix."""
    n_labels = frame.groupby(["task", "row_id"])["label"].transform("nunique")
    double = (n_labels > 1) & (frame["label"] == "positive")
    return frame["case_id"].where(~double, frame["case_id"] + ":positive")


def _check_unique(frame: pd.DataFrame, path: Union[Path, str]) -> None:
    keys = ["model", "task", "prompt_id", "case_id"]
    dup = frame.duplicated(keys, keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        same = frame[dup & (frame[keys] == first[keys]).all(axis=1)]
        rows = ", ".join(f"{f}:{r}" for f, r in zip(same["source_file"], same["source_row"]))
        raise ResultFileError(
            f"{path}: the answer of {first['model']} to {first['prompt_id']} on {first['case_id']} appears "
            f"more than once ({rows})"
        )


def import_study_results(
    paths: Union[str, Path, Iterable[Union[str, Path]]], catalog=None, budget: Optional[ReadBudget] = None
) -> pd.DataFrame:
    """Several study result files (or a folder of `*_vqa_results.csv`) as one answers frame.

    The study writes the one-word run of a (model, task) to the same file name as the plain run, so
    keep the two in separate folders and pass both. The same answer in two files is an error.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted({*p.glob(STUDY_FILE_GLOB), *p.glob(EVAL_OUTPUT_GLOB)})
            if not found:
                raise _fail(p, f"no {STUDY_FILE_GLOB} (or first-upload {EVAL_OUTPUT_GLOB}) files in this folder")
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise ResultFileError("no study result files given")
    budget = _budget(budget)
    frames = [read_study_results(f, catalog, budget) for f in files]
    out = pd.concat([f for f in frames if not f.empty] or frames[:1], ignore_index=True)
    _check_unique(out, ", ".join(map(str, files)) if len(files) <= 3 else f"{len(files)} files")
    return out


# ---------------------------------------------------------------- the explorer's own exports
def _read_records(path: Path, budget: Optional[ReadBudget] = None) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise _fail(path, "no such file")
    budget = _budget(budget)
    if suffix == ".csv":  # our CSV export: undo its formula guard (csv_cells)
        return restore_frame(read_csv_text(path, budget))
    if suffix in (".parquet", ".pq"):
        return read_parquet(path, budget)
    if suffix not in (".json", ".jsonl", ".ndjson"):
        raise _fail(path, "unknown file type; use .csv, .parquet, .json (records) or .jsonl")
    try:
        records = read_json_records(path, budget)
    except OSError as exc:
        raise _fail(path, f"not a readable {suffix} file ({exc.strerror or exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise _fail(path, "a JSON export must be a list of records (objects), one per answer")
    return pd.DataFrame.from_records(records)


def validate_answers(frame: pd.DataFrame, path: Union[str, Path] = "<frame>") -> pd.DataFrame:
    """Check and normalise an answers frame: required columns, text keys, verdicts, labels, p_positive.

    Missing values become None (text) or NaN (p_positive); one_word becomes bool. Raises ResultFileError.
    """
    path = Path(path)
    _require_columns(frame, ANSWER_COLUMNS, path, "answers file")
    out = frame.reset_index(drop=True).copy()
    for col in _TEXT_COLUMNS:
        if col in out.columns:
            out[col] = pd.Series(
                [None if _blank(v) else str(v).strip() for v in out[col].tolist()], index=out.index, dtype=object
            )
    for col in ("model", "task", "prompt_id", "case_id"):
        blank = out[col].isna()
        if blank.any():
            raise _fail(path, "empty; every answer needs one", col, int(blank.idxmax()) + 1)
    allowed = {
        "verdict": (VERDICT_LABELS, f"one of {', '.join(VERDICT_LABELS)} or empty"),
        "label": (("positive", "negative"), "positive, negative or empty"),
        "role": (_ROLES, "base, medical or empty"),
    }
    for col, (values, expected) in allowed.items():
        if col not in out.columns:
            continue
        bad = out[col].notna() & ~out[col].isin(values)
        if bad.any():
            row = int(bad.idxmax())
            raise _fail(path, f"unknown value {short_repr(out.at[row, col])}; expected {expected}", col, row + 1)
    if "p_positive" in out.columns:
        probs = _parse(out, "p_positive", float, path, "a probability between 0 and 1", allow_blank=True)
        probs = np.array([np.nan if p is None else p for p in probs], dtype=float)
        outside = ~np.isnan(probs) & ((probs < 0) | (probs > 1))
        if outside.any():
            row = int(np.argmax(outside))
            raise _fail(path, f"{probs[row]} is not a probability", "p_positive", row + 1)
        out["p_positive"] = probs
    else:
        out["p_positive"] = np.nan
    if "one_word" in out.columns:
        out["one_word"] = pd.Series(
            _parse(out, "one_word", _bool_cell, path, "true or false", allow_blank=True), dtype=object
        )
    for col in ("pair", "role"):
        if col not in out.columns:
            out[col] = None
    return out


def read_answers_file(path: Union[str, Path], budget: Optional[ReadBudget] = None) -> pd.DataFrame:
    """An answers export of the explorer (CSV, Parquet, JSON records or JSON lines) as an answers frame.

    The columns OUTPUT_COLUMNS it has come first, then any other columns of the export as they are.
    budget: the read limits (bounded_read); the defaults when None.
    """
    path = Path(path)
    frame = validate_answers(_read_records(path, budget), path)
    if "row_id" in frame.columns:
        frame["row_id"] = pd.array(
            _parse(frame, "row_id", _int_cell, path, "an integer row number", allow_blank=True), dtype="Int64"
        )
    first = [c for c in OUTPUT_COLUMNS if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]
