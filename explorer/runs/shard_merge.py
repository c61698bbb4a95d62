"""Merge a results store written by this tool (a `sweep --shard i/n` part) into another, keeping every
answer's fingerprint, so the merged store serves those answers as cache (a re-run of the whole plan
generates nothing). Answers already there (the same deterministic fingerprint) are skipped."""

from __future__ import annotations

from pathlib import Path

from explorer.runs.store import Store


def is_results_store(path: Path) -> bool:
    """True for an SQLite file holding this tool's answers table (a shard's store)."""
    if not path.is_file() or path.suffix.lower() not in (".sqlite", ".sqlite3", ".db"):
        return False
    try:
        with Store(path) as probe:
            probe.count()
        return True
    except Exception:  # noqa: BLE001 - not ours (StoreError, a foreign schema...): the general importer's
        return False


def merge_store(target: Store, source: Path) -> tuple[int, int]:
    """(answers added, answers already in target) from the store at `source`."""
    if Path(source).resolve() == Path(target.path).resolve():
        raise ValueError(f"{source} is the store being merged into")
    added = existing = 0
    with Store(source) as part:
        for row in part.answers(include_errors=False):
            # The stored columns as they are ("cached" is a view column of answers(), not stored).
            clean = {k: v for k, v in row.items() if k not in ("id", "cached")}
            _, written = target.record_answer(clean)
            added += written
            existing += not written
    return added, existing
