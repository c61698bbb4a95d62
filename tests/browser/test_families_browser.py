"""Wording families in Chromium: generate variants for one image, run them, see the grid grouped by family,
search for the smallest flip, and on a phone scroll the grid sideways with the wording column fixed.

The demo models have random weights, so whether a flip exists is not known in advance: the test accepts
the found flip (two wordings, the changed words marked) or the "No flip within N requests" message;
test_families_found_flip.py finds a flip for certain, with a served model whose answers depend on known
words.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import screenshots as tools  # pytest puts this folder on sys.path (rootdir-less test folders)

N_MODELS = 4
CELLS = "#variant-grid td.vx-cell[data-verdict]"


def _pick_example(page) -> None:
    tools.pick(page, "#task", "Chest X-ray (pneumonia)")
    page.wait_for_function("document.querySelectorAll('#examples .thumbnail-item').length > 0")
    page.locator("#examples .thumbnail-item").first.click()
    page.locator("#case-info").wait_for()


def _choose_families(page, keep: set[str]) -> None:
    group = page.locator("#gen-families")
    for title in group.locator("label").all_inner_texts():
        box = group.get_by_label(title.strip(), exact=True)
        if (title.strip() in keep) != box.is_checked():
            box.click()


def test_generate_run_grouped_grid_flip_and_phone(page, tmp_path):
    _pick_example(page)
    tools.open_tab(page, "Variant grid")
    _choose_families(page, {"Letter case", "Asked the other way round"})
    count = page.locator("#gen-count input[type=number]")
    count.fill("1")
    count.press("Tab")
    page.locator("#generate-variants").click()
    # 2 starting wordings + 1 casing edit of each + 1 flipped question (of the yes/no wording: the reader
    # cannot read free text to "which does it not show", so that one is left out) = 5 rows, x 4 models.
    page.locator("#grid-status .vx-notice-ok").wait_for(timeout=240_000)
    rows = page.locator("#variant-grid tbody th.vx-wording").count()
    assert rows == 5
    assert page.locator(CELLS).count() == rows * N_MODELS
    heads = page.locator("#variant-grid tr.vx-family-head").evaluate_all("els => els.map(e => e.dataset.family)")
    assert heads == ["study", "casing", "polarity_flip"]
    assert page.locator("#variant-grid tr.vx-family-head").first.inner_text().startswith("The study")
    names = page.locator("#variant-grid .vx-wording-name").all_inner_texts()
    assert any(n.startswith("Letter case:") for n in names) and any(
        n.startswith("Asked the other way round:") for n in names
    )
    # The whole wording is on screen (wrapped, not cut) and on hover.
    flipped = page.locator('#variant-grid th.vx-wording[title="Is this image free of pneumonia?"]')
    if flipped.count():  # the seed picked this template
        assert flipped.locator(".vx-wording-text").inner_text() == "Is this image free of pneumonia?"
    for text in page.locator("#variant-grid .vx-wording-text").evaluate_all(
        "els => els.map(e => [e.scrollWidth <= e.clientWidth + 1, getComputedStyle(e).whiteSpace])"
    ):
        assert text == [True, "pre-wrap"]

    # The smallest flip of one model's answer, within a small budget.
    count = page.locator("#flip-budget input[type=number]")
    count.fill("6")
    count.press("Tab")
    page.locator("#find-flip").click()
    result = page.locator("#flip-result")
    result.wait_for(timeout=240_000)
    if result.get_attribute("data-found") == "true":
        assert page.locator("#flip-result .vx-flip-side").count() == 2
        assert page.locator("#flip-diff ins.vx-ins, #flip-diff del.vx-del").count() >= 1
        assert "Flip found" in result.inner_text()
    else:
        assert "No flip within" in result.inner_text() and "requests" in result.inner_text()
    shot = tmp_path / "families.png"
    page.locator("#tab-grid").screenshot(path=shot)  # controls, the flip search and the grouped grid
    if os.environ.get("FAMILIES_SCREENSHOT"):  # the README's screenshot is taken by this very test
        shutil.copy(shot, Path(os.environ["FAMILIES_SCREENSHOT"]))

    # On a phone the table scrolls sideways inside its box and the wording column stays where it is.
    page.set_viewport_size({"width": 390, "height": 844})
    scroller = page.locator("#grid-wrap .vx-fgrid-scroll")
    scroller.scroll_into_view_if_needed()
    sizes = scroller.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert sizes[0] > sizes[1], sizes
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 2  # the page itself does not scroll
    wording = page.locator("#variant-grid tbody th.vx-wording").first
    cell = page.locator("#variant-grid tbody td.vx-cell").first
    before, cell_before = wording.bounding_box()["x"], cell.bounding_box()["x"]
    scroller.evaluate("e => { e.scrollLeft = e.scrollWidth; }")
    page.wait_for_timeout(200)
    left = scroller.bounding_box()["x"]
    # The cells moved left out of view; the wording column stuck to the box's left edge.
    assert cell.bounding_box()["x"] < cell_before - 50
    assert left - 1 <= wording.bounding_box()["x"] <= before + 1
    last_column = page.locator("#variant-grid thead th.vx-col").last.bounding_box()
    assert last_column["x"] + last_column["width"] <= 390 + 2  # scrolled into view
