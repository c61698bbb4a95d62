"""Describe & diagnose tab: is there signal a VLM can put into words even when its Yes/No is wrong?

One case: each model describes the image, a text-only model diagnoses each description with the study's
templates, right or wrong. A sweep: descriptions over many images, diagnosed, measured per VLM x
description prompt x template, with the F1_all recovered over the model's own closed-form answers.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import pandas as pd

from explorer.app import names, render
from explorer.app.context import Background, CancelTokens, SharedExplorer, gpu, user_message, warn
from explorer.app.embeddings_tab import bar

COMPARE_CASE = "__compare__"
ALL_RUNS = "__all__"
METRICS = [
    "model",
    "task",
    "prompt_id",
    "template",
    "n",
    "n_unparsed",
    "accuracy",
    "yes_rate",
    "f1",
    "f1_all",
    "closed_f1_all",
    "signal_recovered",
]
NOISE_NOTE = (
    "Random-weight models are involved (demo VLMs or the offline diagnoser): the descriptions and "
    "diagnoses are noise, shown to exercise the pipeline."
)
PARSED_CLASS = {"yes": "vx-v-positive", "no": "vx-v-negative"}


def metrics_table(table: Optional[pd.DataFrame]) -> pd.DataFrame:
    """The metrics under plain names (wordings by name, column headers in words); the CSV keeps the ids."""
    headers = [names.metric_header(c) for c in METRICS]
    if table is None or table.empty:
        return pd.DataFrame(columns=headers)
    shown = table[METRICS].round(3)
    shown["prompt_id"] = [names.prompt_name(str(p)) for p in shown["prompt_id"]]
    shown.columns = headers
    return shown


def _diagnosis_row(r: dict, label: Optional[str]) -> str:
    """One template's diagnosis: its Yes/No (raw output on hover) and whether it is right."""
    template = render.escape(r["template"])
    tip = render.escape(str(r["error"] or r["raw"] or "")[:300])
    badge = (
        f'<span class="vx-badge {PARSED_CLASS.get(r["parsed"], "vx-v-unclear")}" title="{tip}">'
        f"{render.escape(str(r['parsed'] or 'failed'))}</span>"
    )
    correct = None if pd.isna(r["correct"]) else bool(r["correct"])
    return (
        f'<tr data-template="{template}"><td><code>{template}</code></td><td>{badge}</td>'
        f"<td>{render.correctness(correct, label)}</td></tr>"
    )


def case_cards(result, pairs) -> str:
    """Per model: each description, and under it the diagnosis of every template with right/wrong."""
    if result is None:
        return '<div class="vx-empty">Pick a case and press Describe &amp; diagnose.</div>'
    diag = result.diagnoses
    groups = []
    for pair in pairs:
        cards = []
        for spec in pair:
            mine = result.descriptions[result.descriptions["model"] == spec.alias]
            if mine.empty:
                continue
            parts = []
            for d in mine.to_dict("records"):
                text = render.escape(d["error"] or d["description"]) or "<i>(empty description)</i>"
                rows = diag[(diag["model"] == spec.alias) & (diag["prompt_id"] == d["prompt_id"])]
                cells = "".join(_diagnosis_row(r, result.case.label) for r in rows.to_dict("records"))
                parts.append(
                    f'<div class="vx-foot"><b>{render.escape(names.prompt_name(d["prompt_id"]))}</b>'
                    f"{' · cached' if d['cached'] else ''}</div>"
                    f'<div class="vx-answer" style="max-height:140px">{text}</div>'
                    f'<table class="vx-table dx-diagnoses">{cells or "<tr><td>not diagnosed</td></tr>"}</table>'
                )
            cards.append(
                f'<div class="vx-card vx-done" data-alias="{render.escape(spec.alias)}"><div class="vx-card-head">'
                f'<span class="vx-title">{render.escape(spec.title)}</span><span class="vx-role vx-role-'
                f'{render.escape(spec.role)}">{render.escape(spec.role)}</span></div>{"".join(parts)}</div>'
            )
        if cards:
            groups.append(f'<div class="vx-pair">{"".join(cards)}</div>')
    truth = result.case.label or "unknown"
    head = (
        f'<div class="vx-cards-heading">{render.escape(result.case.case_id)} · truth: <b>{truth}</b> · '
        f"diagnoser: {render.escape(result.diagnoser)}</div>"
    )
    return f'<div id="dx-cards">{head}<div class="vx-pairs">{"".join(groups)}</div></div>'


def _own_runs(state) -> list[str]:
    """The describe runs this visitor started (a public demo lists and diagnoses only these)."""
    return list((state or {}).get("runs") or [])


def _runs_choices(runs: pd.DataFrame, public: bool = False) -> list[tuple[str, str]]:
    out = [] if public else [("every stored description", ALL_RUNS)]
    for r in runs.to_dict("records"):
        n_models = len(str(r["models"]).split(","))
        when = str(r["created_at"] or "")[:16].replace("T", " ")
        out.append((f"{when} · {r['tasks']} · {r['cases']} image(s) · {n_models} model(s)", r["run_id"]))
    return out


class DiagnoseHandlers:
    def __init__(self, shared: SharedExplorer):
        self.shared = shared
        self._cancels = CancelTokens()  # the page's state keeps a token, never the event itself

    def shown(
        self, task: str, diagnoser: Optional[str], case_id: Optional[str] = None, run: Optional[str] = None, state=None
    ):
        """On entering the tab (or changing the task): the task's sample cases, the diagnosers available
        here, the stored runs; the user's picks are kept while they are still on offer."""
        ex = self.shared.get()
        try:
            cases = [(c.case_id.split(":", 2)[-1], c.case_id) for c in ex.example_cases(task)]
            options = ex.diagnoser_options()
            runs = _runs_choices(ex.description_runs(_own_runs(state)), self.shared.settings.public)
        except Exception as exc:
            warn(user_message(exc))
            return gr.skip(), gr.skip(), gr.skip()
        choices = [("the image open in Compare", COMPARE_CASE)] + cases

        def keep(value, offered, default):
            return value if value in [v for _, v in offered] else default

        return (
            gr.update(choices=choices, value=keep(case_id, choices, cases[0][1] if cases else COMPARE_CASE)),
            gr.update(choices=options, value=keep(diagnoser, options, options[0][1])),
            gr.update(choices=runs, value=keep(run, runs, ALL_RUNS)),
        )

    def _case(self, ex, task: str, case_id: Optional[str], compare_case):
        if case_id in (None, "", COMPARE_CASE):
            if compare_case is None:
                raise ValueError("No image is open in Compare: upload or pick one there, or choose a sample case.")
            if compare_case.task != task:
                return ex.case_from_upload(
                    compare_case.image, task, compare_case.label, name=compare_case.meta.get("name")
                )
            return compare_case
        for case in ex.example_cases(task):
            if case.case_id == case_id:
                return case
        raise ValueError(f"No sample case {case_id!r} for this task: pick one from the list.")

    def run_case(self, task, case_id, models, diagnoser, templates, compare_case):
        ex = self.shared.get()
        try:
            case = self._case(ex, task, case_id, compare_case)
            if not models:
                raise ValueError("Choose at least one model.")
            if not templates:
                raise ValueError("Choose at least one diagnosis template.")
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield gr.skip(), render.notice(msg), gr.skip()
            return
        yield bar("dx-case-progress", 0, 0, "descriptions", "running"), render.notice(""), gr.skip()
        job = Background(
            lambda emit: ex.describe_case(
                case, list(models), diagnoser or "demo", list(templates), progress=lambda s, d, t: emit((s, d, t))
            )
        )
        last = ("", 0, 0)
        for items in job.updates():
            if items:
                last = items[-1]
                yield bar("dx-case-progress", last[1], last[2], last[0]), gr.skip(), gr.skip()
        try:
            result = job.result()
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield bar("dx-case-progress", last[1], last[2], msg, "failed"), render.notice(msg), gr.skip()
            return
        s = result.summary
        text = (
            f"{len(result.descriptions)} descriptions, {s.planned} diagnoses ({s.cached} from the store, "
            f"{s.unparsed} unparsed, {s.errors} failed)."
        )
        notes = render.notice(text, "error" if s.errors else "ok") + "".join(render.notice(n) for n in s.notices)
        if result.random_weights:
            notes += render.notice(NOISE_NOTE, "info")
        yield (
            bar("dx-case-progress", s.planned, s.planned, "diagnosed", "done"),
            notes,
            case_cards(result, ex.models_in_pairs()),
        )

    def run_sweep(self, tasks, per_class, with_closed, run_pick, models, diagnoser, templates, state, fresh: bool):
        ex = self.shared.get()
        try:
            if not templates:
                raise ValueError("Choose at least one diagnosis template.")
            if fresh and (not models or not tasks):
                raise ValueError("Choose at least one model and one task.")
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield gr.skip(), render.notice(msg), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        cancel = threading.Event()
        own = _own_runs(state)
        state = {"cancel_token": self._cancels.token(cancel), "runs": own}
        yield (
            bar("dx-sweep-progress", 0, 0, "planning", "running"),
            render.notice(""),
            gr.skip(),
            gr.skip(),
            gr.update(value=None, interactive=False),
            gr.skip(),
            state,
        )

        def job(emit):
            progress = lambda s, d, t: emit((s, d, t))  # noqa: E731
            if fresh:
                return ex.describe_sweep(
                    list(models),
                    list(tasks),
                    int(per_class),
                    bool(with_closed),
                    diagnoser or "demo",
                    list(templates),
                    progress=progress,
                    cancel=cancel,
                )
            return ex.diagnose_run(
                None if run_pick in (None, ALL_RUNS) else run_pick,
                diagnoser or "demo",
                list(templates),
                progress=progress,
                cancel=cancel,
                own_runs=own,
            )

        bg = Background(job)
        last = ("", 0, 0)
        for items in bg.updates():
            if items:
                last = items[-1]
                yield (
                    bar("dx-sweep-progress", last[1], last[2], last[0]),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                )
        try:
            result = bg.result()
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            ended = "cancelled" if cancel.is_set() else "failed"
            yield (
                bar("dx-sweep-progress", last[1], last[2], msg, ended),
                render.notice(msg),
                gr.skip(),
                gr.skip(),
                gr.skip(),
                gr.update(choices=_runs_choices(ex.description_runs(own), self.shared.settings.public)),
                {"cancel_token": None, "runs": own},
            )
            return
        s = result.summary
        text = (
            f"{s.planned} diagnoses by {result.diagnoser} ({s.cached} from the store, {s.unparsed} unparsed, "
            f"{s.errors} failed) · " + (f"run {result.run_id}" if result.run_id else "every stored description")
        )
        notes = render.notice(text, "error" if s.errors else "ok")
        notes += "".join(render.notice(n, "info") for n in result.notices)
        if result.random_weights:
            notes += render.notice(NOISE_NOTE, "info")
        path = Path(tempfile.mkdtemp(prefix="explorer-describe-")) / "describe_metrics.csv"
        result.metrics.to_csv(path, index=False)
        if fresh and result.run_id and result.run_id not in own:
            own = own + [result.run_id]
        runs = _runs_choices(ex.description_runs(own), self.shared.settings.public)
        yield (
            bar("dx-sweep-progress", s.planned, s.planned, "diagnosed", "done"),
            notes,
            metrics_table(result.metrics),
            result.recovered.round(3),
            gr.update(value=str(path), interactive=True),
            gr.update(choices=runs, value=result.run_id or ALL_RUNS),
            {"cancel_token": None, "runs": own},
        )

    def new_sweep(self, tasks, per_class, with_closed, run_pick, models, diagnoser, templates, state):
        yield from self.run_sweep(tasks, per_class, with_closed, run_pick, models, diagnoser, templates, state, True)

    def stored(self, tasks, per_class, with_closed, run_pick, models, diagnoser, templates, state):
        yield from self.run_sweep(tasks, per_class, with_closed, run_pick, models, diagnoser, templates, state, False)

    def cancel(self, state):
        event = self._cancels.event((state or {}).get("cancel_token"))
        if event is not None and not event.is_set():
            event.set()
            return render.notice("Cancelling after the current batch; finished answers and diagnoses are kept.", "info")
        return render.notice("Nothing is running.", "info")


def build(shared: SharedExplorer, catalog, preset, compare_case: gr.State) -> dict[str, Any]:
    from explorer.probes.describe import recovered_summary, template_names

    h = DiagnoseHandlers(shared)
    template_list = template_names(catalog)
    gr.Markdown(
        "Each VLM **describes** the image; a text-only model then answers Yes/No from the description "
        "alone, with the study's three templates. Does describing first recover signal that the "
        "closed-form answers miss?"
    )
    with gr.Row(equal_height=True):
        models = gr.CheckboxGroup(
            [(names.model_label(catalog.model(a)), a) for a in preset.models],
            value=list(preset.models),
            label="Vision-language models",
            elem_id="dx-models",
            scale=4,
        )
        templates = gr.CheckboxGroup(
            template_list, value=template_list, label="Diagnosis templates", elem_id="dx-templates", scale=2
        )
    diagnoser = gr.Radio(
        [("offline text model with random weights: its diagnoses are noise", "demo")],
        value="demo",
        label="Diagnoser (text only)",
        elem_id="dx-diagnoser",
    )
    gr.Markdown("#### One case")
    with gr.Row(equal_height=True):
        task = gr.Dropdown(
            [(catalog.task(k).title, k) for k in preset.tasks],
            value=preset.tasks[0],
            label="Task",
            elem_id="dx-task",
            scale=2,
        )
        # No value until the tab is entered: then the first sample case, unless the user picked another.
        # allow_custom_value: a value gone stale while the choices change is checked (and explained) by
        # the handler instead of failing Gradio's own choice check with a raw message.
        case = gr.Dropdown(
            [("the image open in Compare", COMPARE_CASE)],
            value=None,
            label="Case",
            elem_id="dx-case",
            scale=4,
            allow_custom_value=True,
        )
        run_case = gr.Button("Describe & diagnose", variant="primary", elem_id="dx-run-case", scale=1)
    case_progress = gr.HTML(
        bar("dx-case-progress", 0, 0, "not started", "idle"), elem_id="dx-case-progress-box", js_on_load=None
    )
    case_status = gr.HTML("", elem_id="dx-case-status", js_on_load=None)
    cards = gr.HTML(case_cards(None, []), elem_id="dx-case-cards", js_on_load=None, apply_default_css=False)
    gr.Markdown("#### A sweep: metrics per VLM × description prompt × template")
    with gr.Row(equal_height=True):
        tasks = gr.CheckboxGroup(
            [(catalog.task(k).title, k) for k in preset.tasks],
            value=[preset.tasks[0]],
            label="Tasks",
            elem_id="dx-tasks",
            scale=4,
        )
        per_class = gr.Slider(
            1,
            max(20, preset.cases.per_class),
            value=min(2, preset.cases.per_class),
            step=1,
            label="Images per class",
            elem_id="dx-per-class",
            scale=2,
        )
        with_closed = gr.Checkbox(
            True, label="With the closed-form prompts (for signal recovered)", elem_id="dx-closed", scale=2
        )
    with gr.Row(equal_height=True):
        new = gr.Button("Run describe sweep, then diagnose", variant="primary", elem_id="dx-run-sweep", scale=2)
        cancel = gr.Button("Cancel", variant="stop", elem_id="dx-cancel", scale=1)
        run_pick = gr.Dropdown(
            [("every stored description", ALL_RUNS)],
            value=ALL_RUNS,
            label="…or stored descriptions of",
            elem_id="dx-run-pick",
            scale=4,
            allow_custom_value=True,
        )
        stored = gr.Button("Diagnose stored", elem_id="dx-diagnose-run", scale=1)
    sweep_progress = gr.HTML(
        bar("dx-sweep-progress", 0, 0, "not started", "idle"), elem_id="dx-sweep-progress-box", js_on_load=None
    )
    sweep_status = gr.HTML("", elem_id="dx-sweep-status", js_on_load=None)
    table = gr.Dataframe(
        metrics_table(None),
        label="Describe → diagnose metrics (recovered = F1_all − the model's closed-form F1_all on the same images)",
        elem_id="dx-metrics",
        interactive=False,
        max_height=320,
        wrap=False,
    )
    gr.Markdown(names.metric_legend(METRICS), elem_id="dx-metric-legend")
    summary = gr.Dataframe(
        recovered_summary(pd.DataFrame()),
        label="Per model and task (mean over description prompts and templates)",
        elem_id="dx-recovered",
        interactive=False,
        max_height=200,
        wrap=False,
    )
    download = gr.DownloadButton("Metrics CSV", value=None, interactive=False, elem_id="dx-download", size="sm")
    state = gr.State(None)

    run_case.click(
        gpu(600)(h.run_case),
        [task, case, models, diagnoser, templates, compare_case],
        [case_progress, case_status, cards],
        api_name="describe_diagnose",
        concurrency_id="gpu",
        concurrency_limit=shared.settings.gpu_concurrency,
    )
    inputs = [tasks, per_class, with_closed, run_pick, models, diagnoser, templates, state]
    outputs = [sweep_progress, sweep_status, table, summary, download, run_pick, state]
    new.click(
        gpu(600)(h.new_sweep),
        inputs,
        outputs,
        api_name="describe_sweep",
        concurrency_id="gpu",
        concurrency_limit=shared.settings.gpu_concurrency,
    )
    stored.click(
        gpu(600)(h.stored),
        inputs,
        outputs,
        api_name="diagnose_stored",
        concurrency_id="gpu",
        concurrency_limit=shared.settings.gpu_concurrency,
    )
    cancel.click(h.cancel, [state], [sweep_status], queue=False, api_visibility="private")
    task.input(h.shown, [task, diagnoser, case, run_pick, state], [case, diagnoser, run_pick], api_visibility="private")
    return {
        "shown": h.shown,
        "inputs": [task, diagnoser, case, run_pick, state],
        "outputs": [case, diagnoser, run_pick],
    }
