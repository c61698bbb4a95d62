"""The probe tabs in a real browser, on the offline demo models: the Embeddings tab draws its t-SNE scatter
and the probe's accuracy beside the models' own; Describe & diagnose shows descriptions and diagnoses."""

from __future__ import annotations

import screenshots as tools  # pytest puts this folder on sys.path (rootdir-less test folders)

TASK = "Chest X-ray (pneumonia)"
ALL_MODELS = ("demo-llava", "demo-llava-med", "demo-gemma", "demo-medgemma")


def _pick(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option).click()
    assert page.locator(f"{dropdown} input").input_value() == option


def test_embeddings_tab_scatter_and_probe(page):
    page.get_by_role("tab", name="Embeddings").click()
    _pick(page, "#emb-task", TASK)
    page.locator("#emb-run").click()
    page.wait_for_selector("#emb-progress[data-state=done]", timeout=240_000)
    # The scatter: one marker per image per model, drawn by plotly.
    plot = page.locator("#emb-plot .js-plotly-plot")
    plot.wait_for()
    assert page.locator("#emb-plot .scatterlayer .point").count() > 0
    assert "t-SNE" in plot.inner_text()
    # The probe's CV accuracy with its CI, next to each model's own accuracy.
    rows = page.locator("#probe-table tr[data-alias]")
    assert sorted(rows.evaluate_all("els => els.map(e => e.dataset.alias)")) == sorted(ALL_MODELS)
    probe = page.locator("#probe-table td.vx-probe").first.inner_text()
    assert "%" in probe and "[" in probe and "fold" in probe
    assert page.locator("#probe-table").is_visible()
    notes = page.locator("#emb-notes").inner_text()
    assert "perplexity" in notes and "random weights" in notes
    assert page.locator("#noise-banner").is_visible()


def test_describe_and_diagnose_one_case(page):
    page.get_by_role("tab", name="Describe & diagnose").click()
    tools.pick_task_and_case(page, TASK)  # the task's first sample case
    models = page.locator("#dx-models")
    for label in ("Demo Llava \u00b7 medical", "Demo Gemma3 \u00b7 base"):  # demo-llava-med, demo-gemma by name
        models.get_by_label(label, exact=True).uncheck()
    page.locator("#dx-run-case").click()
    page.wait_for_selector("#dx-case-progress[data-state=done]", timeout=240_000)
    cards = page.locator("#dx-cards .vx-card")
    assert sorted(cards.evaluate_all("els => els.map(e => e.dataset.alias)")) == ["demo-llava", "demo-medgemma"]
    # Two descriptions per model, three templates each, every one with its diagnosis and a verdict mark.
    assert page.locator("#dx-cards tr[data-template]").count() == 12
    assert page.locator("#dx-cards .vx-mark").count() == 12
    assert "diagnoses" in page.locator("#dx-case-status").inner_text()
