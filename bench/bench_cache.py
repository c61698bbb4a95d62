"""How much the results store saves: one small sweep run twice against a fresh store.

The first run generates every answer with the offline demo models (real transformers code paths,
random weights); the second run of the same plan is served entirely from the store. Prints both
times and their ratio. Model loading is timed apart, so the ratio compares generating with serving.

  python bench/bench_cache.py                      # about half a minute on 2 CPU cores
  python bench/bench_cache.py --models demo-gemma,demo-llava --cases 4 --prompts 12 --max-new-tokens 16

Images: the sample folder beside the checkout when present (--samples), else synthetic noise images.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

# bench/ is on sys.path when run as a script; bench_cases also makes the repo importable, offline.
from bench_cases import DEFAULT_SAMPLES, load_cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo-gemma,demo-llava-med", help="comma-separated demo model aliases")
    parser.add_argument("--task", default="pneumonia")
    parser.add_argument("--cases", type=int, default=2, help="images")
    parser.add_argument("--prompts", type=int, default=6, help="the first N closed-form prompts (1-12)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES, help="folder of task/class images")
    parser.add_argument("--store", type=Path, default=None, help="store file (default: a fresh temporary one)")
    args = parser.parse_args(argv)

    from explorer.catalog.presets import load_catalog
    from explorer.prompts.variants import closed_variants
    from explorer.runs.store import Store
    from explorer.runs.sweep import plan_sweep, run_sweep

    try:
        from explorer.models.backends.transformers_backend import TransformersBackend
    except ImportError as exc:
        print(f"bench_cache: the transformers backend is missing ({exc}); nothing to measure.")
        return 2

    catalog = load_catalog()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [m for m in models if m not in catalog.models]
    if missing:
        print(f"bench_cache: models missing from the catalog: {', '.join(missing)}; nothing to measure.")
        return 2
    if not all(catalog.model(m).is_demo for m in models):
        print("bench_cache: note: non-demo models need their weights available locally.")

    cases, where = load_cases(args.task, args.cases, args.samples, noise_sizes=[(96, 96)])
    variants = closed_variants(catalog, args.task)[: max(1, min(12, args.prompts))]
    plan = plan_sweep(
        catalog,
        models,
        [args.task],
        {args.task: cases},
        {args.task: variants},
        generation_override={"max_new_tokens": args.max_new_tokens},
    )
    print(
        f"plan: {len(models)} models x {len(cases)} images ({where}) x {len(variants)} prompts "
        f"= {len(plan)} answers, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}"
    )

    backend = TransformersBackend(catalog, batch_size=args.batch_size)
    tmp = None
    if args.store is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_cache_")
        store_path = Path(tmp.name) / "bench.sqlite"
    else:
        store_path = args.store
        if store_path.exists():
            print(f"bench_cache: {store_path} exists; the benchmark needs a fresh store.")
            return 2
    try:
        load_s = {}
        for alias in models:
            t = time.perf_counter()
            backend.load(alias)
            load_s[alias] = time.perf_counter() - t
        print("model load: " + ", ".join(f"{a} {s:.1f}s" for a, s in load_s.items()))

        with Store(store_path) as store:
            first = run_sweep(plan, backend, store, batch_size=args.batch_size)
            second = run_sweep(plan, backend, store, batch_size=args.batch_size)
            stored = store.count()
            ok = store.integrity_ok()
    finally:
        backend.close()
        if tmp is not None:
            tmp.cleanup()

    print(
        f"first run : {first.elapsed_s:8.3f} s  computed={first.computed} cached={first.cached} errors={first.errors}"
    )
    print(
        f"second run: {second.elapsed_s:8.3f} s  computed={second.computed} cached={second.cached} errors={second.errors}"
    )
    if first.failures:
        for alias, why in first.failures.items():
            print(f"  {alias} failed: {why}")
    if second.computed or second.errors:
        print("bench_cache: the second run generated answers again: the cache did not serve them.")
        return 1
    ratio = first.elapsed_s / max(second.elapsed_s, 1e-9)
    print(f"answers stored: {stored} (integrity {'ok' if ok else 'FAILED'})")
    print(
        f"speed-up of the cached re-run: {ratio:.0f}x  "
        f"({first.elapsed_s / max(len(plan), 1) * 1000:.1f} ms vs {second.elapsed_s / max(len(plan), 1) * 1000:.2f} ms per answer)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
