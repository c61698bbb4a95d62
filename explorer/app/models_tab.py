"""Models and settings tab: what can run here and why not, load/unload, configured endpoints."""

from __future__ import annotations

import os
from html import escape
from typing import Any

import gradio as gr

from explorer.app import names, render
from explorer.app.context import SharedExplorer, user_message, warn
from explorer.service.public import PolicyError


def endpoints_html(ex) -> str:
    """Configured OpenAI-compatible endpoints; an API key is named by its variable, never shown."""
    endpoints = getattr(ex.registry, "endpoints", {}) or {}
    if not endpoints:
        return (
            '<div class="vx-empty" id="endpoints">No OpenAI-compatible endpoints configured. Point '
            "<code>EXPLORER_ENDPOINTS</code> at a YAML file mapping model aliases to "
            "<code>{base_url, model, api_key_env}</code>; keys stay in the environment.</div>"
        )
    rows = []
    for alias, cfg in endpoints.items():
        key_env = getattr(cfg, "api_key_env", None) or ""
        key = (
            (f"${escape(key_env)} " + ("is set" if os.environ.get(key_env) else "is NOT set")) if key_env else "no key"
        )
        rows.append(
            f"<tr><td><code>{escape(alias)}</code></td><td>{escape(str(getattr(cfg, 'base_url', '')))}</td>"
            f"<td>{escape(str(getattr(cfg, 'model', '') or ''))}</td><td>{key}</td></tr>"
        )
    return (
        '<table class="vx-table" id="endpoints"><thead><tr><th>alias</th><th>base URL</th><th>served model</th>'
        f"<th>API key</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def settings_html(shared: SharedExplorer, ex) -> str:
    s = shared.settings
    # A public deployment names no server paths (a visitor may not open them anyway).
    store = s.store_path.name if s.public else str(s.store_path)
    samples = (
        ("provided by this deployment" if s.public else str(s.samples_dir))
        if s.samples_dir
        else "none (start with --samples DIR)"
    )
    items = {
        "study preset": f"{ex.preset.name}: {ex.preset.description}",
        "results store": store,
        "sample images": samples,
        # The Explorer's own policy: public mode may come from --public as well as from the environment.
        "public deployment": ex.policy.describe() if ex.policy.enabled else "no (private: no limits)",
        "Hugging Face token": "set in the environment"
        if (os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
        else "not set",
    }
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in items.items())
    return f'<table class="vx-table" id="settings">{rows}</table>'


class ModelHandlers:
    def __init__(self, shared: SharedExplorer):
        self.shared = shared

    def refresh(self):
        ex = self.shared.get()
        titles = {m.alias: m.title for m in ex.model_specs()}
        table = render.model_table(ex.model_status(), titles) + render.notice(ex.memory_summary(), "info")
        return table, endpoints_html(ex), settings_html(self.shared, ex)

    def load(self, alias: str):
        return self._act(alias, "load")

    def unload(self, alias: str):
        return self._act(alias, "unload")

    def _act(self, alias: str, action: str):
        ex = self.shared.get()
        try:
            if self.shared.settings.public:
                # The models are shared by every visitor: one must not unload them under another's run.
                raise PolicyError("This public demo does not let visitors load or unload the shared models.")
            if not alias:
                raise ValueError("Choose a model first.")
            if action == "load":
                ex.load_model(alias)
                note = render.notice(f"{alias}: loaded.", "ok")
            else:
                note = (
                    render.notice(f"{alias}: unloaded.", "ok")
                    if ex.unload_model(alias)
                    else render.notice(f"{alias} was not loaded; nothing to unload.", "info")
                )
        except Exception as exc:
            msg = user_message(exc)
            warn(msg)
            note = render.notice(msg)
        table, _, _ = self.refresh()
        return table, note


def build(shared: SharedExplorer, catalog, preset) -> dict[str, Any]:
    h = ModelHandlers(shared)
    gr.Markdown("### Models of this study preset")
    table = gr.HTML("", elem_id="models-table", js_on_load=None, apply_default_css=False)
    public = shared.settings.public
    with gr.Row():
        # Public mode: no load/unload on the page (the handlers refuse a direct API call too).
        alias = gr.Dropdown(
            [(names.model_label(catalog.model(a)), a) for a in preset.models],
            value=preset.models[0],
            label="Model",
            elem_id="model-pick",
            scale=3,
            visible=not public,
        )
        load = gr.Button("Load", elem_id="model-load", scale=1, visible=not public)
        unload = gr.Button("Unload", elem_id="model-unload", scale=1, visible=not public)
        refresh = gr.Button("Refresh", elem_id="model-refresh", scale=1)
    note = gr.HTML("", elem_id="models-status", js_on_load=None)
    gr.Markdown("### OpenAI-compatible endpoints")
    endpoints = gr.HTML("", elem_id="endpoints-box", js_on_load=None, apply_default_css=False)
    gr.Markdown("### Settings")
    settings = gr.HTML("", elem_id="settings-box", js_on_load=None, apply_default_css=False)
    # Read-only (model states, endpoints with key variables named but never shown, settings), so a
    # script or a monitor can ask what this deployment runs.
    refresh.click(h.refresh, None, [table, endpoints, settings], api_name="model_status")
    load.click(h.load, [alias], [table, note], api_name="load_model", concurrency_id="gpu")
    unload.click(h.unload, [alias], [table, note], api_name="unload_model", concurrency_id="gpu")
    return {"refresh": h.refresh, "outputs": [table, endpoints, settings]}
