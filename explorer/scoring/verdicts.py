"""Free text -> verdict: the answer reader's reading with the prompt's polarity applied.

`read_answer` (explorer/scoring/reader.py) says what the text answers to the question as asked:
"yes"/"no", an option letter, or a refusal / hedge / unclear. This module applies the prompt's
polarity, and nowhere else is it applied: a "yes" to "Is this image normal?" is a NEGATIVE reading,
and the letter "A" means opposite things in the two multiple-choice orderings.

Every verdict read here carries method "rules:<reader version>", so a store can tell answers read
by an older reader and re-read them (`sweep --rescore`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from explorer.schema import PromptVariant, Reading, Verdict
from explorer.scoring.question_focus import question_polarity
from explorer.scoring.reader import READER_VERSION, read_answer
from explorer.scoring.reading import AnswerReading

__all__ = ["RULES_METHOD", "parse_verdict", "question_polarity", "read_answer", "reading_of", "is_rules_method"]

RULES_METHOD = f"rules:{READER_VERSION}"
_OPPOSITE = {"positive": "negative", "negative": "positive"}


def is_rules_method(method: Optional[str]) -> bool:
    """True for a verdict read by any version of the rule-based reader ("rules", "rules:reader-2")."""
    return isinstance(method, str) and (method == "rules" or method.startswith("rules:"))


def _well_formed_options(prompt: PromptVariant) -> PromptVariant:
    """The prompt with only the options that can be read: a non-empty letter, a reading that is
    positive or negative (anything else would become a verdict label) and a text."""
    kept = tuple(
        o
        for o in prompt.options
        if isinstance(o, (tuple, list))
        and len(o) == 3
        and isinstance(o[0], str)
        and o[0]
        and o[1] in ("positive", "negative")
        and isinstance(o[2], str)
    )
    return prompt if kept == prompt.options else replace(prompt, options=kept)


def reading_of(reading: AnswerReading, prompt: PromptVariant) -> Optional[Reading]:
    """The study's class ("positive"/"negative") that an answer asserts under this prompt's polarity."""
    if reading.label != "answer" or reading.answer is None:
        return None
    if prompt.is_multiple_choice:
        index = ord(reading.answer) - ord("A")
        return prompt.options[index][1] if 0 <= index < len(prompt.options) else None
    if reading.answer == "yes":
        return prompt.yes_means
    return _OPPOSITE.get(prompt.yes_means or "")


def parse_verdict(answer: str, prompt: PromptVariant) -> Verdict:
    """Read a VLM's free-text answer to `prompt` as positive / negative / refusal / hedge / unclear."""
    answer = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
    if prompt.kind == "describe":
        return Verdict(label="unclear", method=RULES_METHOD, detail="description prompts are not parsed into a verdict")
    prompt = _well_formed_options(prompt)
    if not prompt.is_multiple_choice and prompt.yes_means not in ("positive", "negative"):
        return Verdict(
            label="unclear", method=RULES_METHOD, detail="the prompt has no polarity (no yes_means, no options)"
        )
    options = [text for _, _, text in prompt.options] or None
    labels = [letter for letter, _, _ in prompt.options] or None
    reading = read_answer(answer, prompt.text, options, labels)
    label = reading_of(reading, prompt) or (reading.label if reading.label != "answer" else "unclear")
    detail = reading.reason + ("" if reading.confident else " (unsure)")
    return Verdict(
        label=label,
        evidence=reading.evidence,
        span=reading.span,
        method=RULES_METHOD,
        detail=detail,
        confident=reading.confident,
        spans=reading.spans,
    )
