"""A new user's first session, in a real browser, against the offline demo models.

Upload a chest X-ray, compare four models, edit the prompt and press Enter, see cached answers, open the
variant grid, run a tiny sweep (1 task, 2 images, 2 prompts) to the end, see a chart, download the CSV.
Every step asserts on what is on the screen.
"""

from __future__ import annotations

import csv

from explorer.schema import VERDICT_LABELS

DONE_CARDS = "#answer-cards .vx-card.vx-done"
ALL_MODELS = ("demo-llava", "demo-llava-med", "demo-gemma", "demo-medgemma")


def _verdicts(page, selector: str) -> list[str]:
    return page.locator(selector).evaluate_all("els => els.map(e => e.dataset.verdict)")


def _pick_task(page, title: str) -> None:
    page.locator("#task input").click()
    page.get_by_role("option", name=title).click()
    assert page.locator("#task input").input_value() == title


def test_new_user_session(page, sample_image, tmp_path):
    # The random-weights banner is above the tabs, so it is on every tab.
    assert "answers are noise" in page.locator("#noise-banner").inner_text()

    # -- Compare: pick the task, upload an image, run all four models.
    _pick_task(page, "Chest X-ray (pneumonia)")
    page.locator("#upload input[type=file]").set_input_files(str(sample_image))
    page.locator("#case-info").wait_for()
    assert sample_image.name in page.locator("#case-info").inner_text()
    page.locator("#run-compare").click()
    page.wait_for_function(f"document.querySelectorAll('{DONE_CARDS}').length === 4")
    cards = page.locator(DONE_CARDS)
    assert sorted(cards.evaluate_all("els => els.map(e => e.dataset.alias)")) == sorted(ALL_MODELS)
    badges = _verdicts(page, f"{DONE_CARDS} .vx-badge")
    assert len(badges) == 4 and set(badges) <= set(VERDICT_LABELS)
    assert page.locator(f"{DONE_CARDS} .vx-latency").count() == 4
    assert page.locator(f"{DONE_CARDS} .vx-answer").all_inner_texts() != ["", "", "", ""]

    # -- Edit the prompt and press Enter: a new (edited) prompt, four fresh answers.
    box = page.locator("#prompt textarea")
    box.fill("Is there any sign of pneumonia in this chest X-ray?")
    box.press("Enter")
    page.wait_for_function(
        "(() => { const h = document.querySelector('#answer-cards .vx-cards-heading');"
        f" return h && h.innerText.includes('(edited)') && document.querySelectorAll('{DONE_CARDS}').length === 4; }})()"
    )
    assert "sign of pneumonia" in page.locator("#answer-cards .vx-cards-heading").inner_text()
    # The same prompt again comes from the store, marked cached.
    box.press("Enter")
    page.wait_for_function("document.querySelectorAll('#answer-cards .vx-cached').length === 4")
    assert "from the store" in page.locator("#compare-status").inner_text()

    # -- Variant grid: a coloured cell for each of 12 variants x 4 models; a click shows the full answer.
    page.get_by_role("tab", name="Variant grid").click()
    page.locator("#run-grid").click()
    cells = "#variant-grid td.vx-cell[data-verdict]"
    page.wait_for_function(f"document.querySelectorAll('{cells}').length === 48", timeout=180_000)
    assert set(_verdicts(page, cells)) <= set(VERDICT_LABELS)
    colours = page.locator(cells).evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert all(c not in ("rgba(0, 0, 0, 0)", "transparent") for c in colours)
    assert page.locator("#variant-grid th.vx-col").count() == 4
    page.locator(cells).nth(1).click()
    page.locator("#grid-detail .vx-card").wait_for()
    assert page.locator("#grid-detail .vx-answer").inner_text().strip()
    assert page.locator("#flip-counts .vx-flip").count() == 4

    # -- Sweep: 1 task, 2 prompts, 1 image per class; progress to the end, a chart, a CSV download.
    page.get_by_role("tab", name="Sweep").click()
    tasks = page.locator("#sweep-tasks")
    for title in ("Brain MRI (tumor)", "Dermatoscopy (skin cancer)", "Breast histopathology (IDC)"):
        tasks.get_by_label(title).uncheck()
    prompts = page.locator("#sweep-prompts")
    for pid in prompts.locator("label").all_inner_texts()[2:]:
        prompts.get_by_label(pid.strip(), exact=True).uncheck()
    per_class = page.locator("#sweep-per-class input[type=number]")
    per_class.fill("1")
    per_class.press("Enter")
    page.locator("#run-sweep").click()
    page.wait_for_selector("#sweep-progress[data-state=done]", timeout=180_000)
    progress = page.locator("#sweep-progress")
    assert progress.is_visible() and progress.get_attribute("data-done") == progress.get_attribute("data-total") == "16"
    page.locator("#sweep-charts .js-plotly-plot").first.wait_for()
    assert "pneumonia" in page.locator("#sweep-metrics").inner_text()
    with page.expect_download() as info:
        page.locator("#dl-answers-csv").click()
    path = tmp_path / "answers.csv"
    info.value.save_as(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16
    assert {r["model"] for r in rows} == set(ALL_MODELS) and {r["task"] for r in rows} == {"pneumonia"}
    assert all(r["verdict"] in VERDICT_LABELS for r in rows)
