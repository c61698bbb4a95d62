"""CLI commands over the results store: sweep, metrics, export, import."""

from __future__ import annotations

import argparse
import math
import sys
import threading
from pathlib import Path

from explorer.printable import printable

DEFAULT_STORE = str(Path("runs") / "explorer.sqlite")


def _split(text):
    return [t.strip() for t in (text or "").split(",") if t.strip()] or None


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {printable(message)}", file=sys.stderr)  # names from files may hold terminal escapes
    return code


def positive_int(text: str) -> int:
    """argparse type for counts: argparse then prints `error: argument --x: ...` and exits 2."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (at least 1), got {text!r}")
    return value


def store_problem(store, exc: BaseException) -> str:
    """One line for a store, disk or file problem, naming the file (the store when no other is named)."""
    import sqlite3

    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename or store
        text = f"{where}: {exc.strerror}" if where else exc.strerror
    elif isinstance(exc, sqlite3.Error):
        text = (
            f"{store or 'the results store'}: {exc} (answers finished before this are kept; fix it and run "
            "the same command again to resume)"
        )
    elif isinstance(exc, RecursionError):
        text = f"{store or 'input'}: nested too deeply to read"
    elif isinstance(exc, MemoryError):
        text = f"{store or 'input'}: out of memory"
    else:
        text = str(exc) or type(exc).__name__
        if store and str(store) not in text:
            text = f"{store}: {text}"
    return " ".join(text.split())


def store_arg(p) -> None:
    p.add_argument("--store", default=DEFAULT_STORE, help=f"results store, an SQLite file (default: {DEFAULT_STORE})")


# ------------------------------------------------------------------ sweep
def add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run models x tasks x prompts x images into the results store (resumable)",
        description="Run the study's cross product (or part of it) and store every answer as it finishes. "
        "Re-running the same command resumes: finished answers are served from the store. "
        "demo-* models have random weights: their answers are noise.",
    )
    p.add_argument("--preset", default="demo", help="study preset: demo (offline, random weights) or paper")
    p.add_argument("--models", help="comma-separated model aliases (default: the preset's)")
    p.add_argument("--tasks", help="comma-separated task keys (default: the preset's)")
    p.add_argument("--prompts", help="comma-separated prompt ids (default: all 12 closed-form prompts)")
    p.add_argument("--describe", action="store_true", help="also run the two description prompts")
    p.add_argument(
        "--families",
        help="comma-separated wording families (presets/families.yaml) that add edited "
        "wordings of the chosen prompts, or 'all'; see `perturb --list`",
    )
    p.add_argument("--family-count", type=positive_int, help="edits per family and prompt (default: each family's own)")
    p.add_argument("--per-class", type=positive_int, help="images per class (the study: 50)")
    p.add_argument("--seed", type=int, help="sampling seed (the study: 42)")
    p.add_argument(
        "--samples",
        help="folder with one subfolder per task, each with negative/ and positive/ "
        "(default for the demo preset: ../shared/samples when present)",
    )
    p.add_argument("--prompt-style", choices=("paper", "official"), help="LLaVA-1.6 prompt format")
    p.add_argument(
        "--original-defects",
        action="store_true",
        help="reproduce the original code's prompt defects (brain and IDC prompt 6)",
    )
    p.add_argument(
        "--prompt-set",
        choices=("paper-as-run", "paper-clean"),
        help="the study's strings as its first upload sent them (byte for byte; the paper preset's), "
        "or as its later refactor tidied them",
    )
    p.add_argument("--max-new-tokens", type=positive_int, help="cap each model's generation limit")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=12,
        help="requests per generate() call (default 12, the study's prompts of one image); models that share "
        "short image prefixes take several images' prompts per call (LLaVA-Med: 3 images, 36 requests)",
    )
    p.add_argument(
        "--judge",
        dest="judge",
        action="store_true",
        default=None,
        help="judge answers with the preset's LLM judge (needs an endpoint and key)",
    )
    p.add_argument("--no-judge", dest="judge", action="store_false", help="rule-based verdicts only")
    p.add_argument(
        "--judge-unsure",
        action="store_true",
        help="rule-based verdicts, and the preset's LLM judge settles only those the reader is unsure of",
    )
    p.add_argument(
        "--endpoints", help="YAML of OpenAI-compatible endpoints per model alias (default: $EXPLORER_ENDPOINTS)"
    )
    p.add_argument("--retry-errors", action="store_true", help="re-run only the items whose answer is an error")
    p.add_argument(
        "--rejudge",
        action="store_true",
        help="generate nothing: send again only the stored LLM judgements that failed or said AMBIGUOUS",
    )
    p.add_argument("--unload-after", action="store_true", help="unload each model when its items are done")
    p.add_argument(
        "--shard",
        help="i/n: run only the i-th of n deterministic parts of the plan (one per machine; "
        "merge the stores afterwards with `import`)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no metric tables: the summary line only")
    p.add_argument(
        "--exact",
        action="store_true",
        help="reproduce the study's execution: one request at a time, no prefix reuse, the authors' dtype "
        "(slow; its answers are stored apart from batched ones)",
    )
    p.add_argument(
        "--backend",
        choices=("transformers", "vllm"),
        default="transformers",
        help="engine for local models: transformers, or vLLM (pip install vllm; GPU)",
    )
    p.add_argument(
        "--gpu-concurrency", type=positive_int, default=1, help="generate calls at once on the local device (default 1)"
    )
    local = p.add_argument_group("local models (transformers)")
    local.add_argument("--device", help="cuda, cuda:1, cpu... (default: CUDA when available)")
    local.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="override the presets' dtypes")
    local.add_argument(
        "--quantization",
        choices=("8bit", "4bit"),
        help="bitsandbytes on CUDA; all four study models fit one 24 GB GPU in 4bit "
        "(see `models --plan`); answers differ from bf16 and are stored apart",
    )
    local.add_argument(
        "--reuse",
        choices=("prefix", "features", "none"),
        default="prefix",
        help="per image: reuse the prompt prefix's KV cache (fastest), only the image features, "
        "or nothing (batching alone); greedy answers are the same",
    )
    local.add_argument(
        "--memory-budget-gb",
        type=float,
        help="GB the loaded models may take together; the least recently used is unloaded first "
        "(default: 90%% of free memory)",
    )
    store_arg(p)
    p.set_defaults(func=cmd_sweep)


def _backend_options(args) -> dict:
    options = {
        "device": args.device,
        "dtype": args.dtype,
        "quantization": args.quantization,
        "reuse": args.reuse,
        "exact": args.exact or None,
        "local_backend": None if args.backend == "transformers" else args.backend,
    }
    if args.memory_budget_gb is not None:
        if not math.isfinite(args.memory_budget_gb) or args.memory_budget_gb <= 0:
            raise ValueError(f"--memory-budget-gb must be a positive, finite number of GB, got {args.memory_budget_gb}")
        options["memory_budget"] = int(args.memory_budget_gb * 1e9)
    return {k: v for k, v in options.items() if v is not None}


def cmd_sweep(args) -> int:
    import sqlite3

    from tqdm import tqdm

    from explorer.catalog.presets import PresetError
    from explorer.models.backends.base import BackendError
    from explorer.models.backends.registry import load_endpoints
    from explorer.runs.store import StoreError
    from explorer.runs.sweep import parse_shard
    from explorer.service.core import Explorer, default_samples_dir

    ex = None
    try:
        endpoints = load_endpoints(args.endpoints)
        samples = args.samples or (default_samples_dir() if args.preset == "demo" else None)
        ex = Explorer(
            preset=args.preset,
            store_path=args.store,
            samples_dir=samples,
            endpoints=endpoints,
            batch_size=1 if args.exact else args.batch_size,
            backend_options=_backend_options(args),
            gpu_concurrency=args.gpu_concurrency,
        )
        if args.judge_unsure:
            ex.preset = ex.preset.model_copy(
                update={"judge": ex.preset.judge.model_copy(update={"method": "rules+llm"})}
            )
            args.judge = True
        changes = {"original_code_defects": True} if args.original_defects else {}
        if args.prompt_set:
            changes["prompt_set"] = args.prompt_set
        selection = ex.preset.prompts.model_copy(update=changes) if changes else None
        spec = ex.sweep_spec(
            models=_split(args.models),
            tasks=_split(args.tasks),
            prompt_ids=_split(args.prompts),
            describe=args.describe or None,
            per_class=args.per_class,
            seed=args.seed,
            prompt_style=args.prompt_style,
            max_new_tokens=args.max_new_tokens,
            judge=args.judge,
            selection=selection,
            shard=parse_shard(args.shard) if args.shard else None,
            families=_split(args.families) or None,
            family_count=args.family_count,
        )
        random_weights = ex.any_random_weights(spec.models)  # an unknown alias raises PresetError here
    except (PresetError, BackendError, ValueError) as exc:
        if ex is not None:
            ex.close()
        return _fail(str(exc))
    except (StoreError, OSError, sqlite3.Error) as exc:  # a store that cannot be opened or created
        if ex is not None:
            ex.close()
        return _fail(store_problem(args.store, exc))
    if random_weights:
        print("NOTE: demo-* models have RANDOM WEIGHTS: their answers are noise.", file=sys.stderr)
    bar = tqdm(total=None, unit="answer", dynamic_ncols=True, disable=args.quiet)

    def progress(done, total, info):
        bar.total = total
        bar.n = done
        bar.set_postfix({k: info.get(k) for k in ("model", "task", "cached", "errors") if k in info}, refresh=False)
        bar.refresh()

    cancel = threading.Event()
    if args.rejudge:
        return _rejudge(ex, spec, progress, cancel, bar)
    try:
        summary = ex.sweep(
            spec, progress=progress, cancel=cancel, retry_errors=args.retry_errors, unload_after=args.unload_after
        )
    except KeyboardInterrupt:
        cancel.set()
        bar.close()
        return _fail("interrupted: finished answers are stored; run the same command again to resume", 130)
    except (PresetError, BackendError, ValueError) as exc:
        bar.close()
        return _fail(str(exc))
    except (StoreError, OSError, sqlite3.Error) as exc:  # e.g. the disk filled up mid-sweep
        bar.close()
        ex.close()
        return _fail(store_problem(args.store, exc))
    bar.close()
    print(
        f"run {summary.run_id}: {summary.planned} planned, {summary.cached} from the store, "
        f"{summary.computed} generated, {summary.errors} errors, {summary.elapsed_s:.1f} s ({summary.status})"
    )
    for model, why in summary.failures.items():
        print(f"  {model}: {why}", file=sys.stderr)
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    judge_failed = _print_judge_outcomes(ex.store.answers(run_id=summary.run_id)) if spec.judge else 0
    if not args.quiet:
        _print_metrics(ex.store, summary.run_id, ex.catalog)
    ex.close()
    if summary.errors or summary.failures:
        # A run with failed items is not a result: say how many, and exit non-zero.
        return _fail(
            f"{summary.errors} of {summary.planned} items failed (stored with their errors); run the "
            "same command with --retry-errors to re-run only those",
            1,
        )
    return 0 if not judge_failed else 1


def _print_judge_outcomes(rows) -> int:
    """Say how the LLM judge did; returns how many judgements failed (they are not refusals)."""
    from explorer.scoring.judge import judge_outcomes

    counts = judge_outcomes(rows)
    print(f"judge: {counts['judged']} judged ({counts['ambiguous']} AMBIGUOUS), {counts['failed']} failed")
    if counts["failed"]:
        print(
            f"error: {counts['failed']} judgements failed (left out of the metrics, not counted as refusals); "
            "fix the judge's endpoint or key and run the same command with --rejudge",
            file=sys.stderr,
        )
    return counts["failed"]


def _rejudge(ex, spec, progress, cancel, bar) -> int:
    """Re-send exactly the failed and AMBIGUOUS LLM judgements of the selected models and tasks."""
    from explorer.runs.sweep import rejudge
    from explorer.scoring.judge import needs_rejudge

    filters = {"model": list(spec.models), "task": list(spec.tasks)}
    try:
        judge = ex.make_judge()
        todo = [r for r in ex.store.answers(include_errors=False, **filters) if needs_rejudge(r)]
        done = rejudge(ex.store, judge, filters, only_failed=True, progress=progress, cancel=cancel)
    except KeyboardInterrupt:
        cancel.set()
        bar.close()
        ex.close()
        return _fail("interrupted: judgements made so far are stored; run the same command again", 130)
    except ValueError as exc:
        bar.close()
        ex.close()
        return _fail(str(exc))
    bar.close()
    ids = {r["id"] for r in todo}
    print(f"rejudged {done} of {len(ids)} failed or AMBIGUOUS judgements")
    failed = _print_judge_outcomes([r for r in ex.store.answers(include_errors=False, **filters) if r["id"] in ids])
    ex.close()
    return 0 if not failed else 1


# ------------------------------------------------------------------ metrics
def add_metrics(sub) -> None:
    p = sub.add_parser(
        "metrics",
        help="print the study's metrics from a results store",
        description="Per (model, task): mean accuracy and F1_all over prompts, prompt variance "
        "(std of accuracy), refusal rate, flip rate, Fleiss' kappa; and the paper's headline.",
    )
    store_arg(p)
    p.add_argument("--run", help="one run's items only (default: the newest run)")
    p.add_argument("--all", action="store_true", help="every answer in the store, not one run")
    p.add_argument("--cells", action="store_true", help="also print per-prompt metrics")
    p.add_argument("--paired", action="store_true", help="also print McNemar base-vs-medical tests")
    p.set_defaults(func=cmd_metrics)


def _latest_run(store):
    runs = store.runs_frame()
    return None if runs.empty else runs["run_id"].iloc[-1]


def _unknown_run(store, run_id: str, path: str):
    """A message when the store has no run `run_id` (else None), naming the newest runs it has."""
    if store.run(run_id) is not None:
        return None
    runs = store.runs_frame()
    known = ", ".join(runs["run_id"].iloc[-5:]) if not runs.empty else "none"
    return f"no run {run_id!r} in {path}; newest runs: {known}"


def _print_metrics(store, run_id, catalog, cells=False, paired=False) -> None:
    import pandas as pd

    from explorer.analysis import metrics
    from explorer.analysis.exports import metric_tables
    from explorer.runs.selection import plan_answers

    if run_id is None:
        answers = store.answers_frame(catalog=catalog)
    else:  # the plan's latest answer for every item, retries included
        answers = plan_answers(store, run_id, catalog=catalog).frame
    from explorer.runs.rescore import older_reader_count

    stale = older_reader_count(answers["verdict_method"]) if "verdict_method" in answers else 0
    if stale:
        print(
            f"note: {stale} answers were read by an older answer reader; run `python -m explorer rescore "
            f"--store {store.path}` so one reader scores them all",
            file=sys.stderr,
        )
    tables = metric_tables(answers, n_boot=300)
    summary = tables["metrics_summary"]
    if summary.empty:
        print("no closed-form answers with verdicts yet")
        return
    cols = [
        c
        for c in (
            "model",
            "task",
            "n_prompts",
            "accuracy_mean",
            "accuracy_std",
            "f1_all_mean",
            "refusal_rate_mean",
            "flip_rate",
            "fleiss_kappa",
        )
        if c in summary.columns
    ]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print("\nPer model and task (mean over prompts; accuracy_std = prompt variance):")
        print(summary[cols].to_string(index=False))
        head = tables["metrics_headline"]
        if not head.empty:
            print("\nHeadline: F1_all per task, base vs medical, averaged over prompts:")
            print(head.to_string(index=False))
        from explorer.analysis.reader_agreement import rule_judge_agreement

        agreement = rule_judge_agreement(answers).lines()
        if agreement:
            print("\n" + "\n".join(agreement))
        families = tables["metrics_sensitivity_families"]
        if not families.empty:
            print(
                "\nWording sensitivity: share of wordings whose reading differs from the image's majority"
                " (mean over images, 95% CI), per wording family:"
            )
            print(
                families[
                    [
                        "model",
                        "task",
                        "family",
                        "n_images",
                        "flip_share",
                        "flip_share_lo",
                        "flip_share_hi",
                        "entropy_bits",
                    ]
                ].to_string(index=False)
            )
        if cells:
            c = tables["metrics_cells"]
            keep = [
                k
                for k in (
                    "model",
                    "task",
                    "prompt_id",
                    "n",
                    "accuracy",
                    "f1_nr",
                    "f1_all",
                    "refusal_rate",
                    "hedge_rate",
                    "sensitivity",
                    "specificity",
                )
                if k in c.columns
            ]
            print("\nPer prompt:")
            print(c[keep].to_string(index=False))
        if paired:
            closed = answers[answers["verdict"].notna()]
            print("\nMcNemar, base vs medical (Holm-corrected):")
            print(metrics.paired_tests(closed).to_string(index=False))


def _store_and_run(args):
    """The store of --store and the run to report: --run (checked), none with --all, else the newest;
    a retry run is replaced by the full run of its plan. Raises ValueError with the message for the user."""
    from explorer.runs.selection import plan_run
    from explorer.runs.store import Store

    if not Path(args.store).exists():
        raise ValueError(f"no results store at {args.store}; run `python -m explorer sweep` first")
    store = Store(args.store)
    if args.run and not args.all:
        problem = _unknown_run(store, args.run, args.store)
        if problem:
            store.close()
            raise ValueError(problem)
    if args.all:
        return store, None
    # A --retry-errors run holds only the retried items: it stands for the plan it retried.
    run_id, note = plan_run(store, args.run or _latest_run(store))
    if note:
        print(f"note: {note}", file=sys.stderr)
    return store, run_id


def cmd_metrics(args) -> int:
    from explorer.catalog.presets import load_catalog
    from explorer.runs.store import StoreError

    try:
        store, run_id = _store_and_run(args)
    except (StoreError, ValueError) as exc:
        return _fail(str(exc))
    print(f"store {args.store}" + (f", run {run_id}" if run_id else ", all answers"))
    _print_metrics(store, run_id, load_catalog(), cells=args.cells, paired=args.paired)
    return 0


# ------------------------------------------------------------------ export / import
def add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write answers, metrics and a run manifest to files",
        description="Write answers.<fmt>, metrics_cells/summary/headline.<fmt> and manifest.json.",
    )
    store_arg(p)
    p.add_argument("--run", help="one run's items (default: the newest run); --all for everything")
    p.add_argument("--all", action="store_true", help="every answer in the store")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", default="csv,parquet", help="comma-separated: csv, parquet, json")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from explorer.analysis.exports import export_results
    from explorer.runs.store import StoreError

    if Path(args.out).exists() and not Path(args.out).is_dir():
        return _fail(f"--out must be a folder: {args.out} is a file, not a folder")
    try:
        store, run_id = _store_and_run(args)
        files = export_results(store, args.out, run_id=run_id, formats=_split(args.formats) or ["csv"])
    except (StoreError, ValueError, OSError) as exc:
        return _fail(str(exc))
    for f in files:
        print(f)
    return 0


def add_import(sub) -> None:
    p = sub.add_parser(
        "import",
        help="bring result files into a store (the study's CSVs or our exports)",
        description="Import {model}_{task}_vqa_results.csv files of the study's code, or "
        "answers.csv/.parquet/.json exported by this tool, so they can be browsed and measured.",
    )
    p.add_argument("paths", nargs="+", help="files or folders")
    store_arg(p)
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from explorer.analysis.exports import import_answers
    from explorer.runs.results_files import open_results
    from explorer.runs.shard_merge import is_results_store, merge_store
    from explorer.runs.store import Store, StoreError
    from explorer.runs.study_import import ResultFileError

    try:
        store = Store(args.store)
    except StoreError as exc:
        return _fail(str(exc))
    total_added = 0
    for raw in args.paths:
        path = Path(raw)
        try:
            if is_results_store(path):  # a sweep --shard part: answers keep their cache keys
                added, existing = merge_store(store, path)
            else:
                frame = open_results(path)  # an export, another results file, or the study's CSVs
                added, existing = import_answers(store, frame, origin=str(path.resolve()))  # unknown tasks refused
        except (ResultFileError, ValueError, OSError) as exc:
            return _fail(str(exc))
        total_added += added
        print(f"{printable(path)}: {added} answers added, {existing} already in the store")
    print(
        f"store {args.store}: {total_added} answers added; see `python -m explorer metrics --all --store {args.store}`"
    )
    return 0


REGISTER = [add_sweep, add_metrics, add_export, add_import]
