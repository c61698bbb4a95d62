"""Compare's image viewer for a DICOM: window/level presets, zoom, the acquisition's header fields (never
the patient's), and a warning when the header says the image is not what the task asks about.

The viewer only changes what a person sees; the models get the image as images.load_image decoded it.
"""

from __future__ import annotations

from html import escape
from typing import Any, Optional

import gradio as gr
from PIL import Image

from explorer.cases import images

# What each task's images are, in DICOM terms: Modality codes and BodyPartExamined values.
EXPECTED = {
    "brain_tumor": ({"MR"}, {"BRAIN", "HEAD", "SKULL"}),
    "pneumonia": ({"CR", "DX"}, {"CHEST", "LUNG", "THORAX"}),
    "skin_cancer": ({"XC", "VL", "OT", "GM"}, {"SKIN"}),
    "histo_idc": ({"SM", "OT"}, {"BREAST"}),
}
VIEW_SIDE = 512  # the viewer draws at least this many screen pixels per side
MODALITY_WORDS = {
    "MR": "MRI",
    "CT": "CT",
    "CR": "X-ray",
    "DX": "X-ray",
    "US": "ultrasound",
    "MG": "mammogram",
    "SM": "slide microscopy",
    "XC": "photograph",
    "VL": "photograph",
    "PT": "PET",
    "NM": "nuclear medicine",
}


def is_dicom(data: bytes) -> bool:
    return images.is_dicom(data)


def deidentify(data: bytes) -> bytes:
    return images.deidentify_dicom(data)


def read_pixels(data: bytes) -> Optional[images.DicomPixels]:
    return images.dicom_pixels(data)


def mismatch(header: dict, task: str, task_title: str) -> Optional[str]:
    """A warning when the DICOM header's modality or body part is not the task's (a CT chest under the
    brain MRI task); None when they fit or the header does not say."""
    if task not in EXPECTED:
        return None
    modalities, parts = EXPECTED[task]
    modality = str(header.get("Modality", "")).upper()
    part = str(header.get("BodyPartExamined", "")).upper()
    wrong = []
    if modality and modality not in modalities:
        wrong.append(f"modality {modality} ({MODALITY_WORDS.get(modality, 'other')})")
    if part and part not in parts:
        wrong.append(f"body part {part}")
    if not wrong:
        return None
    return (
        f"The DICOM header says {' and '.join(wrong)}, but the task is {task_title}: the models will be "
        "asked about a finding this image cannot show."
    )


def header_html(pixels: Optional[images.DicomPixels], warning: Optional[str]) -> str:
    if pixels is None:
        return ""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in pixels.header.items())
    warn_box = f'<div class="vx-notice vx-notice-error" id="dicom-mismatch">{escape(warning)}</div>' if warning else ""
    return (
        f'{warn_box}<table class="vx-table" id="dicom-header">{rows}</table>'
        '<div class="vx-foot">Header fields of the acquisition only: patient tags are never shown.</div>'
    )


class ViewerHandlers:
    def __init__(self, catalog):
        self.catalog = catalog

    def refresh(self, pixels, task: str):
        """A new image or task: presets of this image, the first preset's view, header and warning."""
        if pixels is None:
            return gr.update(visible=False), gr.update(choices=[], value=None), None, "", ""
        names = list(pixels.presets)
        title = self.catalog.task(task).title if task in self.catalog.tasks else task
        warning = mismatch(pixels.header, task, title)
        shown = self.view(pixels, names[0] if names else None, 1)
        note = (
            f'<div class="vx-notice vx-notice-error" id="dicom-mismatch-top">{escape(warning)}</div>' if warning else ""
        )
        return (
            gr.update(visible=True, open=True),
            gr.update(choices=names, value=names[0] if names else None),
            shown,
            header_html(pixels, warning),
            note,
        )

    def view(self, pixels, preset: Optional[str], zoom: float):
        if pixels is None or not preset or preset not in pixels.presets:
            return None
        centre, width = pixels.presets[preset]
        shown = images.apply_window(pixels.values, centre, width, pixels.invert, float(zoom or 1))
        if max(shown.size) < VIEW_SIDE:  # a small image or a deep zoom: whole pixels, drawn large
            scale = VIEW_SIDE / max(shown.size)
            shown = shown.resize((round(shown.width * scale), round(shown.height * scale)), Image.Resampling.NEAREST)
        return shown


def build(pixels: gr.State, task: gr.Dropdown, catalog, warning: gr.HTML) -> dict[str, Any]:
    """The viewer (hidden until a DICOM arrives); `warning` is where the mismatch shows beside the image."""
    h = ViewerHandlers(catalog)
    with gr.Accordion(
        "DICOM viewer: window/level, zoom, header", open=True, visible=False, elem_id="dicom-viewer"
    ) as box:
        with gr.Row(equal_height=False):
            image = gr.Image(
                type="pil",
                interactive=False,
                height=360,
                label="Viewer (what you see; the models get the image as decoded for them)",
                elem_id="dicom-image",
                buttons=["fullscreen"],
                scale=3,
            )
            with gr.Column(scale=2, min_width=240):
                preset = gr.Radio([], label="Window / level", elem_id="dicom-window")
                zoom = gr.Slider(1, 4, value=1, step=0.5, label="Zoom (about the centre)", elem_id="dicom-zoom")
                header = gr.HTML("", elem_id="dicom-header-box", js_on_load=None)
    gr.on([preset.change, zoom.release], h.view, [pixels, preset, zoom], [image], api_visibility="private")
    return {
        "refresh": dict(
            fn=h.refresh, inputs=[pixels, task], outputs=[box, preset, image, header, warning], api_visibility="private"
        )
    }
