"""Two visitors at once, in Chromium: one runs a sweep, the other's Compare of answers already in the
store returns while that sweep is still running (no app-wide lock)."""

from __future__ import annotations

import screenshots as tools  # pytest puts this folder on sys.path (rootdir-less test folders)

DONE = "#answer-cards .vx-card.vx-done"
N_MODELS = 4


def _pick_example_and_run(page) -> None:
    tools.pick(page, "#task", "Chest X-ray (pneumonia)")
    page.wait_for_function("document.querySelectorAll('#examples .thumbnail-item').length > 0")
    page.locator("#examples .thumbnail-item").first.click()
    page.locator("#case-info").wait_for()
    page.locator("#prompt textarea").press("Enter")
    page.wait_for_function(f"document.querySelectorAll('{DONE}:not(.vx-stale)').length === {N_MODELS}", timeout=240_000)


def test_a_cached_compare_returns_while_another_visitor_sweeps(browser, app_url):
    viewer = browser.new_context(viewport={"width": 1280, "height": 800})
    sweeper = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        first = viewer.new_page()
        first.goto(app_url)
        first.locator("#run-compare").wait_for()
        _pick_example_and_run(first)  # the answers are now in the store

        other = sweeper.new_page()
        other.goto(app_url)
        other.locator("#run-compare").wait_for()
        tools.open_tab(other, "Sweep")
        tasks = other.locator("#sweep-tasks")
        for title in tasks.locator("label").all_inner_texts():
            if title.strip() != "Chest X-ray (pneumonia)":
                tasks.get_by_label(title.strip(), exact=True).uncheck()
        box = other.locator("#sweep-per-class input[type=number]")
        box.fill("3")  # long enough to still be running when the other visitor's Compare is done
        box.press("Enter")
        other.locator("#run-sweep").click()
        other.wait_for_function(
            "(() => { const p = document.querySelector('#sweep-progress');"
            " return p && p.dataset.state === 'running' && +p.dataset.done > 0; })()",
            timeout=240_000,
        )

        # The first visitor asks again: every answer comes from the store while the sweep generates.
        second = viewer.new_page()
        second.goto(app_url)
        second.locator("#run-compare").wait_for()
        _pick_example_and_run(second)
        assert second.locator(f"{DONE} .vx-cached").count() == N_MODELS
        assert other.locator("#sweep-progress").get_attribute("data-state") == "running"
        other.locator("#cancel-sweep").click()
        other.wait_for_selector("#sweep-progress[data-state=cancelled]", timeout=120_000)
    finally:
        viewer.close()
        sweeper.close()
