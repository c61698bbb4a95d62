"""CLI: `rescore` re-reads stored answers with the current answer reader."""

from __future__ import annotations

import sys
from pathlib import Path

from explorer.cli.results import store_arg


def add_rescore(sub) -> None:
    p = sub.add_parser(
        "rescore",
        help="re-read stored answers with the current answer reader",
        description="Re-read every rule-read verdict that an older reader wrote (judge verdicts and errors "
        "are left alone), so one store never mixes two readers. Prints what changed.",
    )
    store_arg(p)
    p.add_argument("--all", action="store_true", help="re-read rule verdicts of the current reader too")
    p.add_argument("--model", help="only this model alias")
    p.add_argument("--task", help="only this task")
    p.set_defaults(func=cmd_rescore)


def cmd_rescore(args) -> int:
    from explorer.runs.rescore import rescore
    from explorer.runs.store import Store

    if not Path(args.store).is_file():
        print(f"error: {args.store}: no such results store", file=sys.stderr)
        return 2
    with Store(args.store) as store:
        summary = rescore(store, everything=args.all, model=args.model, task=args.task)
    print("\n".join(summary.lines()))
    return 0


REGISTER = [add_rescore]
