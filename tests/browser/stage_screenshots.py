"""Screenshots of the Compare stage at 1280x800, 1920x1080 and 390x844 (a phone), for the README.

    python tests/browser/stage_screenshots.py [--out assets/screenshots] [--samples ../shared/samples]

Starts the app (offline demo models, a temporary store), asks two wordings on a sample chest X-ray so
the history strip and the word diff show, then photographs the page as a presenter, a phone and a
clinician (a DICOM in the viewer) see it. PNGs are written as palette images to stay small.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import screenshots as tools  # noqa: E402  (the harness the browser tests use)

REPO = Path(__file__).resolve().parents[2]
SIZES = {"1280x800": (1280, 800), "1920x1080": (1920, 1080), "390x844": (390, 844)}


def small_png(page, path: Path, full_page: bool = False) -> Path:
    """A screenshot quantised to 256 colours (UI pictures lose nothing visible; the file shrinks ~3x)."""
    raw = page.screenshot(full_page=full_page)
    Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        path, optimize=True
    )
    return path


def two_wordings(page) -> None:
    tools.pick(page, "#task", "Chest X-ray (pneumonia)")
    page.wait_for_function("document.querySelectorAll('#examples .thumbnail-item').length > 1")
    page.locator("#examples .thumbnail-item").nth(1).click()
    page.locator("#case-info").wait_for()
    page.locator("#prompt textarea").press("Enter")
    page.wait_for_function("document.querySelectorAll('#answer-cards .vx-card.vx-done:not(.vx-stale)').length === 4")
    tools.pick(page, "#variant", "Is it normal? \u2014 Is this image normal?")
    page.locator("#history-strip").wait_for()
    page.wait_for_function("location.search.includes('wording=normal')")
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(400)


def take(out: Path, url: str, dicom: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as pw:
        browser = tools.launch_browser(pw)
        for name, (w, h) in SIZES.items():
            phone = w < 500
            page = browser.new_page(viewport={"width": w, "height": h}, is_mobile=phone, has_touch=phone)
            page.set_default_timeout(180_000)
            page.goto(url)
            page.locator("#run-compare").wait_for()
            two_wordings(page)
            if phone:  # the cards, as a phone shows them after a run
                page.locator("#answer-cards").scroll_into_view_if_needed()
                page.wait_for_timeout(300)
            shots.append(small_png(page, out / f"compare_{name}.png"))
            if name == "1920x1080":
                page.locator("#present").click()
                page.wait_for_timeout(400)
                shots.append(small_png(page, out / f"compare_present_{name}.png"))
            if name == "1280x800":
                tools.pick(page, "#task", "Brain MRI (tumor)")
                page.locator("#upload input[type=file]").set_input_files(str(dicom))
                page.locator("#dicom-mismatch-top").wait_for()
                page.locator("#dicom-viewer").scroll_into_view_if_needed()
                page.wait_for_timeout(400)
                shots.append(small_png(page, out / f"dicom_viewer_{name}.png"))
            page.close()
        browser.close()
    return shots


def main(argv=None) -> int:
    from test_browser_stage import _patient_dicom

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "assets" / "screenshots"))
    p.add_argument("--samples", default=str(tools.DEFAULT_SAMPLES) if tools.DEFAULT_SAMPLES.is_dir() else None)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(args.samples) if args.samples else tools.synthetic_samples(Path(tmp) / "samples")
        dicom = _patient_dicom(Path(tmp) / "chest_ct.dcm")
        with tools.running_app(Path(tmp) / "explorer.sqlite", samples) as url:
            shots = take(out, url, dicom)
    for s in shots:
        print(s, f"{s.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
