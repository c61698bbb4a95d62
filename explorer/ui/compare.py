"""Compare tab: one image, one prompt, every chosen model side by side, answers streaming in."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from . import render
from .context import Background, SharedExplorer, gpu, user_message, warn

LABELS = ["unknown", "negative", "positive"]


def _label(value: Optional[str]) -> Optional[str]:
    return None if value in (None, "", "unknown") else value


def variant_choices(variants) -> list[tuple[str, str]]:
    return [(f"{v.prompt_id} — {v.text.splitlines()[0][:70]}", v.prompt_id) for v in variants]


def case_caption(case) -> str:
    if case is None:
        return '<div class="vx-case-info">No image yet: upload one or pick an example.</div>'
    truth = case.label or "unknown"
    return (
        f'<div class="vx-case-info" id="case-info">{render.escape(case.source)} &middot; truth: <b>{truth}</b>'
        f" &middot; {case.image.width}&times;{case.image.height} px &middot; <code>{case.image_hash[:12]}</code></div>"
    )


class CompareHandlers:
    """Event functions of the tab; each takes component values and returns updates, nothing global."""

    def __init__(self, shared: SharedExplorer):
        self.shared = shared

    # ---------------------------------------------------------------- picking an image
    def examples(self, task: str):
        try:
            cases = self.shared.get().example_cases(task)
        except Exception as exc:  # a broken samples folder must not break the tab
            warn(f"Examples unavailable: {user_message(exc)}")
            cases = []
        return [(c.image, c.label or "label unknown") for c in cases]

    def pick_example(self, task: str, evt: gr.SelectData):
        case = self.shared.get().example_cases(task)[evt.index]
        return case, case.image, case_caption(case), case.label or "unknown", None, ""

    def upload(self, path: Optional[str], task: str, label: str, case):
        """The uploaded file becomes the current case (truth unknown until the user says); the drop zone
        empties, ready for the next file."""
        if not path:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            case = self.shared.get().case_from_upload(path, task, None)
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            return gr.skip(), gr.skip(), gr.skip(), render.notice(msg), None, gr.skip()
        return case, case.image, case_caption(case), "", None, "unknown"

    def retarget(self, task: str, label: str, case):
        """The same image under another ground-truth label, or under another task. A new task resets the
        truth to unknown: a label belongs to its task (a tumour-positive MRI is not pneumonia-positive)."""
        if case is None:
            return gr.skip(), gr.skip(), gr.skip()
        if case.task == task:
            case = dataclasses.replace(case, label=_label(label))
            return case, case_caption(case), gr.skip()
        name = case.meta.get("name") or Path(case.source).name  # a sample keeps its file name
        case = self.shared.get().case_from_upload(case.image, task, None, name=name)
        return case, case_caption(case), "unknown"

    def task_changed(self, task: str):
        variants = self.shared.get().variants(task)
        first = variants[0]
        return gr.update(choices=variant_choices(variants), value=first.prompt_id), first.text

    def variant_text(self, task: str, prompt_id: str):
        return self.shared.get().variant(task, prompt_id).text

    # ---------------------------------------------------------------- running
    def _resolve(self, ex, file, task, label, case):
        if case is None or case.task != task:
            source = file or (case.image if case is not None else None)
            if source is None:
                raise ValueError("Upload an image or pick an example first.")
            # The radio's truth belonged to the old task when the image came from another one.
            case = ex.case_from_upload(source, task, _label(label) if case is None else None)
        return case

    def run(self, file, task, label, prompt, variant_id, models, style, case, last):
        """Stream every chosen model's answer; on failure keep the previous answers on screen."""
        yield from self._ask(file, task, label, models, style, case, last,
                             lambda ex: ex.custom_variant(task, prompt, based_on_id=variant_id))

    def describe(self, file, task, label, models, style, case, last):
        yield from self._ask(file, task, label, models, style, case, last,
                             lambda ex: next(v for v in ex.variants(task) if v.kind == "describe"))

    def _ask(self, file, task, label, models, style, case, last, pick_variant):
        ex = self.shared.get()
        models = list(models or [])
        try:
            case = self._resolve(ex, file, task, label, case)
            variant = pick_variant(ex)
            if not models:
                raise ValueError("Choose at least one model.")
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield gr.skip(), gr.skip(), render.notice(msg), gr.skip()
            return
        yield from self._stream(ex, case, variant, models, style, last)

    def _stream(self, ex, case, variant, models, style, last):
        pairs = ex.models_in_pairs()
        describe = variant.kind == "describe"
        heading = f"{variant.prompt_id}{' (edited)' if variant.custom else ''}: {render.shorten(variant.text)}"
        partial: dict[str, str] = {}
        yield render.cards(pairs, models, {}, partial, heading, describe), gr.skip(), render.notice("Running…", "info"), gr.skip()
        job = Background(lambda emit: ex.ask(case, variant, models, style, on_text=lambda a, t: emit((a, t))))
        for items in job.updates():
            if items:
                partial.update(dict(items))
                yield render.cards(pairs, models, {}, partial, heading, describe), gr.skip(), gr.skip(), gr.skip()
        try:
            views = job.result()
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            previous = self.render_last(ex, last)
            yield previous, gr.skip(), render.notice(msg), gr.skip()
            return
        by_alias = {v.model: v for v in views}
        n_cached, n_errors = sum(v.cached for v in views), sum(bool(v.error) for v in views)
        done = (f"{len(views)} answers" + (f", {n_cached} from the store (cached)" if n_cached else "")
                + (f", {n_errors} failed (see the cards)" if n_errors else ""))
        last = {"heading": heading, "models": models, "describe": describe, "views": views}
        data = [dataclasses.asdict(v) for v in views]  # each names its case, so an API client can tell which image
        yield (render.cards(pairs, models, by_alias, {}, heading, describe),
               data, render.notice(done, "error" if n_errors else "ok"), last)

    def render_last(self, ex, last: Optional[dict[str, Any]]):
        if not last:
            return gr.skip()
        views = {v.model: v for v in last["views"]}
        return render.cards(ex.models_in_pairs(), last["models"], views, {}, last["heading"], last["describe"])


def build(shared: SharedExplorer, catalog, preset, case_state: gr.State) -> dict[str, Any]:
    """Lay out the tab and wire its events; returns the components other tabs reuse."""
    from explorer import prompts

    h = CompareHandlers(shared)
    task0 = preset.tasks[0]
    variants0 = prompts.all_variants(catalog, task0, preset.prompts)
    model_choices = [(f"{a} ({catalog.model(a).role})", a) for a in preset.models]
    last = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=300):
            task = gr.Dropdown([(catalog.task(k).title, k) for k in preset.tasks], value=task0,
                               label="Task", elem_id="task")
            upload = gr.File(label="Upload an image (PNG, JPEG, TIFF, DICOM…)", type="filepath",
                             elem_id="upload")
            preview = gr.Image(label="Current image", type="pil", interactive=False, height=200,
                               elem_id="preview", buttons=[])
            caption = gr.HTML(case_caption(None), elem_id="case-caption", js_on_load=None)
            label = gr.Radio(LABELS, value="unknown", label="Ground truth (when you know it)", elem_id="truth")
            examples = gr.Gallery(label="Examples (click one)", columns=3, height=190, allow_preview=False,
                                  elem_id="examples", object_fit="cover", buttons=[])
        with gr.Column(scale=5, min_width=400):
            variant = gr.Dropdown(variant_choices(variants0), value=variants0[0].prompt_id,
                                  label="Prompt variant", elem_id="variant")
            prompt = gr.Textbox(variants0[0].text, label="Prompt: edit freely, Enter runs (Shift+Enter: new line)",
                                lines=1, max_lines=8, elem_id="prompt")
            with gr.Row():
                models = gr.CheckboxGroup(model_choices, value=list(preset.models), label="Models",
                                          elem_id="models", scale=3)
                style = gr.Radio([("as the study ran them", "paper"), ("each model's own template", "official")],
                                 value=preset.prompt_format, label="Prompt format", elem_id="style", scale=2)
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="run-compare")
                describe = gr.Button("Describe the image", elem_id="describe")
            status = gr.HTML("", elem_id="compare-status", js_on_load=None)
            cards = gr.HTML(render.cards([], [], {}), elem_id="compare-cards", js_on_load=None)
            with gr.Accordion("Answers as data", open=False):
                answers = gr.JSON(elem_id="compare-json")

    examples.select(h.pick_example, [task], [case_state, preview, caption, label, upload, status],
                    api_visibility="private")
    upload.upload(h.upload, [upload, task, label, case_state], [case_state, preview, caption, status, upload, label],
                  api_visibility="private")
    label.input(h.retarget, [task, label, case_state], [case_state, caption, label], api_visibility="private")
    task.input(h.task_changed, [task], [variant, prompt], api_visibility="private").then(
        h.retarget, [task, label, case_state], [case_state, caption, label], api_visibility="private")
    variant.input(h.variant_text, [task, variant], [prompt], api_visibility="private")
    run_inputs = [upload, task, label, prompt, variant, models, style, case_state, last]
    outputs = [cards, answers, status, last]
    gr.on([run.click, prompt.submit], gpu()(h.run), run_inputs, outputs, api_name="compare",
          concurrency_id="gpu", concurrency_limit=shared.settings.gpu_concurrency)
    describe.click(gpu()(h.describe), [upload, task, label, models, style, case_state, last], outputs,
                   api_name="describe", concurrency_id="gpu")
    return {"task": task, "models": models, "style": style, "examples": examples, "load": h.examples,
            "task_input": task.input}
