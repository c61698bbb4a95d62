"""Variant grid tab: prompt wordings x models for the current image, coloured by verdict.

Rows are grouped by wording family: the study's own wordings, the visitor's edited ones, and the
variants "Generate variants" makes with the families of presets/families.yaml (explorer/prompts/perturb.py).
"Find the smallest flip" searches those families for the smallest edit of one wording that changes
one model's answer (explorer/probes/flip_search.py) and shows the two wordings with the words that changed.
Wordings wrap and show in full on hover; on a narrow screen the table scrolls sideways with the
wording column fixed.
"""

from __future__ import annotations

from html import escape
from typing import Any, Optional

import gradio as gr

from explorer.app import history, names, render
from explorer.app.compare import case_caption, case_name
from explorer.app.context import Background, SharedExplorer, gpu, user_message, warn
from explorer.probes.flip_search import NOT_EDITS, find_flip
from explorer.prompts.perturb import STUDY_GROUP, family_group, generate, load_families, task_words
from explorer.prompts.variants import CLOSED_FAMILIES

NEW_ROW = "__new__"
# Clicking a cell sends its "prompt_id|alias" key to Python; the rest of the table is plain HTML.
CELL_CLICK_JS = """
element.addEventListener('click', (e) => {
  const cell = e.target.closest('[data-cell]');
  if (cell) trigger('click', {cell: cell.dataset.cell});
});
"""
# Scoped to the grid component: wordings wrap; the wording column stays put while the table scrolls sideways.
GRID_CSS = """
.vx-fgrid-scroll { overflow-x: auto; max-width: 100%; -webkit-overflow-scrolling: touch; }
table.vx-grid { min-width: max-content; }
table.vx-grid th.vx-wording { position: sticky; left: 0; z-index: 1; background: #ffffff; font-weight: 400;
  vertical-align: top; min-width: 200px; max-width: 340px; box-shadow: 2px 0 0 #e2e8f0; }
.vx-wording-name { font-weight: 600; font-size: 12px; }
.vx-wording-text { color: #475569; font-size: 12px; white-space: pre-wrap; overflow-wrap: anywhere; }
tr.vx-family-head th { position: sticky; left: 0; background: #f1f5f9; font-size: 12px; color: #334155;
  padding: 4px 6px; border-radius: 4px; }
td.vx-cell { min-width: 72px; text-align: center; }
@media (max-width: 640px) { table.vx-grid th.vx-wording { min-width: 150px; max-width: 190px; } }
"""
FLIP_CSS = """
.vx-flip-pair { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.vx-flip-side { border: 1px solid #e2e8f0; border-radius: 8px; padding: 6px 8px; background: #fff; }
.vx-flip-side pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12px; margin: 4px 0; }
.vx-flip-wording { white-space: pre-wrap; overflow-wrap: anywhere; }
ins.vx-ins { background: #bbf7d0; text-decoration: none; border-radius: 3px; padding: 0 2px; }
del.vx-del { background: #fecaca; color: #7f1d1d; border-radius: 3px; padding: 0 2px; }
@media (max-width: 640px) { .vx-flip-pair { grid-template-columns: 1fr; } }
"""
# What a visitor may ask for at once (a public Space shares its models).
MAX_GENERATED = 60
MAX_FLIP_REQUESTS = 80
DEFAULT_FAMILIES = ("casing", "typos", "answer_format", "option_labels", "polarity_flip", "framing")
DEFAULT_FROM = ("evidence", "mc_pos_first")
STUDY_IDS = tuple(f + ow for ow in ("", "_ow") for f in CLOSED_FAMILIES)


def empty_state() -> dict[str, Any]:
    return {"case": None, "variants": [], "views": {}, "models": [], "labels": {}}


def row_name(variant, state) -> str:
    """A row's name as a person reads it: the study's wording names, "your wording N", or the family's
    title and the edit ("Typos: 2 typos")."""
    label = state.get("labels", {}).get(variant.prompt_id)
    if label:
        return label
    customs = {v.prompt_id: i + 1 for i, v in enumerate(v for v in state["variants"] if v.custom)}
    return names.prompt_name(variant.prompt_id, customs)


def group_title(group: str, families) -> str:
    if group == STUDY_GROUP:
        return "The study's wordings"
    if group == "custom":
        return "Your wordings"
    return families.family(group).title if group in families.families else group


def grouped(variants) -> list[tuple[str, list]]:
    """Rows by family group, in the order the groups first appear (the study's first)."""
    groups: dict[str, list] = {}
    for v in variants:
        groups.setdefault(family_group(v.family), []).append(v)
    return list(groups.items())


def grid_table(state, specs, running=frozenset()) -> str:
    """Wordings (rows, grouped by family) x models (columns); each cell coloured by verdict."""
    variants, views = state["variants"], state["views"]
    if not variants or not specs:
        return '<div class="vx-empty">Pick an image in Compare, then press Run grid or Generate variants.</div>'
    families = load_families()
    head = "".join(
        f'<th class="vx-col" title="{escape(getattr(m, "title", m.alias))}">{escape(names.model_name(m, m.alias))}'
        f"<br><small>{escape(m.role)}</small></th>"
        for m in specs
    )
    body = []
    for group, rows in grouped(variants):
        body.append(
            f'<tr class="vx-family-head" data-family="{escape(group)}"><th colspan="{len(specs) + 1}">'
            f"{escape(group_title(group, families))} <small>({len(rows)})</small></th></tr>"
        )
        for v in rows:
            cells = []
            for m in specs:
                view = views.get((v.prompt_id, m.alias))
                key = escape(f"{v.prompt_id}|{m.alias}")
                if view is None:
                    label = "running&hellip;" if (v.prompt_id, m.alias) in running else "&middot;"
                    cells.append(f'<td class="vx-cell vx-v-pending" data-cell="{key}">{label}</td>')
                    continue
                verdict = "error" if view.error else (view.verdict or "unclear")
                mark = {True: " &#10003;", False: " &#10007;"}.get(view.correct, "")
                cells.append(
                    f'<td class="vx-cell vx-v-{escape(verdict)}" data-cell="{key}" data-verdict="{escape(verdict)}" '
                    f'title="{escape(names.VERDICT_HELP.get(verdict, verdict))} (click for the full answer)">'
                    f"{escape(verdict)}{mark}</td>"
                )
            body.append(
                f'<tr data-family="{escape(group)}"><th class="vx-wording" title="{escape(v.text)}" data-prompt="{escape(v.prompt_id)}">'
                f'<div class="vx-wording-name">{escape(row_name(v, state))}</div>'
                f'<div class="vx-wording-text">{escape(v.text.strip())}</div></th>{"".join(cells)}</tr>'
            )
    return (
        f'<div class="vx-fgrid-scroll"><table class="vx-grid" id="variant-grid"><thead><tr>'
        f'<th class="vx-wording">wording</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    )


def flip_html(result, model_name: str) -> str:
    """The flip search's outcome: the two wordings side by side with the words that changed, and both
    answers; or why there is none."""
    if not result.found:
        return f'<div id="flip-result" class="vx-notice vx-notice-info" role="status" data-found="false">{escape(result.message())}</div>'
    before, after = result.base_answer, result.flip_answer
    diff = history.word_diff(result.base.text, result.flip.item.variant.text)
    family = load_families().family(result.flip.item.family).title

    def side(title, text_html, view):
        return (
            f'<div class="vx-flip-side"><div><b>{escape(title)}</b> {render.verdict_badge(view.verdict)}</div>'
            f'<div class="vx-flip-wording">{text_html}</div>'
            f'<pre class="vx-answer">{escape((view.answer or "(empty)").strip()[:600])}</pre></div>'
        )

    return (
        f'<div id="flip-result" data-found="true"><div class="vx-flip-title">{escape(model_name)}: '
        f'{escape(result.message())}</div><div class="vx-flip-pair">'
        + side("Starting wording", escape(result.base.text), before)
        + side(f"{family}: {result.flip.item.label}", diff, after)
        + f'</div><div class="vx-diff" id="flip-diff"><span class="vx-diff-label">What changed:</span> {diff}</div></div>'
    )


class GridHandlers:
    def __init__(self, shared: SharedExplorer):
        self.shared = shared

    def _render(self, ex, state, running=frozenset()):
        specs = [ex.catalog.model(a) for a in state["models"]]
        table = grid_table(state, specs, set(running))
        views = list(state["views"].values())
        counts = ex.flip_counts(views) if views else {}
        named = {names.model_name(ex.catalog.model(a), a): n for a, n in counts.items()}
        return table, render.flips(named, len(state["variants"]))

    def shown(self, case):
        return case_caption(case)

    def _refuse(self, message: str):
        warn(message)
        return gr.skip(), gr.skip(), render.notice(message), gr.skip(), gr.skip()

    def run_all(self, case, models, style, state):
        """Every closed-form variant of the task on the current image; cells fill in as they finish."""
        ex = self.shared.get()
        if case is None:
            yield self._refuse("Pick an image in the Compare tab first.")
            return
        if not models:
            yield self._refuse("Choose at least one model.")
            return
        variants = [v for v in ex.variants(case.task) if v.kind == "closed"]
        labels = {}
        if self._same_image(state, case):
            # Keep the user's edited rows and the generated ones for this image.
            variants += [v for v in state["variants"] if v.custom or v.parent]
            labels = dict(state.get("labels", {}))
        previous = state
        state = {"case": case, "variants": variants, "views": {}, "models": list(models), "labels": labels}
        yield from self._fill(ex, state, variants, style, previous=previous)

    @staticmethod
    def _same_image(state, case) -> bool:
        return (
            state["case"] is not None
            and state["case"].image_hash == case.image_hash
            and state["case"].task == case.task
        )

    def generate_variants(self, case, models, style, families, start_from, count, seed, state):
        """Make variants of the chosen wordings with the chosen families and run them on this image."""
        ex = self.shared.get()
        try:
            if case is None:
                raise ValueError("Pick an image in the Compare tab first.")
            if not models:
                raise ValueError("Choose at least one model.")
            if not families:
                raise ValueError("Choose at least one wording family.")
            if not start_from:
                raise ValueError("Choose at least one wording to start from.")
            count, seed = self._whole(count, "Variants per family", 0, 20), self._whole(seed, "Seed", 0, 2**31 - 1)
            catalog = load_families()
            by_id = {v.prompt_id: v for v in ex.variants(case.task) if v.kind == "closed"}
            parents = [by_id[p] for p in start_from if p in by_id]
            made = generate(
                parents,
                families,
                task_words(ex.catalog, case.task, catalog),
                seed=seed,
                count=count,
                family_catalog=catalog,
                catalog=ex.catalog,
                selection=ex.preset.prompts,
            )
            if len(made) > MAX_GENERATED:
                raise ValueError(
                    f"That makes {len(made)} wordings; at most {MAX_GENERATED} at once: choose fewer "
                    "families or wordings, or a smaller count."
                )
            if not made:
                raise ValueError(
                    "These families make no new wording of the chosen ones (e.g. option families "
                    "need a multiple-choice wording)."
                )
            ex.policy.check_sweep((len(parents) + len(made)) * len(models))  # a public demo's cap per visitor
        except Exception as exc:
            yield self._refuse(user_message(exc))
            return
        keep = [v for v in state["variants"] if v.custom] if self._same_image(state, case) else []
        variants = parents + [m.variant for m in made] + keep
        labels = {
            m.variant.prompt_id: f"{catalog.family(m.family).title}: {m.label}"
            for m in made
            if family_group(m.family) != STUDY_GROUP
        }
        previous = state
        state = {"case": case, "variants": variants, "views": {}, "models": list(models), "labels": labels}
        yield from self._fill(ex, state, variants, style, previous=previous)

    @staticmethod
    def _whole(value, what: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValueError(f"{what} must be a whole number.")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"{what} must be between {low} and {high}.")
        return number

    def flip_search(self, case, model, start_from, families, budget, seed, style):
        """The smallest edit of one wording that changes one model's answer on this image."""
        ex = self.shared.get()
        try:
            if case is None:
                raise ValueError("Pick an image in the Compare tab first.")
            if not model:
                raise ValueError("Choose the model whose answer to flip.")
            budget = self._whole(budget, "Request budget", 2, MAX_FLIP_REQUESTS)
            seed = self._whole(seed, "Seed", 0, 2**31 - 1)
            base = ex.variant(case.task, start_from or DEFAULT_FROM[0])
            catalog = load_families()
            edits = [f for f in (families or ()) if catalog.family(f).generator not in NOT_EDITS] or None
            result = find_flip(
                lambda vs: ex.grid(case, vs, [model], style),
                base,
                task_words(ex.catalog, case.task, catalog),
                model,
                edits,
                max_requests=budget,
                seed=seed,
                family_catalog=catalog,
            )
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            return render.notice(msg)
        return flip_html(result, names.model_name(ex.catalog.model(model), model))

    def _fill(self, ex, state, variants, style, select: str = NEW_ROW, previous=None):
        """Run `variants` into `state`, cells filling in as they land. When the engine refuses or fails
        before any cell landed, the grid goes back to `previous` (nothing on screen is lost)."""
        running = {(v.prompt_id, m) for v in variants for m in state["models"]}
        table, flips = self._render(ex, state, running)
        yield (
            table,
            flips,
            render.notice("Running…", "info"),
            state,
            gr.update(choices=self._row_choices(state), value=select),
        )
        job = Background(lambda emit: ex.grid(state["case"], variants, state["models"], style, on_cell=emit))
        landed = 0
        for items in job.updates():
            for view in items:
                state["views"][(view.prompt_id, view.model)] = view
                running.discard((view.prompt_id, view.model))
            landed += len(items)
            if items:
                table, flips = self._render(ex, state, running)
                yield table, flips, gr.skip(), gr.skip(), gr.skip()
        try:
            job.result()
            note = render.notice(
                f"{len(state['views'])} answers for {len(state['variants'])} wordings on {case_name(state['case'])}.",
                "ok",
            )
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            note = render.notice(msg)
            if not landed and previous is not None:
                table, flips = self._render(ex, previous, set())
                yield (table, flips, note, previous, gr.update(choices=self._row_choices(previous), value=NEW_ROW))
                return
        table, flips = self._render(ex, state, set())
        yield table, flips, note, state, gr.skip()

    @staticmethod
    def _row_choices(state) -> list[tuple[str, str]]:
        return [("+ add a new row", NEW_ROW)] + [
            (f"{row_name(v, state)} \u2014 {' '.join(v.text.split())[:60]}", v.prompt_id) for v in state["variants"]
        ]

    def pick_row(self, row_id: str, state):
        for v in state["variants"]:
            if v.prompt_id == row_id:
                return v.text
        return ""

    def edit_row(self, row_id: Optional[str], text: str, style, state):
        """Re-run one row: a changed wording of an existing row, or a new row."""
        ex = self.shared.get()
        try:
            case = state["case"]
            if case is None:
                raise ValueError("Run the grid first, then edit a row.")
            preset_ids = {v.prompt_id for v in ex.variants(case.task)}
            based_on = row_id if row_id in preset_ids else None
            variant = ex.custom_variant(case.task, text, based_on_id=based_on)
            existing = [v.prompt_id for v in state["variants"]]
            if variant.prompt_id in existing and variant.prompt_id != row_id:
                shown = row_name(state["variants"][existing.index(variant.prompt_id)], state)
                raise ValueError(f"That wording is already the row {shown!r}.")
        except Exception as exc:
            yield self._refuse(user_message(exc))
            return
        previous = state
        state = dict(
            state, variants=list(state["variants"]), views=dict(state["views"]), labels=dict(state.get("labels", {}))
        )
        if row_id in existing and row_id != NEW_ROW:
            state["variants"][existing.index(row_id)] = variant
            state["views"] = {k: v for k, v in state["views"].items() if k[0] != row_id}
            state["labels"].pop(row_id, None)
        else:
            state["variants"].append(variant)
        yield from self._fill(ex, state, [variant], style, select=variant.prompt_id, previous=previous)

    def cell(self, state, evt: gr.EventData):
        key = getattr(evt, "cell", None) or ""
        prompt_id, _, alias = key.partition("|")
        view = state["views"].get((prompt_id, alias))
        if view is None:
            return render.notice("No answer in this cell yet.", "info")
        variant = next((v for v in state["variants"] if v.prompt_id == prompt_id), None)
        name = row_name(variant, state) if variant is not None else prompt_id
        return (
            f'<div class="vx-cards-heading">{escape(name)}: {escape(render.shorten(view.prompt_text))}</div>'
            + render.answer_card(alias, view.title, view.role, view)
        )


def build(shared: SharedExplorer, catalog, preset, case_state: gr.State, style: gr.Radio) -> dict[str, Any]:
    h = GridHandlers(shared)
    state = gr.State(empty_state())
    families = load_families()
    family_choices = [
        (families.family(n).title, n) for n in families.names() if families.family(n).generator != "paraphrase"
    ]  # paraphrases need a text model
    wording_choices = [(names.prompt_name(p), p) for p in STUDY_IDS]
    model_choices = [(names.model_label(catalog.model(a)), a) for a in preset.models]
    caption = gr.HTML(case_caption(None), elem_id="grid-caption", js_on_load=None)
    with gr.Row():
        models = gr.CheckboxGroup(
            model_choices, value=list(preset.models), label="Models (columns)", elem_id="grid-models", scale=4
        )
        run = gr.Button("Run grid", variant="primary", elem_id="run-grid", scale=1)
    with gr.Accordion("Generate variants: new wordings by family", open=True, elem_id="grid-generate"):
        with gr.Row():
            fams = gr.CheckboxGroup(
                family_choices,
                value=[f for f in DEFAULT_FAMILIES if f in families.families],
                label="Wording families",
                elem_id="gen-families",
                scale=4,
            )
            start = gr.Dropdown(
                wording_choices,
                value=list(DEFAULT_FROM),
                multiselect=True,
                label="Starting from",
                elem_id="gen-from",
                scale=2,
            )
        with gr.Row():
            count = gr.Number(
                2,
                precision=0,
                minimum=0,
                maximum=20,
                label="Variants per family (0: all)",
                elem_id="gen-count",
                min_width=120,
            )
            seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="gen-seed", min_width=100)
            make = gr.Button("Generate variants", variant="primary", elem_id="generate-variants")
        with gr.Row():
            flip_model = gr.Dropdown(
                model_choices,
                value=preset.models[0] if preset.models else None,
                label="Flip whose answer",
                elem_id="flip-model",
                scale=2,
            )
            flip_from = gr.Dropdown(
                wording_choices, value=DEFAULT_FROM[0], label="Wording to edit", elem_id="flip-from", scale=2
            )
            budget = gr.Number(
                24,
                precision=0,
                minimum=2,
                maximum=MAX_FLIP_REQUESTS,
                label="At most this many requests",
                elem_id="flip-budget",
                min_width=120,
            )
            find = gr.Button("Find the smallest flip", elem_id="find-flip")
        flip_out = gr.HTML("", elem_id="flip-out", css_template=FLIP_CSS, js_on_load=None)
    status = gr.HTML("", elem_id="grid-status", js_on_load=None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=280):
            table = gr.HTML(
                grid_table(empty_state(), []),
                elem_id="grid-wrap",
                js_on_load=CELL_CLICK_JS,
                css_template=GRID_CSS,
                apply_default_css=False,
            )
            flips = gr.HTML("", elem_id="grid-flips", js_on_load=None)
        with gr.Column(scale=1, min_width=260):
            detail = gr.HTML(
                render.notice("Click a cell to read the full answer.", "info"), elem_id="grid-detail", js_on_load=None
            )
            gr.Markdown("**Edit or add a row** — only that row runs again.")
            row = gr.Dropdown([("+ add a new row", NEW_ROW)], value=NEW_ROW, label="Row", elem_id="grid-row")
            wording = gr.Textbox(label="Wording", lines=2, max_lines=8, elem_id="grid-wording")
            rerun = gr.Button("Run this row", elem_id="run-row")

    outputs = [table, flips, status, state, row]

    def click_a_cell():  # the open answer may belong to a row that just changed
        return render.notice("Click a cell to read the full answer.", "info")

    for button, handler, inputs, name in (
        (run, h.run_all, [case_state, models, style, state], "grid"),
        (rerun, h.edit_row, [row, wording, style, state], "grid_row"),
        (make, h.generate_variants, [case_state, models, style, fams, start, count, seed, state], "grid_generate"),
    ):
        button.click(click_a_cell, None, [detail], api_visibility="private")
        button.click(gpu()(handler), inputs, outputs, api_name=name, concurrency_id="gpu")
    find.click(
        gpu()(h.flip_search),
        [case_state, flip_model, flip_from, fams, budget, seed, style],
        [flip_out],
        api_name="grid_flip",
        concurrency_id="gpu",
    )
    row.input(h.pick_row, [row, state], [wording], api_visibility="private")
    table.click(h.cell, [state], [detail], api_visibility="private")
    return {"caption": caption, "shown": h.shown}
