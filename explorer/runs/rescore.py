"""Re-read stored answers with the current answer reader.

A store keeps the raw answer next to its verdict and the verdict's method ("rules" for the first
reader, "rules:reader-2" now, "judge:<model>" for an LLM judge). After the reader improves, old
rule verdicts would sit beside new ones and mix two rulers in one metric; `rescore` re-reads every
rule verdict written by another reader version (or all of them with `everything`) and leaves judge
verdicts and errors alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from explorer.runs.store import Store, variant_from_row
from explorer.scoring.verdicts import RULES_METHOD, is_rules_method, parse_verdict

__all__ = ["RescoreSummary", "older_reader_count", "rescore"]


@dataclass
class RescoreSummary:
    read: int = 0  # answers re-read
    changed: int = 0  # whose label changed
    transitions: Counter = field(default_factory=Counter)  # (old label, new label) -> count

    def lines(self) -> list[str]:
        out = [f"re-read {self.read} answers with {RULES_METHOD}; {self.changed} changed label"]
        for (old, new), n in self.transitions.most_common():
            out.append(f"  {old} -> {new}: {n}")
        return out


def rescore(
    store: Store, everything: bool = False, model: Optional[str] = None, task: Optional[str] = None
) -> RescoreSummary:
    """Re-read rule verdicts not written by the current reader (all rule verdicts if `everything`)."""
    filters = {k: v for k, v in (("model", model), ("task", task)) if v}
    summary = RescoreSummary()
    for row in store.answers(include_errors=False, **filters):
        method = row.get("verdict_method")
        if not is_rules_method(method) or (method == RULES_METHOD and not everything):
            continue
        verdict = parse_verdict(row.get("answer") or "", variant_from_row(row))
        store.update_verdict(row["id"], verdict)
        summary.read += 1
        if verdict.label != row.get("verdict"):
            summary.changed += 1
            summary.transitions[(row.get("verdict"), verdict.label)] += 1
    return summary


def older_reader_count(methods) -> int:
    """How many of these verdict methods come from an older version of the rule reader."""
    return sum(1 for m in methods if is_rules_method(m) and m != RULES_METHOD)
