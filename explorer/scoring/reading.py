"""AnswerReading, what the reader returns, and the helpers that build one from its deciding cue."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

# Stored with every rule-read verdict: a store can tell answers read by an older reader.
from explorer.scoring.cues import Cue


@dataclass(frozen=True)
class AnswerReading:
    answer: Optional[str]  # "yes" / "no" / an option letter; None when label is not "answer"
    label: str  # "answer", "refusal", "hedge", "unclear"
    evidence: str = ""
    span: Optional[tuple[int, int]] = None  # answer[span[0]:span[1]] == evidence
    reason: str = ""
    confident: bool = True
    spans: tuple[tuple[int, int], ...] = ()  # every span behind the reading (both sides of a conflict)


def make_reading(
    answer: str,
    label: str,
    value: Optional[str],
    cue: Optional[Cue],
    reason: str,
    confident: bool = True,
    others: Sequence[Cue] = (),
) -> "AnswerReading":
    if cue is None:
        return AnswerReading(answer=value, label=label, reason=reason, confident=confident)
    spans = tuple((c.start, c.end) for c in [cue, *others])
    return AnswerReading(
        answer=value if label == "answer" else None,
        label=label,
        evidence=answer[cue.start : cue.end],
        span=(cue.start, cue.end),
        reason=reason,
        confident=confident,
        spans=spans,
    )


def quote(answer: str, cue: Cue) -> str:
    words = answer[cue.start : cue.end]
    return repr(words if len(words) <= 80 else words[:77] + "...")
