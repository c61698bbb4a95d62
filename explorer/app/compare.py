"""Compare tab, the demo's stage: one image, one wording, every chosen model side by side.

The answers sit at the top (above the fold at 1280x800); picking a wording runs it; the answers to the
wording before stay on screen until the new ones land, and a history strip keeps what each model said to
each wording on this image, with the words that changed. A link restores image, wording and models.
"""

from __future__ import annotations

import dataclasses
from html import escape
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlencode

import gradio as gr

from explorer.app import dicom_view, history, names, render
from explorer.app.context import Background, SharedExplorer, gpu, user_message, warn

LABELS = ["unknown", "negative", "positive"]
PRESENT_JS = (
    "() => { const on = document.body.classList.toggle('vx-present');"
    " const b = document.querySelector('#present'); if (b) b.innerText = on ? 'Exit' : 'Present'; }"
)
# A link opened with ?present=1 starts in presentation mode.
PRESENT_ON_LOAD_JS = (
    "() => { if (new URLSearchParams(location.search).get('present') === '1')"
    " document.body.classList.add('vx-present'); }"
)
# The address bar follows the view, so copying it (or the link box) shares what is on screen.
SHARE_JS = "(q) => { history.replaceState(null, '', q || location.pathname); return q ? location.href : ''; }"


def _label(value: Optional[str]) -> Optional[str]:
    return None if value in (None, "", "unknown") else value


def variant_choices(variants) -> list[tuple[str, str]]:
    return [(f"{names.prompt_name(v.prompt_id)} \u2014 {v.text.splitlines()[0][:70]}", v.prompt_id) for v in variants]


def case_name(case) -> str:
    """What to call the image: a sample's file name, "your upload" in public mode; never a server path."""
    name = case.meta.get("name") or case.case_id.split(":", 2)[-1]
    return "your upload" if name == "upload" else str(name)


def case_key(case) -> str:
    return f"{case.task}:{case.image_hash}" if case is not None else ""


def case_caption(case) -> str:
    if case is None:
        return '<div class="vx-case-info">No image yet: upload one or pick an example.</div>'
    truth = case.label or "unknown"
    return (
        f'<div class="vx-case-info" id="case-info">{escape(case_name(case))} &middot; truth: <b>{truth}</b>'
        f" &middot; {case.image.width}&times;{case.image.height} px</div>"
    )


def case_details(case) -> str:
    """Ids and hashes, for whoever asks (the "details" accordion)."""
    if case is None:
        return ""
    rows = {"case id": case.case_id, "image hash (sha256 of the pixels)": case.image_hash}
    return (
        '<table class="vx-table" id="case-details">'
        + "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>" for k, v in rows.items())
        + "</table>"
    )


def rescored(view, truth: Optional[str]):
    """The answer scored against another truth (the verdict does not change; right/wrong does)."""
    from explorer.schema import VERDICT_LABELS, Verdict

    if view.error or view.verdict not in VERDICT_LABELS:
        return dataclasses.replace(view, label=truth, correct=None)
    return dataclasses.replace(view, label=truth, correct=Verdict(label=view.verdict).correct(truth))


class CompareHandlers:
    """Event functions of the tab; each takes component values and returns updates, nothing global."""

    def __init__(self, shared: SharedExplorer, catalog=None):
        from explorer.catalog.presets import load_catalog

        catalog = catalog or load_catalog()
        self.shared = shared
        self.model_names = {a: names.model_name(catalog.model(a), a) for a in catalog.models}

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
        return case, case.image, case_caption(case), case.label or "unknown", None, "", None, case_details(case)

    def upload(self, path: Optional[str], task: str, label: str, case, mine: Optional[list] = None):
        """The uploaded file becomes the current case (truth unknown until the user says); the drop zone
        empties, ready for the next file. In public mode a DICOM is de-identified first and the original
        bytes leave Gradio's cache at once (its name there is the visitor's file name)."""
        skip = (gr.skip(),) * 9
        if not path:
            return skip
        ex = self.shared.get()
        public = self.shared.settings.public
        try:
            data = self._read_upload(ex, path)
            pixels = dicom_view.read_pixels(data)
            case = ex.case_from_upload(data, task, None, name=None if public else Path(path).name)
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            return (*skip[:3], render.notice(msg), None, gr.skip(), gr.skip(), gr.skip(), gr.skip())
        mine = list(dict.fromkeys([*(mine or []), case.case_id]))
        return case, case.image, case_caption(case), "", None, "unknown", pixels, case_details(case), mine

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

    def retask(self, task: str, label: str, case):
        """After a task change: only an image of another task moves (a sample picked meanwhile keeps the
        truth it came with; the radio's value read at the start of this chain may be older than it)."""
        if case is None or case.task == task:
            return gr.skip(), gr.skip(), gr.skip()
        return self.retarget(task, label, case)

    def rescore(self, case, last, strip_rows, customs):
        """New truth, same answers: right/wrong on the cards and in the strip follow at once (no re-run)."""
        if case is None or not last or last.get("case") != case_key(case):
            return gr.skip(), gr.skip(), gr.skip()
        views = [rescored(v, case.label) for v in last["views"]]
        last = dict(last, views=views)
        rows = [
            dict(r, correct={v.model: v.correct for v in views})
            if r.get("case") == last["case"] and r["prompt_id"] == last["prompt_id"]
            else r
            for r in (strip_rows or [])
        ]
        return self.render_last(last, rows), last, rows

    def task_changed(self, task: str):
        variants = self.shared.get().variants(task)
        first = variants[0]
        return gr.update(choices=variant_choices(variants), value=first.prompt_id), first.text

    def variant_text(self, task: str, prompt_id: str):
        return self.shared.get().variant(task, prompt_id).text

    # ---------------------------------------------------------------- running
    def _read_upload(self, ex, path: str) -> bytes:
        """An uploaded file's bytes, within the size limit. In public mode the file leaves Gradio's cache
        at once, refused or not, and a DICOM comes back de-identified (the header never goes further)."""
        try:
            ex.policy.check_upload(path)
            data = Path(path).read_bytes()
        finally:
            if self.shared.settings.public:
                forget_upload(path)
        if self.shared.settings.public and dicom_view.is_dicom(data):
            data = dicom_view.deidentify(data)
        return data

    def _resolve(self, ex, file, task, label, case):
        if case is None or case.task != task:
            if file and self.shared.settings.public:  # an API client's upload: the same care as the tab's
                file = self._read_upload(ex, file)
            source = file or (case.image if case is not None else None)
            if source is None:
                raise ValueError("Upload an image or pick an example first.")
            # The radio's truth belonged to the old task when the image came from another one.
            case = ex.case_from_upload(source, task, _label(label) if case is None else None)
        return case

    def run(
        self, file, task, label, prompt, variant_id, models, style, case, last, strip_rows, customs, yes_means="auto"
    ):
        """Stream every chosen model's answer; on failure keep the previous answers on screen.
        `yes_means` (a session state, not an API argument): how an edited yes/no wording is read."""
        chosen = yes_means if yes_means in ("positive", "negative") else None
        yield from self._ask(
            file,
            task,
            label,
            models,
            style,
            case,
            last,
            strip_rows,
            customs,
            lambda ex: ex.custom_variant(task, prompt, based_on_id=variant_id, yes_means=chosen),
        )

    def run_picked(
        self, file, task, label, prompt, variant_id, models, style, case, last, strip_rows, customs, yes_means="auto"
    ):
        """A wording picked from the dropdown runs, once there is an image; before that it only fills the box."""
        if case is None and not file:
            yield (gr.skip(),) * 6
            return
        yield from self.run(
            file, task, label, prompt, variant_id, models, style, case, last, strip_rows, customs, yes_means
        )

    def describe(self, file, task, label, models, style, case, last, strip_rows, customs):
        yield from self._ask(
            file,
            task,
            label,
            models,
            style,
            case,
            last,
            strip_rows,
            customs,
            lambda ex: next(v for v in ex.variants(task) if v.kind == "describe"),
        )

    def _ask(self, file, task, label, models, style, case, last, strip_rows, customs, pick_variant):
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
            yield gr.skip(), gr.skip(), render.notice(msg), gr.skip(), gr.skip(), gr.skip()
            return
        yield from self._stream(ex, case, variant, models, style, last, strip_rows, customs)

    def wording_name(self, variant, customs: dict) -> tuple[str, dict]:
        """The wording's name; an edited one gets the next "your wording N" of this visitor."""
        customs = dict(customs or {})
        if variant.custom and variant.prompt_id not in customs:
            customs[variant.prompt_id] = len(customs) + 1
        return names.prompt_name(variant.prompt_id, customs), customs

    def _stream(self, ex, case, variant, models, style, last, strip_rows, customs):
        pairs = ex.models_in_pairs()
        describe = variant.kind == "describe"
        name, customs = self.wording_name(variant, customs)
        key = case_key(case)
        heading = (
            f"<b>{escape(name)}</b>{' (edited)' if variant.custom else ''}: "
            f'{escape(render.shorten(variant.text))} <span class="vx-on">on {escape(case_name(case))}</span>'
            + yes_reading_note(variant)
        )
        # The answers on screen stay (dimmed) until each model's new text arrives: nothing blanks.
        stale = {v.model: v for v in (last or {}).get("views", [])}
        before = history.previous_verdicts(strip_rows, key, variant.prompt_id)
        strip_now = history.strip(strip_rows, key, models, self.model_names)
        partial: dict[str, str] = {}

        def page(views, partial_now, previous=None):
            return (
                render.cards(
                    pairs,
                    models,
                    views,
                    partial_now,
                    heading,
                    describe,
                    previous=previous,
                    stale=stale,
                    names=self.model_names,
                )
                + strip_now
            )

        yield page({}, partial), gr.skip(), render.notice("Running…", "info"), gr.skip(), gr.skip(), customs
        job = Background(lambda emit: ex.ask(case, variant, models, style, on_text=lambda a, t: emit((a, t))))
        for items in job.updates():
            if items:
                partial.update(dict(items))
                yield page({}, partial), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            views = job.result()
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield self.render_last(last, strip_rows), gr.skip(), render.notice(msg), gr.skip(), gr.skip(), gr.skip()
            return
        n_cached, n_errors = sum(v.cached for v in views), sum(bool(v.error) for v in views)
        done = (
            f"{len(views)} answers"
            + (f", {n_cached} from the store (cached)" if n_cached else "")
            + (f", {n_errors} failed (see the cards)" if n_errors else "")
        )
        if not describe:
            strip_rows = history.add(strip_rows, history.entry(variant.prompt_id, name, variant.text, views), key)
        last = {
            "heading": heading,
            "models": models,
            "describe": describe,
            "views": views,
            "case": key,
            "prompt_id": variant.prompt_id,
            "previous": before,
        }
        data = [dataclasses.asdict(v) for v in views]  # each names its case, so an API client can tell which image
        yield (
            self.render_last(last, strip_rows),
            data,
            render.notice(done, "error" if n_errors else "ok"),
            last,
            strip_rows,
            customs,
        )

    def render_last(self, last: Optional[dict[str, Any]], strip_rows=None):
        if not last:
            return gr.skip()
        views = {v.model: v for v in last["views"]}
        return render.cards(
            self.shared.get().models_in_pairs(),
            last["models"],
            views,
            {},
            last["heading"],
            last["describe"],
            previous=last.get("previous"),
            names=self.model_names,
        ) + history.strip(strip_rows, last.get("case", ""), last["models"], self.model_names)

    # ---------------------------------------------------------------- sharing
    def share_query(self, task, variant_id, prompt, models, case, last):
        """The query string that restores this view: task, sample, wording (or the edited text), models.
        An upload is not in it: its pixels live only in this session."""
        if not last:
            return ""
        params = {"task": task, "models": ",".join(models or [])}
        if case is not None and ":file:" in case.case_id:
            params["case"] = case.case_id.split(":file:", 1)[1]
        try:
            preset_text = self.shared.get().variant(task, variant_id).text
        except Exception:
            preset_text = None
        params["wording"] = variant_id
        if prompt and prompt.strip() != (preset_text or "").strip():
            params["text"] = prompt
        return "?" + urlencode(params)

    def restore(self, request: gr.Request):
        """A shared link (URL query parameters) on page load: task, sample, wording and models, then the
        answers (from the store when someone asked the same before)."""
        query = dict(getattr(request, "query_params", {}) or {}) if request is not None else {}
        n_out = 17
        if not query.get("task"):
            yield (gr.skip(),) * n_out
            return
        ex = self.shared.get()
        try:
            task = query["task"]
            variants = ex.variants(task)
            variant = next((v for v in variants if v.prompt_id == query.get("wording")), variants[0])
            text = query.get("text") or variant.text
            wanted = [m for m in (query.get("models") or "").split(",") if m]
            models = [m for m in wanted if m in ex.preset.models] or list(ex.preset.models)
            case = None
            if query.get("case"):
                case = next((c for c in ex.example_cases(task) if c.case_id == f"{task}:file:{query['case']}"), None)
                if case is None:
                    raise ValueError(f"The link names a sample image this app does not have: {query['case']}.")
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            yield (*(gr.skip(),) * 12, render.notice(msg), *(gr.skip(),) * 4)
            return
        head = (task, gr.update(choices=variant_choices(variants), value=variant.prompt_id), text, models)
        shown = (
            (case, case.image, case_caption(case), case.label or "unknown", case_details(case))
            if case
            else (gr.skip(),) * 5
        )
        if case is None:
            yield (
                *head,
                *shown,
                gr.skip(),
                gr.skip(),
                gr.skip(),
                render.notice("The link restored the task, wording and models; pick an image.", "info"),
                gr.skip(),
                gr.skip(),
                gr.skip(),
                gr.skip(),
            )
            return
        for out in self.run(
            None,
            task,
            case.label or "unknown",
            text,
            variant.prompt_id,
            models,
            ex.preset.prompt_format,
            case,
            None,
            None,
            None,
        ):
            cards, data, status, last, rows, customs = out
            yield (*head, *shown, None, cards, data, status, last, rows, customs, gr.skip())


def forget_upload(path: str) -> None:
    """Delete an uploaded file from Gradio's cache (and its folder, named by a hash, when empty) so the
    original bytes, and the file name it was saved under, are no longer on the server or served. Only
    files inside Gradio's upload folder: a path from anywhere else is not ours to delete."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()).resolve()
    target = Path(path).resolve()
    if folder not in target.parents:
        return
    try:
        target.unlink()
        target.parent.rmdir()
    except OSError:
        pass  # already gone, or the folder holds other files


def yes_reading_note(variant) -> str:
    """For an edited yes/no wording: how its "yes" is read (set under "An edited wording's yes means")."""
    if not variant.custom or variant.kind != "closed" or variant.is_multiple_choice:
        return ""
    meaning = "the finding is present" if variant.yes_means == "positive" else "normal / absent"
    return f' <span class="vx-yes-note" id="yes-note">· a “yes” is read as <b>{meaning}</b></span>'


def build(shared: SharedExplorer, catalog, preset, case_state: gr.State, my_uploads: gr.State) -> dict[str, Any]:
    """Lay out the tab and wire its events; returns the components other tabs reuse."""
    from explorer.prompts import variants as prompts

    h = CompareHandlers(shared, catalog)
    task0 = preset.tasks[0]
    variants0 = prompts.all_variants(catalog, task0, preset.prompts)
    model_choices = [(names.model_label(catalog.model(a)), a) for a in preset.models]
    last, strip_rows, customs, pixels = gr.State(None), gr.State([]), gr.State({}), gr.State(None)
    with gr.Row(equal_height=False, elem_id="compare-row"):
        with gr.Column(scale=5, min_width=360, elem_id="compare-main"):
            with gr.Row(equal_height=True, elem_id="wording-row"):
                variant = gr.Dropdown(
                    variant_choices(variants0),
                    value=variants0[0].prompt_id,
                    label="Wording (picking one runs it)",
                    elem_id="variant",
                    scale=3,
                )
                prompt = gr.Textbox(
                    variants0[0].text,
                    label="Prompt: edit freely, Enter runs (Shift+Enter: new line)",
                    lines=1,
                    max_lines=6,
                    elem_id="prompt",
                    scale=5,
                )
                with gr.Column(scale=1, min_width=90, elem_id="run-buttons"):
                    run = gr.Button("Run", variant="primary", elem_id="run-compare", size="sm")
                    present = gr.Button("Present", elem_id="present", size="sm")  # toggles: press again to leave
            status = gr.HTML("", elem_id="compare-status", js_on_load=None)
            cards = gr.HTML(START_HERE, elem_id="compare-cards", js_on_load=None)
            gr.HTML(render.legend(), elem_id="legend-box", js_on_load=None)
            with gr.Row(equal_height=True, elem_id="compare-controls"):
                models = gr.CheckboxGroup(
                    model_choices, value=list(preset.models), label="Models", elem_id="models", scale=3
                )
                style = gr.Radio(
                    [("as the study ran them", "paper"), ("each model's own template", "official")],
                    value=preset.prompt_format,
                    label="Prompt format",
                    elem_id="style",
                    scale=2,
                )
                yes_choice = gr.Radio(
                    [("from its words", "auto"), ("finding present", "positive"), ("normal / absent", "negative")],
                    value="auto",
                    label="An edited yes/no wording: “yes” means",
                    elem_id="yes-means",
                    scale=2,
                )
            with gr.Row(equal_height=False, elem_id="compare-extra"):
                describe = gr.Button("Describe the image", elem_id="describe", scale=1, size="md")
                share = gr.Textbox(
                    "",
                    label="Link to this view (image, wording, models)",
                    interactive=False,
                    buttons=["copy"],
                    elem_id="share-link",
                    scale=3,
                )
            share_query = gr.Textbox("", visible="hidden", elem_id="share-query")
            viewer_slot = gr.Column(elem_id="dicom-slot")
            with gr.Accordion("Answers as data", open=False, elem_id="answers-data"):
                answers = gr.JSON(elem_id="compare-json")
        with gr.Column(scale=2, min_width=260, elem_id="compare-side"):
            task = gr.Dropdown(
                [(catalog.task(k).title, k) for k in preset.tasks], value=task0, label="Task", elem_id="task"
            )
            preview = gr.Image(
                label="Current image",
                type="pil",
                interactive=False,
                height=150,
                elem_id="preview",
                buttons=["fullscreen"],
            )
            caption = gr.HTML(case_caption(None), elem_id="case-caption", js_on_load=None)
            label = gr.Radio(LABELS, value="unknown", label="Ground truth (answers re-score at once)", elem_id="truth")
            examples = gr.Gallery(
                label="Examples (click one)",
                columns=4,
                height=120,
                allow_preview=False,
                elem_id="examples",
                object_fit="cover",
                buttons=[],
            )
            upload = gr.File(
                label="Upload an image (PNG, JPEG, TIFF, DICOM…)", type="filepath", elem_id="upload", height=120
            )
            if shared.settings.public:
                gr.HTML(PRIVACY_NOTE, elem_id="privacy-box", js_on_load=None)
            dicom_warning = gr.HTML("", elem_id="dicom-warning", js_on_load=None)
            with gr.Accordion("Details (ids, hashes)", open=False, elem_id="case-details-box"):
                details = gr.HTML("", elem_id="case-details-html", js_on_load=None)

    with viewer_slot:  # in the wide column, under the answers: a clinician wants the image large
        viewer = dicom_view.build(pixels, task, catalog, dicom_warning)
    examples.select(
        h.pick_example,
        [task],
        [case_state, preview, caption, label, upload, status, pixels, details],
        api_visibility="private",
    ).then(**viewer["refresh"])
    upload.upload(
        h.upload,
        [upload, task, label, case_state, my_uploads],
        [case_state, preview, caption, status, upload, label, pixels, details, my_uploads],
        api_visibility="private",
    ).then(**viewer["refresh"])
    label.input(h.retarget, [task, label, case_state], [case_state, caption, label], api_visibility="private").then(
        h.rescore, [case_state, last, strip_rows, customs], [cards, last, strip_rows], api_visibility="private"
    )
    task.input(h.task_changed, [task], [variant, prompt], api_visibility="private").then(
        h.retask, [task, label, case_state], [case_state, caption, label], api_visibility="private"
    ).then(**viewer["refresh"])
    # The reading choice travels as session state, so the public /compare API keeps its arguments.
    yes_means = gr.State("auto")
    yes_choice.change(lambda choice: choice, [yes_choice], [yes_means], api_visibility="private")
    run_inputs = [upload, task, label, prompt, variant, models, style, case_state, last, strip_rows, customs, yes_means]
    outputs = [cards, answers, status, last, strip_rows, customs]
    shared_link = dict(
        fn=h.share_query,
        inputs=[task, variant, prompt, models, case_state, last],
        outputs=[share_query],
        api_visibility="private",
    )
    # More handlers than device slots: the engine's gates bound generation, so a Compare served from the
    # store never queues behind other visitors' Compares that are generating.
    gr.on(
        [run.click, prompt.submit],
        gpu()(h.run),
        run_inputs,
        outputs,
        api_name="compare",
        concurrency_id="compare",
        concurrency_limit=4 * shared.settings.gpu_concurrency,
    ).then(**shared_link)
    # Picking a wording runs it: the box fills, then the same run as Enter.
    variant.input(h.variant_text, [task, variant], [prompt], api_visibility="private").then(
        gpu()(h.run_picked), run_inputs, outputs, api_visibility="private", concurrency_id="gpu"
    ).then(**shared_link)
    describe.click(
        gpu()(h.describe),
        [upload, task, label, models, style, case_state, last, strip_rows, customs],
        outputs,
        api_name="describe",
        concurrency_id="gpu",
    )
    share_query.change(None, [share_query], [share], js=SHARE_JS, api_visibility="private")
    present.click(None, None, None, js=PRESENT_JS, api_visibility="private")
    restore_outputs = [
        task,
        variant,
        prompt,
        models,
        case_state,
        preview,
        caption,
        label,
        details,
        pixels,
        cards,
        answers,
        status,
        last,
        strip_rows,
        customs,
        upload,
    ]
    return {
        "task": task,
        "models": models,
        "style": style,
        "examples": examples,
        "load": h.examples,
        "task_input": task.input,
        "restore": h.restore,
        "restore_outputs": restore_outputs,
        "after_restore": [shared_link, viewer["refresh"]],
        "present_js": PRESENT_ON_LOAD_JS,
    }


START_HERE = (
    '<div class="vx-empty">Pick an example or upload an image, then press Run (or Enter in the '
    "prompt). The answers appear here.</div>"
)
PRIVACY_NOTE = (
    '<div class="vx-privacy" id="privacy-note"><b>Privacy:</b> this is a public demo. An upload is read '
    "into memory and its file is deleted at once; a DICOM's patient tags (names, ids, dates, institution, "
    "descriptions) are removed first. The answers on your image are kept in the shared results store, "
    "shown only to your session. Do not upload images with names burned into the pixels.</div>"
)
