"""Statements about the question's target: its words matched by stem (or one letter off), NegEx-style
negation scope, antonyms, normality findings, and how mixed statements settle.
"""

from __future__ import annotations

import re
from typing import Optional

# Stored with every rule-read verdict: a store can tell answers read by an older reader.
from explorer.scoring.cues import CONCLUSION, Cue
from explorer.scoring.question_focus import Focus
from explorer.scoring.text_layout import Sentences, sentence_at, within
from explorer.scoring.words import (
    ABNORMAL_STEMS,
    ANTONYMS,
    LOCATION_STEMS,
    MODALITY_STEMS,
    NEGATORS,
    NORMAL_STEMS,
    POST_NEGATION,
    PSEUDO_NEGATION,
    SCOPE_BREAKERS,
    TENTATIVE,
    Token,
    stem,
)

LISTED = re.compile(r"\b(?:such\s+as|including|e\.g\.|for\s+example|for\s+instance)\b", re.I)


# Textbook talk, not a statement about this image.
GENERIC_MOOD = re.compile(r"\b(?:typically|usually|generally|commonly|often|tends?\s+to|in\s+general)\b", re.I)


def negation_at(text: str, toks: list[Token], i: int, clause_start: int) -> tuple[bool, int]:
    """(negated, where the negation starts) for the finding toks[i]."""
    start = toks[i].start
    j = i - 1
    seen = 0
    while j >= 0 and seen < 8 and toks[j].start >= clause_start:
        low = toks[j].lower
        if low in SCOPE_BREAKERS:
            break
        if low in NEGATORS or low.endswith("n't"):
            window = text[toks[j].start : toks[i].end]
            if not PSEUDO_NEGATION.match(window):
                return True, toks[j].start
        seen += 1
        j -= 1
    after = POST_NEGATION.match(text, toks[i].end)
    if after:
        return True, start
    return False, start


def find_statements(
    text: str,
    toks: list[Token],
    stems: frozenset[str],
    void: list[tuple[int, int]],
    sentences: list[tuple[int, int]],
    antonyms: frozenset[str] = frozenset(),
) -> list[Cue]:
    """Each mention of a stem (or an antonym) outside void spans: "yes" when affirmed, "no" when negated."""
    found: list[Cue] = []
    for i, tok in enumerate(toks):
        s = tok.stem
        if s not in stems and s not in antonyms:
            continue
        if within(void, tok.start):
            continue
        if isinstance(sentences, Sentences):
            clause_start = sentences.clause_start(tok.start)
        else:
            clause_start = sentence_at(sentences, tok.start)[0]
        if i > 0 and toks[i - 1].lower == "otherwise":  # "the otherwise normal ventricles"
            continue
        negated, neg_start = negation_at(text, toks, i, clause_start)
        affirmed = not negated
        if s in antonyms and s not in stems:
            affirmed = not affirmed
        end = tok.end
        post = POST_NEGATION.match(text, tok.end)
        if post:
            end = post.end()
        generic = bool(GENERIC_MOOD.search(text, *sentence_at(sentences, tok.start)))  # "X typically appears as"
        before = [t.lower for t in toks[max(0, i - 15) : i] if t.start >= clause_start]
        # "could potentially be a tumor or ... carcinoma", "conditions such as fibrosis": possibilities.
        tentative = generic or any(w in TENTATIVE for w in before) or bool(LISTED.search(text, clause_start, tok.start))
        found.append(Cue("yes" if affirmed else "no", neg_start, end, "statement", tentative, generic=generic))
    return found


def normality_statements(
    text: str,
    toks: list[Token],
    void: list[tuple[int, int]],
    sentences: list[tuple[int, int]],
    subject: frozenset[str] = frozenset(),
) -> list[Cue]:
    """For normality questions: "yes" = the image is normal, "no" = abnormal. Words of the question's
    own subject ("Is this skin lesion normal?") are not findings."""
    normal = find_statements(text, toks, NORMAL_STEMS - {stem("clear")}, void, sentences)
    abnormal = find_statements(text, toks, ABNORMAL_STEMS - subject, void, sentences)
    # A stated finding makes the image abnormal; a denied one ("no mass") is weak evidence of normal.
    cues = list(normal)
    for c in abnormal:
        if c.value == "yes":
            cues.append(Cue("no", c.start, c.end, "finding", c.tentative))
        else:
            cues.append(Cue("yes", c.start, c.end, "finding", c.tentative, weak=True))
    return sorted(cues, key=lambda c: c.start)


def settle(cues: list[Cue], text: str, sentences: list[tuple[int, int]]) -> tuple[Optional[Cue], list[Cue], str]:
    """One value from statements: all agree, or the concluding sentence speaks with one voice."""
    strong = [c for c in cues if not c.weak] or cues
    values = {c.value for c in strong}
    if len(values) == 1:
        definite = [c for c in strong if not c.tentative] or strong
        return definite[0], [], "agree"
    for s, e in reversed(sentences):
        if not CONCLUSION.match(text, s):
            continue
        inside = [c for c in strong if s <= c.start < e]
        if inside and len({c.value for c in inside}) == 1:
            return inside[0], [], "conclusion"
    # The opening statement decides when everything after it is only tentative.
    first = strong[0]
    later_against = [c for c in strong if c.value != first.value]
    if not first.tentative and all(c.tentative for c in later_against):
        return first, [], "lead"
    return None, [first, later_against[0]], "mixed"


def target_statements(
    text: str, focus: Focus, toks: list[Token], void: list[tuple[int, int]], sentences: list[tuple[int, int]]
) -> tuple[list[Cue], bool]:
    """(statements answering the question, whether they rest on the question's own target)."""
    if focus.normality is not None:
        cues = normality_statements(text, toks, void, sentences, focus.secondary)
        if focus.normality == "abnormal":
            cues = [Cue("no" if c.value == "yes" else "yes", c.start, c.end, c.how, c.tentative, c.weak) for c in cues]
        return flipped(cues, focus.negated), True
    antonyms = frozenset().union(*(ANTONYMS.get(s, frozenset()) for s in focus.primary)) - focus.primary
    # A misspelt finding ("pnemonia") still names it; a word that is another target term does not.
    near = near_spellings(toks, focus.primary, focus.primary | antonyms | focus.secondary, strict=True)
    cues = find_statements(text, toks, focus.primary | near, void, sentences, antonyms)
    if cues:
        return flipped(elsewhere(text, toks, cues, focus, sentences), focus.negated), True
    if focus.secondary:
        # The subject instead of the finding ("Is the heart enlarged?" - "The heart is normal in size").
        normal = find_statements(text, toks, NORMAL_STEMS, void, sentences)
        subject = find_statements(text, toks, focus.secondary, void, sentences)
        if normal and subject:
            cues = [
                Cue("no" if c.value == "yes" else "yes", c.start, c.end, "normal", c.tentative, True) for c in normal
            ]
            return flipped(cues, focus.negated), False
    asked = focus.primary & MODALITY_STEMS
    if asked:
        # "Is this a CT?" - "This is an MRI image": another modality, stated, answers no.
        other = find_statements(text, toks, MODALITY_STEMS - asked, void, sentences)
        stated = [Cue("no", c.start, c.end, "another modality", c.tentative, True) for c in other if c.value == "yes"]
        if stated:
            return flipped(stated, focus.negated), False
    if focus.primary & ABNORMAL_STEMS or pathological(focus):
        whole = [c for c in normality_statements(text, toks, void, sentences, focus.secondary) if c.how != "finding"]
        if whole:
            cues = [
                Cue("no" if c.value == "yes" else "yes", c.start, c.end, "normal", c.tentative, True) for c in whole
            ]
            return flipped(cues, focus.negated), False
    return [], False


def pathological(focus: Focus) -> bool:
    return bool(focus.primary) and not (focus.primary & NORMAL_STEMS)


def flipped(cues: list[Cue], negated: bool) -> list[Cue]:
    if not negated:
        return cues
    return [Cue("no" if c.value == "yes" else "yes", c.start, c.end, c.how, c.tentative, c.weak) for c in cues]


def edit_distance(a: str, b: str, limit: int = 2) -> int:
    """Levenshtein distance, stopping early once it exceeds limit."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        if min(current) > limit:
            return limit + 1
        previous = current
    return previous[-1]


def near_spellings(
    toks: list[Token], stems: frozenset[str], taken: frozenset[str], strict: bool = False
) -> frozenset[str]:
    """Words in the answer a letter or two away from an option's ("sagittal" for the question's
    "saggital"); never a word that is another option's own ("hypodense" is not "hyperdense")."""
    near = set()
    for t in toks[:400]:
        word = t.lower
        if len(word) < 7 or t.stem in taken:
            continue
        for target in stems:
            limit = (1 if len(target) < 8 else 2) if strict else 2
            if (
                len(target) >= 6
                and word[0] == target[0]
                and abs(len(t.stem) - len(target)) <= 1
                and edit_distance(t.stem, target, limit) <= limit
            ):
                near.add(t.stem)
    return frozenset(near)


_NOT_SIDE = re.compile(r"\bnot\s+(?:in\s+|on\s+|at\s+)?(?:the\s+)?([a-z]+)", re.I)


def elsewhere(text: str, toks: list[Token], cues: list[Cue], focus: Focus, sentences) -> list[Cue]:
    """A finding stated only on the other side ("in the right lung, not the left") answers a question
    about this side with no (weakly: the reader is unsure of it)."""
    sides = focus.secondary & LOCATION_STEMS
    if not sides:
        return cues
    others = frozenset().union(*(ANTONYMS.get(side, frozenset()) for side in sides)) - sides
    out = []
    for cue in cues:
        start, end = sentence_at(sentences, cue.start)
        here = {t.stem for t in toks if start <= t.start < end}
        denied = {stem(m.group(1)) for m in _NOT_SIDE.finditer(text, start, end)}
        if cue.value == "yes" and here & others and (not here & sides or sides & denied):
            out.append(Cue("no", cue.start, cue.end, "elsewhere", cue.tentative, True))
        else:
            out.append(cue)
    return out
