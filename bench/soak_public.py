"""The attack on a public app, part of bench/soak.py (`python bench/soak.py --public-only` runs it alone).

The app starts in public mode (demo preset, a local store) and, for the given seconds, attackers upload
results-file bombs through the Results tab's upload handler (an SQLite whose `answers` is a recursive
view, a store with a trigger, a dictionary-encoded Parquet that decodes to 1.7 GB, 100k-deep JSON) and
run Compares against a model served by a server that trickles one byte every 0.2 s; meanwhile another
visitor repeats a Compare whose answers are cached, through gradio_client, and each of those must
return within 2 s.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

CACHED_COMPARE_LIMIT_S = 2.0


def _attack_files(folder: Path) -> dict[str, Path]:
    """Results-file bombs a visitor could upload (each a few KB)."""
    import sqlite3

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    view = folder / "view.sqlite"
    conn = sqlite3.connect(view)
    conn.executescript(
        "CREATE VIEW answers AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) "
        "SELECT x AS id, 'demo-gemma' AS model FROM r;"
    )
    conn.close()
    files["recursive view (SQLite)"] = view
    trigger = folder / "trigger.sqlite"
    conn = sqlite3.connect(trigger)
    conn.executescript(
        "CREATE TABLE answers (id INTEGER PRIMARY KEY, model TEXT); "
        "CREATE TRIGGER t AFTER INSERT ON answers BEGIN SELECT 1; END;"
    )
    conn.close()
    files["trigger (SQLite)"] = trigger
    rows = 1_700
    model = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["x" * 1_000_000]))
    table = pa.table(
        {
            "model": model,
            "task": ["pneumonia"] * rows,
            "prompt_id": ["abnormal"] * rows,
            "prompt_family": ["abnormal"] * rows,
            "case_id": [f"c{i}" for i in range(rows)],
            "label": ["positive"] * rows,
            "verdict": ["positive"] * rows,
        }
    )
    pq.write_table(table, folder / "bomb.parquet", compression="zstd", store_schema=False)
    files["dictionary bomb (Parquet, 1.7 GB decoded)"] = folder / "bomb.parquet"
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    files["100k-deep JSON"] = folder / "deep.json"
    return files


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def soak_public_attack(seconds: float, work: Path) -> dict:
    import html
    import statistics
    import threading
    import warnings

    import numpy as np
    import yaml
    from gradio_client import Client, handle_file
    from misbehaving_server import MisbehavingServer
    from PIL import Image

    from explorer.app.context import AppSettings, SharedExplorer
    from explorer.app.layout import build_demo, launch_kwargs
    from explorer.app.results import ResultsHandlers

    warnings.filterwarnings("ignore", category=UserWarning)  # each refusal also raises a gr.Warning
    samples = work / "samples" / "pneumonia"
    for k, label in enumerate(("negative", "positive")):
        (samples / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40), 60 + 120 * k, dtype=np.uint8), "L").save(samples / label / "a.png")
    image = samples / "positive" / "a.png"
    bombs = _attack_files(work / "bombs")
    outcome: dict = {"bombs": {}, "trickle_s": [], "trickle_errors": [], "cached_s": [], "errors": []}
    with MisbehavingServer("trickle", trickle_s=0.2) as trickle:
        endpoints = work / "endpoints.yaml"
        endpoints.write_text(
            yaml.safe_dump(
                {
                    "demo-medgemma": {
                        "base_url": trickle.base_url,
                        "model": "served",
                        "timeout_s": 2.0,
                        "deadline_s": 3.0,
                        "max_retries": 0,
                    }
                }
            )
        )
        os.environ.update(
            {
                "EXPLORER_ENDPOINTS": str(endpoints),
                "EXPLORER_PUBLIC": "1",
                "GRADIO_ANALYTICS_ENABLED": "False",
                "EXPLORER_CACHE": str(work / "cache"),
            }
        )
        settings = AppSettings.from_env(preset="demo", samples_dir=work / "samples", store_path=work / "app.sqlite")
        demo = build_demo(settings)
        port = _free_port()
        demo.launch(
            server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **launch_kwargs(settings)
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            victim = Client(url, verbose=False, download_files=str(work / "downloads-victim"))
            attacker = Client(url, verbose=False, download_files=str(work / "downloads-attacker"))
            question = ("Is this chest X-ray abnormal?", "abnormal")

            def compare(client, models, prompt=question):
                return client.predict(
                    handle_file(str(image)),
                    "pneumonia",
                    "unknown",
                    prompt[0],
                    prompt[1],
                    models,
                    "paper",
                    api_name="/compare",
                )

            compare(victim, ["demo-gemma"])  # the victim's answers are now in the store
            started = time.perf_counter()
            compare(victim, ["demo-gemma"])
            outcome["cached_baseline_s"] = round(time.perf_counter() - started, 3)

            stop = threading.Event()
            uploads = ResultsHandlers(SharedExplorer(settings))

            def bomb_loop():
                while not stop.is_set():
                    for name, path in bombs.items():
                        t0 = time.perf_counter()
                        out = uploads.open_upload(str(path))
                        status = next((v for v in out if isinstance(v, str) and "vx-notice" in v), "")
                        took = time.perf_counter() - t0
                        rec = outcome["bombs"].setdefault(name, {"tries": 0, "refused": 0, "max_s": 0.0, "message": ""})
                        rec["tries"] += 1
                        rec["refused"] += "vx-notice-error" in status
                        rec["max_s"] = round(max(rec["max_s"], took), 3)
                        rec["message"] = html.unescape(status.split(">", 1)[-1].rsplit("<", 1)[0])[:110]

            def trickle_loop():
                n = 0
                while not stop.is_set():
                    n += 1
                    t0 = time.perf_counter()
                    try:  # a new wording each time: never cached, so it always reaches the server
                        out = compare(attacker, ["demo-medgemma"], (f"Is this abnormal? ({n})", "abnormal"))
                        outcome["trickle_errors"].append("deadline" in str(out))
                    except Exception as exc:  # noqa: BLE001 - recorded, the soak goes on
                        outcome["errors"].append(f"trickle compare: {type(exc).__name__}: {exc}"[:200])
                    outcome["trickle_s"].append(time.perf_counter() - t0)

            attackers = [threading.Thread(target=bomb_loop, daemon=True) for _ in range(2)]
            attackers.append(threading.Thread(target=trickle_loop, daemon=True))
            for t in attackers:
                t.start()
            end = time.perf_counter() + seconds
            time.sleep(1.0)  # let the attack get going
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    compare(victim, ["demo-gemma"])
                except Exception as exc:  # noqa: BLE001
                    outcome["errors"].append(f"victim compare: {type(exc).__name__}: {exc}"[:200])
                outcome["cached_s"].append(time.perf_counter() - t0)
                time.sleep(0.3)
            stop.set()
            for t in attackers:
                t.join(timeout=30)
        finally:
            demo.close()
    cached = outcome["cached_s"] or [float("inf")]
    return {
        "seconds": seconds,
        "cached_compares": len(outcome["cached_s"]),
        "cached_median_s": round(statistics.median(cached), 3),
        "cached_max_s": round(max(cached), 3),
        "cached_over_limit": sum(t > CACHED_COMPARE_LIMIT_S for t in cached),
        "cached_baseline_s": outcome.get("cached_baseline_s"),
        "trickle_compares": len(outcome["trickle_s"]),
        "trickle_max_s": round(max(outcome["trickle_s"] or [0.0]), 2),
        "trickle_ended_by_deadline": sum(outcome["trickle_errors"]),
        "bombs": outcome["bombs"],
        "errors": outcome["errors"],
    }


def public_rows(a: dict) -> list[tuple[str, object]]:
    rows = [
        (
            f"public app under attack for {a['seconds']:g} s",
            f"{a['cached_compares']} cached Compares by another visitor",
        ),
        (
            "  cached Compare, median / max",
            f"{a['cached_median_s']} s / {a['cached_max_s']} s (before the attack: {a['cached_baseline_s']} s)",
        ),
        (f"  cached Compares over {CACHED_COMPARE_LIMIT_S:g} s", a["cached_over_limit"]),
        (
            "  trickling-server Compares",
            f"{a['trickle_compares']}, longest {a['trickle_max_s']} s "
            f"(deadline 3 s), {a['trickle_ended_by_deadline']} ended by the deadline",
        ),
    ]
    for name, b in a["bombs"].items():
        rows.append(
            (f"  upload: {name}", f"{b['refused']} of {b['tries']} refused, slowest {b['max_s']} s: {b['message']}")
        )
    return rows


def public_problems(a: dict) -> int:
    bombs_through = sum(b["tries"] - b["refused"] for b in a["bombs"].values())
    return a["cached_over_limit"] + bombs_through + len(a["errors"]) + (a["cached_compares"] == 0)


def report_public_attack(args) -> int:
    import logging

    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="explorer-soak-") as tmp:
        print(f"attack on a public app ({args.attack_s:g} s)", flush=True)
        a = soak_public_attack(args.attack_s, Path(tmp))
    rows = public_rows(a)
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for problem in a["errors"]:
        print("PROBLEM:", problem)
    if args.json:
        Path(args.json).write_text(json.dumps({"public_attack": a}, indent=1))
    return 1 if public_problems(a) else 0
