"""What a closed question asks about, read from its own words.

"Is there a small left pleural effusion?" asks about effusion (in any form: "effusions"); "Is the
heart enlarged?" about "enlarged" (of the heart); "Is this scan normal?" is a normality question
whose "yes" asserts normal; "Is there anything abnormal?" one whose "yes" asserts abnormal;
"Is the appendix non-enlarged?" asks about "enlarged", negated. Instructions that follow the
question ("Answer in one word.", "Please choose from the following two options: [yes, no]") and
labels before it ("Radiological assessment:") are not part of it.

Two-option questions carry their options (given by the caller in order); each option is reduced
to the stems that tell it from the other ("lower lobe" vs "upper lobe": "lower" vs "upper").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Optional, Sequence

from explorer.scoring.words import (
    ANTONYMS,
    GENERIC_STEMS,
    NEGATORS,
    NORMAL_STEMS,
    SYNONYMS,
    stem,
    tokens,
)

__all__ = ["Focus", "OptionFocus", "read_question", "question_polarity"]

# Words after which the rest of a phrase is a place or a relation, not the finding itself.
_PREPOSITIONS = frozenset(
    "in on at of within from near around along across involving over under between into onto than with to by "
    "compared relative due "
    "throughout behind above below beside inside outside via per towards toward for".split()
)
_FILLER_PHRASES = re.compile(
    r"\b(?:(?:any\s+)?(?:evidence|signs?|presence|indications?|features?|findings?)\s+(?:of|for|suggestive\s+of)"
    r"|suggestive\s+of|consistent\s+with)\b",
    re.I,
)
_AUXILIARY = re.compile(
    r"^\s*(?:is|are|does|do|did|can|could|would|will|was|were|has|have|had|should|may|might|shall)\b", re.I
)
# Text after the question that instructs rather than asks.
_INSTRUCTION = re.compile(
    r"\b(?:answer|respond|reply|choose|select|pick|return|output|please|consider|this\s+is\s+a\s+closed|"
    r"the\s+answer\s+should|format)\b",
    re.I,
)
_NORMAL_WORDS = re.compile(r"\b(?:normal|unremarkable|healthy|within\s+normal\s+limits)\b", re.I)
_ABNORMAL_WORDS = re.compile(
    r"\b(?:abnormal(?:ity|ities)?|patholog(?:y|ical|ic)|diseased|anything\s+(?:wrong|unusual))\b", re.I
)
_NOT_NORMAL = re.compile(r"\b(?:not|non-?|isn't|aren't)\s*normal\b", re.I)
_CLAUSE_QUESTION = re.compile(
    r"(?:[,;]|\bbut|\bso|\band|\bnow)\s+(?P<aux>(?:is|are|does|do|did|can|could|was|were|has|have|will|would|should)\s)",
    re.I,
)
_NORMALITY_STEMS = NORMAL_STEMS | frozenset(
    stem(w) for w in "abnormal abnormality pathology pathological diseased".split()
)
_OPTION_LABEL = re.compile(r"^\s*(?:\(?[A-Za-z0-9]{1,2}[).:\]]|[-*•])\s*")


@dataclass(frozen=True)
class OptionFocus:
    label: str  # what the prompt shows ("A", "1", "a")
    text: str
    stems: frozenset[str]  # stems that tell this option from the others
    negated_of: Optional[int] = None  # index of the option this one negates ("No tumor" -> "Tumor")


@dataclass(frozen=True)
class Focus:
    """What the question asks about."""

    core: str  # the question sentence, instructions and labels removed
    primary: frozenset[str] = frozenset()  # stems of the finding/property asked about (with synonyms)
    secondary: frozenset[str] = frozenset()  # other content stems of the question (subject, place)
    echo: frozenset[str] = frozenset()  # every content stem of the question (restating it counts)
    normality: Optional[str] = None  # "normal" or "abnormal": what a "yes" asserts
    negated: bool = False  # "Is there no effusion?", "non-enlarged": yes asserts the absence
    options: tuple[OptionFocus, ...] = field(default=())

    @property
    def has_target(self) -> bool:
        return bool(self.primary) or self.normality is not None


def _core_question(question: str) -> str:
    """The sentence that asks: the first one ending with '?' (labels before a colon dropped)."""
    text = question.strip()
    m = re.search(r"[^?\n]*\?", text)
    if m:
        core = m.group()
    else:
        # No question mark: the first sentence that does not instruct.
        parts = [p for p in re.split(r"(?<=[.!])\s+|\n", text) if p.strip()]
        core = next((p for p in parts if not _INSTRUCTION.search(p)), parts[0] if parts else "")
    if ":" in core:  # "Radiological assessment: Is there ...?"
        head, _, tail = core.rpartition(":")
        if tail.strip():
            core = tail
    # "I think this image is normal, but is there a tumor?": the clause that asks.
    asks = list(_CLAUSE_QUESTION.finditer(core))
    if asks and asks[-1].start() > 0:
        core = core[asks[-1].start("aux") :]
    return core.strip()


_OBJECT_VERBS = re.compile(
    r"\b(?:show|shows|contain|contains|demonstrate|demonstrates|have|has|represent|represents|indicate|"
    r"indicates|suggest|suggests|reveal|reveals|depict|depicts|display|displays|involve|involves|mean|means)\b",
    re.I,
)
_DEFINITE_COPULA = re.compile(r"^\s*(?:is|are|was|were)\s+(?:the|this|that|these|those|his|her|its|their)\b", re.I)
# Final words that read as a predicate ("Is the anatomy of the gyri affected?"), not a place's noun.
_PREDICATE_SUFFIX = re.compile(
    r"(?:ed|al|ic|ous|ive|ent|ant|ar|ble|ful|less|cut|wide|large|small|clear|dense|"
    r"thick|thin|sharp|intact|normal|er)$",
    re.I,
)


def _content(core: str) -> tuple[list[str], list[str], bool, list[str]]:
    """(target stems, other content stems, negated, alternative targets joined by "or").

    "Is there X in/on/of ..." and "Does this image show X ..." ask about X (the words before its
    first preposition; the last of them names the finding). "Is the X of Y affected?" asks about its
    final predicate. A negator before the target ("Is there no effusion?", "non-enlarged") flips it.
    """
    text = _FILLER_PHRASES.sub(" ", core)
    text = _AUXILIARY.sub(" ", text, count=1)
    subject_words: list[str] = []
    verb = _OBJECT_VERBS.search(text)
    if verb:  # "does gangrene toe in infant show typical lesion" -> the object is the target
        subject_words = [stem(t.lower) for t in tokens(text[: verb.start()]) if stem(t.lower) not in GENERIC_STEMS]
        text = text[verb.end() :]
    head: list[str] = []
    rest: list[str] = []
    alternatives: list[str] = []
    negated = False
    after_prep = False
    toks = tokens(text)
    for tok in toks:
        low = tok.lower
        if low == "or" and head and not after_prep:  # "a mass or lesion": either one is the target
            alternatives.append(head[-1])
            continue
        if low in NEGATORS or low == "non":
            if not after_prep:
                negated = True
            continue
        if low in _PREPOSITIONS and head:
            after_prep = True
            continue
        s = stem(low)
        if s in GENERIC_STEMS or low.isdigit() or len(low) < 2:
            continue
        (rest if after_prep else head).append(s)
    if _DEFINITE_COPULA.match(core) and after_prep and not verb:
        content = [t for t in toks if stem(t.lower) not in GENERIC_STEMS and t.lower not in _PREPOSITIONS]
        last = content[-1] if content else None
        if last is not None and _PREDICATE_SUFFIX.search(last.lower):
            predicate = stem(last.lower)
            joined = [stem(t.lower) for t in content[-2:-1] if text[t.end : last.start] == "-"]  # "clear-cut"
            rest = [w for w in rest if w != predicate and w not in joined]
            head = [*head, *rest, *joined, predicate]
            alternatives.extend(joined)
            rest = []
            negated = negated or bool(re.search(r"\b(?:not|non)\b[\s-]*" + re.escape(last.text) + r"\b", text, re.I))
    return head, rest + subject_words, negated, alternatives


def _options(options: Sequence[str], labels: Sequence[str]) -> tuple[OptionFocus, ...]:
    texts = [_OPTION_LABEL.sub("", str(o)).strip().rstrip(".") for o in options]
    stem_sets = []
    negations = []
    for t in texts:
        words = [w.lower for w in tokens(t)]
        neg = bool(words) and words[0] in {"no", "not", "non", "without", "absence"}
        negations.append(neg)
        stem_sets.append([stem(w) for w in words if w not in NEGATORS and w not in {"non", "absence", "of"}])
    result = []
    for i, t in enumerate(texts):
        own = set(stem_sets[i])
        others = set().union(*(set(s) for j, s in enumerate(stem_sets) if j != i)) if len(texts) > 1 else set()
        distinct = own - others
        specific = distinct - GENERIC_STEMS
        negated_of = None
        if negations[i]:
            for j, other in enumerate(stem_sets):
                if j != i and not negations[j] and set(other) == own:
                    negated_of = j
        result.append(
            OptionFocus(
                label=str(labels[i]), text=t, stems=frozenset(specific or distinct or own), negated_of=negated_of
            )
        )
    return tuple(result)


def read_question(
    question: str, options: Optional[Sequence[str]] = None, labels: Optional[Sequence[str]] = None
) -> Focus:
    question = question if isinstance(question, str) else ("" if question is None else str(question))
    core = _core_question(unicodedata.normalize("NFKC", question[:4000]))  # full-width letters too
    head, rest, negated, alternatives = _content(core)
    normality = None
    if _NOT_NORMAL.search(core) or _ABNORMAL_WORDS.search(core):
        normality = "abnormal"
    elif _NORMAL_WORDS.search(core):
        normality = "normal"
    if _NOT_NORMAL.search(core):
        negated = False  # "not normal" is read as "abnormal" above
    primary: set[str] = set()
    secondary: set[str] = set()
    if head:
        # The finding or property is the last content word before a place ("airspace consolidation
        # on the left" -> consolidation); the words before it name its subject.
        primary = {head[-1], *alternatives}
        secondary = set(head[:-1]) | set(rest)
    elif rest:
        primary = {rest[0]}
        secondary = set(rest[1:])
    for s in list(primary):
        primary |= SYNONYMS.get(s, frozenset())
    if normality is not None:
        # The normality word is the question's target; the other words name its subject.
        primary -= _NORMALITY_STEMS
        secondary -= _NORMALITY_STEMS
    echo = frozenset(head) | frozenset(rest)
    opts: tuple[OptionFocus, ...] = ()
    if options:
        labels = list(labels) if labels else [chr(ord("A") + i) for i in range(len(options))]
        opts = _options(list(options), labels[: len(options)])
    return Focus(
        core=core,
        primary=frozenset(primary),
        secondary=frozenset(secondary) - primary,
        echo=echo,
        normality=normality,
        negated=negated,
        options=opts,
    )


def question_polarity(question: str) -> Optional[str]:
    """What a "yes" to this question says about the study's class: "positive" (a finding, abnormal)
    or "negative" (normal, absent), read from the question's own words; None when it is not a
    yes/no question about a finding."""
    focus = read_question(question)
    if focus.normality == "normal":
        return "positive" if focus.negated else "negative"
    if focus.normality == "abnormal":
        return "negative" if focus.negated else "positive"
    if not focus.primary:
        return None
    if focus.primary & (NORMAL_STEMS | {stem("absent"), stem("negative")}):
        return "positive" if focus.negated else "negative"
    if any(s in ANTONYMS and ANTONYMS[s] & NORMAL_STEMS for s in focus.primary):
        return "negative" if focus.negated else "positive"  # "free of malignant skin cancer?"
    return "negative" if focus.negated else "positive"
