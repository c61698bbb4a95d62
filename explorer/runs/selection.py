"""Which answers a plan's metrics and exports cover: the plan's latest answer for every item.

A `--retry-errors` sweep is a run of its own that holds only the retried items; measured alone it is
the biased subset (the items that failed before). So a retry run stands for the plan it retried: the
newest earlier full run whose items include all of its items. Every item of that plan gets its newest
answer to the same request (same fingerprint) from any run since, retries included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

ITEM_KEYS = ["model", "task", "case_id", "prompt_id"]


@dataclass
class PlanAnswers:
    run_id: Optional[str]  # the plan's full run (None: the store has no runs)
    frame: pd.DataFrame
    later_runs: list[str] = field(default_factory=list)  # runs whose newer answers replaced the plan's
    note: Optional[str] = None  # what the user should know, e.g. a retry run stood for its plan


def is_retry_run(run: Optional[dict]) -> bool:
    settings = ((run or {}).get("plan") or {}).get("settings") or {}
    return bool(settings.get("only_errors"))


def _item_keys(store, run_id: str) -> set[tuple]:
    rows = store.fetch_all("SELECT model, task, case_id, prompt_id FROM run_items WHERE run_id = ?", (run_id,))
    return {tuple(r[k] for k in ITEM_KEYS) for r in rows}


def plan_run(store, run_id: Optional[str] = None) -> tuple[Optional[str], Optional[str]]:
    """(the full run standing for run_id's plan, or for the newest run's; a note when they differ)."""
    runs = list(store.runs_frame()["run_id"])
    if not runs:
        return None, None
    chosen = run_id or runs[-1]
    if chosen not in runs or not is_retry_run(store.run(chosen)):
        return chosen, None
    keys = _item_keys(store, chosen)
    for earlier in reversed(runs[: runs.index(chosen)]):
        if not is_retry_run(store.run(earlier)) and keys <= _item_keys(store, earlier):
            return earlier, (
                f"run {chosen} retried failed items of run {earlier}; "
                f"showing every item of {earlier} with its latest answer"
            )
    return chosen, None


def plan_answers(store, run_id: Optional[str] = None, catalog=None) -> PlanAnswers:
    """Every item of the plan of run_id (default: the newest run) with its latest answer."""
    base, note = plan_run(store, run_id)
    if base is None:  # no sweep ran here (imported answers only): every answer
        return PlanAnswers(None, store.answers_frame(catalog=catalog))
    frame = store.answers_frame(catalog=catalog, run_id=base)
    runs = list(store.runs_frame()["run_id"])
    later = runs[runs.index(base) + 1 :] if base in runs else []
    replaced: list[str] = []
    if len(frame) and later:
        wanted = frame[ITEM_KEYS + ["fingerprint"]].assign(_order=0)
        newer = []
        for order, other in enumerate(later, start=1):
            rows = store.answers_frame(catalog=catalog, run_id=other)
            if not len(rows):
                continue
            same = rows.merge(wanted[ITEM_KEYS + ["fingerprint"]], on=ITEM_KEYS + ["fingerprint"])
            if len(same):
                newer.append(same.assign(_order=order))
                replaced.append(other)
        if newer:
            merged = pd.concat([frame.assign(_order=0), *newer], ignore_index=True)
            latest = merged.sort_values(["_order", "id"], kind="stable").drop_duplicates(ITEM_KEYS, keep="last")
            # Back in the plan's own order.
            position = {key: i for i, key in enumerate(map(tuple, frame[ITEM_KEYS].itertuples(index=False)))}
            latest = latest.assign(_pos=[position[tuple(k)] for k in latest[ITEM_KEYS].itertuples(index=False)])
            frame = latest.sort_values("_pos").drop(columns=["_order", "_pos"]).reset_index(drop=True)
    return PlanAnswers(base, frame, replaced, note)
