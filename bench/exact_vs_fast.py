"""The same sample answered the study's way (--exact: one request per call, no reuse, the authors' dtype)
and the engine's way (batched, prefix reuse, the preset's dtype): how many answers agree, and what each
costs in time and memory.

Random weights at the study's image geometry (small widths on CPU; --full: the real models' widths and
depth, CUDA, nothing downloaded), so it needs no Hub access. A third run, batched at the exact run's
dtype, separates what batching changes from what the dtype changes.

  python bench/exact_vs_fast.py --threads 1                       # CPU, tiny widths, a few minutes
  python bench/exact_vs_fast.py --full --images 8 --max-new-tokens 128   # a GPU machine
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench_cases import DEFAULT_SAMPLES, load_cases
from study_models import ARCHITECTURES, full_sizes


def peak_memory(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 1e9:.2f} GB GPU peak"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB RSS peak (process, cumulative)"


def run(plan, catalog, size, workdir: Path, device: str, **options) -> tuple[dict, float, str]:
    import torch

    from explorer.models.backends.transformers_backend import TransformersBackend
    from explorer.runs.store import Store
    from explorer.runs.sweep import run_sweep

    backend = TransformersBackend(catalog, device=device, demo_size=size, demo_cache_dir=workdir / "models", **options)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    store = Store(workdir / f"store-{time.monotonic_ns()}.sqlite")
    rows: dict = {}
    started = time.perf_counter()
    run_sweep(plan, backend, store, batch_size=12, on_item=lambda item, row: rows.__setitem__(item.key, row))
    wall = time.perf_counter() - started
    memory = peak_memory(device)
    store.close()
    backend.close()
    return rows, wall, memory


def agreement(a: dict, b: dict) -> dict:
    keys = sorted(set(a) & set(b))
    same_text = sum((a[k].get("answer") or "") == (b[k].get("answer") or "") for k in keys)
    same_verdict = sum(a[k].get("verdict") == b[k].get("verdict") for k in keys)
    diffs = [
        abs(a[k]["p_positive"] - b[k]["p_positive"])
        for k in keys
        if a[k].get("p_positive") is not None and b[k].get("p_positive") is not None
    ]
    errors = sum(bool(a[k].get("error")) or bool(b[k].get("error")) for k in keys)
    return {
        "n": len(keys),
        "text": same_text / max(1, len(keys)),
        "verdict": same_verdict / max(1, len(keys)),
        "p_diff": max(diffs) if diffs else None,
        "errors": errors,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default="llava_next,llava,gemma3")
    parser.add_argument("--task", default="pneumonia")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--full", action="store_true", help="the real models' widths and depth (CUDA)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--text-hidden", type=int, default=64)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    args = parser.parse_args(argv)

    import torch

    from explorer.catalog.presets import load_catalog
    from explorer.models.demo import DemoSize
    from explorer.prompts.variants import closed_variants
    from explorer.runs.sweep import plan_sweep

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.full and not device.startswith("cuda"):
        print("exact_vs_fast: --full needs CUDA (4-7B parameters at random weights)")
        return 2
    catalog = load_catalog()
    sizes = (
        full_sizes() if args.full else {a: DemoSize.study_shapes(text_hidden=args.text_hidden) for a in ARCHITECTURES}
    )
    cases, where = load_cases(args.task, args.images, args.samples)
    variants = closed_variants(catalog, args.task)[: max(1, min(12, args.prompts))]
    print(
        f"exact_vs_fast: {len(cases)} images ({where}) x {len(variants)} prompts, greedy, max_new_tokens="
        f"{args.max_new_tokens}, {'full size' if args.full else 'study shapes, small widths'}, random weights, "
        f"{device}, torch {torch.__version__}"
    )
    rows = []
    for arch in [a.strip() for a in args.architectures.split(",") if a.strip()]:
        alias = ARCHITECTURES[arch]
        spec = catalog.model(alias)
        real = catalog.model(spec.demo_of)
        settings = {
            "max_new_tokens": args.max_new_tokens,
            "min_new_tokens": min(real.generation.min_new_tokens, args.max_new_tokens),
        }
        plan = plan_sweep(
            catalog,
            [alias],
            [args.task],
            {args.task: cases},
            {args.task: variants},
            "paper",
            generation_override=settings,
        )
        workdir = Path(tempfile.mkdtemp(prefix=f"exact_vs_fast_{arch}_"))
        try:
            # Built once before any timing (every run then loads the same weights from disk).
            from explorer.models.demo import ensure_demo_model

            ensure_demo_model(spec, sizes[arch], workdir / "models")
            # The real model's dtype rule (the demo stand-ins have none of their own).
            fast_dtype = real.dtype if real.dtype != "auto" else None
            exact, exact_s, exact_mem = run(plan, catalog, sizes[arch], workdir, device, exact=True)
            fast, fast_s, fast_mem = run(plan, catalog, sizes[arch], workdir, device, dtype=fast_dtype)
            exact_dtype = "bfloat16" if device.startswith("cuda") else "float32"
            same, same_s, _ = run(plan, catalog, sizes[arch], workdir, device, dtype=exact_dtype)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        a, b = agreement(exact, fast), agreement(exact, same)
        rows.append((arch, a, b, exact_s, fast_s, same_s, exact_mem, fast_mem, fast_dtype or "auto", exact_dtype))
        print(
            f"  {arch}: exact {exact_s:.1f}s, fast {fast_s:.1f}s ({fast_dtype or 'auto'}), fast at {exact_dtype} "
            f"{same_s:.1f}s; identical answers {a['text']:.0%} / {b['text']:.0%} at the same dtype",
            flush=True,
        )
    print(
        "\n| architecture | answers | identical (fast) | same verdict (fast) | identical (fast, exact's dtype) "
        "| max dp_positive (same dtype) | exact s | fast s | errors | memory exact / fast |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch, a, b, es, fs, ss, em, fm, fd, ed in rows:
        p = "-" if b["p_diff"] is None else f"{b['p_diff']:.2g}"
        print(
            f"| {arch} | {a['n']} | {a['text']:.0%} ({fd}) | {a['verdict']:.0%} | {b['text']:.0%} ({ed}) | {p} | "
            f"{es:.1f} | {fs:.1f} | {a['errors'] + b['errors']} | {em} / {fm} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
