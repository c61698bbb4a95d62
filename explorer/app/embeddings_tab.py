"""Embeddings tab: do the two classes separate in the vision encoder before any text is generated?

Pooled vision features -> PCA -> t-SNE per model (colour: the true class, marker: the model's verdict,
hover: the case and its answers), and a cross-validated linear probe shown next to the model's own
closed-form accuracy on the same images.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from explorer.app import names, render
from explorer.app.context import Background, SharedExplorer, gpu, user_message, warn

SOURCES = [
    ("sample images", "samples"),
    ("those with stored answers", "answered"),
    ("the study's sample (Hugging Face, 300 per class)", "huggingface"),
]
NOISE_NOTE = (
    "demo-* models have random weights: their features are noise, so any separation here (and the "
    "probe's accuracy) is chance, not knowledge."
)
PERPLEXITY_NOTE = (
    "t-SNE perplexity was lowered for this small set (it must stay below the number of images / 3); "
    "with so few points the map shows little more than noise."
)


def bar(elem_id: str, done: int, total: int, detail: str = "", state: str = "running") -> str:
    """render.progress under this tab's own element id (ids must be unique on the page)."""
    return render.progress(done, total, detail, state).replace('id="sweep-progress"', f'id="{elem_id}"', 1)


def _pct(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{100 * v:.0f}%"


def probe_table(probes, roles: dict[str, str]) -> str:
    """One row per model: probe CV accuracy [95% CI] next to the model's own closed-form accuracy."""
    if probes is None or probes.empty:
        return '<div class="vx-empty" id="probe-table">Choose a task and models, then press Compute.</div>'
    rows = []
    for r in probes.to_dict("records"):
        ci = f"[{_pct(r['probe_ci_lo'])}, {_pct(r['probe_ci_hi'])}]"
        best = (
            f"{_pct(r['closed_accuracy_best'])} <small>({render.escape(names.prompt_name(str(r['closed_best_prompt'])))})</small>"
            if isinstance(r.get("closed_best_prompt"), str)
            else "n/a"
        )
        k = int(r["closed_prompts"] or 0)
        prompts = f"{k} prompt{'s' if k != 1 else ''}"
        if not k:
            closed = "<small>no answers stored</small>"
        elif _pct(r["closed_accuracy_mean"]) == "n/a":  # every reply a refusal, hedge or unclear
            closed = f"n/a <small>no yes/no reading in {prompts}</small>"
        else:
            closed = f"{_pct(r['closed_accuracy_mean'])} <small>mean of {prompts}</small>"
        alias, role = render.escape(r["model"]), render.escape(roles.get(r["model"], ""))
        rows.append(
            f'<tr data-alias="{alias}" data-probe="{r["probe_accuracy"]}">'
            f'<td><code>{alias}</code> <span class="vx-role vx-role-{role}">{role}</span></td>'
            f'<td class="vx-probe"><b>{_pct(r["probe_accuracy"])}</b> <small>{ci}, {int(r["folds"])}-fold</small></td>'
            f"<td>{closed}</td><td>{best}</td><td>{_pct(r['chance'])}</td><td>{int(r['n'])}</td></tr>"
        )
    return (
        '<table class="vx-table" id="probe-table"><thead><tr><th>model</th><th>linear probe (CV accuracy, 95% CI)</th>'
        "<th>model's own answers: accuracy</th><th>best prompt</th><th>chance</th><th>images</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<div class="vx-foot">Probe: standardised features, logistic regression, stratified k-fold CV. The model\'s '
        "accuracy counts its answered closed-form replies on the same images (non-answers: refusals, hedges and unclear replies, left out).</div>"
    )


def write_csv(view) -> str:
    folder = Path(tempfile.mkdtemp(prefix="explorer-embeddings-"))
    path = folder / f"tsne_{view.task}.csv"
    probes = view.probes.add_prefix("probe_").rename(columns={"probe_model": "model"})
    view.points.drop(columns=["hover_html"]).merge(probes.drop(columns=["probe_task"]), on="model", how="left").to_csv(
        path, index=False
    )
    return str(path)


class EmbeddingHandlers:
    def __init__(self, shared: SharedExplorer):
        self.shared = shared

    def _fail(self, msg: str, progress=None):
        warn(msg)
        return (
            progress if progress is not None else gr.skip(),
            render.notice(msg),
            gr.skip(),
            gr.skip(),
            gr.skip(),
            gr.skip(),
        )

    def compute(self, task: str, models, source: str, verdict_prompt: Optional[str], ask: bool):
        """Features, t-SNE and probe for each model; what was on screen stays there when this fails."""
        ex = self.shared.get()
        models = list(models or [])
        try:
            if not task:
                raise ValueError("Choose a task.")
            if not models:
                raise ValueError("Choose at least one model.")
        except Exception as exc:
            yield self._fail(user_message(exc))
            return
        yield (
            bar("emb-progress", 0, 0, "loading images", "running"),
            render.notice(""),
            gr.skip(),
            gr.skip(),
            gr.skip(),
            gr.update(value=None, interactive=False),
        )
        job = Background(
            lambda emit: ex.embedding_probe(
                task,
                models,
                source=source or "samples",
                verdict_prompt=verdict_prompt or "",
                ask_verdicts=bool(ask),
                progress=lambda stage, d, t: emit((stage, d, t)),
            )
        )
        last = ("", 0, 0)
        for items in job.updates():
            if items:
                last = items[-1]
                stage, d, t = last
                yield (bar("emb-progress", d, t, stage), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        try:
            view = job.result()
        except Exception as exc:
            msg = user_message(exc)
            yield self._fail(msg, bar("emb-progress", last[1], last[2], msg, "failed"))
            return
        roles = {m: ex.catalog.model(m).role for m in models}
        notes = [PERPLEXITY_NOTE] if view.perplexity_lowered else []
        if view.random_weights:
            notes.append(NOISE_NOTE)
        failed = [m for m in models if m not in set(view.probes["model"])]
        # Why a model failed goes where the user looks; settings adapted to a small set fold away.
        errors = [n for n in view.notices if n.split(":", 1)[0] in failed]
        details = [n for n in view.notices if "perplexity lowered" not in n and n not in errors]
        html = "".join(render.notice(n) for n in errors) + "".join(render.notice(n, "info") for n in notes)
        if details:
            html += (
                '<details class="vx-foot" id="emb-details"><summary>settings adapted to this set '
                f"({len(details)})</summary>{'<br>'.join(render.escape(n) for n in details)}</details>"
            )
        status = render.notice(f"{len(view.probes)} model(s) on {view.n_cases} images of {task}.", "ok")
        if failed:
            status = render.notice(f"{len(failed)} model(s) could not be analysed: {', '.join(failed)} (see below).")
        yield (
            bar("emb-progress", last[2] or 1, last[2] or 1, f"{view.n_cases} images", "done"),
            status,
            view.figure,
            probe_table(view.probes, roles),
            html,
            gr.update(value=write_csv(view), interactive=True),
        )


def build(shared: SharedExplorer, catalog, preset) -> dict[str, Any]:
    from explorer.prompts import variants as prompts

    h = EmbeddingHandlers(shared)
    closed = [v.prompt_id for v in prompts.closed_variants(catalog, preset.tasks[0], preset.prompts)]
    gr.Markdown(
        "Do the classes separate in each model's **vision encoder**, before any text is written? Pooled "
        "vision features (the study's recipe) → PCA → t-SNE, and a linear probe beside the model's own "
        "closed-form accuracy on the same images."
    )
    with gr.Row(equal_height=True):
        task = gr.Dropdown(
            [(catalog.task(k).title, k) for k in preset.tasks],
            value=preset.tasks[0],
            label="Task",
            elem_id="emb-task",
            scale=2,
            min_width=200,
        )
        models = gr.CheckboxGroup(
            [(names.model_label(catalog.model(a)), a) for a in preset.models],
            value=list(preset.models),
            label="Models",
            elem_id="emb-models",
            scale=5,
        )
    with gr.Row(equal_height=False):
        source = gr.Radio(SOURCES, value="samples", label="Images", elem_id="emb-source", scale=3)
        verdict = gr.Dropdown(
            closed,
            value="evidence" if "evidence" in closed else closed[0],
            label="Marker: the verdict of prompt",
            elem_id="emb-verdict",
            scale=2,
            min_width=160,
        )
        with gr.Column(scale=2, min_width=180):
            ask = gr.Checkbox(True, label="Ask it where no answer is stored", elem_id="emb-ask")
            run = gr.Button("Compute", variant="primary", elem_id="emb-run")
    progress = gr.HTML(bar("emb-progress", 0, 0, "not started", "idle"), elem_id="emb-progress-box", js_on_load=None)
    status = gr.HTML("", elem_id="emb-status", js_on_load=None)
    # The probe table first (the headline numbers), full width; the scatter below it.
    probes = gr.HTML(probe_table(None, {}), elem_id="emb-probes", js_on_load=None, apply_default_css=False)
    notes = gr.HTML("", elem_id="emb-notes", js_on_load=None)
    plot = gr.Plot(show_label=False, elem_id="emb-plot")
    download = gr.DownloadButton(
        "t-SNE coordinates + probe CSV", value=None, interactive=False, elem_id="emb-download", size="sm"
    )
    run.click(
        gpu(600)(h.compute),
        [task, models, source, verdict, ask],
        [progress, status, plot, probes, notes, download],
        api_name="embeddings",
        concurrency_id="gpu",
        concurrency_limit=shared.settings.gpu_concurrency,
    )
    return {"run": run}
