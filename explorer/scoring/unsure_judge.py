"""Rules first, the LLM judge only where the answer reader is unsure.

The answer reader marks a verdict `confident=False` where it rests on weak ground (a synonym or the
subject instead of the question's target, an inferred "normal", mixed cues settled by a conclusion,
a hedge or refusal with nothing else to go on). `UnsureOnlyJudge` keeps every confident rule verdict
and sends exactly the unsure ones to the wrapped judge (explorer/scoring/judge.py's LLMJudge, or anything
with the same judge/judge_many methods), so a sweep pays for judge calls only where they can change
a reading. A preset asks for it with `judge: {method: rules+llm}`; the CLI with `sweep --judge-unsure`.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

from explorer.schema import PromptVariant, Verdict
from explorer.scoring.verdicts import parse_verdict

__all__ = ["UnsureOnlyJudge"]


class UnsureOnlyJudge:
    def __init__(self, judge: Any):
        self.inner = judge
        # The judge's own method name: answers it settled are not sent again on the next sweep.
        self.method = getattr(judge, "method", "judge")

    def judge(self, answer: str, prompt_variant: PromptVariant, task: str) -> Union[Verdict, Any]:
        return self.judge_many([(answer, prompt_variant, task)])[0]

    def judge_many(self, items: Sequence[tuple[str, PromptVariant, str]]) -> list[Union[Verdict, Any]]:
        ruled = [parse_verdict(answer, variant) for answer, variant, _ in items]
        unsure = [i for i, verdict in enumerate(ruled) if not verdict.confident]
        if not unsure:
            return ruled
        many = getattr(self.inner, "judge_many", None)
        if many is not None:
            judged = many([items[i] for i in unsure])
        else:
            one = self.inner.judge if hasattr(self.inner, "judge") else self.inner
            judged = [one(*items[i]) for i in unsure]
        out: list[Union[Verdict, Any]] = list(ruled)
        for i, verdict in zip(unsure, judged):
            out[i] = verdict
        return out
