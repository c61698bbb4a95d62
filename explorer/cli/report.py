"""CLI: `reproduce`, the paper's findings and tables beside a run's (explorer/analysis/report.py)."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_STORE = str(Path("runs") / "explorer.sqlite")


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce",
        help="write a reproduction report: the paper's findings and tables beside this run's",
        description="One HTML page (and the same as Markdown beside it) with the paper's tables and findings "
        "next to a run's, with 95%% bootstrap intervals. The answers come from a results store (its newest "
        "run, --run, or --all) or from the study's own result CSVs (--import).",
    )
    p.add_argument("--preset", default="paper", help="the study preset the run reproduces (default: paper)")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"results store (default: {DEFAULT_STORE})")
    p.add_argument("--run", help="one run of the store (default: the newest)")
    p.add_argument("--all", action="store_true", help="every answer in the store")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="PATH",
        help="the study's result CSVs (eval_output*.csv, *_vqa_results.csv, or their folder) "
        "instead of a store; may be given several times",
    )
    p.add_argument("--out", default="reproduction.html", help="the HTML page to write (Markdown: same name, .md)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws for the intervals (default 1000)")
    p.set_defaults(func=cmd_reproduce)


def _store_answers(args, catalog):
    from explorer.runs.store import Store

    if not Path(args.store).exists():
        raise ValueError(f"no results store at {args.store}; run `python -m explorer sweep` first, or use --import")
    store = Store(args.store)
    try:
        run_id = None
        if not args.all:
            runs = store.runs_frame()
            if args.run:
                if args.run not in set(runs["run_id"]):
                    raise ValueError(f"{args.store} has no run {args.run!r}")
                run_id = args.run
            elif len(runs):
                run_id = runs["run_id"].iloc[-1]
        frame = store.answers_frame(catalog=catalog, run_id=run_id)
        where = f"{args.store}" + (f", run {run_id}" if run_id else ", all answers")
        return frame, where
    finally:
        store.close()


def cmd_reproduce(args) -> int:
    import pandas as pd

    from explorer.analysis.report import build_report, write_report
    from explorer.catalog.presets import PresetError, load_catalog
    from explorer.runs.results_files import open_results
    from explorer.runs.study_import import ResultFileError

    if args.n_boot < 0:
        return _fail("--n-boot must be 0 or more")
    try:
        catalog = load_catalog()
        preset = catalog.study(args.preset)
        if args.imports:
            frames = [open_results(Path(p), catalog) for p in args.imports]
            answers = pd.concat(frames, ignore_index=True)
            source = "imported " + ", ".join(str(p) for p in args.imports)
        else:
            answers, source = _store_answers(args, catalog)
        report = build_report(answers, catalog=catalog, preset=preset, source=source, n_boot=args.n_boot)
        written = write_report(report, args.out)
    except (PresetError, ResultFileError, ValueError) as exc:
        return _fail(str(exc))
    for warning in report.warnings:
        print(f"note: {warning}", file=sys.stderr)
    for f in report.findings:
        print(f"{f['agrees']:>12}  {f['paper']}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


REGISTER = [add_reproduce]
