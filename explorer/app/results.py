"""Results tab: open a store, an export or the study's CSVs; filter; drill down to one case; see the cases
where base and medical models disagree or where the wording flips the answer. No model is needed."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import pandas as pd

from explorer.app import names, render
from explorer.app.context import SharedExplorer, user_message, warn
from explorer.catalog.presets import load_catalog

FILTERS = ("model", "task", "prompt_id", "verdict")
SHOW = ["model", "task", "case_id", "label", "prompt_id", "verdict", "answer"]
MAX_ROWS = 5000  # the table shows this many; filters narrow it, downloads of the Sweep tab carry all
GALLERY_MAX = 24


def _choices(frame: pd.DataFrame, col: str) -> list[tuple[str, str]]:
    """A filter's choices: models and wordings under their names, the ids as values."""
    if col not in frame.columns:
        return []
    values = sorted(str(v) for v in frame[col].dropna().unique())
    return [(_display(col, v), v) for v in values]


@lru_cache(maxsize=1)
def _catalog():
    return load_catalog()  # the presets' names for models (YAML only)


def _display(col: str, value: str) -> str:
    if col == "model":
        return names.model_name(_catalog().models.get(value), value)
    if col == "prompt_id":
        return names.prompt_name(value)
    return value


def _filtered(frame: pd.DataFrame, picks: dict[str, list[str]]) -> pd.DataFrame:
    for col, values in picks.items():
        if values and col in frame.columns:
            frame = frame[frame[col].astype(str).isin(values)]
    return frame


def _shown(view: pd.DataFrame) -> pd.DataFrame:
    out = view.reindex(columns=SHOW).head(MAX_ROWS).copy()
    out["answer"] = out["answer"].fillna("").astype(str).str.slice(0, 160)
    for col in ("model", "prompt_id"):
        out[col] = [_display(col, str(v)) for v in out[col]]
    out["case_id"] = out["case_id"].astype(str).str.split(":", n=2).str[-1]  # the sample's name, not the id
    return out.rename(columns={"prompt_id": "wording", "case_id": "case"})


class ResultsHandlers:
    def __init__(self, shared: SharedExplorer):
        self.shared = shared

    @staticmethod
    def _image(ex, task: str, image_hash: Optional[str]):
        """The case's image when this app can find it (the sample folder), else None."""
        return ex.case_image(task, image_hash)

    def _loaded(self, ex, frame: pd.DataFrame, source: str):
        gallery, note, keys = self._gallery(ex, frame)
        state = {"frame": frame, "view": frame, "source": source, "gallery_cases": keys}
        filters = [gr.update(choices=_choices(frame, c), value=[]) for c in FILTERS]
        status = render.notice(f"{len(frame):,} answers from {source}.", "ok" if len(frame) else "info")
        return (state, *filters, _shown(frame), status, gallery, note, render.case_table([]), None)

    def _fail(self, exc: BaseException):
        msg = user_message(exc)
        warn(msg)
        return (gr.skip(),) * 5 + (gr.skip(), render.notice(msg), gr.skip(), gr.skip(), gr.skip(), gr.skip())

    def open_store(self, mine: Optional[list] = None):
        ex = self.shared.get()
        try:
            where = Path(ex.store.path).name  # no server paths on screen (the Models tab's settings name it)
            return self._loaded(
                ex, self._with_own_uploads(ex, ex.browsable_answers(), mine), f"this app's store ({where})"
            )
        except Exception as exc:
            return self._fail(exc)

    def _open(self, path: Optional[str], uploaded: bool, cancel=None):
        ex = self.shared.get()
        try:
            if not path or not str(path).strip():
                raise ValueError(
                    "Choose a file first: a results store (.sqlite), an export (.csv, .parquet, "
                    ".jsonl) or the study's *_vqa_results.csv."
                )
            path = str(path).strip()
            frame = ex.open_results(path, uploaded=uploaded, cancel=cancel)
            return self._loaded(ex, frame, Path(path).name if uploaded else path)
        except Exception as exc:
            return self._fail(exc)

    def open_upload(self, path: Optional[str], request: gr.Request = None):
        """A visitor's upload; abandoned (its read cancelled) if their page closes meanwhile."""
        with self.shared.session_read(getattr(request, "session_hash", None)) as cancel:
            return self._open(path, uploaded=True, cancel=cancel)

    def open_path(self, path: Optional[str]):
        """A path typed by the user: refused by the engine's public policy on a public deployment."""
        return self._open(path, uploaded=False)

    def shown(self, state, mine: Optional[list] = None):
        """On entering the tab: the app's own store, unless the user opened something else."""
        if state and state.get("frame") is not None and not state["source"].startswith("this app's store"):
            return (gr.skip(),) * 11
        return self.open_store(mine)

    def _with_own_uploads(self, ex, frame: pd.DataFrame, mine: Optional[list]) -> pd.DataFrame:
        """In public mode the store shows no uploads, except this session's own (`mine`: its case ids)."""
        if not self.shared.settings.public or not mine:
            return frame
        everything = ex.answers_frame()
        own = everything[everything["case_id"].isin(list(mine))]
        return pd.concat([frame, own], ignore_index=True) if len(own) else frame

    def refilter(self, models, tasks, prompt_ids, verdicts, state):
        if not state or state.get("frame") is None:
            return gr.skip(), gr.skip(), gr.skip()
        view = _filtered(state["frame"], dict(zip(FILTERS, (models, tasks, prompt_ids, verdicts))))
        state = dict(state, view=view)
        note = render.notice(
            f"{len(view):,} of {len(state['frame']):,} answers match"
            + (f"; the first {MAX_ROWS:,} are shown" if len(view) > MAX_ROWS else "")
            + ".",
            "info",
        )
        return _shown(view), state, note

    def drill(self, state, evt: gr.SelectData):
        if not state or state.get("view") is None or evt.index is None:
            return gr.skip(), gr.skip(), gr.skip()
        row = state["view"].iloc[evt.index[0]]
        return self._case(row["task"], row["case_id"], state, row)

    def drill_gallery(self, state, evt: gr.SelectData):
        cases = (state or {}).get("gallery_cases") or []
        if evt.index is None or evt.index >= len(cases):
            return gr.skip(), gr.skip(), gr.skip()
        task, case_id = cases[evt.index]
        return self._case(task, case_id, state, None)

    def _case(self, task: str, case_id: str, state, row):
        ex = self.shared.get()
        frame = state["frame"]
        rows = frame[(frame["task"] == task) & (frame["case_id"] == case_id)]
        first = rows.iloc[0]
        image = self._image(ex, task, first.get("image_hash"))
        title = _catalog().tasks[task].title if task in _catalog().tasks else str(task)
        head = (
            f'<div class="vx-cards-heading"><b>{render.escape(str(case_id).split(":", 2)[-1])}</b> · {render.escape(title)}'
            f" · truth: {render.escape(str(first.get('label') if isinstance(first.get('label'), str) else 'unknown'))}"
            + ("" if image is not None else " · image not available here")
            + "</div>"
        )
        models = {a: names.model_name(spec, a) for a, spec in _catalog().models.items()}
        table = render.case_table(rows.to_dict("records"), models)
        detail = ""
        if row is not None:
            detail = (
                f'<div class="vx-cards-heading">{render.escape(render.shorten(row.get("prompt_text") or row["prompt_id"]))}</div>'
                f'<div class="vx-card"><div class="vx-badges">{render.verdict_badge(row.get("verdict"))}'
                f'<span class="vx-title">{render.escape(_display("model", str(row["model"])))}</span></div>'
                f'<div class="vx-answer">{render.escape(str(row.get("error") or row.get("answer") or ""))}</div></div>'
            )
        return image, head + table, detail

    def _gallery(self, ex, frame: pd.DataFrame):
        cases = ex.disagreements(frame)
        items, keys = [], []
        for rec in cases.head(GALLERY_MAX).to_dict("records"):
            image = self._image(ex, rec["task"], rec.get("image_hash"))
            if image is not None:
                # What differs first: a thumbnail shows about a dozen characters of its caption.
                what = f"base≠medical ×{rec['n']}" if rec["kind"] == "pair" else f"flips ×{rec['n']} · {rec['models']}"
                items.append((image, what))
                keys.append((rec["task"], rec["case_id"]))
        note = render.notice(
            f"{len(cases)} case{'' if len(cases) == 1 else 's'} where base and medical disagree or the wording flips the answer; "
            f"{len(items)} shown (at most {GALLERY_MAX}, those whose image this app can find). "
            "Click one to open it above.",
            "info",
        )
        return items, note, keys


def build(shared: SharedExplorer, catalog, preset, my_uploads: Optional[gr.State] = None) -> dict[str, Any]:
    h = ResultsHandlers(shared)
    state = gr.State(None)
    gr.Markdown(
        "Open a results store (`.sqlite`), an export (`.csv`, `.parquet`, `.jsonl`) or the study code's "
        "`*_vqa_results.csv`; this app's own store opens by itself. No model is needed here."
    )
    with gr.Row(equal_height=True):
        upload = gr.UploadButton(
            "Open a file…",
            file_types=[".sqlite", ".db", ".csv", ".parquet", ".jsonl", ".json"],
            type="filepath",
            elem_id="results-upload",
            scale=1,
        )
        mine = gr.Button("This app's store", elem_id="results-mine", scale=1)
        path = gr.Textbox(
            show_label=False,
            placeholder="…or a path on the server",
            visible=not shared.settings.public,
            elem_id="results-path",
            scale=2,
            container=False,
        )
        open_path = gr.Button("Open path", visible=not shared.settings.public, elem_id="results-open", scale=1)
    status = gr.HTML("", elem_id="results-status", js_on_load=None)
    with gr.Row():
        filters = [
            gr.Dropdown([], value=[], multiselect=True, label={"prompt_id": "wording"}.get(c, c), elem_id=f"filter-{c}")
            for c in FILTERS
        ]
    table = gr.Dataframe(
        _shown(pd.DataFrame(columns=SHOW)),
        elem_id="results-table",
        interactive=False,
        max_height=300,
        wrap=False,
        label="Answers (select a row to open its case)",
        column_widths=["11%", "10%", "20%", "7%", "11%", "8%", "33%"],
    )
    with gr.Row(equal_height=False):
        image = gr.Image(
            label="Case image", type="pil", interactive=False, height=240, elem_id="results-image", scale=1
        )
        with gr.Column(scale=3):
            case_html = gr.HTML(render.case_table([]), elem_id="results-case", js_on_load=None, apply_default_css=False)
            detail = gr.HTML("", elem_id="results-detail", js_on_load=None)
    gr.Markdown("#### Where base and medical models disagree, or the wording flips the answer")
    gallery_note = gr.HTML("", elem_id="gallery-note", js_on_load=None)
    gallery = gr.Gallery(
        label="Disagreements", columns=8, height=180, allow_preview=False, elem_id="disagreements", buttons=[]
    )

    loaded = [state, *filters, table, status, gallery, gallery_note, case_html, image]
    own = [my_uploads] if my_uploads is not None else None
    mine.click(h.open_store, own, loaded, api_name="open_store")
    upload.upload(h.open_upload, [upload], loaded, api_visibility="private")
    open_path.click(h.open_path, [path], loaded, api_name="open_results")
    for f in filters:
        f.input(h.refilter, [*filters, state], [table, state, status], api_visibility="private")
    table.select(h.drill, [state], [image, case_html, detail], api_visibility="private")
    gallery.select(h.drill_gallery, [state], [image, case_html, detail], api_visibility="private")
    return {"shown": h.shown, "inputs": [state, *(own or [])], "outputs": loaded}
