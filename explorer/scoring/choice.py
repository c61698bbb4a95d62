"""Either/or and multiple-choice answers: option labels (A, (b), 2), the options' own words, comparisons
("X is larger than Y"), and answers that take both or neither.
"""

from __future__ import annotations

import re
from typing import Optional

# Stored with every rule-read verdict: a store can tell answers read by an older reader.
from explorer.scoring.cues import CONCLUSION, FORMAL, Cue, answer_word, echoes, find_stance
from explorer.scoring.question_focus import Focus
from explorer.scoring.reading import AnswerReading, make_reading, quote
from explorer.scoring.statements import find_statements, near_spellings
from explorer.scoring.text_layout import blank, sentence_at
from explorer.scoring.words import (
    SYNONYMS,
    Token,
    tokens,
)


def label_at(text: str, pos: int, focus: Focus) -> Optional[Cue]:
    """An option label opening text[pos:] ("B", "(B)", "B)", "Option B", "**B**"), not the article "A"."""
    m = re.match(r"[\s\"'(]*(?:(?:option|choice|image|picture|answer)\s*)?\(?", text[pos : pos + 60], re.I)
    i = pos + m.end()
    for index, option in enumerate(focus.options):
        label = option.label
        lower = len(label) == 1 and label.isupper() and text.startswith(label.lower(), i)
        if not text.startswith(label, i) and not lower:
            continue
        if lower and not m.group().strip() and text[i + 1 : i + 3].strip(" .!)\n"):
            continue  # "a tumor": the article; a bare "b" or "(b)" is a label
        end = i + len(label)
        rest = text[end : end + 80]
        if rest[:1].isalnum():
            continue  # "Ab..." is a word
        closed = re.match(r"\s*[)\].:-]", rest)
        tail = rest[closed.end() :] if closed else rest
        if closed or not tail.strip() or tail.lstrip(" \t")[:1] in tuple(",;!?\n\"'"):
            named = option_named_at(tail, focus)
            if named is not None and named != index:
                return Cue("conflict", i, end, f"label {label} names {focus.options[named].text!r}")
            return Cue(chr(ord("A") + index), i, end + (closed.end() if closed else 0), "option label")
        if option_named_at(tail, focus) == index:  # "A Tumor" when A is "Tumor"
            return Cue(chr(ord("A") + index), i, end, "option label")
        if re.search(r"(?:option|choice)\s*\(?$", m.group(), re.I):  # "option B is more likely"
            return Cue(chr(ord("A") + index), pos + m.group().lower().index("o"), end, "option label")
    return None


def option_named_at(text: str, focus: Focus) -> Optional[int]:
    head = text.lstrip(" \t")[:80].lower()
    best = None
    for index, option in enumerate(focus.options):
        if (
            option.text
            and head.startswith(option.text.lower())
            and (best is None or len(option.text) > len(focus.options[best].text))
        ):
            best = index
    return best


MORE = re.compile(r"\b(?:larger|bigger|greater|more|higher|wider|longer|heavier|thicker)\b", re.I)


LESS = re.compile(r"\b(?:smaller|less|lesser|lower|narrower|shorter|lighter|thinner|fewer)\b", re.I)


COPULA_BEFORE = re.compile(
    r"\b(?:is|are|was|were|appears?|seems?|looks?|be)\s+(?:to\s+be\s+)?(?:an?\s+|the\s+)?$", re.I
)


def comparison(text: str, s: int, e: int, inside: list[Cue], question: str) -> Optional[Cue]:
    """ "X is larger than Y" answering "Which is bigger, X or Y?": X; "X is smaller than Y": Y."""
    asks_more, asks_less = bool(MORE.search(question)), bool(LESS.search(question))
    if asks_more == asks_less:
        return None
    first, second = inside[0], next((c for c in inside if c.value != inside[0].value), None)
    if second is None:
        return None
    between = text[first.end : second.start]
    if not re.search(r"\bthan\b|\bcompared\s+(?:to|with)\b", between, re.I):
        return None
    more, less = MORE.search(between), LESS.search(between)
    if bool(more) == bool(less):
        return None
    return first if bool(more) == asks_more else second


def predicate_choice(text: str, inside: list[Cue]) -> Optional[Cue]:
    """Of two options named in one sentence, the one stated as its predicate ("... appear to be solid")."""
    stated = [c for c in inside if COPULA_BEFORE.search(text[max(0, c.start - 30) : c.start])]
    return stated[0] if len({c.value for c in stated}) == 1 else None


# After a label: the model rules that option out.
RULED_OUT = re.compile(
    r"\)?\s+(?:is|seems|appears)\s+(?:not\s+(?:correct|right|likely)|incorrect|wrong|unlikely)", re.I
)
NEITHER = re.compile(
    r"\b(?:neither|none)\s+of\s+(?:the\s+)?(?:\w+\s+)?(?:options|choices|answers|above|images)\b|"
    r"^\W*neither\b",  # "Neither image shows ..."
    re.I | re.M,
)


RESTATES_BOTH = re.compile(r"\b(?:either|both|or|and|vs\.?|versus|between)\b", re.I)


def choice_statements(
    text: str, toks: list[Token], focus: Focus, void: list[tuple[int, int]], sentences: list[tuple[int, int]]
) -> list[Cue]:
    """Affirmed mentions of an option's own words: a cue for that option ("A", "B", ...); a denied
    mention of one of two options is weak support for the other."""
    opts = focus.options
    pair = next(((i, o.negated_of) for i, o in enumerate(opts) if o.negated_of is not None), None)
    cues: list[Cue] = []
    if pair is not None:
        negative, positive = pair
        stems = frozenset().union(
            *(focus.options[positive].stems | SYNONYMS.get(s, frozenset()) for s in focus.options[positive].stems)
        )
        for c in find_statements(text, toks, stems, void, sentences):
            index = positive if c.value == "yes" else negative
            cues.append(Cue(chr(ord("A") + index), c.start, c.end, "names", c.tentative))
        return cues
    taken = frozenset().union(*(o.stems for o in opts))
    for index, option in enumerate(opts):
        for c in find_statements(text, toks, option.stems | near_spellings(toks, option.stems, taken), void, sentences):
            if c.value == "yes":
                cues.append(Cue(chr(ord("A") + index), c.start, c.end, "names", c.tentative))
            elif len(opts) == 2:
                cues.append(Cue(chr(ord("A") + 1 - index), c.start, c.end, "denies the other", c.tentative, True))
    return sorted(cues, key=lambda c: c.start)


def read_choice(
    answer: str,
    text: str,
    start: int,
    leaked: bool,
    focus: Focus,
    sentences: list[tuple[int, int]],
    toks: list[Token],
    void: list[tuple[int, int]],
) -> AnswerReading:
    neither = NEITHER.search(text)
    if neither:
        cue = Cue("hedge", neither.start(), neither.end(), "hedge")
        return make_reading(answer, "hedge", None, cue, f"picks none of the options: {quote(answer, cue)}")
    labels = []
    lead = label_at(text, start, focus)
    if lead:
        labels.append(lead)
    for m in FORMAL.finditer(text):
        cue = label_at(text, m.end(), focus)
        if cue and all(c.start != cue.start for c in labels):
            labels.append(Cue(cue.value, m.start(), cue.end, "formal answer"))
    seen = {c.start for c in labels}
    # Line starts, "(B)" anywhere, and "option B" / "choice B" anywhere ("option B is more likely").
    scan = r"(?:^|\n)[ \t]*|\((?=[A-Za-z0-9]\))|(?P<kw>\b(?:option|choice)\s+)(?=\(?[A-Za-z0-9]\b)"
    for m in re.finditer(scan, text, re.I):
        at = m.start() if m.group("kw") else m.end()
        if m.group("kw") and RULED_OUT.match(text, m.end() + 1):
            continue  # "Option A is not correct": not a choice of A
        if m.end() > start + 1:
            cue = label_at(text, at, focus)
            if cue and not seen.intersection(range(cue.start - 2, cue.start + 3)):
                labels.append(cue)
                seen.add(cue.start)
    labels.sort(key=lambda c: c.start)
    # A leading yes/no is not a choice, and must not negate the option after it ("No, it is on the right").
    word = answer_word(text, start)
    scrubbed = blank(text, word.start, word.end) if word else text
    statements = choice_statements(scrubbed, tokens(scrubbed), focus, void, sentences)
    if labels:
        conflict = [c for c in labels if c.value == "conflict"]
        if conflict:
            return make_reading(answer, "hedge", None, conflict[0], f"contradicts itself: {conflict[0].how}")
        formal = [c for c in labels if c.how == "formal answer"]
        if formal and len({c.value for c in formal}) == 1:
            labels = formal  # "the answer is B" decides over labels mentioned on the way
        first = labels[0]
        against = [c for c in labels[1:] if c.value != first.value]
        if against:
            return make_reading(
                answer,
                "hedge",
                None,
                first,
                f"names two options: {quote(answer, first)} and {quote(answer, against[0])}",
                others=[against[0]],
            )
        s, e = sentence_at(sentences, first.start)
        contra = [
            c for c in statements if s <= c.start < e and c.value != first.value and not c.weak and c.start >= first.end
        ]
        definite = [c for c in statements if not c.weak and not c.tentative]
        if not contra and definite and all(c.value != first.value for c in definite):
            contra = definite
        if contra:
            return make_reading(
                answer,
                "hedge",
                None,
                first,
                f"{quote(answer, first)} contradicted by {quote(answer, contra[0])}",
                others=[contra[0]],
            )
        return make_reading(answer, "answer", first.value, first, f"{first.how} {quote(answer, first)}")
    short = text[start:].strip(" \t\n.!\"'").lower()
    if 2 <= len(short) <= 20 and not statements and not word:
        prefixed = [i for i, o in enumerate(focus.options) if o.text.lower().startswith(short)]
        if len(prefixed) == 1:  # "mr" for "mri"
            i = text.lower().index(short, start)
            cue = Cue(chr(ord("A") + prefixed[0]), i, i + len(short), "names")
            return make_reading(
                answer, "answer", cue.value, cue, f"starts the option {quote(answer, cue)}", confident=False
            )
    strong = [c for c in statements if not c.weak]
    restated = None
    for s, e in sentences:
        inside = [c for c in strong if s <= c.start < e]
        if not inside:
            continue
        values = {c.value for c in inside}
        if len(values) == 1:
            cue = inside[0]
            later = [c for c in strong if c.start >= e and c.value != cue.value and not c.tentative]
            concluding = [c for c in later if CONCLUSION.match(text, sentence_at(sentences, c.start)[0])]
            if concluding:
                return make_reading(
                    answer,
                    "answer",
                    concluding[-1].value,
                    concluding[-1],
                    f"the concluding sentence names {quote(answer, concluding[-1])}",
                    confident=False,
                )
            if leaked and not echoes(focus, toks, s, e):
                return make_reading(
                    answer, "unclear", None, cue, "a leaked role turn that does not answer the question"
                )
            return make_reading(
                answer,
                "answer",
                cue.value,
                cue,
                f"names {quote(answer, cue)}",
                confident=not later and not cue.tentative,
            )
        compared = comparison(text, s, e, inside, focus.core)
        if compared is not None:
            return make_reading(
                answer,
                "answer",
                compared.value,
                compared,
                f"the comparison names {quote(answer, compared)}",
                confident=False,
            )
        if not RESTATES_BOTH.search(text[s:e]):
            stated = predicate_choice(text, inside)
            if stated is not None:
                return make_reading(
                    answer, "answer", stated.value, stated, f"states {quote(answer, stated)}", confident=False
                )
            a = inside[0]
            b = next(c for c in inside if c.value != a.value)
            return make_reading(
                answer, "hedge", None, a, f"names both {quote(answer, a)} and {quote(answer, b)}", others=[b]
            )
        if re.search(r"\b(?:both|either|could\s+be|may\s+be|might\s+be)\b", text[s:e], re.I):
            return make_reading(
                answer,
                "hedge",
                None,
                inside[0],
                f"leaves both options open: {quote(answer, inside[0])}",
                others=[inside[-1]],
            )
        restated = restated or (s, e, inside)  # "X or Y?" restated: read on.
    weak = [c for c in statements if c.weak]
    if weak and len({c.value for c in weak}) == 1:
        return make_reading(
            answer, "answer", weak[0].value, weak[0], f"{weak[0].how}: {quote(answer, weak[0])}", confident=False
        )
    stance = find_stance(text, focus, sentences, toks)
    if stance is not None:
        return make_reading(
            answer,
            stance.value,
            None,
            stance,
            f"{stance.value} with no choice: {quote(answer, stance)}",
            confident=not stance.weak,
        )
    both = re.search(r"\bboth\b", text[start:], re.I)
    if both:
        cue = Cue("hedge", start + both.start(), start + both.end(), "hedge")
        return make_reading(answer, "hedge", None, cue, f"takes both options: {quote(answer, cue)}")
    if word:
        return make_reading(
            answer, "unclear", None, word, f"{quote(answer, word)} does not answer an either/or question"
        )
    if restated:
        cue = restated[2][0]
        return make_reading(
            answer,
            "hedge",
            None,
            cue,
            f"restates both options without choosing: {quote(answer, cue)}",
            others=restated[2][1:2],
        )
    return make_reading(answer, "unclear", None, None, "names none of the options")
