"""How long the offline demo models take to build, load and answer a first request, per model.

    python bench/bench_demo_models.py

Builds each demo model into a fresh temporary cache (random weights, a locally trained tokenizer,
saved and loaded through from_pretrained like the real models), then times the first generate()
call (load included) and two more. These numbers used to be printed by two tests that could not
fail; they are measurements, so they live here.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from explorer.catalog.presets import load_catalog  # noqa: E402
from explorer.models.backends.transformers_backend import TransformersBackend  # noqa: E402
from explorer.models.demo import ensure_demo_model  # noqa: E402
from explorer.prompts.messages import build_request  # noqa: E402
from explorer.prompts.variants import closed_variant  # noqa: E402
from explorer.schema import Case  # noqa: E402

DEMOS = ("demo-llava", "demo-llava-med", "demo-gemma", "demo-medgemma")


def main() -> int:
    catalog = load_catalog()
    task = catalog.task("pneumonia")
    variant = closed_variant(task, "abnormal", True, catalog.one_word_suffix)
    image = Image.new("RGB", (96, 64), (120, 90, 60))
    case = Case(case_id="bench:0", task="pneumonia", image=image, image_hash="bench", label=None)
    print("model            build s   first generate s (load included)   next two s")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for alias in DEMOS:
            started = time.perf_counter()
            paths[alias] = ensure_demo_model(catalog.model(alias), cache_dir=Path(tmp))
            built = time.perf_counter() - started
            backend = TransformersBackend(catalog, local_paths={alias: paths[alias]})
            request = build_request(catalog.model(alias), variant, case, "paper", None)
            times = []
            for _ in range(3):
                started = time.perf_counter()
                [response] = backend.generate([request])
                times.append(time.perf_counter() - started)
                if not response.ok:
                    print(f"{alias}: {response.error}", file=sys.stderr)
                    return 1
            print(
                f"{alias:<16} {built:7.2f}   {times[0]:10.2f}                          {times[1]:.2f} / {times[2]:.2f}"
            )
    print("demo models have random weights: their answers are noise; these are only timings.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
