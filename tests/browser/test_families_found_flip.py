"""The smallest flip, found, in Chromium: a model served by a local OpenAI-compatible test server whose
answer depends on known words (it says "Yes." only when the finding is written in capitals), so the
flip search must find the letter-case edit and show both wordings with the changed words marked."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import screenshots as tools  # pytest puts this folder on sys.path (rootdir-less test folders)
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fake_openai_server import FakeOpenAIServer  # noqa: E402


def _shouting_model(text: str) -> str:
    return "Yes." if "PNEUMONIA" in text else "No."


@pytest.fixture()
def served_app(tmp_path, monkeypatch, samples):
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with FakeOpenAIServer(replier=_shouting_model) as server:
        endpoints = tmp_path / "endpoints.yaml"
        endpoints.write_text(
            yaml.safe_dump(
                {"demo-gemma": {"base_url": server.base_url, "model": "fake-vlm", "timeout_s": 10.0, "max_retries": 0}}
            )
        )
        monkeypatch.setenv("EXPLORER_ENDPOINTS", str(endpoints))
        with tools.running_app(tmp_path / "explorer.sqlite", samples, log=tmp_path / "app.log") as url:
            yield url, server


def test_flip_search_finds_and_shows_the_smallest_edit(browser, served_app):
    url, server = served_app
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(url)
        page.locator("#run-compare").wait_for()
        tools.pick(page, "#task", "Chest X-ray (pneumonia)")
        page.wait_for_function("document.querySelectorAll('#examples .thumbnail-item').length > 0")
        page.locator("#examples .thumbnail-item").first.click()
        page.locator("#case-info").wait_for()
        tools.open_tab(page, "Variant grid")
        group = page.locator("#gen-families")
        for title in group.locator("label").all_inner_texts():
            box = group.get_by_label(title.strip(), exact=True)
            if (title.strip() == "Letter case") != box.is_checked():
                box.click()
        tools.pick(page, "#flip-model", "Demo Gemma3 · base")
        page.locator("#find-flip").click()
        result = page.locator("#flip-result")
        result.wait_for(timeout=240_000)
        assert result.get_attribute("data-found") == "true", result.inner_text()
        assert "Flip found" in result.inner_text()
        sides = page.locator("#flip-result .vx-flip-side")
        assert sides.count() == 2
        assert "PNEUMONIA" in sides.nth(1).inner_text() or "PNEUMONIA" in sides.nth(0).inner_text()
        assert page.locator("#flip-diff ins.vx-ins, #flip-diff del.vx-del").count() >= 1
        assert server.requests  # the answers came from the served model
    finally:
        context.close()
