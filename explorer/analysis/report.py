"""The reproduction report: the paper's findings and tables beside this run's, on one page.

Input: an answers frame (a store's run, or the study's own CSVs imported) and the preset it is
meant to reproduce. Output: one self-contained HTML page (no scripts, an inline SVG figure) and the
same content as Markdown, so a reader sees at once where the run agrees with the paper.

The paper's numbers are the ones ../shared/PROTOCOL.md gives. It gives none for the tables (its
findings are statements), so every "paper" cell of a table reads "not given" and the findings are
checked one by one with the rule written beside each. Confidence intervals are the metrics module's
95% percentile bootstraps over cases. What makes a comparison meaningless is said first: random-weight
models, verdicts not made by the study's judge, failed judgements, a prompt set that is not the one
the paper ran.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from explorer.analysis import metrics
from explorer.analysis.exports import metric_tables
from explorer.analysis.naming import TASK_ORDER

NOT_GIVEN = "not given"
SWING_THRESHOLD = 0.10  # accuracy points between a (model, task)'s best and worst prompt that count as a swing

# The study as ../shared/PROTOCOL.md describes it.
PAPER_SETUP = {
    "models": "llava, llava-med, gemma, medgemma (two base / medical pairs)",
    "tasks": "brain_tumor, pneumonia, skin_cancer, histo_idc",
    "images": "50 negative + 50 positive per task (pandas sample, seed 42)",
    "prompts": "12 closed-form per task as the first upload ran them (11 for brain and IDC: the fused prompt)",
    "verdicts": "LLM judge gpt-5, the study's per-task prompts; AMBIGUOUS or failed = refusal",
}
FINDINGS = {
    "task_order": "Accuracy falls toward chance as tasks get harder (brain MRI < chest X-ray < skin < histopathology).",
    "no_medical_advantage": "Medical fine-tuning gives no consistent advantage over the base model.",
    "wording_swings": "Small wording changes swing accuracy and refusal rates.",
    "describe_first": "Describing the image first and diagnosing from text recovers only a little signal.",
    "embeddings": "Vision-encoder embeddings of the two classes separate poorly on the hard tasks.",
}


@dataclass
class ReproductionReport:
    title: str
    markdown: str
    html: str
    findings: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- numbers
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def _with_ci(value: Any, lo: Any, hi: Any) -> str:
    if _fmt(value) == "-":
        return "-"
    if _fmt(lo) == "-" or _fmt(hi) == "-":
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(lo)}, {_fmt(hi)}]"


def _task_rank(task: str) -> int:
    return TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER)


def _closed(answers: pd.DataFrame) -> pd.DataFrame:
    kind = answers["prompt_kind"].fillna("closed") if "prompt_kind" in answers.columns else "closed"
    return answers[kind == "closed"] if len(answers) else answers


# ---------------------------------------------------------------- what makes a comparison meaningless
def _warnings(answers: pd.DataFrame, catalog: Any, preset: Any) -> list[str]:
    out: list[str] = []
    closed = _closed(answers)
    models = sorted(set(closed["model"].dropna())) if len(closed) else []
    specs = getattr(catalog, "models", {})
    demo = [m for m in models if getattr(specs.get(m), "is_demo", False)]
    if demo:
        out.append(
            f"{', '.join(demo)}: random-weight stand-ins, their answers are noise; nothing here says "
            "anything about the study's models."
        )
    methods = (
        closed["verdict_method"].fillna("(none)").value_counts()
        if "verdict_method" in closed.columns
        else pd.Series(dtype=int)
    )
    rules = int(sum(n for m, n in methods.items() if str(m).startswith("rules")))
    if rules:
        out.append(
            f"{rules} of {len(closed)} verdicts come from the rule-based answer reader, not the study's LLM "
            "judge: comparable in kind, not in exact numbers."
        )
    if "verdict" in closed.columns:
        failed = closed["verdict"].isna() & closed.get(
            "verdict_method", pd.Series(index=closed.index, dtype=object)
        ).fillna("").str.startswith("judge:")
        if failed.any():
            out.append(f"{int(failed.sum())} judgements failed and are left out (run `sweep --rejudge`).")
        unjudged = closed["verdict"].isna() & ~failed
        if "error" in closed.columns:
            errors = closed["error"].notna()
            if errors.any():
                out.append(
                    f"{int(errors.sum())} answers are errors (no text); they are left out (`sweep --retry-errors`)."
                )
            unjudged &= ~errors
        if unjudged.any():
            out.append(f"{int(unjudged.sum())} answers have no verdict yet and are left out.")
    if preset is not None and len(closed) and "prompt_text" in closed.columns:
        expected = _expected_prompts(catalog, preset)
        if expected:
            sent = set(closed["prompt_text"].dropna())
            other = sent - expected
            if other:
                out.append(
                    f"{len(other)} prompt wording(s) are not in the preset's prompt set "
                    f"({preset.prompts.prompt_set}); those cells are not the paper's prompts."
                )
    return out


def _expected_prompts(catalog: Any, preset: Any) -> set[str]:
    from explorer.prompts.variants import closed_variants

    texts: set[str] = set()
    for task in preset.tasks:
        try:
            texts |= {v.text for v in closed_variants(catalog, task, preset.prompts)}
        except Exception:  # noqa: BLE001 - a task the catalog lacks: no expectation for it
            continue
    return texts


# ---------------------------------------------------------------- the findings, one rule each
def _finding(key: str, this_run: str, verdict: str, rule: str) -> dict[str, str]:
    return {"key": key, "paper": FINDINGS[key], "this_run": this_run, "agrees": verdict, "rule": rule}


def _task_order_finding(summary: pd.DataFrame) -> dict[str, str]:
    rule = "mean accuracy over models and prompts, ordered by task; agrees when it falls in the paper's order"
    if summary.empty:
        return _finding("task_order", "no scored answers", "cannot tell", rule)
    by_task = summary.groupby("task")["accuracy_mean"].mean().dropna()
    known = [t for t in TASK_ORDER if t in by_task.index]
    if len(known) < 2:
        return _finding("task_order", "fewer than two of the study's tasks", "cannot tell", rule)
    shown = ", ".join(f"{t} {by_task[t]:.2f}" for t in known)
    falling = all(by_task[a] >= by_task[b] for a, b in zip(known, known[1:]))
    return _finding("task_order", shown, "agrees" if falling else "differs", rule)


def _medical_finding(headline: pd.DataFrame) -> dict[str, str]:
    rule = (
        "per pair and task, medical minus base F1_all (mean over prompts); agrees unless the medical model "
        "is ahead with separated 95% CIs on every task"
    )
    if headline.empty:
        return _finding("no_medical_advantage", "no base/medical pair in this run", "cannot tell", rule)
    ahead, parts = [], []
    for (pair, task), grp in headline.groupby(["pair", "task"], sort=False):
        roles = {r["role"]: r for r in grp.to_dict("records")}
        if {"base", "medical"} <= set(roles):
            b, m = roles["base"], roles["medical"]
            diff = m["f1_all_mean"] - b["f1_all_mean"]
            separated = _fmt(m["f1_all_lo"]) != "-" and _fmt(b["f1_all_hi"]) != "-" and m["f1_all_lo"] > b["f1_all_hi"]
            ahead.append(bool(separated))
            parts.append(f"{pair}/{task} {diff:+.2f}" + (" (CIs apart)" if separated else ""))
    if not ahead:
        return _finding("no_medical_advantage", "no pair with both models scored", "cannot tell", rule)
    return _finding("no_medical_advantage", "; ".join(parts), "differs" if all(ahead) else "agrees", rule)


def _wording_finding(summary: pd.DataFrame, cells: pd.DataFrame) -> dict[str, str]:
    rule = (
        f"accuracy range across the prompts of each model and task; agrees when the median range is at "
        f"least {SWING_THRESHOLD:.2f}"
    )
    if summary.empty or summary["n_prompts"].max() < 2:
        return _finding("wording_swings", "fewer than two prompts per model and task", "cannot tell", rule)
    swing = (summary["accuracy_max"] - summary["accuracy_min"]).dropna()
    refusal = cells.groupby(["model", "task"])["refusal_rate"].agg(lambda s: s.max() - s.min()).dropna()
    if swing.empty:
        return _finding("wording_swings", "no accuracy could be computed", "cannot tell", rule)
    shown = (
        f"median accuracy range {swing.median():.2f} (max {swing.max():.2f}); "
        f"median refusal-rate range {refusal.median():.2f}"
        if len(refusal)
        else f"median accuracy range {swing.median():.2f}"
    )
    return _finding("wording_swings", shown, "agrees" if swing.median() >= SWING_THRESHOLD else "differs", rule)


def findings(tables: dict[str, pd.DataFrame]) -> list[dict[str, str]]:
    summary, cells, headline = tables["metrics_summary"], tables["metrics_cells"], tables["metrics_headline"]
    return [
        _task_order_finding(summary),
        _medical_finding(headline),
        _wording_finding(summary, cells),
        _finding(
            "describe_first",
            "not in this report's input (run `describe`)",
            "not run",
            "accuracy of the text-only diagnosis from each description",
        ),
        _finding(
            "embeddings",
            "not in this report's input (run `embed`)",
            "not run",
            "linear-probe accuracy of the pooled vision features per task",
        ),
    ]


# ---------------------------------------------------------------- tables
def _setup_rows(answers: pd.DataFrame, preset: Any, source: str) -> list[list[str]]:
    closed = _closed(answers)
    per_task = (
        closed.groupby("task").agg(cases=("case_id", "nunique"), prompts=("prompt_id", "nunique"))
        if len(closed)
        else None
    )
    images = "; ".join(f"{t} {int(r.cases)}" for t, r in per_task.iterrows()) if per_task is not None else "-"
    prompts = "; ".join(f"{t} {int(r.prompts)}" for t, r in per_task.iterrows()) if per_task is not None else "-"
    methods = (
        closed["verdict_method"].dropna().map(lambda m: str(m).split("|")[0]).value_counts() if len(closed) else {}
    )
    verdicts = ", ".join(f"{m} ({n})" for m, n in methods.items()) or "-"
    prompt_set = getattr(getattr(preset, "prompts", None), "prompt_set", "-")
    return [
        ["source", "the authors' runs (de96238)", source],
        ["models", PAPER_SETUP["models"], ", ".join(sorted(set(closed["model"].dropna()))) if len(closed) else "-"],
        [
            "tasks",
            PAPER_SETUP["tasks"],
            ", ".join(sorted(set(closed["task"].dropna()), key=_task_rank)) if len(closed) else "-",
        ],
        ["images per task", PAPER_SETUP["images"], images],
        ["closed-form prompts per task", PAPER_SETUP["prompts"], f"{prompts} (preset prompt set: {prompt_set})"],
        ["verdicts", PAPER_SETUP["verdicts"], verdicts],
    ]


def _headline_rows(headline: pd.DataFrame) -> list[list[str]]:
    rows = []
    for rec in sorted(
        headline.to_dict("records"), key=lambda r: (_task_rank(r["task"]), r["pair"], r["role"] != "base")
    ):
        rows.append(
            [
                rec["task"],
                rec["pair"],
                rec["role"],
                rec["model"],
                NOT_GIVEN,
                _with_ci(rec["f1_all_mean"], rec["f1_all_lo"], rec["f1_all_hi"]),
                _fmt(rec["accuracy_mean"]),
                _fmt(rec["refusal_rate_mean"]),
                str(rec["n_cases"]),
            ]
        )
    return rows


def _summary_rows(summary: pd.DataFrame) -> list[list[str]]:
    rows = []
    for rec in sorted(summary.to_dict("records"), key=lambda r: (_task_rank(r["task"]), str(r["model"]))):
        rows.append(
            [
                rec["task"],
                rec["model"],
                NOT_GIVEN,
                f"{_fmt(rec['accuracy_mean'])} ± {_fmt(rec['accuracy_std'])}",
                f"{_fmt(rec['accuracy_min'])}-{_fmt(rec['accuracy_max'])}",
                _with_ci(rec["f1_all_mean"], rec["f1_all_lo"], rec["f1_all_hi"]),
                _fmt(rec["refusal_rate_mean"]),
                _fmt(rec["flip_rate"]),
                _fmt(rec["fleiss_kappa"]),
                str(rec["n_prompts"]),
            ]
        )
    return rows


def _paired_rows(paired: pd.DataFrame) -> list[list[str]]:
    pooled = paired[paired["level"] == "pooled"] if len(paired) else paired
    rows = []
    for rec in sorted(pooled.to_dict("records"), key=lambda r: (_task_rank(r["task"]), r["pair"])):
        rows.append(
            [
                rec["task"],
                rec["pair"],
                f"{rec['base_model']} vs {rec['medical_model']}",
                NOT_GIVEN,
                str(rec["n_pairs"]),
                str(rec["b"]),
                str(rec["c"]),
                _fmt(rec["base_accuracy_all"]),
                _fmt(rec["medical_accuracy_all"]),
                _fmt(rec["p_value"], 4),
                _fmt(rec["p_holm"], 4),
            ]
        )
    return rows


def _cell_rows(cells: pd.DataFrame) -> list[list[str]]:
    rows = []
    for rec in sorted(
        cells.to_dict("records"), key=lambda r: (_task_rank(r["task"]), str(r["model"]), str(r["prompt_id"]))
    ):
        rows.append(
            [
                rec["task"],
                rec["model"],
                rec["prompt_id"],
                NOT_GIVEN,
                _with_ci(rec["accuracy"], rec["accuracy_lo"], rec["accuracy_hi"]),
                _with_ci(rec["f1_all"], rec["f1_all_lo"], rec["f1_all_hi"]),
                _fmt(rec["refusal_rate"]),
                _fmt(rec["hedge_rate"]),
                str(rec["n"]),
            ]
        )
    return rows


# ---------------------------------------------------------------- the figure (inline SVG, no scripts)
def headline_svg(headline: pd.DataFrame, width: int = 760, height: int = 300) -> str:
    """F1_all per task, base and medical side by side, with 95% CI whiskers (the paper's headline figure)."""
    if headline.empty:
        return "<p>(no base/medical pair in this run: no headline figure)</p>"
    recs = sorted(headline.to_dict("records"), key=lambda r: (_task_rank(r["task"]), r["pair"], r["role"] != "base"))
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in recs:
        groups.setdefault((rec["task"], rec["pair"]), []).append(rec)
    left, bottom, top = 50, 50, 20
    plot_w, plot_h = width - left - 20, height - top - bottom
    slot = plot_w / max(1, len(groups))
    bar = min(40.0, slot / 3)
    colours = {"base": "#4c78a8", "medical": "#e45756"}

    def y(v: float) -> float:
        return top + plot_h * (1 - max(0.0, min(1.0, v)))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="F1_all per task, base vs medical" font-family="sans-serif" font-size="11">'
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    parts.append(
        f'<text x="12" y="{top + plot_h / 2:.0f}" transform="rotate(-90 12 {top + plot_h / 2:.0f})" '
        'text-anchor="middle">F1_all (mean over prompts)</text>'
    )
    for i, ((task, pair), grp) in enumerate(groups.items()):
        centre = left + slot * (i + 0.5)
        for j, rec in enumerate(grp):
            x = centre + (j - (len(grp) - 1) / 2) * (bar + 4) - bar / 2
            value = rec["f1_all_mean"]
            if _fmt(value) != "-":
                tall = max(1.5, y(0) - y(value))  # a zero still shows as a sliver: scored, not missing
                parts.append(
                    f'<rect x="{x:.1f}" y="{y(0) - tall:.1f}" width="{bar:.1f}" height="{tall:.1f}" '
                    f'fill="{colours.get(rec["role"], "#999")}"><title>{html.escape(str(rec["model"]))}: '
                    f"{_with_ci(value, rec['f1_all_lo'], rec['f1_all_hi'])}</title></rect>"
                )
                if _fmt(rec["f1_all_lo"]) != "-" and _fmt(rec["f1_all_hi"]) != "-":
                    cx = x + bar / 2
                    parts.append(
                        f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(rec["f1_all_lo"]):.1f}" '
                        f'y2="{y(rec["f1_all_hi"]):.1f}" stroke="#222" stroke-width="1.5"/>'
                    )
        parts.append(f'<text x="{centre:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{html.escape(task)}</text>')
        parts.append(
            f'<text x="{centre:.1f}" y="{top + plot_h + 30}" text-anchor="middle" fill="#666">{html.escape(pair)}</text>'
        )
    for k, (role, colour) in enumerate(colours.items()):
        parts.append(
            f'<rect x="{left + 10 + k * 90}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{left + 24 + k * 90}" y="{height - 5}">{role}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- rendering
HEADLINE_HEAD = [
    "task",
    "pair",
    "role",
    "model",
    "paper F1_all",
    "this run F1_all [95% CI]",
    "accuracy",
    "refusal rate",
    "cases",
]
SUMMARY_HEAD = [
    "task",
    "model",
    "paper",
    "accuracy mean ± prompt SD",
    "accuracy range",
    "F1_all [95% CI]",
    "refusal rate",
    "flip rate",
    "Fleiss' kappa",
    "prompts",
]
PAIRED_HEAD = [
    "task",
    "pair",
    "models",
    "paper",
    "case x prompt pairs",
    "b (base only right)",
    "c (medical only right)",
    "base acc_all",
    "medical acc_all",
    "p (McNemar)",
    "p (Holm)",
]
CELL_HEAD = [
    "task",
    "model",
    "prompt",
    "paper",
    "accuracy [95% CI]",
    "F1_all [95% CI]",
    "refusal rate",
    "AMBIGUOUS / hedge rate",
    "n",
]
FINDING_HEAD = ["the paper says", "this run", "agrees?", "how it is checked"]
SETUP_HEAD = ["", "paper", "this run"]


def _md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) if rows else "(none)"


def _html_table(head: Sequence[str], rows: Sequence[Sequence[str]], agree_col: Optional[int] = None) -> str:
    if not rows:
        return "<p>(none)</p>"
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = ""
            if c == NOT_GIVEN:
                cls = ' class="notgiven"'
            elif i == agree_col:
                cls = f' class="{html.escape(str(c).replace(" ", "-"))}"'
            cells.append(f"<td{cls}>{html.escape(str(c))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.notgiven{color:#999;font-style:italic}td.agrees{background:#e3f4e1}td.differs{background:#fbe3e1}
td.cannot-tell,td.not-run,td.not-evidence{background:#f4f4f4;color:#666}.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:.5rem 1rem}
.meta{color:#666;font-size:.85rem}details summary{cursor:pointer;margin:.5rem 0}
"""


def build_report(
    answers: pd.DataFrame,
    *,
    catalog: Any,
    preset: Any = None,
    source: str = "",
    n_boot: int = 1000,
) -> ReproductionReport:
    """The report of one answers frame against the paper (see the module docstring)."""
    if answers is None or answers.empty:
        raise ValueError("no answers to report on: run a sweep or import the study's CSVs first")
    answers = metrics.attach_pairs(answers, catalog)
    tables = metric_tables(answers, n_boot=n_boot)
    scored = _closed(answers)
    scored = scored[scored["verdict"].notna()] if len(scored) else scored
    paired = metrics.paired_tests(scored) if len(scored) else pd.DataFrame(columns=metrics.PAIRED_COLUMNS)
    found = findings(tables)
    warns = _warnings(answers, catalog, preset)
    specs = getattr(catalog, "models", {})
    if any(getattr(specs.get(m), "is_demo", False) for m in set(_closed(answers)["model"].dropna())):
        # Noise can "agree" with the paper by chance: say so instead of scoring it.
        for f in found:
            if f["agrees"] in ("agrees", "differs"):
                f["this_run"] += f" (would read: {f['agrees']})"
                f["agrees"] = "not evidence"
    name = getattr(preset, "name", "paper")
    title = f"Reproduction report: preset {name}"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    setup = _setup_rows(answers, preset, source)
    finding_rows = [[f["paper"], f["this_run"], f["agrees"], f["rule"]] for f in found]
    sections = [
        ("How this run was made", SETUP_HEAD, setup, None, False),
        ("The paper's findings, checked", FINDING_HEAD, finding_rows, 2, False),
        (
            "Headline: F1_all per task, base vs medical (mean over prompts)",
            HEADLINE_HEAD,
            _headline_rows(tables["metrics_headline"]),
            None,
            False,
        ),
        ("Per model and task: prompt sensitivity", SUMMARY_HEAD, _summary_rows(tables["metrics_summary"]), None, False),
        (
            "Base vs medical, McNemar on the same cases and prompts (pooled over prompts)",
            PAIRED_HEAD,
            _paired_rows(paired),
            None,
            False,
        ),
        ("Per prompt", CELL_HEAD, _cell_rows(tables["metrics_cells"]), None, True),
    ]
    about = (
        "Paper numbers: those ../shared/PROTOCOL.md gives; it gives none for these tables, so they read "
        f'"{NOT_GIVEN}". Intervals: 95% percentile bootstrap over cases ({n_boot} draws). '
        "Refusal rate: non-answers (refusal, AMBIGUOUS, unclear) / all rows, as the study counts it."
    )

    md = [f"# {title}", "", f"Generated {when} from {source or 'an answers frame'}.", "", about, ""]
    if warns:
        md += ["**Read with care:**", ""] + [f"- {w}" for w in warns] + [""]
    for heading, head, rows, _agree, _details in sections:
        md += [f"## {heading}", "", _md_table(head, rows), ""]
        if heading.startswith("Headline"):
            md += ["(The figure is in the HTML version.)", ""]

    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">Generated {html.escape(when)} from {html.escape(source or "an answers frame")}.</p>',
        f'<p class="meta">{html.escape(about)}</p>',
    ]
    if warns:
        body.append(
            '<div class="warn"><b>Read with care:</b><ul>'
            + "".join(f"<li>{html.escape(w)}</li>" for w in warns)
            + "</ul></div>"
        )
    for heading, head, rows, agree, details in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        if heading.startswith("Headline"):
            body.append(
                '<div style="display:flex;gap:2rem;align-items:flex-start;flex-wrap:wrap">'
                '<div><b>Paper</b><p class="meta">The figure\'s values are not given in PROTOCOL.md.</p></div>'
                f"<div><b>This run</b><br>{headline_svg(tables['metrics_headline'])}</div></div>"
            )
        table = _html_table(head, rows, agree)
        body.append(f"<details><summary>{len(rows)} rows</summary>{table}</details>" if details else table)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>"
    )
    return ReproductionReport(title=title, markdown="\n".join(md), html=page, findings=found, warnings=warns)


def write_report(report: ReproductionReport, out: str | Path) -> list[Path]:
    """report.html and report.md (the same name, both suffixes); each written whole or not at all."""
    out = Path(out)
    html_path = out if out.suffix.lower() in (".html", ".htm") else out.with_suffix(".html")
    md_path = html_path.with_suffix(".md")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in ((html_path, report.html), (md_path, report.markdown)):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        os.chmod(path, 0o644)
        written.append(path)
    return written
