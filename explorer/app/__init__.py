"""The Gradio app: the only part of explorer/ that imports gradio.

layout.build_demo(settings) assembles the tabs (compare, grid, sweep_tab, results,
embeddings_tab, diagnose_view, models_tab); each tab
module lays out its components and wires small event handlers that call the engine facade
(explorer.service.core.Explorer) and render its values (render.py). Per-user state lives in gr.State.
"""
