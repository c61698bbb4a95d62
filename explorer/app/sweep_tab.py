"""Sweep tab: models x tasks x prompts x images into the store, with progress, cancel and resume;
the metrics table fills in while it runs, then the study's figures and downloads."""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from explorer.app import names, render
from explorer.app.context import CancelTokens, SharedExplorer, gpu, user_message, warn

METRIC_COLUMNS = [
    "model",
    "task",
    "prompt_id",
    "n",
    "accuracy",
    "accuracy_all",
    "f1_all",
    "non_answer_rate",
    "hedge_rate",
    "sensitivity",
    "specificity",
]
REFRESH_S = 1.5  # how often the metrics table is recomputed while a sweep runs
N_CHARTS = 6  # plots.study_figures: headline F1_all, accuracy by prompt, prompt spread, refusals, flips, ROC
DOWNLOADS = (
    ("Answers CSV", "dl-answers-csv", "answers.csv"),
    ("Answers Parquet", "dl-answers-parquet", "answers.parquet"),
    ("Metrics CSV", "dl-metrics-csv", "metrics_cells.csv"),
    ("Metrics Parquet", "dl-metrics-parquet", "metrics_cells.parquet"),
    ("Per model and task CSV", "dl-summary-csv", "metrics_summary.csv"),
    ("Manifest", "dl-manifest", "manifest.json"),
)
N_FILES = len(DOWNLOADS)


def metrics_table(cells: pd.DataFrame, catalog=None) -> pd.DataFrame:
    """The columns a reader scans first, rounded, under plain names (models, tasks and wordings by name);
    the downloads carry every column under its id."""
    headers = [names.metric_header(c) for c in METRIC_COLUMNS]
    if cells is None or cells.empty:
        return pd.DataFrame(columns=headers)
    table = cells.reindex(columns=METRIC_COLUMNS).round(3)
    if catalog is not None:
        table["model"] = [names.model_name(catalog.models.get(a), a) for a in table["model"].astype(str)]
        table["task"] = [catalog.task(t).title if t in catalog.tasks else t for t in table["task"].astype(str)]
    table["prompt_id"] = [names.prompt_name(p) for p in table["prompt_id"].astype(str)]
    table.columns = headers
    return table


def write_exports(ex, run_id: str) -> list[str]:
    """The run's export (answers, metrics, manifest) in a fresh temp folder, which Gradio may serve."""
    from explorer.analysis.exports import export_results

    folder = Path(tempfile.mkdtemp(prefix=f"explorer-{run_id}-"))
    written = {p.name: str(p) for p in export_results(ex.store, folder, run_id=run_id, catalog=ex.catalog)}
    return [written[name] for _, _, name in DOWNLOADS]


class SweepHandlers:
    def __init__(self, shared: SharedExplorer):
        self.shared = shared
        self._cancels = CancelTokens()  # the page's state keeps a token, never the event itself

    def _frame(self, ex, run_id: str) -> pd.DataFrame:
        return ex.answers_frame(run_id=run_id)

    def charts(self, ex, frame: pd.DataFrame, cells: pd.DataFrame) -> list:
        from explorer.analysis import plots

        return plots.study_figures(frame, catalog=ex.catalog, cells=cells)[:N_CHARTS]

    def run(self, models, tasks, prompt_ids, per_class, style, state, request: gr.Request = None):
        ex = self.shared.get()
        try:
            spec = ex.sweep_spec(
                models=list(models or []),
                tasks=list(tasks or []),
                prompt_ids=list(prompt_ids or []),
                per_class=int(per_class),
                prompt_style=style,
            )
            if not spec.models or not spec.tasks:
                raise ValueError("Choose at least one model and one task.")
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield (gr.skip(), render.notice(msg), gr.skip(), *[gr.skip()] * N_CHARTS, *[gr.skip()] * N_FILES, gr.skip())
            return
        yield from self._execute(ex, spec, previous=state, session=_session_of(request), owner=owner_of(request))

    def resume(self, state, request: gr.Request = None):
        ex = self.shared.get()
        if not state or state.get("spec") is None:
            msg = "Nothing to resume yet: run a sweep first."
            warn(msg)
            yield (gr.skip(), render.notice(msg), gr.skip(), *[gr.skip()] * N_CHARTS, *[gr.skip()] * N_FILES, gr.skip())
            return
        yield from self._execute(
            ex, state["spec"], previous=state, session=_session_of(request), owner=owner_of(request)
        )

    def cancel(self, state, request: gr.Request = None):
        """Cancel this page's sweep, or after a reload the visitor's sweep this page re-attached to."""
        event = self._cancels.event((state or {}).get("cancel_token"))
        if event is None:
            handle = self.shared.get().running_sweep(owner_of(request)) if owner_of(request) else None
            event = handle.cancel_event if handle is not None and handle.running else None
        if event is not None and not event.is_set():
            event.set()
            return render.notice(
                "Cancelling after the current batch; finished answers are kept. Resume picks up there.", "info"
            )
        return render.notice("No sweep is running.", "info")

    def reattach(self, state, request: gr.Request = None):
        """On page load: the visitor's sweep, when one is running (or just ended), is followed again, with
        its progress, table, figures and downloads; Cancel and Resume act on it. Nothing when there is none."""
        owner = owner_of(request)
        ex = self.shared.get() if owner else None
        handle = ex.attach_sweep(owner, _session_of(request)) if ex is not None else None
        if handle is None:
            yield (gr.skip(),) * (3 + N_CHARTS + N_FILES + 1)
            return
        state = {"spec": handle.spec, "cancel_token": self._cancels.token(handle.cancel_event)}
        snap = handle.snapshot()
        yield (
            render.progress(
                snap.done, snap.total, "re-attached after a reload", "running" if handle.running else snap.state
            ),
            render.notice("Your sweep, found again after the reload.", "info"),
            gr.skip(),
            *[gr.skip()] * N_CHARTS,
            *[gr.skip()] * N_FILES,
            state,
        )
        yield from self._follow(ex, handle, state, state, started=True)

    def _execute(self, ex, spec, previous=None, session=None, owner=None):
        """Run `spec`, streaming progress. The previous sweep's downloads and resume point stay until this
        one has really started: a sweep refused while planning (public limits, a missing samples folder)
        takes nothing away, and one that fails midway offers what it finished."""
        cancel = threading.Event()
        state = {
            "spec": spec,
            "cancel_token": self._cancels.token(cancel),
        }  # out at once: Cancel works while images load
        yield (
            render.progress(0, 0, "planning: loading images", "running"),
            render.notice(""),
            gr.skip(),
            *[gr.skip()] * N_CHARTS,
            *[gr.skip()] * N_FILES,
            state,
        )

        # The sweep belongs to this visitor's session, not to this handler: it runs in the engine, a
        # closed page cancels it (after a grace period for a reload), and it holds no gpu queue slot.
        try:
            bg = ex.start_sweep(owner or session or "anonymous", spec, session=session, cancel=cancel)
        except ValueError as exc:  # e.g. public mode: one sweep per visitor at a time
            msg = user_message(exc)
            warn(msg)
            yield (
                render.progress(0, 0, msg, "failed"),
                render.notice(msg),
                gr.skip(),
                *[gr.skip()] * N_CHARTS,
                *[gr.skip()] * N_FILES,
                previous,
            )
            return
        yield from self._follow(ex, bg, state, previous, started=False)

    def _follow(self, ex, bg, state, previous, started: bool):
        """Stream a running sweep (bg: the engine's SweepHandle) into the tab until it ends, then its
        figures and downloads. `started`: the previous run's downloads were already taken away."""
        latest: dict[str, Any] = {"done": 0, "total": 0, "info": {}}
        no_files = [gr.update(value=None, interactive=False)] * N_FILES
        last_refresh = 0.0
        for items in bg.updates(poll_s=0.25):
            if not items:
                continue
            latest["done"], latest["total"], latest["info"] = items[-1]
            info = latest["info"]
            detail = f"{info.get('cached', 0)} cached, {info.get('errors', 0)} errors · {info.get('model', '')} on {info.get('task', '')}"
            table = gr.skip()
            if time.monotonic() - last_refresh > REFRESH_S and info.get("run_id"):
                last_refresh = time.monotonic()
                table = self._cells_table(self._frame(ex, info["run_id"]))
            # The plan was accepted: the previous run's downloads no longer match what is shown.
            files = [gr.skip()] * N_FILES if started else no_files
            started = True
            yield (
                render.progress(latest["done"], latest["total"], detail),
                gr.skip(),
                table,
                *[gr.skip()] * N_CHARTS,
                *files,
                gr.skip(),
            )
        try:
            summary = bg.result()
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            run_id = latest["info"].get("run_id")
            if not started:  # refused before anything ran: the previous sweep stays as it was
                yield (
                    render.progress(0, 0, msg, "failed"),
                    render.notice(msg),
                    gr.skip(),
                    *[gr.skip()] * N_CHARTS,
                    *[gr.skip()] * N_FILES,
                    previous,
                )
                return
            files = [gr.skip()] * N_FILES
            if run_id:  # what finished before the failure is in the store: offer it for download
                try:
                    files = [gr.update(value=p, interactive=True) for p in write_exports(ex, run_id)]
                except Exception:  # the downloads are a convenience; the message above is what matters
                    pass
            yield (
                render.progress(latest["done"], latest["total"], msg, "failed"),
                render.notice(msg),
                gr.skip(),
                *[gr.skip()] * N_CHARTS,
                *files,
                dict(state, cancel=None, run_id=run_id),
            )
            return
        yield from self._finish(ex, summary, state)

    def _cells_table(self, frame: pd.DataFrame) -> pd.DataFrame:
        from explorer.analysis import metrics

        return metrics_table(metrics.cell_metrics(frame, n_boot=0), self.shared.get().catalog)

    def _finish(self, ex, summary, state):
        from explorer.analysis import metrics

        frame = self._frame(ex, summary.run_id)
        cells = metrics.cell_metrics(frame)
        state = dict(state, cancel=None, run_id=summary.run_id)
        done_state = "cancelled" if summary.cancelled else "done"
        detail = (
            f"{summary.computed} generated, {summary.cached} cached, {summary.errors} errors "
            f"in {summary.elapsed_s:.1f} s · run {summary.run_id}"
        )
        note = (
            render.notice("; ".join(f"{m}: {why}" for m, why in summary.failures.items()), "error")
            if summary.failures
            else render.notice(
                "Cancelled: press Resume to finish it." if summary.cancelled else "Sweep finished.",
                "info" if summary.cancelled else "ok",
            )
        )
        if summary.notes:
            note += render.notice(" ".join(f"{n}." for n in summary.notes), "info")
        try:
            figures = self.charts(ex, frame, cells)
        except Exception as exc:  # charts are a view; a failure must not hide the table
            warn(f"Charts unavailable: {user_message(exc)}")
            figures = []
        figures = list(figures) + [None] * (N_CHARTS - len(figures))
        files = [gr.update(value=p, interactive=True) for p in write_exports(ex, summary.run_id)]
        yield (
            render.progress(summary.done, summary.planned, detail, done_state),
            note,
            metrics_table(cells, ex.catalog),
            *figures,
            *files,
            state,
        )


def _session_of(request) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


VISITOR_COOKIE = "vx_visitor"
_VISITOR_ID = re.compile(r"[A-Za-z0-9-]{8,64}")
# A random id per browser, kept in a cookie: a reload is a new Gradio session but the same visitor.
VISITOR_JS = (
    "() => { if (!document.cookie.split('; ').some(c => c.startsWith('" + VISITOR_COOKIE + "='))) {"
    " const id = (window.crypto && crypto.randomUUID) ? crypto.randomUUID()"
    " : Math.random().toString(36).slice(2) + Date.now().toString(36);"
    " document.cookie = '" + VISITOR_COOKIE + "=' + id + '; path=/; max-age=31536000; SameSite=Lax'; } }"
)


def owner_of(request) -> str | None:
    """Whose sweep: the browser's visitor cookie, else (an API client) the Gradio session."""
    if request is None:
        return None
    cookies = getattr(request, "cookies", None) or {}
    value = cookies.get(VISITOR_COOKIE) if hasattr(cookies, "get") else None
    if not value:
        header = (getattr(request, "headers", None) or {}).get("cookie", "") or ""
        value = next(
            (part.split("=", 1)[1] for part in header.split("; ") if part.startswith(VISITOR_COOKIE + "=")), None
        )
    if value and _VISITOR_ID.fullmatch(value):
        return f"visitor:{value}"
    return _session_of(request)


def build(shared: SharedExplorer, catalog, preset) -> dict[str, Any]:
    from explorer.prompts import variants as prompts

    h = SweepHandlers(shared)
    closed = prompts.closed_variants(catalog, preset.tasks[0], preset.prompts)
    with gr.Row():
        models = gr.CheckboxGroup(
            [(names.model_label(catalog.model(a)), a) for a in preset.models],
            value=list(preset.models),
            label="Models",
            elem_id="sweep-models",
        )
        tasks = gr.CheckboxGroup(
            [(catalog.task(k).title, k) for k in preset.tasks],
            value=list(preset.tasks),
            label="Tasks",
            elem_id="sweep-tasks",
        )
    prompt_ids = gr.CheckboxGroup(
        [(names.prompt_name(v.prompt_id), v.prompt_id) for v in closed],
        value=[v.prompt_id for v in closed],
        label="Wordings (the same families for every task)",
        elem_id="sweep-prompts",
    )
    with gr.Row():
        per_class = gr.Slider(
            1,
            max(50, preset.cases.per_class),
            value=preset.cases.per_class,
            step=1,
            label="Images per class (seeded sample)",
            elem_id="sweep-per-class",
        )
        style = gr.Radio(
            [("as the study ran them", "paper"), ("each model's own template", "official")],
            value=preset.prompt_format,
            label="Prompt format",
            elem_id="sweep-style",
        )
    with gr.Row():
        run = gr.Button("Run sweep", variant="primary", elem_id="run-sweep")
        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-sweep")
        resume = gr.Button("Resume", elem_id="resume-sweep")
    progress = gr.HTML(render.progress(0, 0, "not started", "idle"), elem_id="sweep-progress-box", js_on_load=None)
    status = gr.HTML("", elem_id="sweep-status", js_on_load=None)
    table = gr.Dataframe(
        metrics_table(None),
        label="Metrics per model, task and prompt (fills in as answers land)",
        elem_id="sweep-metrics",
        interactive=False,
        max_height=320,
        wrap=False,
    )
    gr.Markdown(names.metric_legend(METRIC_COLUMNS), elem_id="metric-legend")
    with gr.Row():
        downloads = [
            gr.DownloadButton(label, value=None, interactive=False, elem_id=eid, size="sm")
            for label, eid, _ in DOWNLOADS
        ]
    charts = []
    with gr.Column(elem_id="sweep-charts"):
        for first in range(0, N_CHARTS, 2):
            with gr.Row(equal_height=True):
                charts += [gr.Plot(show_label=False, elem_id=f"sweep-chart-{i}") for i in (first, first + 1)]
    state = gr.State(None)
    outputs = [progress, status, table, *charts, *downloads, state]
    running = run.click(
        gpu(600)(h.run),
        [models, tasks, prompt_ids, per_class, style, state],
        outputs,
        api_name="sweep",
        concurrency_id="sweeps",
        concurrency_limit=None,
    )
    resume.click(
        gpu(600)(h.resume), [state], outputs, api_name="resume_sweep", concurrency_id="sweeps", concurrency_limit=None
    )
    cancel.click(h.cancel, [state], [status], queue=False, api_visibility="private")
    gr.Markdown(
        "A sweep belongs to this browser: reload the page and it is found again; close every page "
        "of it and it stops a minute later (finished answers stay in the store).",
        elem_id="sweep-note",
    )
    return {
        "run_event": running,
        "reattach": dict(
            fn=h.reattach,
            inputs=[state],
            outputs=outputs,
            api_visibility="private",
            concurrency_id="sweeps",
            concurrency_limit=None,
        ),
        "visitor_js": VISITOR_JS,
    }
