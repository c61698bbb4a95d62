"""Compare as the demo's stage, in Chromium: answers above the fold at 1280x800 after Enter, a picked
wording runs, the history strip and the word diff, both cards of a pair on a phone, and a public app
with no load/unload that serves no uploaded original.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import screenshots as tools  # pytest puts this folder on sys.path (rootdir-less test folders)

DONE = "#answer-cards .vx-card.vx-done"
N_MODELS = 4


def _scroll_top(page) -> None:
    page.evaluate("window.scrollTo(0, 0)")


def _pick_example(page) -> None:
    tools.pick(page, "#task", "Chest X-ray (pneumonia)")
    page.wait_for_function("document.querySelectorAll('#examples .thumbnail-item').length > 0")
    page.locator("#examples .thumbnail-item").first.click()
    page.locator("#case-info").wait_for()


def _wait_answers(page, heading_part: str) -> None:
    page.wait_for_function(
        "([part, n]) => { const h = document.querySelector('#answer-cards .vx-cards-heading');"
        " return h && h.innerText.includes(part) && document.querySelectorAll("
        f"'{DONE}:not(.vx-stale)').length === n; }}",
        arg=[heading_part, N_MODELS],
    )


def _in_viewport(page, selector: str) -> list[dict]:
    return page.locator(selector).evaluate_all(
        "els => els.map(e => { const r = e.getBoundingClientRect();"
        " return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width}; })"
    )


def test_answers_above_the_fold_dropdown_runs_history_and_diff(page):
    _pick_example(page)
    _scroll_top(page)
    page.locator("#prompt textarea").press("Enter")
    _wait_answers(page, "Is it abnormal?")
    assert page.evaluate("window.scrollY") == 0
    # Every card's verdict badge and the start of its answer are on screen without scrolling.
    for box in _in_viewport(page, f"{DONE} .vx-badge") + _in_viewport(page, f"{DONE} .vx-answer"):
        assert 0 <= box["top"] and box["top"] + 20 <= 800, box
    assert page.locator("#verdict-legend").is_visible()
    assert "answers are noise" in page.locator("#noise-banner").inner_text()
    first = page.locator(f"{DONE} .vx-badge").evaluate_all("els => els.map(e => e.dataset.verdict)")
    assert page.locator("#answer-cards .vx-pair-flag").count() == 2

    # Picking a wording from the dropdown runs it; the old answers stay until the new ones land.
    tools.pick(page, "#variant", "Is it normal? \u2014 Is this image normal?")
    _wait_answers(page, "Is it normal?")
    assert "Is this image normal?" == page.locator("#prompt textarea").input_value()

    # The history strip: both wordings with a verdict per model; the word that changed is marked.
    strip = page.locator("#history-strip")
    strip.wait_for()
    rows = strip.locator("tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).locator("th").inner_text() == "Is it normal?"
    assert rows.nth(1).locator("th").inner_text() == "Is it abnormal?"
    old_row = rows.nth(1).locator(".vx-chip").evaluate_all("els => els.map(e => e.dataset.verdict)")
    assert old_row == first
    diff = page.locator("#wording-diff")
    assert diff.locator("del.vx-del").inner_text().strip() == "abnormal?"
    assert diff.locator("ins.vx-ins").inner_text().strip() == "normal?"
    # The address bar now restores this view: same task, sample, wording and models in a new tab.
    page.wait_for_function("location.search.includes('wording=normal')")
    link = page.evaluate("location.href")
    assert page.locator("#share-link textarea, #share-link input").first.input_value() == link
    assert "wording=normal" in link and "case=" in link and "models=" in link
    other = page.context.new_page()
    other.goto(link + "&present=1")
    _wait_answers(other, "Is it normal?")
    assert other.locator("#case-info").inner_text() == page.locator("#case-info").inner_text()
    assert other.locator(f"{DONE} .vx-cached").count() == N_MODELS  # the same answers, from the store
    # ...in presentation mode: no title, tabs or side column, larger type than the normal page.
    assert other.evaluate("document.body.classList.contains('vx-present')")
    assert not other.locator("#app-title").is_visible() and not other.locator("#compare-side").is_visible()
    size = "e => parseFloat(getComputedStyle(e).fontSize)"
    assert other.locator(f"{DONE} .vx-answer").first.evaluate(size) > page.locator(f"{DONE} .vx-answer").first.evaluate(
        size
    )
    other.close()

    # An edited wording is "your wording 1", in the heading, the strip and a link that carries its text.
    box = page.locator("#prompt textarea")
    box.fill("Is this chest X-ray normal?")
    box.press("Enter")
    _wait_answers(page, "your wording 1")
    assert page.locator("#history-strip tbody tr").first.locator("th").inner_text() == "your wording 1"
    assert "custom_" not in page.locator("#compare-cards").inner_text()  # no ids on screen
    page.wait_for_function("location.search.includes('text=')")


def test_phone_shows_both_cards_of_each_pair(browser, app_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(app_url)
    page.locator("#run-compare").wait_for()
    _pick_example(page)
    page.locator("#run-compare").click()
    page.wait_for_function(f"document.querySelectorAll('{DONE}:not(.vx-stale)').length === {N_MODELS}")
    for pair in page.locator("#answer-cards .vx-pair").all():
        boxes = _in_viewport(pair, ".vx-card")
        assert len(boxes) == 2
        for box in boxes:
            assert box["left"] >= 0 and box["right"] <= 390 and box["width"] > 250, box  # whole, one under the other
        assert boxes[1]["top"] >= boxes[0]["bottom"] - 1
    assert page.evaluate("document.documentElement.scrollWidth") <= 392  # no sideways scroll of the page
    context.close()


@pytest.fixture(scope="module")
def public_url(samples, tmp_path_factory):
    tools_dir = tmp_path_factory.mktemp("public")
    mp = pytest.MonkeyPatch()
    mp.setenv("EXPLORER_PUBLIC", "1")
    try:
        with tools.running_app(tools_dir / "explorer.sqlite", samples, log=tools_dir / "app.log") as url:
            yield url
    finally:
        mp.undo()


def _patient_dicom(path: Path) -> Path:
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID, ds.InstitutionName = "Qwertyson^Jane", "MRN-4711", "St Elsewhere"
    ds.Modality, ds.BodyPartExamined = "CT", "CHEST"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    # A chest-CT-like phantom in Hounsfield units: air, a soft-tissue body, two lungs, a spine.
    y, x = np.mgrid[0:128, 0:128]
    hu = np.full((128, 128), -1000.0)
    hu[((x - 64) / 58) ** 2 + ((y - 64) / 44) ** 2 <= 1] = 40
    for cx in (38, 90):
        hu[((x - cx) / 20) ** 2 + ((y - 60) / 28) ** 2 <= 1] = -820
    hu[((x - 64) / 9) ** 2 + ((y - 96) / 9) ** 2 <= 1] = 900
    ds.Rows = ds.Columns = 128
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 40, 400
    ds.PixelData = (hu + 1024).clip(0, 4095).astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def test_public_mode_has_no_load_unload_and_serves_no_uploaded_original(browser, public_url, tmp_path):
    from gradio_client import Client

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(public_url)
    page.locator("#run-compare").wait_for()
    assert page.locator("#privacy-note").is_visible()
    # A DICOM named after its patient, under the brain MRI task although the header says chest CT.
    dicom = _patient_dicom(tmp_path / "Qwertyson_Jane_MRN-4711.dcm")
    with page.expect_response(lambda r: "/gradio_api/upload" in r.url and r.request.method == "POST") as info:
        page.locator("#upload input[type=file]").set_input_files(str(dicom))
    server_paths = json.loads(info.value.text())
    page.locator("#case-info").wait_for()
    assert "your upload" in page.locator("#case-info").inner_text()
    page.locator("#dicom-mismatch-top").wait_for()
    assert "CT" in page.locator("#dicom-mismatch-top").inner_text()
    html = page.content()
    assert "Qwertyson" not in html and "MRN-4711" not in html and "Elsewhere" not in html
    for path in server_paths:
        assert not Path(path).exists(), path  # the original left Gradio's cache
        try:
            with urllib.request.urlopen(f"{public_url}gradio_api/file={path}", timeout=10) as r:
                body = r.read()
            assert b"Qwertyson" not in body, "the uploaded original is served"
        except urllib.error.HTTPError as exc:
            assert exc.code in (403, 404)
    # No load/unload on the page, and the API refuses them too.
    tools.open_tab(page, "Models & settings")
    page.locator("#model-status").wait_for()
    assert page.locator("#model-load").count() == 0 or not page.locator("#model-load").is_visible()
    assert page.locator("#model-unload").count() == 0 or not page.locator("#model-unload").is_visible()
    client = Client(public_url, verbose=False)
    _, note = client.predict("demo-llava", api_name="/load_model")
    assert "does not let visitors load or unload" in note
    _, note = client.predict("demo-llava", api_name="/unload_model")
    assert "does not let visitors load or unload" in note
    # The same DICOM through the API: answered, and no file of that name is left in Gradio's cache.
    from gradio.utils import get_upload_folder
    from gradio_client import handle_file

    _, answers, _ = client.predict(
        handle_file(str(dicom)),
        "pneumonia",
        "unknown",
        "Is this image abnormal?",
        "abnormal",
        ["demo-gemma"],
        "paper",
        api_name="/compare",
    )
    assert answers and answers[0]["error"] is None and "upload" in answers[0]["case_id"]
    assert not list(Path(get_upload_folder()).rglob("Qwertyson*"))
    context.close()


def test_reload_during_a_sweep_re_attaches_and_cancel_still_works(page):
    """A sweep belongs to the browser (a cookie), not to the page: after a reload the Sweep tab follows it
    again, and Cancel stops it."""
    tools.open_tab(page, "Sweep")
    tasks = page.locator("#sweep-tasks")
    for title in tasks.locator("label").all_inner_texts():
        if title.strip() != "Chest X-ray (pneumonia)":
            tasks.get_by_label(title.strip(), exact=True).uncheck()
    box = page.locator("#sweep-per-class input[type=number]")
    box.fill("3")  # 4 models x 12 wordings x 6 images: long enough to reload in the middle
    box.press("Enter")
    page.locator("#run-sweep").click()
    page.wait_for_function(
        "(() => { const p = document.querySelector('#sweep-progress');"
        " return p && p.dataset.state === 'running' && +p.dataset.done > 0; })()"
    )
    page.reload()
    page.locator("#run-compare").wait_for()
    tools.open_tab(page, "Sweep")
    page.wait_for_function(
        "(() => { const p = document.querySelector('#sweep-progress');"
        " return p && p.dataset.state === 'running' && +p.dataset.total > 0; })()"
    )
    assert "found again" in page.locator("#sweep-status").inner_text()
    before = int(page.locator("#sweep-progress").get_attribute("data-done"))
    page.wait_for_function("b => +document.querySelector('#sweep-progress').dataset.done > b", arg=before)
    page.locator("#cancel-sweep").click()
    page.wait_for_function("document.querySelector('#sweep-status').innerText.includes('Cancelling')")
    page.wait_for_selector("#sweep-progress[data-state=cancelled]", timeout=120_000)
