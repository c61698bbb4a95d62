"""Plotly figures of the study's results, each a function of a frame that metrics.py returns.

Every function takes a DataFrame (cell_metrics, model_task_summary, headline, an answers frame, t-SNE
points or one image's variant grid) and returns a go.Figure sized for a ~600 x 400 panel. An empty frame
gives a figure that says so instead of an error. Colours mean the same thing in every figure:
base models are slate, medical models pink (matching the app's stylesheet); a verdict has one colour
everywhere (VERDICT_COLOURS, reused by the UI). Tasks run in the study's order of difficulty and prompts
in the study's order, so figures line up with the paper's.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from html import escape
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from sklearn.metrics import roc_auc_score, roc_curve

from explorer.analysis.naming import (
    catalog_or_presets,
    class_name,
    prompt_label,
    prompt_order,
    task_order,
    task_title,
)
from explorer.schema import VERDICT_LABELS

EMPTY_MESSAGE = "No results yet — run a sweep"
HEIGHT = 400
CHANCE = 0.5  # balanced classes: a coin flip scores 0.5 accuracy and 0.5 F1

# The app's stylesheet (assets/explorer.css) uses the same colours for verdict badges and grid cells.
VERDICT_COLOURS = {
    "positive": "#c2410c",
    "negative": "#1d4ed8",
    "refusal": "#475569",
    "hedge": "#a16207",
    "unclear": "#6b21a8",
}
VERDICT_BG_COLOURS = {
    "positive": "#ffedd5",
    "negative": "#dbeafe",
    "refusal": "#e2e8f0",
    "hedge": "#fef9c3",
    "unclear": "#f3e8ff",
}
ERROR_COLOUR, ERROR_BG_COLOUR = "#b91c1c", "#fee2e2"
# A case's true class takes the colour of the verdict that would be right for it.
LABEL_COLOURS = {"positive": VERDICT_COLOURS["positive"], "negative": VERDICT_COLOURS["negative"], None: "#94a3b8"}
VERDICT_SYMBOLS = {
    "positive": "triangle-up",
    "negative": "circle",
    "refusal": "x",
    "hedge": "diamond",
    "unclear": "square",
    None: "circle-open",
}
# One shade per pair within a role (first pair darkest); patterns and dashes tell pairs apart in print.
ROLE_COLOURS = {
    "base": ("#475569", "#94a3b8", "#1e293b", "#cbd5e1"),
    "medical": ("#be185d", "#f472b6", "#831843", "#fbcfe8"),
}
OTHER_COLOURS = ("#0f766e", "#7c3aed", "#ca8a04", "#0891b2", "#65a30d", "#9333ea")
PAIR_PATTERNS = ("", "/", ".", "x")
PAIR_DASHES = ("solid", "dash", "dot", "dashdot")


@dataclass(frozen=True)
class ModelStyle:
    model: str
    name: str  # short readable title, e.g. "MedGemma 4B it"
    role: Optional[str]
    pair: Optional[str]
    colour: str
    pattern: str
    dash: str

    @property
    def tick(self) -> str:
        """Compact column label for heatmaps: the alias (as the app's grid shows it) and the role. A long
        alias breaks after its first hyphen ("demo-<br>medgemma"): four columns share half a page."""
        head, sep, rest = self.model.partition("-")
        alias = f"{head}-<br>{rest}" if len(self.model) > 10 and sep and rest else self.model
        return f"{alias}<br>{self.role}" if self.role else alias

    @property
    def legend(self) -> str:
        return f"{self.name} · {self.role}" if self.role in ROLE_COLOURS else self.name


def _short_title(spec: Any, alias: str) -> str:
    title = getattr(spec, "title", None) or alias
    return title.split(" (")[0].strip() or alias  # "Demo LlavaNext (random weights: ...)" -> "Demo LlavaNext"


def model_styles(frame: pd.DataFrame, catalog: Any = None) -> dict[str, ModelStyle]:
    """Each model of the frame with its name, colour and pattern, in display order: pairs (in the
    catalog's order) base first, then models without a pair alphabetically."""
    cat = catalog_or_presets(catalog)
    specs = getattr(cat, "models", {})
    catalog_pairs = list(dict.fromkeys(getattr(s, "pair", None) for s in specs.values()))
    info: dict[str, tuple[Optional[str], Optional[str]]] = {}
    for _, row in frame.drop_duplicates("model").iterrows():
        alias = str(row["model"])
        spec = specs.get(alias)
        pair = _clean(row.get("pair")) or getattr(spec, "pair", None)
        role = _clean(row.get("role")) or getattr(spec, "role", None)
        info[alias] = (pair, role if role in ROLE_COLOURS else None)
    pairs = sorted(
        {p for p, r in info.values() if p and r},
        key=lambda p: (catalog_pairs.index(p) if p in catalog_pairs else len(catalog_pairs), p),
    )
    paired = sorted(
        (a for a, (p, r) in info.items() if p in pairs and r),
        key=lambda a: (pairs.index(info[a][0]), info[a][1] != "base", a),
    )
    others = sorted(a for a in info if a not in paired)
    names = {a: _short_title(specs.get(a), a) for a in info}
    clash = {n for n in names.values() if list(names.values()).count(n) > 1}
    styles: dict[str, ModelStyle] = {}
    for alias in paired:
        pair, role = info[alias]
        i = pairs.index(pair)
        styles[alias] = ModelStyle(
            alias,
            alias if names[alias] in clash else names[alias],
            role,
            pair,
            ROLE_COLOURS[role][i % len(ROLE_COLOURS[role])],
            PAIR_PATTERNS[i % len(PAIR_PATTERNS)],
            PAIR_DASHES[i % len(PAIR_DASHES)],
        )
    for j, alias in enumerate(others):
        styles[alias] = ModelStyle(
            alias,
            alias if names[alias] in clash else names[alias],
            None,
            info[alias][0],
            OTHER_COLOURS[j % len(OTHER_COLOURS)],
            "",
            "solid",
        )
    return styles


# ---------------------------------------------------------------- small helpers
def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or _isnan(value)


def _clean(value: Any) -> Optional[str]:
    if _missing(value):
        return None
    return str(value)


def _num(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)


def _none_nan(values: Sequence[float]) -> list[Optional[float]]:
    """NaN -> None, which plotly draws as a gap (a bar or error bar left out)."""
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


def _pct(value: Any, missing: str = "n/a") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return missing
    return missing if not np.isfinite(v) else f"{100 * v:.0f}%"


def _dec(value: Any, missing: str = "n/a") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return missing
    return missing if not np.isfinite(v) else f"{v:.2f}"


def _task_tick(task: str, catalog: Any = None) -> str:
    """'Brain MRI (tumor)' -> 'Brain MRI<br>(tumor)': task names fit under a quarter of a 600 px figure."""
    title = task_title(task, catalog)
    head, sep, tail = title.partition(" (")
    return _br(head, 22) + (f"<br>({tail}" if sep else "")


def _br(text: str, width: int = 16) -> str:
    """Wrap a tick label onto short lines so categories fit a 600 px figure."""
    return "<br>".join(textwrap.wrap(str(text), width)) or str(text)


def _usable(frame: Optional[pd.DataFrame], required: Sequence[str]) -> bool:
    """False for a missing or empty frame; ValueError for rows that lack a column the figure needs."""
    if frame is None or len(frame) == 0:
        return False
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(
            f"this figure needs column(s) {', '.join(missing)}; the frame has {', '.join(map(str, frame.columns))}"
        )
    return True


def _layout(fig: go.Figure, title: str, subtitle: str = "", show_legend: bool = True, **kwargs: Any) -> go.Figure:
    # The subtitle goes in <sup> inside the title: it renders in every plotly.js version gradio may bundle.
    text = f"<b>{escape(title)}</b>" + (f"<br><sup>{escape(subtitle)}</sup>" if subtitle else "")
    fig.update_layout(
        template="plotly_white",
        height=HEIGHT,
        autosize=True,
        font=dict(size=13),
        title=dict(text=text, x=0.01, xanchor="left", y=0.97, yanchor="top", font=dict(size=15)),
        margin=dict(l=60, r=20, t=78, b=60),
        hoverlabel=dict(align="left"),
        showlegend=show_legend,
        legend=dict(orientation="h", x=0, xanchor="left", y=-0.2, yanchor="top", font=dict(size=12)),
    )
    if kwargs:
        fig.update_layout(**kwargs)
    return fig


def empty_figure(message: str = EMPTY_MESSAGE, title: str = "") -> go.Figure:
    """A blank figure that says why it is blank."""
    fig = go.Figure()
    fig.add_annotation(
        text=escape(message),
        x=0.5,
        y=0.5,
        xref="paper",
        yref="paper",
        showarrow=False,
        font=dict(size=16, color="#64748b"),
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, show_legend=False)


def _chance_line(fig: go.Figure, label: str) -> None:
    fig.add_hline(
        y=CHANCE,
        line=dict(dash="dash", color="#6b7280", width=1.5),
        annotation=dict(text=label, font=dict(size=11, color="#6b7280")),
        annotation_position="top right",
    )


def _dropdown(fig: go.Figure, options: list[tuple[str, list[int]]], subtitle: str) -> str:
    """Show one trace group at a time: options are (label, trace indices), the first shown at start.

    Returns the subtitle to use: with a single group there is no menu, so its label goes in the subtitle.
    """
    n = len(fig.data)
    for i, trace in enumerate(fig.data):
        trace.visible = i in options[0][1]
    if len(options) < 2:
        return f"{options[0][0]} · {subtitle}"
    buttons = [
        dict(label=label, method="restyle", args=[{"visible": [i in indices for i in range(n)]}])
        for label, indices in options
    ]
    fig.update_layout(
        updatemenus=[
            dict(
                buttons=buttons,
                direction="down",
                showactive=True,
                x=1.0,
                xanchor="right",
                y=1.02,
                yanchor="bottom",
                bgcolor="white",
                bordercolor="#cbd5e1",
                font=dict(size=12),
            )
        ]
    )
    return subtitle


# ---------------------------------------------------------------- the paper's headline figure
def headline_f1(headline_df: Optional[pd.DataFrame], catalog: Any = None) -> go.Figure:
    """F1_all per task for the base and the medical model of each pair (metrics.headline()), averaged over
    prompt wordings, with bootstrap 95% CIs: the paper's headline figure. One bar trace per model."""
    title = "F1 per task: base vs medical model"
    subtitle = "Tasks easiest to hardest · mean over wordings · refusals = errors · whiskers: 95% CI"
    if not _usable(headline_df, ["model", "task", "f1_all_mean", "f1_all_lo", "f1_all_hi"]):
        return empty_figure(title=title)
    df = headline_df
    tasks = task_order(df["task"].unique())
    ticks = {t: _task_tick(t, catalog) for t in tasks}
    fig = go.Figure()
    for alias, style in model_styles(df, catalog).items():
        rows = df[df["model"].astype(str) == alias].copy()
        rows["_order"] = rows["task"].map({t: i for i, t in enumerate(tasks)})
        rows = rows.sort_values("_order")
        mean, lo, hi = _num(rows["f1_all_mean"]), _num(rows["f1_all_lo"]), _num(rows["f1_all_hi"])
        extra = {
            c: (_num(rows[c]) if c in rows else np.full(len(rows), np.nan))
            for c in ("accuracy_mean", "refusal_rate_mean", "n_prompts", "n_cases")
        }
        hover = [
            f"CI {_dec(a)}–{_dec(b)}<br>accuracy (answered) {_pct(acc)} · refusals {_pct(ref)}"
            f"<br>{'' if _isnan(npr) else int(npr)} prompts · {'' if _isnan(nc) else int(nc)} cases"
            for a, b, acc, ref, npr, nc in zip(
                lo, hi, extra["accuracy_mean"], extra["refusal_rate_mean"], extra["n_prompts"], extra["n_cases"]
            )
        ]
        fig.add_trace(
            go.Bar(
                name=style.legend,
                x=[ticks[t] for t in rows["task"].astype(str)],
                y=_none_nan(mean),
                marker=dict(color=style.colour, pattern=dict(shape=style.pattern, fgcolor="white")),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=_none_nan(np.clip(hi - mean, 0, None)),
                    arrayminus=_none_nan(np.clip(mean - lo, 0, None)),
                    color="#111827",
                    thickness=1.2,
                    width=3,
                ),
                customdata=hover,
                offsetgroup=alias,
                hovertemplate="<b>%{fullData.name}</b><br>%{x}<br>F1 %{y:.2f}<br>%{customdata}<extra></extra>",
            )
        )
    _chance_line(fig, "chance")
    fig.update_xaxes(categoryorder="array", categoryarray=[ticks[t] for t in tasks])
    fig.update_yaxes(title_text="F1 (refusals = errors)", range=[0, 1.05])
    return _layout(
        fig, title, subtitle, barmode="group", bargap=0.25, margin=dict(l=60, r=20, t=78, b=110), legend=dict(y=-0.22)
    )


# ---------------------------------------------------------------- per model x task heatmaps and bars
def refusal_heatmap(frame: Optional[pd.DataFrame], catalog: Any = None) -> go.Figure:
    """Non-answer rate (refused, hedged or unclear: the study's "refusal rate") per model (rows) x task
    (columns), from cell_metrics() (mean over prompts) or model_task_summary(). One heatmap trace.
    "Refusal" on its own means a declined answer everywhere else, so the chart says "non-answer"."""
    title = "Non-answer rate by model and task"
    subtitle = "Refused, hedged or unclear (the study's 'refusal rate') · mean over prompts"
    if frame is None or len(frame) == 0:
        return empty_figure(title=title)
    cell_col = "non_answer_rate" if "non_answer_rate" in frame.columns else "refusal_rate"
    summary_col = "non_answer_rate_mean" if "non_answer_rate_mean" in frame.columns else "refusal_rate_mean"
    if cell_col in frame.columns:
        _usable(frame, ["model", "task"])
        df = frame.assign(rate=_num(frame[cell_col]))
        df = (
            df.groupby(["model", "task"], sort=False, dropna=False)
            .agg(
                rate=("rate", "mean"),
                n_cells=("rate", "size"),
                **({"pair": ("pair", "first")} if "pair" in df else {}),
                **({"role": ("role", "first")} if "role" in df else {}),
            )
            .reset_index()
        )
    else:
        _usable(frame, ["model", "task", summary_col])
        df = frame.assign(
            rate=_num(frame[summary_col]), n_cells=_num(frame["n_prompts"]) if "n_prompts" in frame else np.nan
        )
    styles = model_styles(df, catalog)
    tasks = task_order(df["task"].unique())
    lookup = {
        (str(m), str(t)): (float(r), float(n)) for m, t, r, n in zip(df["model"], df["task"], df["rate"], df["n_cells"])
    }
    z, text, hover = [], [], []
    for alias, style in styles.items():
        z_row, t_row, h_row = [], [], []
        for t in tasks:
            rate, n = lookup.get((alias, t), (np.nan, np.nan))
            z_row.append(None if not np.isfinite(rate) else float(rate))
            t_row.append(_pct(rate, "") if (alias, t) in lookup else "")
            h_row.append(
                f"<b>{escape(style.legend)}</b><br>{escape(task_title(t, catalog))}<br>"
                + (
                    f"non-answer rate {_pct(rate)} (mean of {'' if not np.isfinite(n) else int(n)} prompts)"
                    if (alias, t) in lookup
                    else "not run"
                )
            )
        z.append(z_row), text.append(t_row), hover.append(h_row)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[_task_tick(t, catalog) for t in tasks],
            y=[_br(s.legend, 22) for s in styles.values()],
            zmin=0,
            zmax=1,
            colorscale=[[0, "#ffffff"], [1, VERDICT_COLOURS["refusal"]]],
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=2,
            ygap=2,
            colorbar=dict(title=dict(text="No answer"), tickformat=".0%", thickness=12),
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="Model")
    fig.update_xaxes(title_text="Task", side="bottom")
    return _layout(fig, title, subtitle, show_legend=False, margin=dict(l=150, r=20, t=78, b=70))


def accuracy_by_prompt(cell_df: Optional[pd.DataFrame], task: Optional[str] = None, catalog: Any = None) -> go.Figure:
    """Accuracy (answered cases) per prompt wording (rows, in the study's order) x model (columns),
    annotated. With task=None and several tasks, one heatmap trace per task behind a dropdown."""
    title = "Accuracy by prompt wording"
    if not _usable(cell_df, ["model", "task", "prompt_id", "accuracy"]):
        return empty_figure(title=title)
    df = cell_df.assign(
        task=cell_df["task"].astype(str), prompt_id=cell_df["prompt_id"].astype(str), model=cell_df["model"].astype(str)
    )
    tasks = task_order(df["task"].unique()) if task is None else [str(task)]
    df = df[df["task"].isin(tasks)]
    if df.empty:
        return empty_figure(f"No results for {task_title(str(task), catalog)} yet — run a sweep", title)
    styles = model_styles(df, catalog)
    prompts = prompt_order(df["prompt_id"].unique())
    # The same rows and columns for every task so the axes do not change when the dropdown does.
    x = [s.tick for s in styles.values()]
    y = [prompt_label(p) for p in prompts]
    fig = go.Figure()
    options = []
    for t in tasks:
        cells = {(r["prompt_id"], r["model"]): r for r in df[df["task"] == t].to_dict("records")}
        z, text, hover = [], [], []
        for p in prompts:
            z_row, t_row, h_row = [], [], []
            for alias, style in styles.items():
                r = cells.get((p, alias))
                acc = float(pd.to_numeric(r["accuracy"], errors="coerce")) if r is not None else np.nan
                z_row.append(acc if np.isfinite(acc) else None)
                t_row.append("" if r is None else _pct(acc))
                head = f"<b>{escape(prompt_label(p))}</b> ({escape(p)})<br>{escape(style.legend)}<br>"
                if r is None:
                    h_row.append(head + "not run")
                    continue
                answered = r.get("n_answered", np.nan)
                h_row.append(
                    head
                    + f"accuracy {_pct(acc)} on answered cases"
                    + (f" ({int(answered)} of {int(r['n'])})" if "n" in r and not _isnan(answered) else "")
                    + (f"<br>refusal rate {_pct(r['refusal_rate'])}" if "refusal_rate" in r else "")
                    + (f" · F1 (refusals = errors) {_dec(r['f1_all'])}" if "f1_all" in r else "")
                )
            z.append(z_row), text.append(t_row), hover.append(h_row)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=x,
                y=y,
                zmin=0,
                zmax=1,
                zmid=CHANCE,
                colorscale="RdBu",
                name=task_title(t, catalog),
                text=text,
                texttemplate="%{text}",
                textfont=dict(size=11),
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
                xgap=1,
                ygap=1,
                colorbar=dict(title=dict(text="Accuracy"), tickformat=".0%", thickness=12),
            )
        )
        options.append((task_title(t, catalog), [len(fig.data) - 1]))
    subtitle = _dropdown(fig, options, "answered cases · 50% is chance · blue above, red below")
    # Every prompt row labelled (plotly would skip some on a dense category axis).
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=y, ticktext=y, tickfont=dict(size=11))
    fig.update_xaxes(side="bottom", tickangle=0, tickfont=dict(size=11))
    return _layout(fig, title, subtitle, show_legend=False, margin=dict(l=170, r=10, t=82, b=50))


def flip_rate(summary_df: Optional[pd.DataFrame], catalog: Any = None) -> go.Figure:
    """Share of cases whose reading changes with the prompt wording, per model (bars) and task
    (model_task_summary()'s flip_rate). One bar trace per model."""
    title = "How often the wording flips the answer"
    subtitle = "Share of cases read differently (yes / no / no answer) across wordings"
    if not _usable(summary_df, ["model", "task", "flip_rate"]):
        return empty_figure(title=title)
    df = summary_df
    tasks = task_order(df["task"].unique())
    ticks = {t: _task_tick(t, catalog) for t in tasks}
    fig = go.Figure()
    for alias, style in model_styles(df, catalog).items():
        rows = df[df["model"].astype(str) == alias]
        rows = rows.iloc[np.argsort([tasks.index(str(t)) for t in rows["task"]], kind="stable")]
        hover = [
            f"{'' if _isnan(n) else int(n)} cases seen under 2+ wordings"
            + (f"<br>agreement between wordings (Fleiss' κ) {_dec(k)}" if not _isnan(k) else "")
            for n, k in zip(
                _num(rows["n_flip_cases"]) if "n_flip_cases" in rows else np.full(len(rows), np.nan),
                _num(rows["fleiss_kappa"]) if "fleiss_kappa" in rows else np.full(len(rows), np.nan),
            )
        ]
        fig.add_trace(
            go.Bar(
                name=style.legend,
                x=[ticks[str(t)] for t in rows["task"]],
                y=_none_nan(_num(rows["flip_rate"])),
                marker=dict(color=style.colour, pattern=dict(shape=style.pattern, fgcolor="white")),
                customdata=hover,
                offsetgroup=alias,
                hovertemplate="<b>%{fullData.name}</b><br>%{x}<br>flipped %{y:.0%} of cases<br>%{customdata}<extra></extra>",
            )
        )
    fig.update_xaxes(categoryorder="array", categoryarray=[ticks[t] for t in tasks])
    fig.update_yaxes(title_text="Cases with a flipped answer", tickformat=".0%", range=[0, 1.02])
    return _layout(
        fig, title, subtitle, barmode="group", bargap=0.25, margin=dict(l=60, r=20, t=78, b=110), legend=dict(y=-0.22)
    )


def prompt_spread(cell_df: Optional[pd.DataFrame], catalog: Any = None) -> go.Figure:
    """The study's "prompt variance": accuracy of every prompt wording (one dot each) per model and task,
    as grouped box plots. One box trace per model; one point per cell with a defined accuracy."""
    title = "Prompt variance: accuracy across wordings"
    subtitle = "Each dot is one wording of the question · a tall box means the wording matters"
    if not _usable(cell_df, ["model", "task", "prompt_id", "accuracy"]):
        return empty_figure(title=title)
    df = cell_df.assign(_acc=_num(cell_df["accuracy"]))
    df = df[np.isfinite(df["_acc"])]
    if df.empty:
        return empty_figure("No answered cases yet: every answer so far was a refusal", title)
    tasks = task_order(df["task"].unique())
    ticks = {t: _task_tick(t, catalog) for t in tasks}
    fig = go.Figure()
    for alias, style in model_styles(df, catalog).items():
        rows = df[df["model"].astype(str) == alias]
        fig.add_trace(
            go.Box(
                name=style.legend,
                x=[ticks[str(t)] for t in rows["task"]],
                y=rows["_acc"].tolist(),
                customdata=[prompt_label(str(p)) for p in rows["prompt_id"]],
                offsetgroup=alias,
                boxpoints="all",
                jitter=0.35,
                pointpos=0,
                marker=dict(color=style.colour, size=6, opacity=0.85),
                line=dict(color=style.colour, width=1.5),
                fillcolor="rgba(0,0,0,0)",
                hovertemplate="<b>%{fullData.name}</b><br>%{x}<br>%{customdata}: %{y:.0%}<extra></extra>",
            )
        )
    _chance_line(fig, "chance")
    fig.update_xaxes(categoryorder="array", categoryarray=[ticks[t] for t in tasks])
    fig.update_yaxes(title_text="Accuracy (answered cases)", tickformat=".0%", range=[0, 1.05])
    return _layout(fig, title, subtitle, boxmode="group", margin=dict(l=60, r=20, t=78, b=110), legend=dict(y=-0.22))


def family_flips(families_df: Optional[pd.DataFrame], catalog: Any = None) -> go.Figure:
    """How far each wording family moves the answers: per family (columns) and model (bars), the mean
    share of a family's wordings whose reading differs from the image's majority, with its 95% CI
    (sensitivity.family_sensitivity()). With several tasks, one task at a time behind a dropdown."""
    title = "Which wording families flip the answer"
    if not _usable(families_df, ["model", "task", "family", "flip_share"]):
        return empty_figure(title=title)
    from explorer.prompts.perturb import STUDY_GROUP, load_families

    declared = load_families()
    names = {
        **{n: declared.family(n).title for n in declared.names()},
        "all": "All wordings",
        STUDY_GROUP: "The study's wordings",
        "custom": "Your wordings",
    }
    df = families_df.assign(task=families_df["task"].astype(str), family=families_df["family"].astype(str))
    order = ["all", STUDY_GROUP] + [n for n in declared.names() if n != STUDY_GROUP] + ["custom"]
    families = sorted(df["family"].unique(), key=lambda f: (order.index(f) if f in order else len(order), f))
    ticks = [_br(names.get(f, f), 14) for f in families]
    fig = go.Figure()
    options = []
    for t in task_order(df["task"].unique()):
        indices = []
        for alias, style in model_styles(df, catalog).items():
            rows = df[(df["task"] == t) & (df["model"].astype(str) == alias)].set_index("family").reindex(families)
            share = _num(rows["flip_share"])
            lo = _num(rows["flip_share_lo"]) if "flip_share_lo" in rows else np.full(len(rows), np.nan)
            hi = _num(rows["flip_share_hi"]) if "flip_share_hi" in rows else np.full(len(rows), np.nan)
            n = _num(rows["n_images"]) if "n_images" in rows else np.full(len(rows), np.nan)
            fig.add_trace(
                go.Bar(
                    name=style.legend,
                    x=ticks,
                    y=_none_nan(share),
                    offsetgroup=alias,
                    marker=dict(color=style.colour, pattern=dict(shape=style.pattern, fgcolor="white")),
                    error_y=dict(
                        type="data",
                        array=_none_nan(np.where(np.isfinite(hi), hi - share, np.nan)),
                        arrayminus=_none_nan(np.where(np.isfinite(lo), share - lo, np.nan)),
                        thickness=1.2,
                    ),
                    customdata=[
                        f"{'' if _isnan(k) else int(k)} images · 95% CI {_pct(a)}–{_pct(b)}"
                        for k, a, b in zip(n, lo, hi)
                    ],
                    hovertemplate="<b>%{fullData.name}</b><br>%{x}<br>%{y:.0%} of its wordings off the majority"
                    "<br>%{customdata}<extra></extra>",
                )
            )
            indices.append(len(fig.data) - 1)
        options.append((task_title(t, catalog), indices))
    subtitle = _dropdown(fig, options, "share of a family's wordings read differently from the image's majority")
    fig.update_xaxes(categoryorder="array", categoryarray=ticks)
    fig.update_yaxes(title_text="Wordings off the majority", tickformat=".0%", range=[0, 1.02])
    return _layout(
        fig, title, subtitle, barmode="group", bargap=0.25, margin=dict(l=60, r=20, t=78, b=120), legend=dict(y=-0.3)
    )


# ---------------------------------------------------------------- probabilities
def roc_curves(
    answers_df: Optional[pd.DataFrame], task: Optional[str] = None, prompt_id: Optional[str] = None, catalog: Any = None
) -> go.Figure:
    """ROC curve per model from the answers' p_positive (probability of the positive reading), pooled over
    prompt wordings (or one prompt_id). One line per (task, model) with both classes; a dropdown per task."""
    title = "ROC from the model's own confidence"
    if not _usable(answers_df, ["model", "task", "label"]):
        return empty_figure(title=title)
    no_probs = "No answer probabilities in these results: ROC needs a backend that reports p(positive)"
    if "p_positive" not in answers_df.columns:
        return empty_figure(no_probs, title)
    df = answers_df.assign(
        _p=_num(answers_df["p_positive"]), task=answers_df["task"].astype(str), model=answers_df["model"].astype(str)
    )
    df = df[np.isfinite(df["_p"]) & df["label"].isin(["positive", "negative"])]
    if prompt_id is not None:
        df = df[df["prompt_id"].astype(str) == str(prompt_id)]
    if task is not None:
        df = df[df["task"] == str(task)]
    if df.empty:
        return empty_figure(no_probs, title)
    styles = model_styles(df, catalog)
    fig = go.Figure()
    options = []
    for t in task_order(df["task"].unique()):
        indices = []
        for alias, style in styles.items():
            rows = df[(df["task"] == t) & (df["model"] == alias)]
            if rows["label"].nunique() < 2:
                continue
            y_true = (rows["label"] == "positive").to_numpy(dtype=int)
            fpr, tpr, _ = roc_curve(y_true, rows["_p"].to_numpy())
            auc = roc_auc_score(y_true, rows["_p"].to_numpy())
            fig.add_trace(
                go.Scatter(
                    x=fpr,
                    y=tpr,
                    mode="lines",
                    name=f"{style.legend} (AUC {auc:.2f})",
                    line=dict(color=style.colour, dash=style.dash, width=2, shape="hv"),
                    hovertemplate=f"<b>{escape(style.legend)}</b><br>false-positive rate %{{x:.0%}}"
                    f"<br>sensitivity %{{y:.0%}}<br>{len(rows)} answers<extra></extra>",
                )
            )
            indices.append(len(fig.data) - 1)
        if indices:
            options.append((task_title(t, catalog), indices))
    if not options:
        return empty_figure("ROC needs both classes among the answers with a probability", title)
    which = "all wordings pooled" if prompt_id is None else f"prompt: {prompt_label(str(prompt_id))}"
    subtitle = _dropdown(fig, options, f"p(positive) of the first answer token · {which} · diagonal: chance")
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=dict(dash="dash", color="#6b7280", width=1.2))
    fig.update_xaxes(title_text="False-positive rate (1 − specificity)", range=[0, 1], tickformat=".0%")
    fig.update_yaxes(title_text="Sensitivity", range=[0, 1.02], tickformat=".0%")
    return _layout(fig, title, subtitle, margin=dict(l=60, r=20, t=82, b=110), legend=dict(y=-0.25))


# ---------------------------------------------------------------- embeddings
def tsne_scatter(points_df: Optional[pd.DataFrame], catalog: Any = None) -> go.Figure:
    """t-SNE map of vision-encoder embeddings: columns x, y, model, label (positive / negative / missing),
    case_id; optional verdict (the model's answer; sets the marker), answer (hover snippet), hover_html
    (escaped HTML shown whole instead of the snippet, e.g. every answer of the model on that image) and task.
    Colour = the true class, marker = the verdict. One trace per (model[, task], class, verdict); a
    dropdown shows one model (and task) at a time."""
    title = "Vision-encoder embeddings (t-SNE)"
    if not _usable(points_df, ["x", "y", "model", "label"]):
        return empty_figure(title=title)
    df = points_df.assign(model=points_df["model"].astype(str))
    # _clean first: pandas' NA has no truth value, so `NA in (...)` would raise.
    df["_label"] = [v if v in ("positive", "negative") else None for v in map(_clean, df["label"])]
    has_verdict = "verdict" in df.columns
    df["_verdict"] = [v if v in VERDICT_LABELS else None for v in map(_clean, df["verdict"])] if has_verdict else None
    has_task = "task" in df.columns
    has_hover_html = "hover_html" in df.columns
    tasks = task_order(df["task"].unique()) if has_task else [None]
    styles = model_styles(df, catalog)
    fig = go.Figure()
    options = []
    for alias, style in styles.items():
        for t in tasks:
            group = df[(df["model"] == alias) & ((df["task"].astype(str) == t) if t is not None else True)]
            if group.empty:
                continue
            indices = []
            for label in ("negative", "positive", None):
                for verdict in (*VERDICT_LABELS, None) if has_verdict else (None,):
                    rows = group[group["_label"].isna() if label is None else group["_label"] == label]
                    if has_verdict:
                        rows = rows[rows["_verdict"].isna() if verdict is None else rows["_verdict"] == verdict]
                    if rows.empty:
                        continue
                    cls = class_name(t, label, catalog)
                    name = cls if not has_verdict else f"{cls} · said {verdict or 'nothing'}"
                    fig.add_trace(
                        go.Scatter(
                            x=_num(rows["x"]),
                            y=_num(rows["y"]),
                            mode="markers",
                            name=name,
                            legendgroup=str(label),
                            marker=dict(
                                color=LABEL_COLOURS[label],
                                symbol=VERDICT_SYMBOLS[verdict],
                                size=8,
                                opacity=0.8,
                                line=dict(width=1, color=LABEL_COLOURS[label]),
                            ),
                            customdata=np.column_stack(
                                [
                                    [escape(str(c)) for c in rows.get("case_id", pd.Series([""] * len(rows)))],
                                    [cls] * len(rows),
                                    [str(v or "not asked") for v in rows["_verdict"]]
                                    if has_verdict
                                    else [""] * len(rows),
                                    list(rows["hover_html"].fillna(""))
                                    if has_hover_html
                                    else [_snippet(a) for a in rows.get("answer", pd.Series([""] * len(rows)))],
                                ]
                            ),
                            hovertemplate="<b>%{customdata[0]}</b><br>truth: %{customdata[1]}"
                            + ("<br>verdict: %{customdata[2]}" if has_verdict else "")
                            + ("<br><br>" if has_hover_html else "<br>")
                            + "%{customdata[3]}<extra></extra>",
                        )
                    )
                    indices.append(len(fig.data) - 1)
            where = style.legend + (f" · {task_title(t, catalog)}" if t is not None and len(tasks) > 1 else "")
            options.append((where, indices))
    subtitle = _dropdown(
        fig,
        options,
        "colour: true class · marker: the model's verdict"
        if has_verdict
        else "colour: true class · mixed colours = classes hard to tell apart",
    )
    fig.update_xaxes(title_text="t-SNE 1", showticklabels=False, zeroline=False)
    fig.update_yaxes(title_text="t-SNE 2", showticklabels=False, zeroline=False)
    return _layout(
        fig,
        title,
        subtitle,
        margin=dict(l=50, r=20, t=82, b=40),
        legend=dict(orientation="v", x=1.02, xanchor="left", y=1, yanchor="top"),
    )


def _snippet(answer: Any, limit: int = 120) -> str:
    text = "" if _missing(answer) else " ".join(str(answer).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return escape(text)


# ---------------------------------------------------------------- one image's variant grid
VERDICT_CODES = {v: i for i, v in enumerate((*VERDICT_LABELS, "error"))}


def verdict_grid(grid_df: Optional[pd.DataFrame], catalog: Any = None) -> go.Figure:
    """Prompt wordings (rows) x models (columns) for one image, each cell coloured by its verdict and
    marked ✓ / ✗ against the label (only answered cells of labelled images). Columns: prompt_id, model,
    verdict; optional label, correct, error, answer. One heatmap trace."""
    title = "Verdicts for this image"
    if not _usable(grid_df, ["prompt_id", "model", "verdict"]):
        return empty_figure("No answers yet — run the grid", title)
    df = grid_df.assign(prompt_id=grid_df["prompt_id"].astype(str), model=grid_df["model"].astype(str))
    df = df.drop_duplicates(["prompt_id", "model"])
    styles = model_styles(df, catalog)
    prompts = prompt_order(df["prompt_id"].unique())
    cells = {(r["prompt_id"], r["model"]): r for r in df.to_dict("records")}
    z, text, hover = [], [], []
    for p in prompts:
        z_row, t_row, h_row = [], [], []
        for alias, style in styles.items():
            r = cells.get((p, alias))
            if r is None:
                z_row.append(None), t_row.append(""), h_row.append(f"{escape(prompt_label(p))}<br>not run")
                continue
            verdict = "error" if _clean(r.get("error")) else (_clean(r.get("verdict")) or "unclear")
            mark = _mark(r, verdict)
            z_row.append(VERDICT_CODES.get(verdict, VERDICT_CODES["unclear"]))
            t_row.append(f"{verdict} {mark}".strip())
            h_row.append(
                f"<b>{escape(prompt_label(p))}</b><br>{escape(style.legend)}<br>verdict: {verdict}"
                + (f"<br>truth: {escape(str(r['label']))}" if _clean(r.get("label")) else "")
                + (f"<br>{_snippet(r.get('error') or r.get('answer'))}" if ("answer" in r or "error" in r) else "")
            )
        z.append(z_row), text.append(t_row), hover.append(h_row)
    colours = [*(VERDICT_BG_COLOURS[v] for v in VERDICT_LABELS), ERROR_BG_COLOUR]
    n = len(colours)
    # Stepped colour scale: code i fills the band [i/n, (i+1)/n] with one flat colour.
    scale = [[edge, c] for i, c in enumerate(colours) for edge in (i / n, (i + 1) / n)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[s.tick for s in styles.values()],
            y=[prompt_label(p) for p in prompts],
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=scale,
            showscale=False,
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=12, color="#0f172a"),
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            xgap=2,
            ygap=2,
        )
    )
    rows = [prompt_label(p) for p in prompts]
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=rows, ticktext=rows, tickfont=dict(size=11))
    fig.update_xaxes(side="top", tickangle=0, tickfont=dict(size=11))
    return _layout(
        fig,
        title,
        "✓ right · ✗ wrong, against the image's label",
        show_legend=False,
        margin=dict(l=170, r=10, t=100, b=10),
    )


def _mark(row: dict, verdict: str) -> str:
    correct = row.get("correct")
    if not _missing(correct):
        return "✓" if bool(correct) else "✗"
    label = _clean(row.get("label"))
    if label in ("positive", "negative") and verdict in ("positive", "negative"):
        return "✓" if verdict == label else "✗"
    return ""  # unlabelled image, or no answer to score (as the app's HTML grid shows it)


# ---------------------------------------------------------------- all of a run's figures
def study_figures(
    answers: Optional[pd.DataFrame], catalog: Any = None, n_boot: int = 1000, cells: Optional[pd.DataFrame] = None
) -> list[go.Figure]:
    """The study's figures for an answers frame, most telling first: headline F1, accuracy by prompt,
    prompt variance, refusal rate, flip rate, and ROC (when answers carry p_positive).

    `cells` may pass a cell_metrics() result of the same answers to skip recomputing it. The metrics are
    computed once here (not through metrics.headline, which would compute them again) and the headline
    table is taken from the summary exactly as metrics.headline() takes it.
    """
    from explorer.analysis import metrics

    if answers is None or len(answers) == 0:
        return [
            headline_f1(None, catalog),
            accuracy_by_prompt(None, catalog=catalog),
            prompt_spread(None, catalog),
            refusal_heatmap(None, catalog),
            flip_rate(None, catalog),
            roc_curves(None, catalog=catalog),
        ]
    frame = metrics.attach_pairs(answers, catalog)
    if cells is None:
        cells = metrics.cell_metrics(frame, n_boot=0)
    summary = metrics.model_task_summary(frame, n_boot=n_boot, cells=cells)
    paired = summary[summary["pair"].notna() & summary["role"].isin(["base", "medical"])]
    return [
        headline_f1(paired.reindex(columns=metrics.HEADLINE_COLUMNS), catalog),
        accuracy_by_prompt(cells, catalog=catalog),
        prompt_spread(cells, catalog),
        refusal_heatmap(cells, catalog),
        _flips_by_wording(frame, summary, n_boot, catalog),
        roc_curves(answers, catalog=catalog),
    ]


def _flips_by_wording(frame: pd.DataFrame, summary: pd.DataFrame, n_boot: int, catalog: Any) -> go.Figure:
    """The flip chart: per wording family when the answers hold generated wordings, else per task."""
    from explorer.analysis.sensitivity import family_sensitivity
    from explorer.prompts.perturb import family_group

    groups = {family_group(str(f or "")) for f in frame.get("prompt_family", pd.Series(dtype=object)).dropna()}
    if not groups - {"study", "custom"}:
        return flip_rate(summary, catalog)
    return family_flips(family_sensitivity(frame, n_boot=min(n_boot, 500)), catalog)
