"""Command line: the same engine as the app, for terminals and headless GPU boxes.

python -m explorer ask     one task's prompts on a folder of images -> answers and verdicts
python -m explorer models  which models can run here, and why not
python -m explorer sweep   the study's cross product into a results store (resumable)
python -m explorer metrics / export / import   measure, share and bring in results
python -m explorer reproduce   the paper's findings and tables beside a run's (HTML + Markdown)
python -m explorer perturb   wording families on a few images: how much the answers move, the smallest flip
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

from explorer.printable import printable

DEMO_MODELS = "demo-llava,demo-llava-med,demo-gemma,demo-medgemma"


def _split(text: Optional[str]) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {printable(message)}", file=sys.stderr)  # names from files may hold terminal escapes
    return code


# ------------------------------------------------------------------ ask
def _add_ask(sub) -> None:
    from explorer.cli.results import positive_int

    p = sub.add_parser(
        "ask",
        help="ask one task's prompts about a folder of images and print answers and verdicts",
        description="Ask each chosen model each prompt of a task about every image in a folder "
        "(class subfolders such as negative/ and positive/ give the ground truth), and print "
        "every answer with its verdict.",
    )
    p.add_argument("--task", required=True, help="task key: brain_tumor, pneumonia, skin_cancer, histo_idc")
    p.add_argument(
        "--images",
        required=True,
        help="a folder of class subfolders (negative/, positive/), a folder of images (truth unknown), "
        "or one image file",
    )
    p.add_argument("--models", default=DEMO_MODELS, help=f"comma-separated model aliases (default: {DEMO_MODELS})")
    p.add_argument("--prompts", default="", help="comma-separated prompt ids (default: all 12 closed-form prompts)")
    p.add_argument(
        "--prompt-style",
        choices=("paper", "official"),
        default="paper",
        help="LLaVA-1.6 prompt format: as the study ran it (paper) or its own chat template (official)",
    )
    p.add_argument("--per-class", type=positive_int, default=None, help="at most this many images per class (seeded)")
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=None, help="cap the models' generation limit (never raises it)"
    )
    p.add_argument(
        "--store", default=str(Path("runs") / "explorer.sqlite"), help="results store (answers are cached here)"
    )
    p.add_argument("--answer-width", type=int, default=70, help="wrap answers at this width (0: one line)")
    p.set_defaults(func=_cmd_ask)


def _cmd_ask(args) -> int:
    from explorer.cases import hub as datasets
    from explorer.cases.images import ImageLoadError
    from explorer.catalog.presets import PresetError
    from explorer.service.core import Explorer

    models = _split(args.models)
    try:
        ex = Explorer(preset="demo", store_path=args.store)
        for alias in models:
            ex.catalog.model(alias)
        closed = [v for v in ex.variants(args.task) if v.kind == "closed"]
        wanted = _split(args.prompts)
        variants = [v for v in closed if not wanted or v.prompt_id in wanted]
        unknown = set(wanted) - {v.prompt_id for v in closed}
        if unknown:
            return _fail(f"unknown prompt ids {sorted(unknown)}; known: {[v.prompt_id for v in closed]}")
        images = Path(args.images)
        if images.is_file():
            cases = [datasets.upload_case(images, args.task, name=images.name)]
        elif images.is_dir():
            report = datasets.folder_cases(images, args.task, per_class=args.per_class)
            for where, why in report.skipped:
                print(f"skipped {printable(where)}: {printable(why)}", file=sys.stderr)
            cases = list(report.cases)
            if not cases:  # a plain folder of images: each one with its truth unknown
                cases = _loose_images(images, args.task)
            else:
                for notice in report.notices:
                    print(f"note: {notice}", file=sys.stderr)
        else:
            return _fail(f"{images} is neither an image file nor a folder")
    except (PresetError, ImageLoadError, ValueError) as exc:
        return _fail(str(exc))
    if not cases:
        return _fail(f"no images could be loaded from {args.images}")

    if ex.any_random_weights(models):
        print(
            "NOTE: demo-* models have RANDOM WEIGHTS: their answers are noise, shown to exercise the "
            "real code path, not to measure anything.\n"
        )
    total = failed = 0
    for case in cases:
        generation = None
        rows = []
        for alias in models:
            if args.max_new_tokens:  # patched into each model's own settings as a cap (sweep._generation_for)
                generation = {"max_new_tokens": args.max_new_tokens}
            rows += ex.grid(case, variants, [alias], args.prompt_style, generation=generation)
        total += len(rows)
        failed += sum(bool(r.error) for r in rows)
        print(
            f"== {printable(case.case_id)}  ({printable(case.source)})  label={case.label or 'unknown'}  "
            f"image={case.image_hash[:12]}"
        )
        _print_rows(rows, args.answer_width)
        print()
    print(
        f"{total} answers from {len(models)} models x {len(variants)} prompts x {len(cases)} images "
        f"(store: {args.store})"
    )
    ex.close()
    if failed:  # printed as ERROR above; the exit code says it too
        return _fail(f"{failed} of {total} answers failed (stored with their errors; ask again to retry them)", 1)
    return 0


def _loose_images(folder: Path, task: str) -> list:
    """The image files directly in a folder (no class subfolders), as unlabelled cases; others are named
    and skipped."""
    from explorer.cases import hub as datasets
    from explorer.cases.images import ImageLoadError

    cases = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            cases.append(datasets.upload_case(path, task, name=path.name))
        except (ImageLoadError, ValueError) as exc:
            print(f"skipped {printable(path.name)}: {printable(exc)}", file=sys.stderr)
    if cases:
        print(f"note: {folder} has no class subfolders: {len(cases)} images with the truth unknown", file=sys.stderr)
    return cases


def _print_rows(rows, width: int) -> None:
    head = f"{'prompt':<16} {'model':<15} {'verdict':<9} {'ok':<3} answer"
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = {True: "yes", False: "no", None: "-"}[r.correct]
        text = f"ERROR: {r.error}" if r.error else r.answer.replace("\n", " ").strip() or "(empty)"
        lines = textwrap.wrap(text, width) if width > 0 else [text]
        cached = " (cached)" if r.cached else ""
        verdict = "error" if r.error else r.verdict  # a failed request is not the model being unclear
        print(f"{r.prompt_id:<16} {r.model:<15} {verdict:<9} {ok:<3} {lines[0]}{cached}")
        for line in lines[1:]:
            print(f"{'':<46}{line}")


# ------------------------------------------------------------------ models
def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the models and whether they can run here")
    p.add_argument("--preset", default=None, help="only the models of this study preset")
    p.add_argument(
        "--plan",
        action="store_true",
        help="the study models' weight sizes in bf16, 8-bit and 4-bit, and whether all fit one GPU",
    )
    p.add_argument("--gpu-gb", type=float, default=24.0, help="GPU memory for --plan (default 24)")
    p.set_defaults(func=_cmd_models)


def _cmd_models(args) -> int:
    from explorer.catalog.presets import PresetError, load_catalog
    from explorer.models.availability import model_availability

    catalog = load_catalog()
    try:
        aliases = catalog.study(args.preset).models if args.preset else list(catalog.models)
    except PresetError as exc:
        return _fail(str(exc))
    print(f"{'alias':<15} {'pair':<11} {'role':<8} {'state':<12} reason")
    for alias in aliases:
        spec = catalog.model(alias)
        a = model_availability(spec)
        print(f"{alias:<15} {spec.pair:<11} {spec.role:<8} {a.state:<12} {a.reason}")
    if args.plan:
        from explorer.models.manager import format_memory_plan, memory_plan

        study = [a for a in aliases if not catalog.model(a).is_demo] or list(catalog.study("paper").models)
        print(f"\nMemory plan (weights only; add a few GB for activations and the KV cache), {args.gpu_gb:g} GB GPU:")
        print(format_memory_plan(memory_plan(catalog, study, gpu_gb=args.gpu_gb)))
    return 0


# ------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m explorer",
        description="Prompt-sensitivity explorer for medical vision-language models (headless engine).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              python -m explorer models
              python -m explorer ask --task pneumonia --images ../shared/samples/pneumonia
              python -m explorer sweep --preset demo --samples ../shared/samples
              python -m explorer metrics --store runs/explorer.sqlite
            demo-* models have random weights: their answers are noise."""),
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_ask(sub)
    _add_models(sub)
    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    from explorer.cli import perturb as cli_perturb
    from explorer.cli import probes as cli_probes
    from explorer.cli import report as cli_report
    from explorer.cli import rescore as cli_rescore
    from explorer.cli import results as cli_results

    return (
        cli_results.REGISTER + cli_probes.REGISTER + cli_rescore.REGISTER + cli_report.REGISTER + cli_perturb.REGISTER
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers draws a "Loading weights" bar per model load; the CLI has its own progress. The
    # variable is read when transformers is first imported, so a sweep served from the store never
    # imports it (nor torch) just to switch the bar off.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return _fail("interrupted; finished answers are in the store, re-run to resume", 130)
    except (OSError, RecursionError, MemoryError, RuntimeError) as exc:
        # Store, disk and file problems anywhere below: one line naming the file, never a traceback.
        from explorer.cli.results import store_problem

        return _fail(store_problem(getattr(args, "store", None), exc))
