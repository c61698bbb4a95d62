"""The app's look: a gradio theme with local fonts (nothing fetched from the web) and our stylesheet."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

# The repository's assets/ in a checkout; the copy an installed package carries otherwise.
_CHECKOUT_CSS = Path(__file__).resolve().parents[2] / "assets" / "explorer.css"
CSS_PATH = (
    _CHECKOUT_CSS
    if _CHECKOUT_CSS.is_file()
    else Path(__file__).resolve().parents[1] / "bundled_assets" / "explorer.css"
)


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate").set(
        block_radius="10px",
        button_large_radius="8px",
    )


def css() -> str:
    return CSS_PATH.read_text(encoding="utf-8")
