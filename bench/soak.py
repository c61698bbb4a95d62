"""A longer soak of the hardening checks: many kill -9 rounds, a storm of server faults, more
property-test examples. Prints a table (and --json writes the numbers) with what must stay zero:
items lost, items stored twice, integrity failures, truncated exports, leaked keys.

  python bench/soak.py                                   # a few minutes on 2 CPU cores
  python bench/soak.py --sweep-rounds 50 --export-rounds 20 --storm-items 480 --properties 3000
  python bench/soak.py --quick                           # a one-minute smoke run
  python bench/soak.py --public-only                     # only the attack on a public app (~1 min)

The attack on a public app (results-file bombs and trickling-server Compares while another visitor's
cached Compare must return within 2 s) lives in bench/soak_public.py.

The checks themselves are the tests' (tests/crash_worker.py, tests/fake_openai_server.py); the CI
versions run 3 rounds each in tests/test_crash_safety.py and tests/test_faults.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from soak_public import public_problems, public_rows, report_public_attack, soak_public_attack  # noqa: E402

STORM_KEY_ENV = "EXPLORER_SOAK_KEY"
STORM_KEY = "soak-SENTINEL-key-8c1f"


# ------------------------------------------------------------------ kill -9 during sweeps
def soak_sweeps(rounds: int, cases: int, rng: random.Random, work: Path) -> dict:
    from crash_worker import check_store, crash_plan, done_keys, item_key, run_and_kill, worker_command

    planned = {item_key(it.model, it.case.case_id, it.variant.prompt_id) for it in crash_plan(cases)}
    store, log = work / "sweep.sqlite", work / "done.jsonl"
    totals = Counter()
    problems: list[str] = []
    for round_ in range(rounds):
        stored = check_store(store, set())["rows"] if store.exists() else 0
        if stored == len(planned):  # finished: start a fresh store so every round kills mid-sweep
            for p in work.glob("sweep.sqlite*"):
                p.unlink()
            log.unlink()
            stored = 0
        threshold = len(done_keys(log)) + stored + 1
        outcome = run_and_kill(
            worker_command(
                "sweep",
                str(store),
                str(log),
                "--delay",
                str(rng.choice([0.0, 0.005, 0.02])),
                "--batch-size",
                str(rng.choice([1, 2, 4, 8])),
                "--cases",
                str(cases),
            ),
            fire_when=lambda proc: len(done_keys(log)) >= threshold,
            delay_s=rng.uniform(0.0, 0.5),
        )
        report = check_store(store, set(done_keys(log)))
        totals["rounds"] += 1
        totals["kills"] += outcome["killed"]
        totals["lost"] += report["lost"]
        totals["duplicates"] += report["duplicates"]
        totals["integrity_failures"] += any("integrity" in p for p in report["problems"])
        problems += [f"sweep round {round_}: {p}" for p in report["problems"]]
        print(
            f"  sweep round {round_ + 1}/{rounds}: killed={outcome['killed']} rows={report['rows']}/{len(planned)}",
            flush=True,
        )
    return {**totals, "problems": problems}


# ------------------------------------------------------------------ kill -9 during exports
def soak_exports(rounds: int, rng: random.Random, work: Path) -> dict:
    from crash_worker import check_export, crash_plan, run_and_kill, stdout_has, temp_files, worker_command
    from sweep_worker import FakeBackend

    from explorer.analysis.exports import export_results
    from explorer.runs.store import Store
    from explorer.runs.sweep import run_sweep

    store_path, out = work / "export.sqlite", work / "export"
    formats = ("csv", "parquet", "json")
    with Store(store_path) as store:
        run_sweep(crash_plan(24), FakeBackend(), store, batch_size=32)
        started = time.perf_counter()
        export_results(store, out, formats=formats)
        took = time.perf_counter() - started
        expected = {"answers": store.count()}
    totals = Counter()
    problems: list[str] = []
    left: set[str] = set()
    for round_ in range(rounds):
        seen: list[str] = []
        if round_ % 2 == 0:  # aim at the write phase (the last ~5% of an export)
            fire, delay = (lambda proc: bool(temp_files(out) - left)), rng.uniform(0.0, 0.15)
        else:  # anywhere in the export
            fire, delay = (lambda proc: stdout_has(proc, "ready", seen)), rng.uniform(0.0, 1.1) * took
        outcome = run_and_kill(
            worker_command("export", str(store_path), str(out), "--formats", ",".join(formats)),
            fire_when=fire,
            delay_s=delay,
            poll_s=0.002,
        )
        report = check_export(out, formats, expected)
        new_temp = set(report["temp_files"]) - left
        left |= new_temp
        totals["rounds"] += 1
        totals["kills"] += outcome["killed"]
        totals["mid_export_kills"] += outcome["killed"] and "done" not in outcome["stdout"]
        totals["kills_while_writing"] += outcome["killed"] and bool(new_temp)
        totals["truncated_or_missing"] += len(report["problems"])
        problems += [f"export round {round_}: {p}" for p in report["problems"]]
        print(
            f"  export round {round_ + 1}/{rounds}: killed={outcome['killed']} while_writing={bool(new_temp)} "
            f"problems={len(report['problems'])}",
            flush=True,
        )
    return {**totals, "temp_files_left": len(left), "problems": problems}


# ------------------------------------------------------------------ a storm of server faults
def soak_faults(items_wanted: int, faults_wanted: int, rng: random.Random, work: Path) -> dict:
    from fake_openai_server import FakeOpenAIServer, Fault
    from sweep_worker import small_plan

    from explorer.catalog.presets import load_catalog
    from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
    from explorer.runs.store import Store
    from explorer.runs.sweep import retry_errors, run_sweep

    os.environ[STORM_KEY_ENV] = STORM_KEY
    kinds = {
        "429 Retry-After": lambda: Fault.http(429, retry_after=str(rng.choice([0, 0.05, 0.1]))),
        "500": lambda: Fault.http(500),
        "502": lambda: Fault.http(502),
        "503": lambda: Fault.http(503),
        "timeout": lambda: Fault.delay(1.0),
        "dropped connection": Fault.drop,
        "truncated JSON": Fault.truncated,
        "empty choices": Fault.empty,
        "400 (not retried)": lambda: Fault.http(400, "bad request"),
        "401 echoing the key": lambda: Fault.http(401, echo_auth=True),
        "invalid JSON reply text": lambda: Fault.reply('{"answer": '),
    }
    plan = small_plan(load_catalog(), n_cases=max(1, items_wanted // 12))
    injected = Counter()
    with FakeOpenAIServer() as server:
        queue = []
        for _ in range(faults_wanted):
            name = rng.choice(sorted(kinds))
            injected[name] += 1
            queue.append(kinds[name]())
        server.add_faults(*queue)
        backend = OpenAIBackend(
            {
                "demo-gemma": EndpointConfig(
                    base_url=server.base_url,
                    model="served",
                    api_key_env=STORM_KEY_ENV,
                    timeout_s=0.3,
                    max_retries=3,
                    max_concurrency=4,
                    backoff_base_s=0.01,
                    backoff_max_s=0.05,
                )
            }
        )
        with Store(work / "storm.sqlite") as store:
            first = run_sweep(plan, backend, store, batch_size=16)
            retries = 0
            while store.count() - store.count(include_errors=False) and retries < 10:
                retry_errors(plan, backend, store, batch_size=16)
                retries += 1
            answered = store.count(include_errors=False)
            ok = store.integrity_ok()
        backend.close()
        requests = len(server.requests)
    leaks = sum(STORM_KEY.encode() in p.read_bytes() for p in work.glob("storm.sqlite*"))
    return {
        "items": len(plan),
        "faults_injected": sum(injected.values()),
        "by_kind": dict(injected),
        "requests": requests,
        "errors_first_pass": first.errors,
        "retry_passes": retries,
        "lost": len(plan) - answered,
        "integrity_failures": int(not ok),
        "leaks": leaks,
    }


# ------------------------------------------------------------------ more property examples
def soak_properties(examples: int) -> dict:
    env = {**os.environ, "EXPLORER_HYPOTHESIS_EXAMPLES": str(examples)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests/test_properties.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    return {
        "examples_per_property": examples,
        "returncode": proc.returncode,
        "summary": (proc.stdout.strip().splitlines() or [""])[-1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep-rounds", type=int, default=30)
    parser.add_argument("--export-rounds", type=int, default=12)
    parser.add_argument("--cases", type=int, default=6, help="images per sweep (x 2 models x 12 prompts)")
    parser.add_argument("--storm-items", type=int, default=240)
    parser.add_argument("--storm-faults", type=int, default=160)
    parser.add_argument("--properties", type=int, default=1000, help="examples per property (0: skip)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    parser.add_argument("--attack-s", type=float, default=30.0, help="seconds of the attack on a public app (0: skip)")
    parser.add_argument("--public-only", action="store_true", help="only the attack on a public app")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    if args.quick:
        args.sweep_rounds, args.export_rounds, args.storm_items, args.storm_faults, args.properties = 5, 3, 48, 30, 0
        args.attack_s = min(args.attack_s, 15.0)
    if args.public_only:
        return report_public_attack(args)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the storm's retries would log a warning each
    rng = random.Random(args.seed)
    results: dict = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="explorer-soak-") as tmp:
        work = Path(tmp)
        print(f"kill -9 during sweeps ({args.sweep_rounds} rounds)", flush=True)
        (work / "sweeps").mkdir()
        results["sweeps"] = soak_sweeps(args.sweep_rounds, args.cases, rng, work / "sweeps")
        print(f"kill -9 during exports ({args.export_rounds} rounds)", flush=True)
        (work / "exports").mkdir()
        results["exports"] = soak_exports(args.export_rounds, rng, work / "exports")
        print(f"fault storm ({args.storm_faults} faults over {args.storm_items} items)", flush=True)
        (work / "storm").mkdir()
        results["faults"] = soak_faults(args.storm_items, args.storm_faults, rng, work / "storm")
        if args.attack_s > 0:
            print(f"attack on a public app ({args.attack_s:g} s)", flush=True)
            (work / "public").mkdir()
            results["public_attack"] = soak_public_attack(args.attack_s, work / "public")
    if args.properties:
        print(f"property tests ({args.properties} examples each)", flush=True)
        results["properties"] = soak_properties(args.properties)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)

    s, e, f = results["sweeps"], results["exports"], results["faults"]
    rows = [
        ("sweeps killed with SIGKILL", f"{s['kills']} of {s['rounds']} rounds"),
        ("  finished items lost", s["lost"]),
        ("  items stored twice", s["duplicates"]),
        ("  integrity_check failures", s["integrity_failures"]),
        (
            "exports killed with SIGKILL",
            f"{e['kills']} of {e['rounds']} ({e['mid_export_kills']} mid-export, "
            f"{e['kills_while_writing']} while writing files)",
        ),
        ("  truncated or missing export files", e["truncated_or_missing"]),
        ("  temp files left beside them", e["temp_files_left"]),
        ("server faults injected", f"{f['faults_injected']} over {f['items']} items ({f['requests']} requests)"),
        ("  errors recorded on the first pass", f["errors_first_pass"]),
        ("  items lost after retry_errors", f["lost"]),
        ("  keys found in the store", f["leaks"]),
    ]
    if "public_attack" in results:
        rows += public_rows(results["public_attack"])
    if "properties" in results:
        p = results["properties"]
        rows.append((f"property tests, {p['examples_per_property']} examples", p["summary"]))
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"{'faults by kind':<{width}}  " + ", ".join(f"{k}: {n}" for k, n in sorted(f["by_kind"].items())))
    print(f"elapsed {results['elapsed_s']} s")
    for problem in s["problems"] + e["problems"]:
        print("PROBLEM:", problem)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    bad = s["lost"] + s["duplicates"] + s["integrity_failures"] + e["truncated_or_missing"] + f["lost"] + f["leaks"]
    bad += public_problems(results["public_attack"]) if "public_attack" in results else 0
    return 1 if bad or f["integrity_failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
