"""Variant grid tab: every prompt variant x every model for the current image, coloured by verdict."""
from __future__ import annotations

from typing import Any, Optional

import gradio as gr

from . import render
from .compare import case_caption
from .context import Background, SharedExplorer, gpu, user_message, warn

NEW_ROW = "__new__"
# Clicking a cell sends its "prompt_id|alias" key to Python; the rest of the table is plain HTML.
CELL_CLICK_JS = """
element.addEventListener('click', (e) => {
  const cell = e.target.closest('[data-cell]');
  if (cell) trigger('click', {cell: cell.dataset.cell});
});
"""


def empty_state() -> dict[str, Any]:
    return {"case": None, "variants": [], "views": {}, "models": []}


def _row_choices(variants) -> list[tuple[str, str]]:
    return [("+ add a new row", NEW_ROW)] + [(f"{v.prompt_id}: {v.text.splitlines()[0][:60]}", v.prompt_id) for v in variants]


class GridHandlers:
    def __init__(self, shared: SharedExplorer):
        self.shared = shared

    def _render(self, ex, state, running=frozenset()):
        specs = [ex.catalog.model(a) for a in state["models"]]
        table = render.grid(state["variants"], specs, state["views"], set(running))
        views = list(state["views"].values())
        counts = ex.flip_counts(views) if views else {}
        return table, render.flips(counts, len(state["variants"]))

    def shown(self, case):
        return case_caption(case)

    def run_all(self, case, models, style, state):
        """Every closed-form variant of the task on the current image; cells fill in as they finish."""
        ex = self.shared.get()
        if case is None:
            msg = "Pick an image in the Compare tab first."
            warn(msg)
            yield gr.skip(), gr.skip(), render.notice(msg), gr.skip(), gr.skip()
            return
        if not models:
            warn("Choose at least one model.")
            yield gr.skip(), gr.skip(), render.notice("Choose at least one model."), gr.skip(), gr.skip()
            return
        variants = [v for v in ex.variants(case.task) if v.kind == "closed"]
        if state["case"] is not None and state["case"].image_hash == case.image_hash and state["case"].task == case.task:
            # Keep the user's edited rows for this image.
            variants += [v for v in state["variants"] if v.custom]
        previous = state
        state = {"case": case, "variants": variants, "views": {}, "models": list(models)}
        yield from self._fill(ex, state, variants, style, previous=previous)

    def _fill(self, ex, state, variants, style, select: str = NEW_ROW, previous=None):
        """Run `variants` into `state`, cells filling in as they land. When the engine refuses or fails
        before any cell landed, the grid goes back to `previous` (nothing on screen is lost)."""
        running = {(v.prompt_id, m) for v in variants for m in state["models"]}
        table, flips = self._render(ex, state, running)
        yield (table, flips, render.notice("Running…", "info"), state,
               gr.update(choices=_row_choices(state["variants"]), value=select))
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
            note = render.notice(f"{len(state['views'])} cells for {state['case'].source}.", "ok")
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            note = render.notice(msg)
            if not landed and previous is not None:
                table, flips = self._render(ex, previous, set())
                yield (table, flips, note, previous,
                       gr.update(choices=_row_choices(previous["variants"]), value=NEW_ROW))
                return
        table, flips = self._render(ex, state, set())
        yield table, flips, note, state, gr.skip()

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
                raise ValueError(f"That wording is already the row {variant.prompt_id}.")
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield gr.skip(), gr.skip(), render.notice(msg), gr.skip(), gr.skip()
            return
        previous, state = state, dict(state, variants=list(state["variants"]), views=dict(state["views"]))
        if row_id in existing and row_id != NEW_ROW:
            state["variants"][existing.index(row_id)] = variant
            state["views"] = {k: v for k, v in state["views"].items() if k[0] != row_id}
        else:
            state["variants"].append(variant)
        yield from self._fill(ex, state, [variant], style, select=variant.prompt_id, previous=previous)

    def cell(self, state, evt: gr.EventData):
        key = getattr(evt, "cell", None) or ""
        prompt_id, _, alias = key.partition("|")
        view = state["views"].get((prompt_id, alias))
        if view is None:
            return render.notice("No answer in this cell yet.", "info")
        title = f"{view.title} · {prompt_id}"
        return (f'<div class="vx-cards-heading">{render.escape(render.shorten(view.prompt_text))}</div>'
                + render.answer_card(alias, title, view.role, view))


def build(shared: SharedExplorer, catalog, preset, case_state: gr.State, style: gr.Radio) -> dict[str, Any]:
    h = GridHandlers(shared)
    state = gr.State(empty_state())
    caption = gr.HTML(case_caption(None), elem_id="grid-caption", js_on_load=None)
    with gr.Row():
        models = gr.CheckboxGroup([(f"{a} ({catalog.model(a).role})", a) for a in preset.models], value=list(preset.models),
                                  label="Models (columns)", elem_id="grid-models", scale=4)
        run = gr.Button("Run grid", variant="primary", elem_id="run-grid", scale=1)
    status = gr.HTML("", elem_id="grid-status", js_on_load=None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            table = gr.HTML(render.grid([], [], {}), elem_id="grid-wrap", js_on_load=CELL_CLICK_JS,
                            apply_default_css=False)
            flips = gr.HTML("", elem_id="grid-flips", js_on_load=None)
        with gr.Column(scale=2, min_width=300):
            detail = gr.HTML(render.notice("Click a cell to read the full answer.", "info"),
                             elem_id="grid-detail", js_on_load=None)
            gr.Markdown("**Edit or add a row** — only that row runs again.")
            row = gr.Dropdown(_row_choices([]), value=NEW_ROW, label="Row", elem_id="grid-row")
            wording = gr.Textbox(label="Wording", lines=2, max_lines=8, elem_id="grid-wording")
            rerun = gr.Button("Run this row", elem_id="run-row")

    outputs = [table, flips, status, state, row]
    def click_a_cell():  # the open answer may belong to a row that just changed
        return render.notice("Click a cell to read the full answer.", "info")

    for button, handler, inputs, name in ((run, h.run_all, [case_state, models, style, state], "grid"),
                                          (rerun, h.edit_row, [row, wording, style, state], "grid_row")):
        button.click(click_a_cell, None, [detail], api_visibility="private")
        button.click(gpu()(handler), inputs, outputs, api_name=name, concurrency_id="gpu")
    row.input(h.pick_row, [row, state], [wording], api_visibility="private")
    table.click(h.cell, [state], [detail], api_visibility="private")
    return {"caption": caption, "shown": h.shown}
