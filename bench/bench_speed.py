"""How much faster the engine answers than the study's loop, on the same images, prompts and weights.

For each of the study's three architectures (LlavaNext, Llava, Gemma 3) a random-weight model is
built with the real models' image geometry (DemoSize.study_shapes(): 576 image tokens for Llava,
AnyRes ~2,000-2,900 for LlavaNext, 256 for Gemma 3) and small widths, so it runs on 2 CPU cores in
a few minutes; --full builds them at the real models' widths and depth (needs CUDA; random weights,
nothing is downloaded). In ONE run, with the same images, the same closed-form prompts, the same
weights and the same greedy settings (max_new_tokens N, min_new_tokens as the study's preset):

  (a) the study's loop: transformers.pipeline("image-text-to-text"), one (image, prompt) at a time,
      called the way the study's gen/*.py scripts call it;
  (b) the engine: the sweep (run_sweep into a fresh results store) through TransformersBackend,
      which encodes each image once and decodes its prompts as one batch (reuse="prefix").

Printed per architecture: throughput ratio (b over a), share of identical answers, the ratio of a
cached re-run (the same sweep again against the same store) and the app's overhead over a bare
backend.generate for one compare call (Explorer.ask of one prompt on one case). Then a markdown table.

  python bench/bench_speed.py --threads 1             # 3 images x 12 prompts x 3 architectures, ~1 min on CPU
  python bench/bench_speed.py --images 4 --max-new-tokens 64 --modes prefix,features,none
  python bench/bench_speed.py --threads 1 --max-new-tokens 96 --length-mix --modes prefix,prefix-copies
  python bench/bench_speed.py --full --images 8       # CUDA: real widths (LLaVA 7B, Gemma 3 4B shapes)
  HF_HUB_OFFLINE=0 python bench/bench_speed.py --real # CUDA: the study's own checkpoints (cached or downloaded)

--full builds each random model on the GPU in bf16 (about 14 GB on disk for a 7B one) and deletes it
after its run; --real needs the weights (HF_TOKEN for the gated Gemma models).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from answer_checks import first_token_logit_gap, mix_answer_lengths

# bench/ is on sys.path when run as a script; bench_cases also makes the repo importable, offline.
from bench_cases import DEFAULT_SAMPLES, load_cases, synthetic_cases
from study_models import ARCHITECTURES, REAL_MODELS, build_on_gpu, full_sizes


# ------------------------------------------------------------------ (a) the study's loop
def study_loop(pipe, architecture: str, fmt: str, cases, variants, settings):
    """One pipeline call per (image, prompt), as in the study's gen/*.py (prompt-major there; the
    order does not change the answers). Returns {(case_id, prompt_id): text}."""
    generate_kwargs = {"do_sample": False}
    if settings.min_new_tokens:
        generate_kwargs["min_new_tokens"] = settings.min_new_tokens
    answers = {}
    for variant in variants:
        for case in cases:
            if architecture == "gemma3":  # chat-template models: a message list, image then text
                messages = [
                    {
                        "role": "user",
                        "content": [{"type": "image", "image": case.image}, {"type": "text", "text": variant.text}],
                    }
                ]
                out = pipe(
                    text=messages,
                    max_new_tokens=settings.max_new_tokens,
                    return_full_text=False,
                    generate_kwargs=dict(generate_kwargs),
                )
            else:  # the LLaVA models: a raw prompt with <image>, and images=...
                out = pipe(
                    images=case.image,
                    text=fmt.replace("{prompt}", variant.text),
                    max_new_tokens=settings.max_new_tokens,
                    return_full_text=False,
                    generate_kwargs=dict(generate_kwargs),
                )
            text = out[0]["generated_text"] if isinstance(out, list) and out else out
            if isinstance(text, list):  # chat output: the conversation with the new assistant turn
                text = text[-1]["content"]
            answers[(case.case_id, variant.prompt_id)] = str(text).strip()
    return answers


# ------------------------------------------------------------------ one architecture
def time_engine(backend, plan, mode: str, repeat: int, result: "Result", workdir: Path, args) -> tuple[float, dict]:
    """One sweep of the plan into a fresh store by one engine mode; returns its seconds and answers,
    and notes in result which paths answered and what the KV cache and (CUDA) the GPU peak were."""
    import torch

    from explorer.runs.store import Store
    from explorer.runs.sweep import run_sweep

    # prefix-copies: prefix reuse with the prefix copied into every row (no shared-prefix attention).
    backend.reuse, backend.shared_prefix = ("prefix", False) if mode == "prefix-copies" else (mode, True)
    backend.forget_reused()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    answers: dict = {}

    def keep(item, row):
        answers[(item.case.case_id, item.variant.prompt_id)] = (row.get("answer") or "").strip()

    fresh = workdir / f"{plan[0].model}-{mode}-{repeat}.sqlite"
    for leftover in workdir.glob(fresh.name + "*"):  # a --workdir used before: time fresh work
        leftover.unlink()
    with Store(fresh) as store:
        started = time.perf_counter()
        recording = Recording(backend)
        summary = run_sweep(plan, recording, store, batch_size=args.batch_size, on_item=keep)
        seconds = time.perf_counter() - started
        result.paths[mode] = ", ".join(f"{k} x{n}" for k, n in sorted(recording.paths.items()))
        result.kv_bytes[mode] = recording.kv_bytes
        if torch.cuda.is_available():
            result.gpu_peak[mode] = torch.cuda.max_memory_allocated()
        if mode == "prefix" and recording.lengths:
            result.lengths = sorted(recording.lengths)
        result.errors += summary.errors
        if mode == "prefix" and repeat == 0:
            started = time.perf_counter()
            again = run_sweep(plan, backend, store, batch_size=args.batch_size)
            result.cached_s = time.perf_counter() - started
            if again.computed:
                print(f"  note: the cached re-run generated {again.computed} answers again")
    return seconds, answers


class Recording:
    """The backend as the sweep sees it, counting which path (reuse mode) answered each request."""

    def __init__(self, backend):
        from collections import Counter

        self.backend, self.name, self.paths = backend, backend.name, Counter()
        self.lengths: list[int] = []  # answer tokens per request
        self.kv_bytes = 0

    def identity(self, alias):
        return self.backend.identity(alias)

    def scheduling(self, alias, batch_size):  # the sweep's units as the backend sizes them
        return self.backend.scheduling(alias, batch_size)

    def generate(self, requests, on_text=None):
        responses = self.backend.generate(requests, on_text)
        self.paths.update(
            f"{r.extra.get('reuse', '?')} ({r.extra['kv_layout']})"
            if r.extra.get("kv_layout")
            else r.extra.get("reuse", "?")
            for r in responses
        )
        self.kv_bytes = max([self.kv_bytes] + [int(r.extra.get("kv_estimate_bytes") or 0) for r in responses])
        self.lengths += [r.output_tokens or 0 for r in responses]
        return responses

    def close(self):
        pass


@dataclass
class Result:
    architecture: str
    alias: str
    answers: int
    image_tokens: list[int]
    loop_s: float
    engine_s: dict[str, float] = field(default_factory=dict)  # reuse mode -> seconds
    identical: dict[str, float] = field(default_factory=dict)  # reuse mode -> share identical to the loop
    paths: dict[str, str] = field(default_factory=dict)  # reuse mode asked -> paths that answered
    kv_bytes: dict[str, int] = field(default_factory=dict)  # reuse mode -> largest batch's KV cache (estimate)
    gpu_peak: dict[str, int] = field(default_factory=dict)  # reuse mode -> peak GPU memory of its sweep (CUDA)
    logit_gap: float = float("nan")  # first-token logits: engine batch vs each prompt alone, max |difference|
    ratios: list[float] = field(default_factory=list)  # the throughput ratio of each repeat
    cached_s: float = 0.0
    lengths: list[int] = field(default_factory=list)  # answer tokens of the engine's answers
    ask_ms: float = 0.0
    generate_ms: float = 0.0
    errors: int = 0

    @property
    def speedup(self) -> float:
        return self.loop_s / self.engine_s["prefix"] if self.engine_s.get("prefix") else float("nan")


def bench_architecture(architecture, alias, size, args, catalog, cases, variants, workdir: Path) -> Result:
    import torch
    import transformers

    from explorer.models.backends.registry import BackendRegistry
    from explorer.prompts.messages import build_request
    from explorer.runs.store import Store
    from explorer.runs.sweep import plan_sweep, run_sweep
    from explorer.schema import GenerationSettings
    from explorer.service.core import Explorer

    spec = catalog.model(alias)
    real = catalog.model(spec.demo_of) if spec.demo_of else spec
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=min(real.generation.min_new_tokens, args.max_new_tokens),
    )
    fmt = spec.prompt_format("paper")
    registry = BackendRegistry(
        catalog,
        {},
        demo_size=size,
        demo_cache_dir=workdir / "models" / architecture,
        batch_size=args.batch_size,
        device=args.device,
    )
    backend = registry.local
    lm = backend.load(alias)
    pipe = transformers.pipeline("image-text-to-text", model=lm.model, processor=lm.processor)

    if args.length_mix:
        probe = [build_request(spec, v, cases[0], "paper", settings) for v in variants]
        added = mix_answer_lengths(backend, lm, probe, settings.max_new_tokens, settings.min_new_tokens or 0)
        print(f"  length mix: tokens {added} end answers too (greedy picks of the model itself)")

    # Warm both paths up on images outside the benchmark (lazy imports, first-call allocations; for
    # the sweep also the answer reader's per-question work, which a long sweep pays once). Both warm on
    # as many images as they are timed on, so the sweep's batches have been of the timed shape before.
    warm = synthetic_cases(cases[0].task, len(cases), seed=99)
    study_loop(pipe, architecture, fmt, warm, variants[:1], settings)
    warm_plan = plan_sweep(
        catalog,
        [alias],
        [warm[0].task],
        {warm[0].task: warm},
        {warm[0].task: variants},
        "paper",
        generation_override=settings,
    )
    with Store(workdir / f"{alias}-warmup-{time.monotonic_ns()}.sqlite") as store:
        run_sweep(warm_plan, backend, store, batch_size=args.batch_size)
    backend.forget_reused()

    plan = plan_sweep(
        catalog,
        [alias],
        [cases[0].task],
        {cases[0].task: cases},
        {cases[0].task: variants},
        "paper",
        generation_override=settings,
    )
    result = Result(architecture, alias, len(plan), [], 0.0)
    loop_times: list[float] = []
    engine_times: dict[str, list[float]] = {m: [] for m in args.modes}
    for repeat in range(max(1, args.repeats)):  # loop and engine taken turn about: noise hits both
        started = time.perf_counter()
        loop = study_loop(pipe, architecture, fmt, cases, variants, settings)
        loop_times.append(time.perf_counter() - started)
        for mode in args.modes:
            seconds, answers = time_engine(backend, plan, mode, repeat, result, workdir, args)
            engine_times[mode].append(seconds)
            same = sum(answers.get(k) == v for k, v in loop.items()) / max(len(loop), 1)
            result.identical[mode] = min(same, result.identical.get(mode, 1.0))
            if mode == "prefix" and repeat == 0:
                for (case_id, prompt_id), text in loop.items():
                    if answers.get((case_id, prompt_id)) != text:
                        print(
                            f"  differs {case_id} {prompt_id}: loop {text[:60]!r} / engine {answers.get((case_id, prompt_id), '')[:60]!r}"
                        )
    result.loop_s = statistics.median(loop_times)
    result.engine_s = {m: statistics.median(t) for m, t in engine_times.items()}
    result.ratios = [a / b for a, b in zip(loop_times, engine_times["prefix"])]
    backend.reuse, backend.shared_prefix = "prefix", True
    result.logit_gap = first_token_logit_gap(
        backend, lm, [build_request(spec, v, cases[0], "paper", settings) for v in variants]
    )

    # Image tokens per image, as the processor counts them for this architecture.
    for case in cases:
        text = backend.prompt_text(lm, build_request(spec, variants[0], case, "paper", settings))
        ids = lm.processor(text=[text], images=[[case.image]], return_tensors="pt")["input_ids"][0]
        result.image_tokens.append(int((ids == lm.model.config.image_token_id).sum()))

    # App overhead: Explorer.ask (plan, store lookup, generate, verdict, commit) vs bare generate.
    app_store = workdir / f"{alias}-app.sqlite"
    for leftover in workdir.glob(app_store.name + "*"):
        leftover.unlink()
    explorer = Explorer(preset="demo", store_path=app_store, catalog=catalog)
    explorer.registry = registry
    asks, bares = [], []
    for variant in variants[: max(1, args.overhead_repeats)]:
        case = cases[0]
        request = build_request(spec, variant, case, "paper", settings)
        backend.forget_reused()
        started = time.perf_counter()
        backend.generate([request])
        bares.append(time.perf_counter() - started)
        backend.forget_reused()
        started = time.perf_counter()
        explorer.ask(case, variant, [alias], prompt_style="paper", generation=settings)
        asks.append(time.perf_counter() - started)
    explorer.store.close()
    result.ask_ms = statistics.median(asks) * 1000
    result.generate_ms = statistics.median(bares) * 1000
    backend.close()
    del pipe, lm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if args.full:  # a real-width random model is tens of GB on disk
        import shutil

        shutil.rmtree(workdir / "models" / architecture, ignore_errors=True)
    return result


# ------------------------------------------------------------------ report
def table(results, args) -> str:
    modes = [m for m in args.modes if m != "prefix"]
    head = ["architecture", "image tokens", "answers", "study loop s", "engine s", "throughput x", "identical"]
    head += [f"{m} s (identical)" for m in modes]
    head += ["cached re-run x", "app overhead ms (ask vs generate)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        toks = (
            f"{min(r.image_tokens)}-{max(r.image_tokens)}"
            if min(r.image_tokens) != max(r.image_tokens)
            else str(r.image_tokens[0])
        )
        cells = [
            f"{r.architecture} ({r.alias})",
            toks,
            str(r.answers),
            f"{r.loop_s:.1f}",
            f"{r.engine_s['prefix']:.1f}",
            f"{r.speedup:.1f}",
            f"{r.identical['prefix']:.0%}",
        ]
        cells += [f"{r.engine_s[m]:.1f} ({r.identical[m]:.0%})" for m in modes]
        cells += [
            f"{r.engine_s['prefix'] / max(r.cached_s, 1e-9):.0f}",
            f"{r.ask_ms - r.generate_ms:+.0f} ({r.ask_ms:.0f} vs {r.generate_ms:.0f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", default="llava_next,llava,gemma3")
    parser.add_argument("--task", default="brain_tumor")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=12, help="the first N closed-form prompts (1-12)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="32 = the study's min_new_tokens for LLaVA")
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument(
        "--modes",
        default="prefix",
        help="engine reuse modes to time (prefix always): prefix,prefix-copies,features,none "
        "(prefix-copies: the prefix copied into every row instead of shared-prefix attention)",
    )
    parser.add_argument("--overhead-repeats", type=int, default=3)
    parser.add_argument(
        "--repeats", type=int, default=1, help="time loop and engine N times, taking turns; medians are reported"
    )
    parser.add_argument(
        "--length-mix",
        action="store_true",
        help="rows stop at different lengths (tokens the model picks become end tokens; see mix_answer_lengths)",
    )
    parser.add_argument("--samples", type=Path, default=DEFAULT_SAMPLES)
    parser.add_argument("--full", action="store_true", help="random models at the real widths and depths (CUDA)")
    parser.add_argument(
        "--real", action="store_true", help="the study's own checkpoints instead of random models (CUDA)"
    )
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine",
    )
    parser.add_argument("--text-hidden", type=int, default=64, help="CPU widths: the language model's hidden size")
    parser.add_argument("--workdir", type=Path, default=None, help="where models and stores go (default: a temp dir)")
    args = parser.parse_args(argv)
    args.modes = ["prefix"] + [m for m in (s.strip() for s in args.modes.split(",")) if m and m != "prefix"]

    import torch

    from explorer.catalog.presets import load_catalog
    from explorer.models.demo import DemoSize
    from explorer.prompts.variants import closed_variants

    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.full or args.real) and not torch.cuda.is_available():
        print("bench_speed: --full and --real need CUDA (4-7B parameters); run without them on CPU.")
        return 2
    catalog = load_catalog()
    archs = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHITECTURES]
    if unknown:
        print(f"bench_speed: unknown architectures {unknown}; known: {', '.join(ARCHITECTURES)}")
        return 2
    sizes = (
        full_sizes() if args.full else {a: DemoSize.study_shapes(text_hidden=args.text_hidden) for a in ARCHITECTURES}
    )
    cases, where = load_cases(args.task, args.images, args.samples)
    variants = closed_variants(catalog, args.task)[: max(1, min(12, args.prompts))]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"bench_speed: {len(archs)} architectures x {len(cases)} images ({where}) x {len(variants)} prompts; "
        f"greedy, max_new_tokens={args.max_new_tokens}; "
        f"{'the study checkpoints' if args.real else 'full size, random weights' if args.full else 'study shapes, small widths'} "
        f"on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_speed_")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for arch in archs:
            alias = (REAL_MODELS if args.real else ARCHITECTURES)[arch]
            print(f"\n{arch} ({alias}) ...", flush=True)
            if args.full:
                started = time.perf_counter()
                build_on_gpu(catalog, alias, sizes[arch], workdir / "models" / arch)
                print(f"  built at full size on the GPU in {time.perf_counter() - started:.0f}s", flush=True)
            r = bench_architecture(arch, alias, sizes[arch], args, catalog, cases, variants, workdir)
            results.append(r)
            extra = "".join(
                f"; {m} {r.engine_s[m]:.1f}s ({r.identical[m]:.0%} identical)" for m in args.modes if m != "prefix"
            )
            for m in args.modes:
                memory = f"KV cache of the largest batch {r.kv_bytes[m] / 1e6:.1f} MB" if r.kv_bytes.get(m) else ""
                if m in r.gpu_peak:
                    memory += f"; GPU peak {r.gpu_peak[m] / 1e9:.2f} GB"
                print(f"  {m}: answered by {r.paths[m]}{'; ' + memory if memory else ''}")
            if r.lengths:
                n = len(r.lengths)
                print(
                    f"  answer tokens: min {r.lengths[0]}, median {r.lengths[n // 2]}, max {r.lengths[-1]} "
                    f"(at the limit: {sum(x >= args.max_new_tokens for x in r.lengths)} of {n})"
                )
            print(
                f"  image tokens {r.image_tokens}; study loop {r.loop_s:.1f}s; engine {r.engine_s['prefix']:.1f}s -> "
                f"{r.speedup:.1f}x{' (repeats: ' + ', '.join(f'{x:.1f}' for x in r.ratios) + ')' if len(r.ratios) > 1 else ''}; "
                f"identical {r.identical['prefix']:.0%}; first-token logits within "
                f"{r.logit_gap:.2g}{extra}; cached re-run "
                f"{r.engine_s['prefix'] / max(r.cached_s, 1e-9):.0f}x faster ({r.cached_s * 1000:.0f} ms); "
                f"ask {r.ask_ms:.0f} ms vs generate {r.generate_ms:.0f} ms; errors {r.errors}",
                flush=True,
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    print()
    print(table(results, args))
    low = [r for r in results if r.speedup < 5 or r.identical["prefix"] < 0.99]
    if low:
        print("\nbelow target (>= 5x throughput, >= 99% identical): " + ", ".join(r.architecture for r in low))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
