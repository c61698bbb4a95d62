"""CLI commands that probe for knowledge the closed-form answers miss: describe and embed.

python -m explorer describe  VLM descriptions (a sweep) -> text-only diagnosis -> metrics table
python -m explorer embed     pooled vision features -> t-SNE coordinates (CSV) + linear probe
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from explorer.cases.hub import TASK_ALIASES
from explorer.cli.results import positive_int
from explorer.printable import printable

DEFAULT_STORE = str(Path("runs") / "explorer.sqlite")
RANDOM_NOTE = (
    "NOTE: demo-* models (and the demo diagnoser) have RANDOM WEIGHTS: their outputs are noise, "
    "shown to exercise the real code path, not to measure anything.\n"
)


def _split(text: Optional[str]) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {printable(message)}", file=sys.stderr)  # names from files may hold terminal escapes
    return code


def _progress(label: str):
    """A progress counter on stderr: rewritten in place on a terminal, only the last count in a log."""
    tty = sys.stderr.isatty()

    def show(done: int, total: int, info: Optional[dict] = None) -> None:
        if done == total or (tty and done % 10 == 0):
            end = "\n" if done == total else ""
            print(f"\r{label}: {done}/{total}", end=end, file=sys.stderr, flush=True)

    return show


def _task_folder(root: Path, task: str) -> Optional[Path]:
    """root/<task> (or a folder alias such as "histopathology"), or root itself when it has class subfolders."""
    for name in [task, *(alias for alias, key in TASK_ALIASES.items() if key == task)]:
        if (root / name).is_dir():
            return root / name
    return root if any((root / c).is_dir() for c in ("positive", "negative")) else None


# ------------------------------------------------------------------ describe
def add_describe(sub) -> None:
    p = sub.add_parser(
        "describe",
        help="describe images with VLMs, diagnose from the text, and compare with closed-form answers",
        description="Step 1: each model answers the task's description prompts (a resumable sweep into the "
        "store; the closed-form prompts too unless --no-closed). Step 2: a text-only model diagnoses each "
        "description with the study's three templates (Yes/No). Prints accuracy, yes-rate and F1 per model x "
        "description prompt x template, and the F1 recovered over the model's own closed-form F1_all.",
    )
    p.add_argument(
        "--preset", default="demo", help="study preset giving the default models, tasks and diagnoser (default: demo)"
    )
    p.add_argument("--models", default="", help="comma-separated model aliases (default: the preset's)")
    p.add_argument("--tasks", default="", help="comma-separated task keys (default: the preset's)")
    p.add_argument(
        "--samples", default=None, help="folder with one class-subfolder folder per task (e.g. ../shared/samples)"
    )
    p.add_argument("--per-class", type=positive_int, default=None, help="images per class (default: the preset's)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--store", default=DEFAULT_STORE, help="results store (answers and diagnoses are cached here)")
    p.add_argument("--prompt-style", choices=("paper", "official"), default=None)
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="cap the VLMs' generation length")
    p.add_argument(
        "--prompts", default="", help="comma-separated closed-form prompt ids to compare with (default: all 12)"
    )
    p.add_argument(
        "--no-closed",
        action="store_true",
        help="run only the description prompts (compare with closed-form answers already in the store)",
    )
    p.add_argument(
        "--diagnoser",
        default="preset",
        help="demo | openai:<model> (e.g. openai:gpt-5.1) | local:<folder> | preset (default: the preset's)",
    )
    p.add_argument(
        "--diagnoser-api",
        choices=("responses", "chat"),
        default=None,
        help="for openai:<model>: the Responses API (the study) or Chat Completions",
    )
    p.add_argument("--diagnoser-base-url", default=None, help="an OpenAI-compatible server (default: api.openai.com)")
    p.add_argument("--diagnoser-key-env", default=None, help="environment variable holding the API key")
    p.add_argument("--reasoning-effort", default=None, help="sent as reasoning.effort (the study: none); '' to omit")
    p.add_argument("--no-json-schema", action="store_true", help="ask for plain text instead of the strict JSON schema")
    p.add_argument("--max-output-tokens", type=positive_int, default=None, help="the diagnoser's limit (the study: 64)")
    p.add_argument(
        "--templates", default="", help="comma-separated diagnosis templates (default: one_word,tight,disease)"
    )
    p.add_argument("--csv", default=None, help="also write the metrics table to this CSV")
    p.set_defaults(func=cmd_describe)


def _diagnoser(args, catalog, preset):
    from explorer.probes.diagnosers import diagnoser_from_arg

    options = {"max_output_tokens": args.max_output_tokens}
    if args.diagnoser_api:
        options["api"] = args.diagnoser_api
    if args.diagnoser_base_url:
        options["base_url"] = args.diagnoser_base_url
    if args.diagnoser_key_env:
        options["api_key_env"] = args.diagnoser_key_env
    if args.reasoning_effort is not None:  # else: the preset's, or the study's "none" for openai:<model>
        options["reasoning_effort"] = args.reasoning_effort or None
    if args.no_json_schema:
        options["structured"] = False
    return diagnoser_from_arg(args.diagnoser, catalog, preset.describe, **options)


def cmd_describe(args) -> int:
    from explorer.catalog.presets import PresetError
    from explorer.models.backends.base import BackendError
    from explorer.probes import describe as D
    from explorer.probes import diagnosers as DX
    from explorer.service.core import Explorer

    try:
        ex = Explorer(preset=args.preset, store_path=args.store, samples_dir=args.samples)
    except (PresetError, ValueError, OSError) as exc:
        return _fail(str(exc))
    try:
        models = _split(args.models) or list(ex.preset.models)
        tasks = _split(args.tasks) or list(ex.preset.tasks)
        for alias in models:
            ex.catalog.model(alias)
        for task in tasks:
            ex.catalog.task(task)
        describe_ids = ("describe", "describe_dx")
        prompt_ids = (
            describe_ids if args.no_closed else (tuple(_split(args.prompts)) + describe_ids if args.prompts else None)
        )
        spec = ex.sweep_spec(
            models=models,
            tasks=tasks,
            describe=True,
            prompt_ids=prompt_ids,
            per_class=args.per_class,
            seed=args.seed,
            prompt_style=args.prompt_style,
            max_new_tokens=args.max_new_tokens,
        )
        templates = _split(args.templates) or None
        diagnoser = _diagnoser(args, ex.catalog, ex.preset)
    except (PresetError, ValueError, BackendError) as exc:
        ex.close()
        return _fail(str(exc))

    if (
        ex.any_random_weights(models)
        or args.diagnoser == "demo"
        or getattr(diagnoser, "model_alias", "") == DX.DEMO_TEXT_ALIAS
    ):
        print(RANDOM_NOTE)
    try:
        summary = ex.sweep(spec, progress=_progress("answers"))
        print(
            f"sweep {summary.run_id}: {summary.planned} items, {summary.computed} new, {summary.cached} cached, "
            f"{summary.errors} errors ({summary.elapsed_s:.1f} s)"
        )
        for alias, why in summary.failures.items():
            print(f"  {alias}: {why}", file=sys.stderr)
        answers = D.description_answers(ex.store, run_id=summary.run_id)
        dsum = D.diagnose_descriptions(
            ex.store,
            diagnoser,
            ex.catalog,
            answers,
            templates,
            progress=_progress("diagnoses"),
            prompt_set=ex.preset.prompts.prompt_set,
        )
        print(
            f"diagnoser {dsum.diagnoser}: {dsum.planned} diagnoses, {dsum.computed} new, {dsum.cached} cached, "
            f"{dsum.errors} failed, {dsum.unparsed} unparsed ({dsum.elapsed_s:.1f} s)"
        )
        for notice in dsum.notices:
            print(f"note: {notice}", file=sys.stderr)
        frame = D.diagnoses_frame(ex.store, answers, dsum.diagnoser_key)
        closed_filters = dict(model=models, task=tasks, prompt_kind="closed", include_errors=False)
        closed = ex.store.answers_frame(
            catalog=ex.catalog, run_id=None if args.no_closed else summary.run_id, **closed_filters
        )
        table = D.describe_metrics(frame, closed)
    except (PresetError, ValueError, BackendError) as exc:
        return _fail(str(exc))
    finally:
        diagnoser.close()
        ex.close()
    print()
    print(D.format_metrics(table))
    print("\nper model and task (mean over description prompts and templates):")
    print(D.recovered_summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    print(
        "\naccuracy and F1 on parsed outputs; F1_all counts unparsed as errors; recovered = F1_all minus the "
        "model's mean closed-form F1_all on the same images."
    )
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
        print(f"metrics written to {args.csv}")
    problems = [
        f"{n} of {total} {what} failed"
        for n, total, what in ((summary.errors, summary.planned, "answers"), (dsum.errors, dsum.planned, "diagnoses"))
        if n
    ]
    if problems:  # metrics over failed items are not a result: exit non-zero, with the counts
        return _fail("; ".join(problems) + " (stored with their errors; run the same command again to retry them)", 1)
    return 0


# ------------------------------------------------------------------ embed
def add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="vision-encoder embeddings: t-SNE coordinates (CSV) and a linear-probe accuracy",
        description="Pool each model's vision features per the study (LLaVA: vision tower last hidden state, "
        "LLaVA-NeXT first crop; Gemma 3: get_image_features), run PCA + t-SNE, and a cross-validated "
        "logistic-regression probe, shown beside the model's own closed-form accuracy on the same images "
        "(from the store).",
    )
    p.add_argument("--preset", default="demo", help="study preset for the default models and settings (default: demo)")
    p.add_argument("--models", default="", help="comma-separated model aliases (default: the preset's)")
    p.add_argument("--task", required=True, help="task key: brain_tumor, pneumonia, skin_cancer, histo_idc")
    p.add_argument(
        "--samples",
        default=None,
        help="folder of class subfolders (or of task folders); without it, the study's Hugging Face embedding sample",
    )
    p.add_argument(
        "--per-class",
        type=positive_int,
        default=None,
        help="images per class (default: all in --samples, else the preset's)",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--store", default=DEFAULT_STORE, help="results store: closed-form answers, and the feature cache beside it"
    )
    p.add_argument("--out", default=None, help="t-SNE coordinates CSV (default: runs/tsne_<task>.csv)")
    p.add_argument("--verdict-prompt", default="evidence", help="whose verdicts to put in the CSV's verdict column")
    p.add_argument("--pca-dims", type=positive_int, default=None)
    p.add_argument("--perplexity", type=float, default=None)
    p.add_argument(
        "--precision",
        choices=("study", "float64"),
        default=None,
        help="features as the authors computed them (mean in the model dtype, float32 t-SNE; the "
        "default) or in float64 (same picture, other coordinates)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.set_defaults(func=cmd_embed)


def cmd_embed(args) -> int:
    from explorer.cases import hub as datasets
    from explorer.catalog.presets import PresetError, load_catalog
    from explorer.models.backends.registry import BackendRegistry, load_endpoints
    from explorer.probes import embeddings as E
    from explorer.runs.store import Store

    catalog = load_catalog()
    try:
        preset = catalog.study(args.preset)
        models = _split(args.models) or list(preset.models)
        for alias in models:
            catalog.model(alias)
        task = datasets.resolve_task(args.task, catalog).key
        settings = preset.embeddings
        seed = args.seed if args.seed is not None else settings.seed
        if args.samples:
            folder = _task_folder(Path(args.samples), task)
            if folder is None:
                return _fail(f"{args.samples} has no folder for task {task} (nor class subfolders)")
            report = datasets.folder_cases(folder, task, per_class=args.per_class, seed=seed)
        else:
            report = datasets.embedding_cases(
                task,
                per_class=args.per_class or settings.per_class,
                seed=seed,
                frontal_only=settings.frontal_only,
                progress=_progress("images"),
            )
    except (PresetError, ValueError) as exc:
        return _fail(str(exc))
    for where, why in report.skipped:
        print(f"skipped {printable(where)}: {printable(why)}", file=sys.stderr)
    for notice in report.notices:
        print(f"note: {notice}", file=sys.stderr)
    if len(report.cases) < 3:
        return _fail(f"need at least 3 images for t-SNE; loaded {report.summary()}")
    if any(catalog.model(a).is_demo for a in models):
        print(RANDOM_NOTE)

    registry = BackendRegistry(catalog, load_endpoints())
    store = Store(args.store)
    cache = E.FeatureCache(E.features_path_for(args.store))
    try:
        answers = store.answers_frame(catalog=catalog, task=task, include_errors=False)
        result = E.analyse(
            registry.for_model,
            models,
            task,
            report.cases,
            answers=answers,
            verdict_prompt=args.verdict_prompt,
            cache=cache,
            pca_dims=args.pca_dims or settings.pca_dims,
            perplexity=args.perplexity or settings.perplexity,
            seed=seed,
            batch_size=args.batch_size,
            progress=lambda a, d, t: _progress(f"features {a}")(d, t),
            precision=args.precision or settings.precision,
        )
    finally:
        cache.close()
        store.close()
        registry.close()
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(f"{report.summary()}\n")
    print(E.format_probes(result.probes))
    print(
        "\nprobe: standardise + logistic regression, stratified k-fold CV accuracy with a 95% t-interval over "
        "folds; closed_*: the model's own closed-form accuracy on these images (answered rows, from the store)."
    )
    out = Path(args.out or Path("runs") / f"tsne_{task}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    result.coords.to_csv(out, index=False)
    print(f"t-SNE coordinates ({len(result.coords)} rows) written to {out}")
    return 0 if len(result.probes) else 1


REGISTER = [add_describe, add_embed]
