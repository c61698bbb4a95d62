"""The whole app: header, the random-weights banner (above the tabs, so it is on every tab), the tabs.

Building it is cheap (YAML presets only); the Explorer and any model are created on first use.
"""

from __future__ import annotations

from html import escape
from typing import Any

import gradio as gr

from explorer.app import compare, diagnose_view, embeddings_tab, grid, models_tab, render, results, sweep_tab, theme
from explorer.app.context import AppSettings, SharedExplorer
from explorer.catalog.presets import load_catalog

TITLE = "Medical VLM prompt-sensitivity explorer"


def header(preset) -> str:
    return (
        f'<div id="app-title"><h1>{TITLE}</h1><p>Base vs medical vision-language models: '
        f"do the answers move when only the wording changes? &middot; preset <b>{escape(preset.name)}</b></p></div>"
    )


def random_weights(catalog, preset) -> bool:
    """Whether any model of the preset is an offline demo model (its answers are noise)."""
    return any(catalog.model(a).is_demo for a in preset.models)


def build_demo(settings: AppSettings) -> gr.Blocks:
    catalog = load_catalog()
    preset = catalog.study(settings.preset)
    shared = SharedExplorer(settings)
    noise = random_weights(catalog, preset)
    with gr.Blocks(title=TITLE) as demo:
        gr.HTML(header(preset), js_on_load=None, elem_id="header-box")
        gr.HTML(render.banner(noise), js_on_load=None, elem_id="banner-box")
        case_state = gr.State(None)  # the image the Compare and Grid tabs work on, per session
        my_uploads = gr.State([])  # case ids this session uploaded: the Results tab shows them to it alone
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                c = compare.build(shared, catalog, preset, case_state, my_uploads)
            with gr.Tab("Variant grid", id="grid", elem_id="tab-grid") as grid_tab:
                g = grid.build(shared, catalog, preset, case_state, c["style"])
            with gr.Tab("Sweep", id="sweep", elem_id="tab-sweep"):
                s = sweep_tab.build(shared, catalog, preset)
            with gr.Tab("Results", id="results", elem_id="tab-results") as results_tab:
                r = results.build(shared, catalog, preset, my_uploads)
            with gr.Tab("Embeddings", id="embeddings", elem_id="tab-embeddings"):
                embeddings_tab.build(shared, catalog, preset)
            with gr.Tab("Describe & diagnose", id="diagnose", elem_id="tab-diagnose") as diagnose_tab:
                d = diagnose_view.build(shared, catalog, preset, case_state)
            with gr.Tab("Models & settings", id="models", elem_id="tab-models") as models_page:
                m = models_tab.build(shared, catalog, preset)
        # A shared link restores its view first; then the examples of the (restored) task. One queue slot:
        # the examples of the page load and of each task change arrive in order.
        examples = dict(
            fn=c["load"],
            inputs=[c["task"]],
            outputs=[c["examples"]],
            api_visibility="private",
            concurrency_id="examples",
            concurrency_limit=1,
            trigger_mode="always_last",
        )
        demo.load(None, None, None, js=c["present_js"], api_visibility="private")
        # The visitor's cookie first (a reload keeps it), then the visitor's running sweep, found again.
        demo.load(None, None, None, js=s["visitor_js"], api_visibility="private").then(**s["reattach"])
        restored = demo.load(c["restore"], None, c["restore_outputs"], api_visibility="private").then(**examples)
        for step in c["after_restore"]:
            restored = restored.then(**step)
        c["task_input"](**examples)
        grid_tab.select(g["shown"], [case_state], [g["caption"]], api_visibility="private")
        results_tab.select(r["shown"], r["inputs"], r["outputs"], api_visibility="private")
        diagnose_tab.select(d["shown"], d["inputs"], d["outputs"], api_visibility="private")
        models_page.select(m["refresh"], None, m["outputs"], api_visibility="private")

        def session_ended(request: gr.Request):  # a closed or reloaded page: its sweeps stop after a grace period
            shared.end_session(getattr(request, "session_hash", None))

        demo.unload(session_ended)
    demo.queue(default_concurrency_limit=settings.gpu_concurrency * 4, max_size=64)
    return demo


def launch_kwargs(settings: AppSettings) -> dict[str, Any]:
    """What Gradio 6 takes at launch rather than in Blocks(): look, served folders, upload limits."""
    from explorer.service.public import current_policy

    allowed = [str(settings.samples_dir)] if settings.samples_dir else []
    policy = current_policy()
    return {
        "theme": theme.theme(),
        "css": theme.css(),
        "allowed_paths": allowed,
        # Gradio refuses bigger uploads before they reach us; the policy's own check stays the authority.
        "max_file_size": policy.max_upload_bytes if settings.public else "1gb",
        "show_error": True,
    }
