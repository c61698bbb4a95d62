"""Images for the benchmarks: sample images of a task when present (classes alternating, so a small n
sees both), else synthetic noise of a few sizes. Shared by bench_speed.py and bench_cache.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# The benchmarks use only the offline demo models: never wait on a Hub that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DEFAULT_SAMPLES = REPO.parent / "shared" / "samples"

NOISE_SIZES = [(512, 512), (300, 400), (640, 480), (256, 256)]


def synthetic_cases(task: str, n: int, seed: int = 0, sizes=NOISE_SIZES):
    import numpy as np
    from PIL import Image

    from explorer.cases.images import content_hash
    from explorer.schema import Case

    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")
        cases.append(
            Case(
                case_id=f"{task}:bench:{i}",
                task=task,
                image=img,
                image_hash=content_hash(img),
                label="positive" if i % 2 else "negative",
                source="synthetic noise",
                row_id=i,
            )
        )
    return cases


def load_cases(task: str, n: int, samples: Path | None, noise_sizes=NOISE_SIZES):
    """(cases, where they came from)."""
    from explorer.cases import hub as datasets

    folder = None
    if samples is not None and samples.is_dir():
        names = [task, *(a for a, k in datasets.TASK_ALIASES.items() if k == task)]
        folder = next((samples / name for name in names if (samples / name).is_dir()), None)
    if folder is not None:
        per_class = max(1, (n + 1) // 2)
        cases = list(datasets.folder_cases(folder, task, per_class=per_class, seed=42).cases)
        pos = [c for c in cases if c.label == "positive"]
        neg = [c for c in cases if c.label != "positive"]
        mixed = [c for pair in zip(pos, neg) for c in pair] + pos[len(neg) :] + neg[len(pos) :]
        if mixed:
            return mixed[:n], f"{min(n, len(mixed))} images from {folder}"
    return synthetic_cases(task, n, sizes=noise_sizes), f"{n} synthetic noise images"
