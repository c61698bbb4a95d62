"""The study's three architectures as the benchmarks build them: which demo model stands for each
(random weights at the study's image geometry), which real checkpoint --real uses, their sizes at the
real models' widths and depths (--full), and building such a model straight on the GPU. Shared by
bench_speed.py, bench_memory.py and exact_vs_fast.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import bench_cases  # noqa: F401  (makes the repo importable, offline)

ARCHITECTURES = {"llava_next": "demo-llava", "llava": "demo-llava-med", "gemma3": "demo-gemma"}
REAL_MODELS = {"llava_next": "llava", "llava": "llava-med", "gemma3": "gemma"}  # --real: the study's checkpoints


def full_sizes():
    """DemoSize per architecture at the real models' widths and depths (random weights)."""
    from explorer.models.demo import DemoSize

    study = DemoSize.study_shapes()
    mistral = dict(
        text_hidden=4096,
        text_layers=32,
        text_heads=32,
        text_kv_heads=8,
        text_intermediate=14336,
        vision_hidden=1024,
        vision_layers=24,
        vision_heads=16,
        vision_intermediate=4096,
    )
    gemma = dict(
        text_hidden=2560,
        text_layers=34,
        text_heads=8,
        text_kv_heads=4,
        text_intermediate=10240,
        vision_hidden=1152,
        vision_layers=27,
        vision_heads=16,
        vision_intermediate=4304,
    )
    return {
        "llava_next": replace(study, **mistral),
        "llava": replace(study, **mistral),
        "gemma3": replace(study, **gemma),
    }


def build_on_gpu(catalog, alias: str, size, folder: Path) -> Path:
    """Build a full-size random model straight on the GPU in bf16 and save it where the backend
    looks for it: seconds of random init and 8-14 GB written, where building on the CPU in fp32
    takes minutes and 16-28 GB. The backend then loads it through from_pretrained as usual."""
    import torch

    from explorer.models.demo import ensure_demo_model

    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            built = ensure_demo_model(catalog.model(alias), size, folder)
    finally:
        torch.set_default_dtype(before)
        torch.cuda.empty_cache()
    return built
