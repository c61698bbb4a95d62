"""Screenshots of every tab at 1280x800, with the offline demo models doing real work first.

    python tests/browser/screenshots.py [--out screenshots] [--samples ../shared/samples] [--url http://...]

Starts the app in a subprocess (demo preset, a temporary store) unless --url is given, drives it with
Playwright on the system Chromium, and writes one PNG per tab. `running_app` is also what the browser
tests use to start and stop the app.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]
DEFAULT_SAMPLES = REPO.parent / "shared" / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(
    store: Path,
    samples: Optional[Path] = None,
    preset: str = "demo",
    timeout_s: float = 180.0,
    log: Optional[Path] = None,
) -> Iterator[str]:
    """Start `python app.py` on a free 127.0.0.1 port, wait until it answers, yield its URL, stop it."""
    port = free_port()
    cmd = [
        sys.executable,
        str(REPO / "app.py"),
        "--preset",
        preset,
        "--store",
        str(store),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if samples is not None:
        cmd += ["--samples", str(samples)]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        GRADIO_ANALYTICS_ENABLED="False",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    log = log or store.parent / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app did not answer within {timeout_s:.0f} s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # our own process group only
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def launch_browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def synthetic_chest(path: Path, haze: float = 0.0) -> Path:
    """A chest-X-ray-like PNG (two dark lung fields; `haze` brightens the right one like an opacity)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:256, 0:256]
    left = np.exp(-(((x - 85) / 40) ** 2 + ((y - 130) / 70) ** 2))
    right = np.exp(-(((x - 171) / 40) ** 2 + ((y - 130) / 70) ** 2)) * (1 - haze)
    pixels = (255 * (1 - 0.7 * (left + right))).clip(0, 255).astype("uint8")
    Image.fromarray(pixels, "L").save(path)
    return path


def synthetic_samples(root: Path) -> Path:
    """A samples folder like ../shared/samples (every task, two images per class) for machines without it.
    The images are chest-X-ray-like for every task: enough for the app, which only needs real files."""
    for task in ("brain_tumor", "pneumonia", "skin_cancer", "histopathology"):
        for label, hazes in (("negative", (0.0, 0.05)), ("positive", (0.5, 0.6))):
            folder = root / task / label
            folder.mkdir(parents=True, exist_ok=True)
            for i, haze in enumerate(hazes):
                synthetic_chest(folder / f"synthetic_{task}_{label}_{i}.png", haze)
    return root


def sample_image(samples: Optional[Path], tmp: Path) -> Path:
    """A pneumonia sample when a samples folder has one, else a synthetic chest-X-ray-like PNG."""
    if samples is not None:
        found = sorted((samples / "pneumonia").glob("*/*.*"))
        if found:
            return found[0]
    return synthetic_chest(tmp / "synthetic_chest.png")


# ---------------------------------------------------------------- what a new user does, step by step
def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def compare_once(page, image: Path, timeout_ms: int = 120_000) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(image))
    page.locator("#case-info").wait_for(timeout=timeout_ms)
    page.locator("#run-compare").click()
    page.wait_for_function(
        "document.querySelectorAll('#answer-cards .vx-card.vx-done, #answer-cards .vx-card.vx-error').length >= 4",
        timeout=timeout_ms,
    )


def run_grid(page, timeout_ms: int = 240_000) -> None:
    open_tab(page, "Variant grid")
    page.locator("#run-grid").click()
    page.wait_for_function(
        "document.querySelectorAll('#variant-grid td.vx-cell[data-verdict]').length >= 48", timeout=timeout_ms
    )


def run_sweep(
    page, task: str = "Chest X-ray (pneumonia)", n_prompts: int = 2, per_class: int = 1, timeout_ms: int = 240_000
) -> None:
    """A small sweep: one task, the first n prompts, per_class images of each class, every model."""
    open_tab(page, "Sweep")
    tasks = page.locator("#sweep-tasks")
    for title in tasks.locator("label").all_inner_texts():
        if title.strip() != task:
            tasks.get_by_label(title.strip(), exact=True).uncheck()
    prompts = page.locator("#sweep-prompts")
    for pid in prompts.locator("label").all_inner_texts()[n_prompts:]:
        prompts.get_by_label(pid.strip(), exact=True).uncheck()
    box = page.locator("#sweep-per-class input[type=number]")
    box.fill(str(per_class))
    box.press("Enter")
    page.locator("#run-sweep").click()
    page.wait_for_selector("#sweep-progress[data-state=done]", timeout=timeout_ms)


def pick(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option).click()


def snap(page, shots: list, path: Path) -> None:
    """A screenshot of what is on screen now, added to the list of shots taken."""
    page.screenshot(path=path)
    shots.append(path)


def pick_task_and_case(page, task: str) -> None:
    """Choose the task on the Describe & diagnose tab and wait for its sample cases to arrive."""
    case = page.locator("#dx-case input")
    page.wait_for_function("document.querySelector('#dx-case input').value.includes('/')")  # tab entered
    before = case.input_value()
    pick(page, "#dx-task", task)
    page.wait_for_function("b => document.querySelector('#dx-case input').value !== b", arg=before)


def probe_shots(page, out: Path, task: str = "Chest X-ray (pneumonia)", timeout_ms: int = 240_000) -> list[Path]:
    """Embeddings (scatter + probe table), then Describe & diagnose: one case, then a one-image-per-class sweep."""
    shots = []
    open_tab(page, "Embeddings")
    pick(page, "#emb-task", task)
    page.locator("#emb-run").click()
    page.wait_for_selector("#emb-progress[data-state=done]", timeout=timeout_ms)
    page.locator("#emb-plot .js-plotly-plot").wait_for()
    page.wait_for_timeout(800)
    snap(page, shots, out / "4b_embeddings.png")
    page.locator("#emb-plot").scroll_into_view_if_needed()
    snap(page, shots, out / "4b_embeddings_plot.png")
    open_tab(page, "Describe & diagnose")
    pick_task_and_case(page, task)
    page.locator("#dx-run-case").click()
    page.wait_for_selector("#dx-case-progress[data-state=done]", timeout=timeout_ms)
    snap(page, shots, out / "4c_diagnose.png")
    page.locator("#dx-cards").scroll_into_view_if_needed()
    snap(page, shots, out / "4d_diagnose_cards.png")
    box = page.locator("#dx-per-class input[type=number]")
    box.fill("1")
    box.press("Enter")
    page.locator("#dx-run-sweep").click()
    page.wait_for_selector("#dx-sweep-progress[data-state=done]", timeout=timeout_ms)
    page.locator("#dx-metrics").scroll_into_view_if_needed()
    snap(page, shots, out / "4e_diagnose_sweep.png")
    return shots


def take(out: Path, url: str, image: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.locator("#run-compare").wait_for()
        page.locator("#task input").click()
        page.get_by_role("option", name="Chest X-ray (pneumonia)").click()
        compare_once(page, image)
        snap(page, shots, out / "1_compare.png")
        page.locator("#answer-cards").scroll_into_view_if_needed()
        snap(page, shots, out / "1b_compare_cards.png")
        run_grid(page)
        page.locator("#variant-grid td.vx-cell").first.click()
        page.locator("#grid-detail .vx-card").wait_for()
        snap(page, shots, out / "2_grid.png")
        run_sweep(page, n_prompts=4, per_class=2)
        page.locator("#sweep-charts .js-plotly-plot").first.wait_for()
        snap(page, shots, out / "3_sweep.png")
        page.locator("#sweep-charts").scroll_into_view_if_needed()
        snap(page, shots, out / "3b_sweep_charts.png")
        open_tab(page, "Results")
        page.locator("#results-table").wait_for()
        page.wait_for_timeout(1500)
        snap(page, shots, out / "4_results.png")
        shots += probe_shots(page, out)
        open_tab(page, "Models & settings")
        page.locator("#model-status").wait_for()
        snap(page, shots, out / "5_models.png")
        browser.close()
    return shots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(REPO / "screenshots"))
    p.add_argument("--samples", default=str(DEFAULT_SAMPLES) if DEFAULT_SAMPLES.is_dir() else None)
    p.add_argument("--url", default=None, help="an app already running (skips starting one)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(args.samples) if args.samples else synthetic_samples(Path(tmp) / "samples")
        image = sample_image(samples, Path(tmp))
        if args.url:
            shots = take(out, args.url, image)
        else:
            with running_app(Path(tmp) / "explorer.sqlite", samples) as url:
                shots = take(out, url, image)
    for s in shots:
        print(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
