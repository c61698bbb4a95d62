"""Endpoint parallelism: N fake OpenAI-compatible servers, each answering after a fixed latency.

The same sweep (two models' closed-form prompts on a few images) runs against 1, 2, ... N servers, the
models spread over them, each server with the same max_concurrency. A sweep whose endpoints run side by
side has N times the throughput of one; one that walks the models one after another does not.

  python bench/bench_endpoints.py                      # 1 vs 2 servers, 0.2 s latency
  python bench/bench_endpoints.py --servers 1,2,4 --models 4 --latency 0.2 --max-concurrency 8

Models are dealt to servers in turn, and one model's requests go to its own server, so the gain is
bounded by how evenly the models spread (3 models on 2 servers: 2:1, about 1.5x).
The servers are tests/fake_openai_server.py (a test server answering with an echo, not a model).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench_cases import REPO, synthetic_cases  # noqa: F401  (bench_cases makes the repo importable)

sys.path.insert(0, str(REPO / "tests"))

# Chat-template formats only: a server is sent chat messages (LLaVA-Med's raw [INST] format is not).
MODELS = ["demo-gemma", "demo-medgemma", "demo-llava"]


def run_once(n_servers: int, aliases, plan, latency: float, max_concurrency: int) -> dict:
    import os

    from fake_openai_server import FakeOpenAIServer

    from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
    from explorer.runs.store import Store
    from explorer.runs.sweep import run_sweep

    os.environ.setdefault("BENCH_FAKE_KEY", "not-a-secret")
    servers = [FakeOpenAIServer(delay_s=latency).start() for _ in range(n_servers)]
    try:
        endpoints = {
            alias: EndpointConfig(
                base_url=servers[k % n_servers].base_url,
                model=alias,
                api_key_env="BENCH_FAKE_KEY",
                max_concurrency=max_concurrency,
                timeout_s=30.0,
                max_retries=0,
            )
            for k, alias in enumerate(aliases)
        }
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(Path(tmp) / "bench.sqlite")
            started = time.perf_counter()
            summary = run_sweep(plan, OpenAIBackend(endpoints), store, batch_size=12)
            wall = time.perf_counter() - started
            store.close()
        peaks = [s.max_in_flight for s in servers]
    finally:
        for s in servers:
            s.stop()
    if summary.errors or summary.computed != len(plan):
        raise SystemExit(
            f"{n_servers} server(s): {summary.errors} errors, {summary.computed} of {len(plan)} "
            f"answered: {summary.failures}"
        )
    return {"servers": n_servers, "answers": len(plan), "wall_s": wall, "per_s": len(plan) / wall, "peaks": peaks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="1,2", help="comma-separated server counts (default 1,2)")
    parser.add_argument("--models", type=int, default=2, help="how many demo model aliases (default 2)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds each server takes per request")
    parser.add_argument("--max-concurrency", type=int, default=8, help="requests in flight per server")
    args = parser.parse_args()

    from explorer.catalog.presets import load_catalog
    from explorer.prompts.variants import closed_variants
    from explorer.runs.sweep import plan_sweep

    catalog = load_catalog()
    aliases = MODELS[: args.models]
    cases = synthetic_cases("pneumonia", args.images, sizes=[(64, 64)])
    plan = plan_sweep(
        catalog,
        aliases,
        ["pneumonia"],
        {"pneumonia": cases},
        {"pneumonia": closed_variants(catalog, "pneumonia")},
        "official",
    )
    counts = [int(x) for x in args.servers.split(",")]
    rows = [run_once(n, aliases, plan, args.latency, args.max_concurrency) for n in counts]
    base = rows[0]["per_s"]
    print(
        f"{len(plan)} answers, {len(aliases)} models spread over the servers, {args.latency:.2f} s per request, "
        f"max_concurrency {args.max_concurrency} per server"
    )
    print("| servers | wall s | answers/s | x one server | most in flight per server |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['servers']} | {r['wall_s']:.2f} | {r['per_s']:.1f} | {r['per_s'] / base:.2f}x | {r['peaks']} |")
    ideal = args.latency * len(plan) / (args.max_concurrency * counts[0])
    print(f"(one server, ideal: {ideal:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
