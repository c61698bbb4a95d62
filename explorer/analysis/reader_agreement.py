"""How often the rule-based answer reader agrees with an LLM judge on the same answers.

For every answer a judge read (verdict_method "judge:..."), the reader reads it again and the two
labels are compared: an agreement rate, and where they part (judge label -> reader label). Users see
from it how far the free, offline reader can stand in for a paid judge on their own data.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import pandas as pd

from explorer.runs.store import variant_from_row
from explorer.scoring.verdicts import parse_verdict

__all__ = ["Agreement", "rule_judge_agreement"]


@dataclass
class Agreement:
    judged: int = 0
    agree: int = 0
    unsure: int = 0  # answers the reader itself marked unsure
    pairs: Counter = field(default_factory=Counter)  # (judge label, reader label) where they differ

    @property
    def rate(self) -> float:
        return self.agree / self.judged if self.judged else float("nan")

    def lines(self) -> list[str]:
        if not self.judged:
            return []
        out = [
            f"rule reader vs LLM judge: agree on {self.agree} of {self.judged} judged answers ({self.rate:.1%}); "
            f"the reader was unsure of {self.unsure}"
        ]
        for (judge, rules), n in self.pairs.most_common(6):
            out.append(f"  judge {judge} / reader {rules}: {n}")
        return out


def rule_judge_agreement(rows: pd.DataFrame | Iterable[Mapping[str, Any]]) -> Agreement:
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    result = Agreement()
    for row in records:
        method, label = row.get("verdict_method"), row.get("verdict")
        if not (isinstance(method, str) and method.startswith("judge:")) or not isinstance(label, str):
            continue
        if row.get("prompt_kind", "closed") != "closed" or not isinstance(row.get("answer"), str):
            continue
        ruled = parse_verdict(row["answer"], variant_from_row(dict(row)))
        result.judged += 1
        result.unsure += not ruled.confident
        if ruled.label == label:
            result.agree += 1
        else:
            result.pairs[(label, ruled.label)] += 1
    return result
