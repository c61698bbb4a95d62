"""A fully cached sweep as the user runs it: the CLI in a fresh process, every answer already stored.

Runs `python -m explorer sweep --preset demo --quiet` (the demo preset's 4 models x 4 tasks x
8 images x 12 prompts = 1,536 answers) once to fill a store, unless --store names one that is
already full, then --repeats more times against that store, each in a new Python process as a user
would start it. Reports the wall time of each cached run (process start to exit), whether it
generated anything, and whether torch or transformers were imported (`python -X importtime`).
Target: under 3 s wall, no torch.

  python bench/bench_cached_sweep.py                       # fills a temporary store first (minutes on CPU)
  python bench/bench_cached_sweep.py --store demo.sqlite   # reuses (or fills) that store
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cases import DEFAULT_SAMPLES, REPO

HEAVY = ("torch", "transformers")


def sweep(store: Path, samples: Path, extra: list[str], importtime: bool) -> tuple[float, str, set[str]]:
    """One CLI sweep in a fresh process: (wall seconds, stdout, heavy top-level modules imported)."""
    command = [sys.executable] + (["-X", "importtime"] if importtime else [])
    command += ["-m", "explorer", "sweep", "--preset", "demo", "--quiet", "--store", str(store)]
    command += ["--samples", str(samples)] if samples.is_dir() else []
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(command + extra, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench_cached_sweep: the sweep exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    # importtime lines: "import time: self [us] | cumulative | imported package", nesting by indent.
    imported = {
        m.group(1).split(".")[0] for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", done.stderr, re.MULTILINE)
    }
    return seconds, done.stdout, imported & set(HEAVY)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None, help="a store to reuse (filled first if not full)")
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--extra", default="", help="more sweep arguments, e.g. '--tasks pneumonia' (both runs)")
    args = parser.parse_args(argv)
    extra = args.extra.split()

    tmp = None
    store = args.store
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_cached_")
        store = Path(tmp.name) / "demo.sqlite"
    try:
        seconds, out, _ = sweep(store, args.samples, extra, importtime=False)
        print(f"fill: {seconds:.1f}s  {out.strip().splitlines()[-1] if out.strip() else ''}")
        walls, heavy = [], set()
        for _ in range(max(1, args.repeats)):
            seconds, out, imported = sweep(store, args.samples, extra, importtime=True)
            summary = next((line for line in out.splitlines() if " planned, " in line), out.strip())
            walls.append(seconds)
            heavy |= imported
            generated = re.search(r"(\d+) generated", summary)
            print(f"cached: {seconds:.2f}s wall  {summary.strip()}")
            if generated and int(generated.group(1)):
                print("bench_cached_sweep: a cached run generated answers: the store did not serve them all.")
                return 1
        median = statistics.median(walls)
        print(
            f"\ncached sweep, median of {len(walls)}: {median:.2f}s wall (target < 3 s); "
            f"torch/transformers imported: {', '.join(sorted(heavy)) or 'neither'}"
        )
        return 0 if median < 3 and not heavy else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
