"""Free text -> the answer it gives to a closed question, with the words that decided it.

`read_answer(answer, question, options=None)` reads what a model wrote as:
  - label "answer" with .answer "yes"/"no" (yes/no question) or the option letter "A", "B", ...;
  - label "refusal": it declines to engage (policy, role, "I cannot see images");
  - label "hedge": it engages with the question and ends without a verdict, or contradicts itself;
  - label "unclear": no answer to this question (garbage, role-play or code leaking, echoes, an
    answer about something else, a yes/no to an either/or question).

How, in order (each step names its evidence, the exact span of the answer it rests on):
  1. Clean-up: markdown blanked (same length, so spans index the original), a leaked next turn
     ("\\nUser: ...") cut off, an echo of the question blanked, a leading role or "Answer:" label skipped.
  2. Not an answer at all: empty, no words, a copyright line, code, the choices restated, noise.
  3. An explicit answer: a yes/no (any of several languages) or option label opening the answer or
     its concluding sentence, or a formal "the answer is ...". It decides unless its own sentence
     states the opposite about the question's target; a leaked role turn must restate the question.
  4. Statements about the question's target, taken from the question itself ("Is there X" -> X,
     matched by stem, so "effusions" answers "effusion"), with NegEx-style negation scope, antonyms
     ("benign" answers "malignant?"), and for normality questions the findings that make an image
     abnormal. Findings inside hedges, conditionals ("whether", "if") and questions do not count.
     Mixed statements are settled by a concluding sentence, else they are a hedge.
  5. No answer: hedge cues that engage with the question ("difficult to determine whether ...")
     make a hedge; declining to engage makes a refusal; anything else is unclear.
Disclaimers ("I am an AI", "consult a doctor") never override an answer.

`.confident` is False where the reading rests on weaker ground (a synonym or a subject word
instead of the target, an inferred normal, mixed cues settled by a conclusion); an LLM judge, when
one is configured, settles exactly those.

Cost: linear in the answer; only the first 6,000 and last 1,500 characters are read (a verdict is
given at the start or in the conclusion).

The steps live beside this module: cleanup.py (1, 2), cues.py (3, 5: answer words, hedges,
refusals), statements.py (4), choice.py (either/or and multiple choice), on text_layout.py
(sentences, clauses, spans); reading.py holds what is returned.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from explorer.scoring.choice import read_choice
from explorer.scoring.cleanup import (
    USER_VOICE,
    blank_echo,
    looks_like_noise,
    not_an_answer,
    skip_prefixes,
    working_copy,
)
from explorer.scoring.cues import (
    CONCLUSION,
    HEDGE,
    POSSIBLE_FRAME,
    REFUSAL,
    Cue,
    echoes,
    engaged_hedge,
    explicit_answers,
    find_stance,
    void_spans,
)
from explorer.scoring.question_focus import Focus, read_question
from explorer.scoring.reading import AnswerReading, make_reading, quote
from explorer.scoring.statements import settle, target_statements
from explorer.scoring.text_layout import blank, sentence_at, sentences_of
from explorer.scoring.words import Token, tokens

__all__ = ["AnswerReading", "READER_VERSION", "read_answer"]

# Stored with every rule-read verdict: a store can tell answers read by an older reader.
READER_VERSION = "reader-2"
# How much of a very long answer is read: its opening and its close.
_HEAD = 6000
_TAIL = 1500


def read_answer(
    answer: str, question: str, options: Optional[Sequence[str]] = None, labels: Optional[Sequence[str]] = None
) -> AnswerReading:
    """Read a model's free-text `answer` to a closed `question` (see the module docstring).

    `options`: the option texts of an either/or or multiple-choice question, in order; the reading's
    .answer is then "A", "B", ... by position. `labels`: what the prompt shows for them when not A, B
    ("1", "2" or "a", "b"); answers naming those are read as the matching position.
    """
    answer = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
    question = question if isinstance(question, str) else ("" if question is None else str(question))
    options = [str(o) for o in options] if options else None
    if len(answer) <= _HEAD + _TAIL + 1:
        return _read(answer, question, options, labels)
    # A very long answer: read its opening and its close, then map spans back.
    cut = len(answer) - _TAIL
    reading = _read(answer[:_HEAD] + "\n" + answer[cut:], question, options, labels)

    def back(pos: int) -> int:
        return pos if pos <= _HEAD else pos - _HEAD - 1 + cut

    spans = tuple((back(s), back(e) if (s <= _HEAD) == (e <= _HEAD) else _HEAD) for s, e in reading.spans)
    span = spans[0] if reading.span is not None and spans else None
    return AnswerReading(
        reading.answer,
        reading.label,
        answer[span[0] : span[1]] if span else "",
        span,
        reading.reason,
        reading.confident,
        spans,
    )


def _read(answer: str, question: str, options: Optional[list[str]], labels: Optional[Sequence[str]]) -> AnswerReading:
    focus = read_question(question, options, labels)
    text = working_copy(answer)
    text = blank_echo(text, focus)
    restated = False
    if focus.options:
        before = text
        text = _blank_option_list(text, focus)
        restated = text != before
    text, start, leaked, label_at = skip_prefixes(text)
    if not text.strip():
        if restated:
            return make_reading(answer, "hedge", None, None, "restates the options without choosing")
        return make_reading(answer, "unclear", None, None, "empty output")
    problem = not_an_answer(text, start, bool(focus.options))
    if problem:
        return make_reading(answer, "unclear", None, None, problem)
    if looks_like_noise(text):
        return make_reading(
            answer, "unclear", None, None, "looks like noise: word salad, as random-weight models write"
        )
    sentences = sentences_of(text)
    toks = tokens(text)
    void = void_spans(text, sentences, focus)
    if focus.options:
        reading = read_choice(answer, text, start, leaked, focus, sentences, toks, void)
    else:
        reading = _read_yes_no(answer, text, start, leaked, focus, sentences, toks, void)
    if label_at is not None and reading.span and not text[start : reading.span[0]].strip():
        span = (label_at, reading.span[1])  # "Answer: B" is the evidence, not "B"
        reading = AnswerReading(
            reading.answer,
            reading.label,
            answer[span[0] : span[1]],
            span,
            reading.reason,
            reading.confident,
            (span, *reading.spans[1:]),
        )
    return reading


def _blank_option_list(text: str, focus: Focus) -> str:
    """A restated option list ("A) Tumor\\nB) No tumor") is the prompt, not a choice."""
    lines = [re.escape(f"{o.label}) {o.text}") + r"\b" for o in focus.options]
    if len(lines) < 2 or not all(re.search(p, text, re.I) for p in lines):
        return text
    for pattern in lines:
        for m in list(re.finditer(pattern, text, re.I)):
            text = blank(text, m.start(), m.end())
    return text


def _read_yes_no(
    answer: str,
    text: str,
    start: int,
    leaked: bool,
    focus: Focus,
    sentences: list[tuple[int, int]],
    toks: list[Token],
    void: list[tuple[int, int]],
) -> AnswerReading:
    both = re.search(r"\b(?:yes\s+and\s+no|no\s+and\s+yes)\b", text, re.I)
    if both:
        cue = Cue("hedge", both.start(), both.end(), "hedge")
        return make_reading(answer, "hedge", None, cue, f"answers both ways: {quote(answer, cue)}")
    explicit = explicit_answers(text, start, sentences)
    # Answer words are not findings: "No, there is effusion" must not read "no effusion".
    scrubbed = text
    for c in explicit:
        scrubbed = blank(scrubbed, c.start, c.end)
    statements, on_target = target_statements(scrubbed, focus, tokens(scrubbed), void, sentences)
    if explicit:
        first = explicit[0]
        s, e = sentence_at(sentences, first.start)
        if leaked and not echoes(focus, toks, s, e):
            return make_reading(
                answer,
                "unclear",
                None,
                first,
                f"a leaked role turn ({quote(answer, first)}) that does not answer the question",
            )
        if re.match(
            r"[\s,]*(?:please|can\s+you|could\s+you|would\s+you|I\s+would\s+like|I\s+want)\b", text[first.end :], re.I
        ):
            return make_reading(
                answer, "unclear", None, first, f"{quote(answer, first)} opens a request, not an answer"
            )
        stance_after = HEDGE.search(text, first.end, e) or REFUSAL.search(text, first.end, e)
        if stance_after and re.match(r"[\s,.;:!-]*(?:I|it|this|we|that)\b", text[first.end : stance_after.start()]):
            # "No, I cannot determine that from this image": the "no" answers nothing.
            stance = find_stance(text, focus, sentences, toks) or Cue(
                "hedge", stance_after.start(), stance_after.end(), "hedge"
            )
            return make_reading(
                answer,
                stance.value,
                None,
                stance,
                f"{quote(answer, first)} opens a {stance.value}: {quote(answer, stance)}",
                others=[first],
            )
        against = [c for c in explicit[1:] if c.value != first.value]
        if against:
            return make_reading(
                answer,
                "hedge",
                None,
                first,
                f"says both {quote(answer, first)} and {quote(answer, against[0])}",
                others=[against[0]],
            )
        in_sentence = [c for c in statements if s <= c.start < e and not c.weak and not c.tentative]
        if in_sentence and all(c.value != first.value for c in in_sentence):
            return make_reading(
                answer,
                "hedge",
                None,
                first,
                f"{quote(answer, first)} contradicted in the same sentence by {quote(answer, in_sentence[0])}",
                others=[in_sentence[0]],
            )
        definite = [c for c in statements if not c.weak and not c.tentative and on_target]
        if definite and all(c.value != first.value for c in definite):
            return make_reading(
                answer,
                "hedge",
                None,
                first,
                f"{quote(answer, first)} contradicted by {quote(answer, definite[0])}",
                others=[definite[0]],
            )
        return make_reading(answer, "answer", first.value, first, f"{first.how} {quote(answer, first)}")

    if leaked and USER_VOICE.match(text, start):
        return make_reading(answer, "unclear", None, None, "a leaked role turn in the user's voice, not an answer")
    stance = find_stance(text, focus, sentences, toks)
    if statements:
        if leaked and not any(echoes(focus, toks, *sentence_at(sentences, c.start)) for c in statements):
            statements = []
    engaged = engaged_hedge(text, focus, sentences, toks)
    if statements and engaged is not None:
        concluding = [c for c in statements if CONCLUSION.match(text, sentence_at(sentences, c.start)[0])]
        if not concluding:
            # "it is not clear if the lesion is typical ...": the question is weighed, not answered.
            return make_reading(
                answer,
                "hedge",
                None,
                engaged,
                f"weighs the question without answering it: {quote(answer, engaged)}",
                others=statements[:1],
            )
    if statements:
        cue, conflict, how = settle(statements, text, sentences)
        if cue is None:
            return make_reading(
                answer,
                "hedge",
                None,
                conflict[0],
                f"mixed statements: {quote(answer, conflict[0])} vs {quote(answer, conflict[1])}",
                others=conflict[1:],
            )
        if (
            stance is not None
            and stance.value == "refusal"
            and not stance.weak
            and all(c.generic or c.weak for c in statements)
        ):
            # "I'm not able to analyze medical images, but pneumonia typically appears as ...": declined.
            return make_reading(
                answer,
                "refusal",
                None,
                stance,
                f"declines, then only talks in general: {quote(answer, stance)}",
                others=[cue],
            )
        if stance is not None and stance.value == "hedge" and (cue.tentative or not stance.start > cue.start):
            # "difficult to determine whether ... ; there may be ..." ends without a verdict.
            if cue.tentative or cue.weak:
                return make_reading(
                    answer,
                    "hedge",
                    None,
                    stance,
                    f"hedge {quote(answer, stance)} beside only a tentative {quote(answer, cue)}",
                    others=[cue],
                )
        frame = POSSIBLE_FRAME.search(text, *sentence_at(sentences, statements[0].start))
        if (
            frame
            and all(c.tentative or frame.start() <= c.start < frame.end() + 400 for c in statements)
            and re.search(r"\b(?:however|but)\b", text[cue.end :], re.I)
        ):
            # "It is possible that the mass could represent ... However, further tests ...": weighed, not answered.
            hedge = Cue("hedge", frame.start(), frame.end(), "hedge")
            return make_reading(
                answer,
                "hedge",
                None,
                hedge,
                f"only a possibility, then a caveat: {quote(answer, hedge)}",
                others=[cue],
            )
        confident = on_target and how == "agree" and not cue.weak and stance is None
        return make_reading(
            answer,
            "answer",
            cue.value,
            cue,
            f"{'states' if on_target else 'implies'} {quote(answer, cue)}"
            + (
                ""
                if how == "agree"
                else f" ({'the concluding sentence' if how == 'conclusion' else 'the opening statement'})"
            ),
            confident=confident,
        )
    if stance is not None:
        return make_reading(
            answer,
            stance.value,
            None,
            stance,
            f"{stance.value} with no answer: {quote(answer, stance)}",
            confident=not stance.weak,
        )
    if not focus.has_target:
        return make_reading(
            answer,
            "unclear",
            None,
            None,
            "no answer word, and the question names no target to look for",
            confident=False,
        )
    return make_reading(
        answer,
        "unclear",
        None,
        None,
        "no answer to the question: no yes/no, and nothing said about "
        + ", ".join(sorted(focus.primary)[:3] or [focus.normality or "the target"]),
    )
