"""`python -m explorer perturb`: wording families on a few images, the sensitivity readout, the smallest flip.

  python -m explorer perturb --task pneumonia --images ../shared/samples/pneumonia \\
      --families casing,typos,polarity_flip,framing --models demo-gemma,demo-medgemma --flip-search
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

DEMO_MODELS = "demo-llava,demo-llava-med,demo-gemma,demo-medgemma"


def _split(text):
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _count(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def add_perturb(sub) -> None:
    p = sub.add_parser(
        "perturb",
        help="generate wording variants (families), ask them, and say how much the answers move",
        description="Make new wordings of the task's prompts with the wording families of presets/families.yaml, "
        "ask each model about each image, and print per image and model the share of wordings whose "
        "reading differs from the majority, the families that moved it and the reading entropy. "
        "--flip-search also finds the smallest edit that changes each model's answer.",
    )
    p.add_argument("--task", required=True, help="task key: brain_tumor, pneumonia, skin_cancer, histo_idc")
    p.add_argument("--images", required=True, help="an image file, or a folder (class subfolders give the truth)")
    p.add_argument(
        "--families",
        default="all",
        help="comma-separated family names from presets/families.yaml, or 'all' (all but paraphrase)",
    )
    p.add_argument("--models", default=DEMO_MODELS, help=f"comma-separated model aliases (default: {DEMO_MODELS})")
    p.add_argument(
        "--from",
        dest="parents",
        default="evidence,mc_pos_first",
        help="the study prompt ids to vary (default: evidence,mc_pos_first)",
    )
    p.add_argument(
        "--count",
        type=_count,
        default=None,
        help="variants per family and starting wording (default: each family's own count; 0: all)",
    )
    p.add_argument("--seed", type=int, default=0, help="picks the variants and places the typos (default 0)")
    p.add_argument("--per-class", type=_count, default=None, help="at most this many images per class (seeded)")
    p.add_argument("--prompt-style", choices=("paper", "official"), default="paper")
    p.add_argument("--max-new-tokens", type=_count, default=None, help="cap the models' generation limit")
    p.add_argument("--store", default=str(Path("runs") / "explorer.sqlite"), help="results store (answers are cached)")
    p.add_argument("--list", action="store_true", help="only print the generated wordings, ask nothing")
    p.add_argument("--flip-search", action="store_true", help="also find the smallest edit that flips each answer")
    p.add_argument(
        "--max-requests", type=_count, default=40, help="flip search budget per image and model (default 40)"
    )
    p.add_argument("--paraphraser", help="a text model alias from --endpoints that writes the 'paraphrase' family")
    p.add_argument(
        "--endpoints", help="YAML of OpenAI-compatible endpoints per model alias (default: $EXPLORER_ENDPOINTS)"
    )
    p.set_defaults(func=cmd_perturb)


def family_names(text: str, catalog, paraphrases: bool = False) -> list[str]:
    """The named families; "all" is every family, paraphrases only when a text model writes them."""
    names = _split(text)
    if names == ["all"]:
        return [n for n in catalog.names() if paraphrases or catalog.family(n).generator != "paraphrase"]
    for name in names:
        catalog.family(name)  # unknown names fail here, listing the known ones
    return names


def _cases(ex, images: Path, task: str, per_class):
    from explorer.cases import hub as datasets
    from explorer.cases.images import ImageLoadError

    if images.is_file():
        return [datasets.upload_case(images, task, name=images.name)]
    if not images.is_dir():
        raise ValueError(f"{images} is neither an image file nor a folder")
    report = datasets.folder_cases(images, task, per_class=per_class)
    cases = list(report.cases)
    if cases:
        return cases
    loose = []
    for path in sorted(p for p in images.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            loose.append(datasets.upload_case(path, task, name=path.name))
        except (ImageLoadError, ValueError) as exc:
            print(f"skipped {path.name}: {exc}", file=sys.stderr)
    return loose[:per_class] if per_class else loose


def cmd_perturb(args) -> int:
    import pandas as pd

    from explorer.analysis.sensitivity import family_sensitivity, image_sensitivity, pair_sensitivity
    from explorer.cases.images import ImageLoadError
    from explorer.catalog.presets import PresetError
    from explorer.models.backends.base import BackendError
    from explorer.models.backends.registry import load_endpoints
    from explorer.probes.flip_search import find_flip
    from explorer.prompts.perturb import generate, load_families, task_words
    from explorer.service.core import Explorer

    models = _split(args.models)
    try:
        endpoints = load_endpoints(args.endpoints)
        if args.paraphraser and args.paraphraser not in endpoints:
            raise ValueError(
                f"--paraphraser {args.paraphraser!r} is not an endpoint; known: {', '.join(endpoints) or 'none'}"
            )
        ex = Explorer(preset="demo", store_path=args.store, endpoints=endpoints)
        paraphraser = (
            backend_paraphraser(ex.registry.for_model(args.paraphraser), args.paraphraser) if args.paraphraser else None
        )
        for alias in models:
            ex.catalog.model(alias)
        families = load_families()
        names = family_names(args.families, families, paraphraser is not None)
        words = task_words(ex.catalog, args.task, families)
        by_id = {v.prompt_id: v for v in ex.variants(args.task) if v.kind == "closed"}
        unknown = [p for p in _split(args.parents) if p not in by_id]
        if unknown:
            return _fail(f"unknown prompt ids {unknown}; known: {', '.join(by_id)}")
        parents = [by_id[p] for p in _split(args.parents)]
        generated = generate(
            parents,
            names,
            words,
            seed=args.seed,
            count=args.count,
            family_catalog=families,
            catalog=ex.catalog,
            selection=ex.preset.prompts,
            paraphraser=paraphraser,
        )
        cases = [] if args.list else _cases(ex, Path(args.images), args.task, args.per_class)
    except (PresetError, ImageLoadError, ValueError, BackendError) as exc:
        return _fail(str(exc))
    print(
        f"{len(generated)} wordings from {len(parents)} starting wording(s) by {len(names)} famil"
        f"{'y' if len(names) == 1 else 'ies'} (seed {args.seed}):"
    )
    for item in generated:
        v = item.variant
        polarity = (
            f"yes={v.yes_means}" if v.yes_means else " ".join(f"{letter}={reading}" for letter, reading, _ in v.options)
        )
        print(f"  {v.prompt_id:<26} {item.family:<14} {item.meaning:<8} {polarity:<28} {' '.join(v.text.split())[:70]}")
    if args.list:
        return 0
    if not cases:
        return _fail(f"no images could be loaded from {args.images}")
    if ex.any_random_weights(models):
        print(
            "\nNOTE: demo-* models have RANDOM WEIGHTS: their answers are noise, shown to exercise the "
            "real code path, not to measure anything."
        )
    variants = parents + [p.variant for p in generated]
    generation = {"max_new_tokens": args.max_new_tokens} if args.max_new_tokens else None
    rows = []
    for case in cases:
        for alias in models:
            for view in ex.grid(case, variants, [alias], args.prompt_style, generation=generation):
                rows.append(
                    dict(
                        model=view.model,
                        task=args.task,
                        prompt_id=view.prompt_id,
                        prompt_family=_family_of(view.prompt_id, variants),
                        case_id=case.case_id,
                        label=case.label,
                        verdict=None if view.error else view.verdict,
                    )
                )
    frame = pd.DataFrame(rows)
    with pd.option_context(
        "display.width",
        160,
        "display.max_columns",
        20,
        "display.float_format",
        "{:.3f}".format,
        "display.max_colwidth",
        60,
    ):
        print(
            f"\n{len(rows)} answers ({len(variants)} wordings x {len(models)} models x {len(cases)} images). "
            "Per image and model: wordings off the majority reading, and the families that moved it:"
        )
        print(
            image_sensitivity(frame)[
                ["case_id", "model", "n_variants", "majority", "flip_share", "entropy_bits", "flipped_by"]
            ].to_string(index=False)
        )
        print("\nPer family (mean over images, 95% bootstrap CI):")
        print(
            family_sensitivity(frame, n_boot=500)[
                ["model", "family", "n_images", "flip_share", "flip_share_lo", "flip_share_hi"]
            ].to_string(index=False)
        )
        pairs = pair_sensitivity(frame, n_boot=500)
        if not pairs.empty:
            print("\nBase vs medical per family (medical minus base, paired over images, 95% CI):")
            print(
                pairs[
                    [
                        "pair",
                        "family",
                        "n_images",
                        "base_flip_share",
                        "medical_flip_share",
                        "difference",
                        "difference_lo",
                        "difference_hi",
                    ]
                ].to_string(index=False)
            )
    if args.flip_search:
        base = parents[0]
        print(f"\nSmallest flip of {base.prompt_id!r} (at most {args.max_requests} requests per image and model):")
        for case in cases:
            for alias in models:
                try:
                    result = find_flip(
                        lambda vs: ex.grid(case, vs, [alias], args.prompt_style, generation=generation),
                        base,
                        words,
                        alias,
                        [n for n in names if families.family(n).generator != "study"],
                        max_requests=max(args.max_requests, 2),
                        seed=args.seed,
                        family_catalog=families,
                    )
                except ValueError as exc:
                    print(f"== {case.case_id} · {alias}: {exc}")
                    continue
                print(f"== {case.case_id} · {alias}: {result.message()}")
                if result.found:
                    _side_by_side(
                        ("before", base.text, result.base_answer),
                        ("after", result.flip.item.variant.text, result.flip_answer),
                    )
    ex.close()
    return 0


def backend_paraphraser(backend, alias: str):
    """A paraphraser (perturb.Paraphraser) that asks a text model behind a backend for n rewrites at once,
    one per line; a failed request is an error, never an empty family."""
    import re

    from explorer.schema import GenerationSettings, Request

    def paraphrase(instruction: str, n: int, seed: int) -> list[str]:
        text = f"{instruction}\nGive {n} different versions, one per line, and nothing else."
        request = Request(
            alias, ({"role": "user", "content": [text]},), GenerationSettings(max_new_tokens=64 * max(n, 1), seed=seed)
        )
        (response,) = backend.generate([request])
        if response.error:
            raise ValueError(f"The paraphrasing model {alias} failed: {response.error}")
        lines = [re.sub(r"^\s*(?:\d+[.)]|[-*\u2022])\s*", "", line).strip() for line in response.text.splitlines()]
        return [line for line in lines if line][:n]

    return paraphrase


def _family_of(prompt_id: str, variants) -> str:
    return next((v.family for v in variants if v.prompt_id == prompt_id), "")


def _side_by_side(*columns) -> None:
    width = 50
    blocks = []
    for title, text, view in columns:
        lines = (
            [f"{title}: {view.verdict}"]
            + textwrap.wrap("wording: " + " ".join(text.split()), width)
            + textwrap.wrap("answer: " + " ".join((view.answer or "(empty)").split()), width)[:4]
        )
        blocks.append(lines)
    for i in range(max(len(b) for b in blocks)):
        print("   " + "  |  ".join(f"{(b[i] if i < len(b) else ''):<{width}}" for b in blocks))


REGISTER = [add_perturb]
