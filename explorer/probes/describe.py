"""Describe, then diagnose from the text: is there signal a VLM can put into words?

Step 1 (the study's description pipeline) is an ordinary sweep: the description prompts are prompt
variants with kind="describe", answered by any VLM and stored like every other answer.
Step 2 is here: a text-only model reads each stored description through the study's three templates
(catalog.diagnosis_templates, filled from the task's diagnosis wording, {desc} last) and answers Yes
or No. Three ways to run that model (explorer/probes/diagnosers.py):
  * StructuredDiagnoser on the OpenAI Responses API with a strict JSON schema {"answer": "Yes"|"No"}
    (the study: gpt-5.1, reasoning effort "none", temperature 0, 64 output tokens);
  * StructuredDiagnoser on any OpenAI-compatible chat endpoint (response_format json_schema; when the
    server rejects that, plain text), or TextDiagnoser there without a schema;
  * TextDiagnoser on a local transformers text model (the offline random-weight demo for tests).
Every output goes through parse_yes_no: a JSON object or a plain "Yes."/"No" both count; anything else
is "unparsed" (kept, counted as an error in the *_all metrics), never a crash.

Diagnoses live in their own table of the results store, one row per (description answer, cache key);
the key hashes the diagnoser's identity and the exact prompt text, so a re-run serves from the table.
A failed call is stored with its error and tried again on the next run.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import numpy as np
import pandas as pd

from explorer.catalog.presets import Catalog, TaskSpec
from explorer.probes.diagnosers import (
    Diagnoser,
    DiagnosisReply,
)
from explorer.prompts import variants as prompt_lib
from explorer.runs.store import Store, utc_now

Parsed = Literal["yes", "no", "unparsed"]
TEMPLATE_ORDER = ("one_word", "tight", "disease")

ProgressFn = Callable[[int, int, dict], None]


# ------------------------------------------------------------------ prompts and parsing
def template_names(catalog: Catalog) -> list[str]:
    """The catalog's templates, the study's three first in the study's order."""
    names = list(catalog.diagnosis_templates)
    return [n for n in TEMPLATE_ORDER if n in names] + [n for n in names if n not in TEMPLATE_ORDER]


def diagnosis_prompt(template: str, task: TaskSpec, desc: str) -> str:
    """A template filled with the task's diagnosis wording (role, image_kind, condition) and the description."""
    values = {**task.diagnosis.model_dump(), "desc": desc if desc is not None else ""}
    try:
        return template.format_map(values)
    except (KeyError, IndexError) as exc:
        raise ValueError(
            f"diagnosis template has a placeholder {exc} that is not one of {', '.join(sorted(values))}"
        ) from None
    except ValueError as exc:  # a stray "{" in a user-edited template
        raise ValueError(f"diagnosis template is not a valid format string: {exc}") from None


_JSON_OBJECT = re.compile(r"\{.*?\}", re.S)
_YES_NO_WORD = re.compile(r"\b(yes|no)\b", re.I)
_FIRST_WORD = re.compile(r"^[\s\"'*`_#>\-\[(]*(yes|no)\b", re.I)
# "Yes or No" / "yes/no" names the choice, it does not make it (an echoed question).
_CHOICE = re.compile(r"\b(?:yes\s*(?:or|/)\s*no|no\s*(?:or|/)\s*yes)\b", re.I)


def parse_yes_no(text: Optional[str]) -> tuple[Parsed, str]:
    """("yes"|"no"|"unparsed", how it was read) from a diagnoser's raw output.

    Accepted: a JSON object with an "answer" key of Yes/No (also inside a code fence or other text),
    a reply that starts with Yes or No ("No.", "**Yes**, consolidation..."), or a reply naming exactly
    one of the two words; "Yes or No" itself (an echoed question) decides nothing. Everything else,
    including malformed JSON and empty output, is "unparsed".
    """
    raw = (text or "").strip()
    if not raw:
        return "unparsed", "empty output"
    for blob in [raw, *_JSON_OBJECT.findall(raw)]:
        try:
            data = json.loads(blob)
        except ValueError:
            continue
        if isinstance(data, dict):
            value = next((v for k, v in data.items() if str(k).lower() == "answer"), None)
            if isinstance(value, str) and value.strip().strip(".!").lower() in ("yes", "no"):
                return value.strip().strip(".!").lower(), "json"  # type: ignore[return-value]
            return "unparsed", f"JSON without a Yes/No answer: {blob[:80]!r}"
    if raw.startswith(("{", "[")):  # structured output that broke off or is malformed: not guessed at
        return "unparsed", f"malformed JSON: {raw[:80]!r}"
    text = _CHOICE.sub(" ", raw)
    first = _FIRST_WORD.match(text)
    if first:
        return first.group(1).lower(), "first word"  # type: ignore[return-value]
    words = {w.lower() for w in _YES_NO_WORD.findall(text)}
    if len(words) == 1:
        return words.pop(), "the only yes/no word"  # type: ignore[return-value]
    shown = raw if len(raw) <= 80 else raw[:77] + "..."
    return "unparsed", ("both yes and no: " if words else "no yes/no: ") + repr(shown)


def cache_key(identity: dict[str, Any], prompt: str) -> str:
    blob = json.dumps({"diagnoser": identity, "prompt": prompt}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ storage
_TABLE = """
CREATE TABLE IF NOT EXISTS diagnoses (
    id INTEGER PRIMARY KEY,
    answer_id INTEGER NOT NULL REFERENCES answers(id),
    template TEXT NOT NULL,
    diagnoser TEXT NOT NULL,
    diagnoser_key TEXT NOT NULL,
    diagnoser_identity TEXT NOT NULL,
    prompt TEXT NOT NULL,
    raw TEXT,
    parsed TEXT,
    parse_detail TEXT,
    mode TEXT,
    error TEXT,
    cache_key TEXT NOT NULL,
    served_from INTEGER,
    latency_s REAL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    created_at TEXT NOT NULL,
    UNIQUE (answer_id, cache_key)
);
CREATE INDEX IF NOT EXISTS diagnoses_key ON diagnoses(cache_key);
CREATE INDEX IF NOT EXISTS diagnoses_diagnoser ON diagnoses(diagnoser_key)
"""
_ROW_COLUMNS = (
    "answer_id",
    "template",
    "diagnoser",
    "diagnoser_key",
    "diagnoser_identity",
    "prompt",
    "raw",
    "parsed",
    "parse_detail",
    "mode",
    "error",
    "cache_key",
    "served_from",
    "latency_s",
    "input_tokens",
    "output_tokens",
    "created_at",
)


class DiagnosisTable:
    """The diagnoses table inside a results Store's SQLite file.

    Goes through the Store's public side-table methods, so it shares the store's per-thread
    connections, WAL mode, busy timeout and BEGIN IMMEDIATE writes.
    """

    def __init__(self, store: Store):
        self.store = store
        store.ensure_tables(_TABLE)

    def lookup(self, answer_id: int, key: str) -> Optional[dict]:
        return self.store.fetch_one(
            "SELECT * FROM diagnoses WHERE answer_id = ? AND cache_key = ? AND error IS NULL", (answer_id, key)
        )

    def lookup_key(self, key: str) -> Optional[dict]:
        """Any successful diagnosis of this exact prompt by this diagnoser (e.g. a twin description)."""
        return self.store.fetch_one(
            "SELECT * FROM diagnoses WHERE cache_key = ? AND error IS NULL ORDER BY id LIMIT 1", (key,)
        )

    def record(self, row: dict[str, Any]) -> dict:
        """Insert, or replace an errored attempt for the same (answer, key); a good row is never overwritten."""
        values = [row.get(c) for c in _ROW_COLUMNS]
        updates = ", ".join(f"{c} = excluded.{c}" for c in _ROW_COLUMNS if c not in ("answer_id", "cache_key"))
        self.store.execute_write(
            f"INSERT INTO diagnoses ({', '.join(_ROW_COLUMNS)}) VALUES ({', '.join('?' * len(_ROW_COLUMNS))}) "
            f"ON CONFLICT (answer_id, cache_key) DO UPDATE SET {updates} WHERE diagnoses.error IS NOT NULL",
            values,
        )
        got = self.store.fetch_one(
            "SELECT * FROM diagnoses WHERE answer_id = ? AND cache_key = ?", (row["answer_id"], row["cache_key"])
        )
        assert got is not None  # just written, or a good row already there
        return got

    def rows(self, answer_ids: Optional[Iterable[int]] = None, diagnoser_key: Optional[str] = None) -> list[dict]:
        sql, params = "SELECT * FROM diagnoses WHERE 1 = 1", []
        if diagnoser_key is not None:
            sql += " AND diagnoser_key = ?"
            params.append(diagnoser_key)
        rows = self.store.fetch_all(sql + " ORDER BY id", params)
        if answer_ids is not None:
            wanted = set(answer_ids)
            rows = [r for r in rows if r["answer_id"] in wanted]
        return rows


# ------------------------------------------------------------------ running
@dataclass
class DiagnoseSummary:
    planned: int = 0
    cached: int = 0
    computed: int = 0
    errors: int = 0
    unparsed: int = 0
    skipped: int = 0  # description answers that are errors (nothing to diagnose)
    elapsed_s: float = 0.0
    diagnoser: str = ""
    diagnoser_key: str = ""
    cancelled: bool = False
    notices: list[str] = field(default_factory=list)


def description_answers(store: Store, run_id: Optional[str] = None, **filters: Any) -> list[dict]:
    """Stored description answers (prompt_kind "describe"), a run's items when run_id is given."""
    return store.answers(run_id=run_id, prompt_kind="describe", **filters)


def diagnose_descriptions(
    store: Store,
    diagnoser: Diagnoser,
    catalog: Catalog,
    answers: Sequence[dict],
    templates: Optional[Sequence[str]] = None,
    *,
    batch_size: int = 16,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
    prompt_set: str = "paper-clean",
) -> DiagnoseSummary:
    """Diagnose each description answer with each template; each result is committed as it comes.

    answers: rows from description_answers (or Store.answers). A row served from the table (same answer,
    same cache key, no error) is not asked again; an identical prompt diagnosed for another answer is
    copied (served_from says which row).
    """
    started = time.perf_counter()
    table = DiagnosisTable(store)
    names = list(templates) if templates else template_names(catalog)
    unknown = [t for t in names if t not in catalog.diagnosis_templates]
    if unknown:
        raise ValueError(f"unknown diagnosis template(s) {unknown}; known: {', '.join(catalog.diagnosis_templates)}")
    identity = diagnoser.identity()
    d_key = identity_key(identity)
    ident_json = json.dumps(identity, sort_keys=True, default=str)
    summary = DiagnoseSummary(diagnoser=diagnoser.label, diagnoser_key=d_key)

    todo: list[tuple[dict, str, str, str]] = []  # (answer row, template, prompt, key)
    seen: set[tuple[int, str]] = set()
    for row in answers:
        if (row.get("prompt_kind") or "closed") != "describe":
            continue
        if row.get("error") is not None:
            summary.skipped += 1
            continue
        task = catalog.task(row["task"])
        for name in names:
            # paper-as-run: the per-task templates the first upload sent; else the catalog's shared ones.
            own = prompt_lib.diagnosis_templates(prompt_set, task.key) if prompt_set != "paper-clean" else {}
            prompt = diagnosis_prompt(own.get(name) or catalog.diagnosis_templates[name], task, row.get("answer") or "")
            key = cache_key(identity, prompt)
            if (row["id"], key) in seen:  # a run lists an answer once per item; diagnose it once
                continue
            seen.add((row["id"], key))
            todo.append((row, name, prompt, key))
    summary.planned = len(todo)

    def base(row: dict, name: str, prompt: str, key: str) -> dict[str, Any]:
        return dict(
            answer_id=row["id"],
            template=name,
            diagnoser=diagnoser.label,
            diagnoser_key=d_key,
            diagnoser_identity=ident_json,
            prompt=prompt,
            cache_key=key,
            created_at=utc_now(),
        )

    def tick(info: dict) -> None:
        if progress is not None:
            progress(summary.cached + summary.computed + summary.errors, summary.planned, info)

    def serve_twin(row: dict, name: str, prompt: str, key: str) -> bool:
        """Copy a successful diagnosis of the same prompt made for another answer (a repeated description)."""
        twin = table.lookup_key(key)
        if twin is None:
            return False
        table.record(
            {
                **base(row, name, prompt, key),
                **{
                    c: twin[c]
                    for c in ("raw", "parsed", "parse_detail", "mode", "latency_s", "input_tokens", "output_tokens")
                },
                "error": None,
                "served_from": twin["id"],
            }
        )
        summary.cached += 1
        summary.unparsed += twin["parsed"] == "unparsed"
        tick({"cached": True})
        return True

    pending: list[tuple[dict, str, str, str]] = []
    for item in todo:
        row, name, prompt, key = item
        hit = table.lookup(row["id"], key)
        if hit is not None:
            summary.cached += 1
            summary.unparsed += hit["parsed"] == "unparsed"
            tick({"cached": True})
        elif not serve_twin(*item):
            pending.append(item)

    asked: set[str] = set()
    for start in range(0, len(pending), max(1, batch_size)):
        if cancel is not None and cancel.is_set():
            summary.cancelled = True
            break
        # A prompt answered in an earlier batch of this run is copied, not asked again.
        batch = [it for it in pending[start : start + batch_size] if not (it[3] in asked and serve_twin(*it))]
        asked.update(it[3] for it in batch)
        if not batch:
            continue
        # The same prompt twice in a batch (two answers with the same text) is asked once.
        unique: dict[str, str] = {}
        for _, _, prompt, key in batch:
            unique.setdefault(key, prompt)
        keys = list(unique)
        replies = dict(zip(keys, diagnoser.diagnose([unique[k] for k in keys])))
        for row, name, prompt, key in batch:
            reply = replies.get(key) or DiagnosisReply(error="no reply")
            parsed, detail = (None, None) if reply.error else parse_yes_no(reply.raw)
            stored = table.record(
                {
                    **base(row, name, prompt, key),
                    "raw": reply.raw,
                    "parsed": parsed,
                    "parse_detail": detail,
                    "mode": reply.mode,
                    "error": reply.error,
                    "served_from": None,
                    "latency_s": reply.latency_s,
                    "input_tokens": reply.input_tokens,
                    "output_tokens": reply.output_tokens,
                }
            )
            if stored["error"] is not None:
                summary.errors += 1
            else:
                summary.computed += 1
                summary.unparsed += stored["parsed"] == "unparsed"
            tick({"template": name, "model": row.get("model")})
    summary.elapsed_s = time.perf_counter() - started
    if summary.errors:
        reasons = list(
            dict.fromkeys(
                r["error"]
                for r in table.rows(answer_ids={it[0]["id"] for it in pending}, diagnoser_key=d_key)
                if r["error"]
            )
        )
        summary.notices.append(
            f"{summary.errors} diagnoses failed (stored with their error; re-run to retry): " + "; ".join(reasons[:3])
        )
    if summary.skipped:
        summary.notices.append(f"{summary.skipped} description answers are errors and were not diagnosed")
    return summary


# ------------------------------------------------------------------ reading back
DIAGNOSIS_COLUMNS = [
    "answer_id",
    "model",
    "task",
    "case_id",
    "image_hash",
    "label",
    "prompt_id",
    "description",
    "template",
    "diagnoser",
    "diagnoser_key",
    "parsed",
    "raw",
    "mode",
    "error",
    "cached_copy",
]


def diagnoses_frame(store: Store, answers: Sequence[dict], diagnoser_key: Optional[str] = None) -> pd.DataFrame:
    """One row per (description answer item, template) with the answer's model/task/case/label joined in."""
    table = DiagnosisTable(store)
    by_answer: dict[int, list[dict]] = {}
    for d in table.rows(answer_ids=[a["id"] for a in answers], diagnoser_key=diagnoser_key):
        by_answer.setdefault(d["answer_id"], []).append(d)
    records = []
    for a in answers:
        for d in by_answer.get(a["id"], []):
            records.append(
                dict(
                    answer_id=a["id"],
                    model=a["model"],
                    task=a["task"],
                    case_id=a.get("case_id"),
                    image_hash=a.get("image_hash"),
                    label=a.get("label"),
                    prompt_id=a["prompt_id"],
                    description=a.get("answer"),
                    template=d["template"],
                    diagnoser=d["diagnoser"],
                    diagnoser_key=d["diagnoser_key"],
                    parsed=d["parsed"],
                    raw=d["raw"],
                    mode=d["mode"],
                    error=d["error"],
                    cached_copy=d["served_from"] is not None,
                )
            )
    frame = pd.DataFrame(records, columns=DIAGNOSIS_COLUMNS)
    return frame.drop_duplicates(["model", "task", "case_id", "prompt_id", "template", "diagnoser_key"], keep="last")


# ------------------------------------------------------------------ metrics
DESCRIBE_KEYS = ["model", "task", "prompt_id", "template", "diagnoser", "diagnoser_key"]
METRIC_COLUMNS = DESCRIBE_KEYS + [
    "n",
    "n_labelled",
    "n_parsed",
    "n_unparsed",
    "n_failed",
    "accuracy",
    "accuracy_all",
    "yes_rate",
    "unparsed_rate",
    "f1",
    "f1_all",
    "closed_f1_all",
    "closed_prompts",
    "closed_cases",
    "signal_recovered",
]


def _f1(tp: int, fp: int, fn: int, unparsed: int = 0) -> float:
    den = 2 * tp + fp + fn + unparsed
    return float(2 * tp / den) if den else float("nan")


def closed_f1_all(closed: pd.DataFrame, model: str, task: str, image_hashes: Iterable[str]) -> tuple[float, int, int]:
    """(mean over closed-form prompts of F1_all, prompts, cases) of one model on the given images.

    closed: an answers frame (Store.answers_frame) of closed-form answers with verdicts. Cases are
    matched by image hash, so a cached answer stored under another case id still counts.
    """
    from explorer.analysis.metrics import cell_metrics

    if closed is None or closed.empty:
        return float("nan"), 0, 0
    hashes = set(image_hashes)
    rows = closed[
        (closed["model"] == model)
        & (closed["task"] == task)
        & closed["image_hash"].isin(hashes)
        & closed["verdict"].notna()
        & closed["label"].notna()
    ]
    if "prompt_kind" in rows.columns:
        rows = rows[rows["prompt_kind"].fillna("closed") == "closed"]
    if "error" in rows.columns:
        rows = rows[rows["error"].isna()]
    if rows.empty:
        return float("nan"), 0, 0
    rows = rows.drop_duplicates(["prompt_id", "image_hash"], keep="last").assign(case_id=lambda f: f["image_hash"])
    cells = cell_metrics(rows, n_boot=0)
    return (
        float(np.nanmean(cells["f1_all"])) if cells["f1_all"].notna().any() else float("nan"),
        int(len(cells)),
        int(rows["image_hash"].nunique()),
    )


def describe_metrics(diagnoses: pd.DataFrame, closed: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Per model x task x description prompt x template x diagnoser.

      accuracy      correct / parsed labelled rows (the study's: unusable outputs left out)
      accuracy_all  correct / labelled rows (unparsed counted as wrong)
      yes_rate      "yes" / parsed rows (the study's yes-rate)
      f1            on parsed labelled rows, disease = positive
      f1_all        2TP / (2TP + FP + FN + U): unparsed counted as errors, like refusals in F1_all
      closed_f1_all mean over the model's closed-form prompts of F1_all on the same images
      signal_recovered  f1_all - closed_f1_all (above 0: describing-then-diagnosing beats asking directly)
    Failed calls (n_failed) are left out of everything else; they are retried on the next run.
    """
    if diagnoses is None or diagnoses.empty:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    closed_cache: dict[tuple, tuple[float, int, int]] = {}  # the cells of one model and task share their images
    out = []
    for key, cell in diagnoses.groupby(DESCRIBE_KEYS, sort=True, dropna=False):
        failed = cell["error"].notna()
        ok = cell[~failed]
        lab = ok[ok["label"].isin(["positive", "negative"])]
        parsed = ok[ok["parsed"].isin(["yes", "no"])]
        lab_parsed = lab[lab["parsed"].isin(["yes", "no"])]
        pos, said_yes = lab_parsed["label"] == "positive", lab_parsed["parsed"] == "yes"
        tp, fp = int((pos & said_yes).sum()), int((~pos & said_yes).sum())
        fn, tn = int((pos & ~said_yes).sum()), int((~pos & ~said_yes).sum())
        unparsed_lab = int((lab["parsed"] == "unparsed").sum())
        row = dict(zip(DESCRIBE_KEYS, key))
        row.update(
            n=len(ok),
            n_labelled=len(lab),
            n_parsed=len(parsed),
            n_unparsed=int((ok["parsed"] == "unparsed").sum()),
            n_failed=int(failed.sum()),
            accuracy=(tp + tn) / len(lab_parsed) if len(lab_parsed) else np.nan,
            accuracy_all=(tp + tn) / len(lab) if len(lab) else np.nan,
            yes_rate=float((parsed["parsed"] == "yes").mean()) if len(parsed) else np.nan,
            unparsed_rate=float((ok["parsed"] == "unparsed").mean()) if len(ok) else np.nan,
            f1=_f1(tp, fp, fn),
            f1_all=_f1(tp, fp, fn, unparsed_lab),
        )
        hashes = frozenset(lab["image_hash"].dropna())
        ckey = (row["model"], row["task"], hashes)
        if ckey not in closed_cache:
            closed_cache[ckey] = (
                closed_f1_all(closed, row["model"], row["task"], hashes) if closed is not None else (np.nan, 0, 0)
            )
        row["closed_f1_all"], row["closed_prompts"], row["closed_cases"] = closed_cache[ckey]
        row["signal_recovered"] = row["f1_all"] - row["closed_f1_all"]
        out.append(row)
    return pd.DataFrame(out, columns=METRIC_COLUMNS)


def recovered_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model x task over description prompts and templates: mean F1_all, the closed-form F1_all, and
    the mean and best signal recovered (the study's headline: describing first recovers little)."""
    if table.empty:
        return pd.DataFrame(
            columns=["model", "task", "cells", "f1_all_mean", "closed_f1_all", "recovered_mean", "recovered_best"]
        )
    return (
        table.groupby(["model", "task"], sort=True)
        .agg(
            cells=("f1_all", "size"),
            f1_all_mean=("f1_all", "mean"),
            closed_f1_all=("closed_f1_all", "first"),
            recovered_mean=("signal_recovered", "mean"),
            recovered_best=("signal_recovered", "max"),
        )
        .reset_index()
    )


def format_metrics(table: pd.DataFrame) -> str:
    """The metrics as a fixed-width text table (CLI)."""
    if table.empty:
        return "(no diagnoses)"
    shown = table[
        [
            "model",
            "task",
            "prompt_id",
            "template",
            "n",
            "n_unparsed",
            "n_failed",
            "accuracy",
            "yes_rate",
            "f1",
            "f1_all",
            "closed_f1_all",
            "signal_recovered",
        ]
    ].rename(
        columns={
            "prompt_id": "describe_prompt",
            "n_unparsed": "unparsed",
            "n_failed": "failed",
            "closed_f1_all": "closed_F1_all",
            "signal_recovered": "recovered",
        }
    )
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
