"""Browser-test harness: the app in a subprocess (offline demo models, a temporary store) and Chromium.

Skips cleanly when Playwright or the system Chromium is missing (`playwright install` cannot download
here; install Debian's `chromium` instead).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("explorer_screenshots", Path(__file__).with_name("screenshots.py"))
tools = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tools)


def _need_browser() -> None:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not (os.path.exists(tools.CHROMIUM) or shutil.which("chromium")):
        pytest.skip("no system Chromium at /usr/bin/chromium (apt-get install -y chromium)")


@pytest.fixture(scope="session")
def samples(tmp_path_factory) -> Path:
    """../shared/samples when present, else a tiny synthetic folder (pneumonia, 2 images per class)."""
    if tools.DEFAULT_SAMPLES.is_dir():
        return tools.DEFAULT_SAMPLES
    return tools.synthetic_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture(scope="session")
def sample_image(samples, tmp_path_factory) -> Path:
    return tools.sample_image(samples, tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def app_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("app") / "app.log"


@pytest.fixture(scope="session")
def app_url(samples, app_log):
    _need_browser()
    with tools.running_app(app_log.parent / "explorer.sqlite", samples, log=app_log) as url:
        yield url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the app's log to a failing browser test: the server side of what the browser saw."""
    outcome = yield
    report = outcome.get_result()
    log = item.funcargs.get("app_log") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and log is not None and log.exists():
        report.sections.append(("app log (last 4000 chars)", log.read_text()[-4000:]))


@pytest.fixture(scope="session")
def browser():
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = tools.launch_browser(pw)
        yield b
        b.close()


@pytest.fixture()
def page(browser, app_url, app_log, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    p = context.new_page()
    p.set_default_timeout(120_000)  # the first answers load four models; CI machines can be slow
    p.goto(app_url)
    p.locator("#run-compare").wait_for()
    yield p
    context.close()


def pytest_collection_modifyitems(config, items):
    # Everything under tests/browser drives Chromium: `-m "not browser"` leaves it out.
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)
