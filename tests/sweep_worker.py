"""Test double and subprocess entry point for the sweep tests.

FakeBackend is a deterministic stand-in for a model backend: its answer is a pure function of the
model, the prompt text and the image hash, and it records every request it is asked, so a test can
prove what was (and was not) generated. Run as a script, it sweeps a small plan into a store:

  python tests/sweep_worker.py STORE ASKED_LOG [--delay S] [--batch-size N]

(used by test_sweep_kill.py, which kills it midway and runs it again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from explorer.cases.images import content_hash
from explorer.schema import Case, Request, Response

ANSWERS = ("Yes.", "No.", "A", "B", "I cannot tell from this image.", "Yes, there is evidence of it.")


def request_key(request: Request) -> str:
    return f"{request.model}|{','.join(request.image_hashes())}|{request.text()}"


class FakeBackend:
    """Deterministic answers; `asked` lists every request key in the order generated."""

    name = "fake"

    def __init__(
        self,
        delay_s: float = 0.0,
        fail_when: Optional[str] = None,
        raise_for: Sequence[str] = (),
        log_path: Optional[Path] = None,
    ):
        self.delay_s = delay_s
        self.fail_when = fail_when  # a prompt substring whose requests get Response.error
        self.raise_for = set(raise_for)  # model aliases whose generate() raises
        self.asked: list[str] = []
        self.batches: list[int] = []
        self.log_path = log_path
        self.sample_counter = 0

    def identity(self, model_alias: str) -> dict:
        return {"backend": "fake", "id": f"fake/{model_alias}", "revision": "r1", "dtype": "float32"}

    def generate(self, requests: Sequence[Request], on_text=None) -> list[Response]:
        self.batches.append(len(requests))
        out = []
        for i, request in enumerate(requests):
            if request.model in self.raise_for:
                raise RuntimeError(f"cannot load {request.model}")
            key = request_key(request)
            self.asked.append(key)
            if self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(key) + "\n")
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.fail_when and self.fail_when in request.text():
                out.append(Response(error="HTTP 503: server busy", latency_s=self.delay_s))
                continue
            digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
            text = ANSWERS[digest % len(ANSWERS)]
            if request.generation.do_sample:  # a sampled answer differs every time
                self.sample_counter += 1
                text = f"{text} (sample {self.sample_counter})"
            if on_text is not None:
                on_text(i, text)
            out.append(
                Response(
                    text=text,
                    latency_s=self.delay_s,
                    input_tokens=10,
                    output_tokens=2,
                    p_positive=(digest % 1000) / 1000,
                )
            )
        return out

    def close(self) -> None:
        pass


def make_cases(task: str, n: int, size: int = 8) -> list[Case]:
    """n small solid-colour images, alternating labels, with real content hashes."""
    cases = []
    for i in range(n):
        img = Image.new("RGB", (size, size), (i * 37 % 256, i * 91 % 256, i * 53 % 256))
        cases.append(
            Case(
                case_id=f"{task}:test:{i}",
                task=task,
                image=img,
                image_hash=content_hash(img),
                label="positive" if i % 2 else "negative",
                source="test",
                row_id=i,
            )
        )
    return cases


def small_plan(catalog, models=("demo-gemma",), task="pneumonia", n_cases=4, generation_override=None):
    from explorer.prompts.variants import closed_variants
    from explorer.runs.sweep import plan_sweep

    cases = make_cases(task, n_cases)
    return plan_sweep(
        catalog,
        list(models),
        [task],
        {task: cases},
        {task: closed_variants(catalog, task)},
        "paper",
        generation_override=generation_override,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("asked_log")
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args(argv)

    from explorer.catalog.presets import load_catalog
    from explorer.runs.store import Store
    from explorer.runs.sweep import run_sweep

    catalog = load_catalog()
    backend = FakeBackend(delay_s=args.delay, log_path=Path(args.asked_log))
    with Store(args.store) as store:
        summary = run_sweep(small_plan(catalog), backend, store, batch_size=args.batch_size)
    print(json.dumps(summary.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
