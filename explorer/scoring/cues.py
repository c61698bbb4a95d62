"""Cues in an answer: hedges, refusals and disclaimers (the stance), the stretches whose findings state
nothing (questions, whether/if clauses), and explicit answer words (yes/no in several languages,
leaning answers, formal and concluding answers).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from explorer.scoring.question_focus import Focus

# Stored with every rule-read verdict: a store can tell answers read by an older reader.
from explorer.scoring.text_layout import Sentences, Spans, sentence_at
from explorer.scoring.words import (
    CJK_NO,
    CJK_YES,
    NO_WORDS,
    NORMAL_STEMS,
    YES_WORDS,
    Token,
    stem,
    tokens,
)

HEDGE = re.compile(
    r"\b(?:(?:difficult|hard|challenging|tricky|not\s+easy|impossible|not\s+possible|unable|not\s+able)\s+"
    r"(?:for\s+me\s+)?to\s+(?:\w+\s+){0,2}?(?:determine|say|tell|assess|know|judge|conclude|confirm|"
    r"distinguish|establish|ascertain|evaluate|identify|differentiate|be\s+(?:certain|sure)|answer)|"
    r"(?:can(?:no|')?t|can\s+not|could\s*n[o']?t|cannot|unable\s+to)\s+(?:\w+\s+){0,2}?"
    r"(?:determine|tell|say|confirm|assess|ascertain|establish|be\s+(?:certain|sure))\s+"
    r"(?:(?:\w+\s+){0,5}?)(?:whether|if|which|the\s+presence|for\s+(?:sure|certain)|definitively|with\s+certainty|"
    r"from\s+(?:this|the)\s+(?:image|picture|scan|x-ray)|based\s+on)|"
    r"cannot\s+be\s+(?:determined|assessed|confirmed|excluded|ruled\s+out|evaluated)|"
    r"(?:may|might|could)\s+or\s+(?:may|might|could)\s+not|"
    r"(?:can(?:no|')?t|cannot|can\s+not|could\s*n[o']?t|not)\s+(?:be\s+)?(?:completely\s+|entirely\s+|"
    r"definitively\s+|fully\s+)?(?:rule[ds]?\s+out|exclude[ds]?)|"
    r"(?:inconclusive|indeterminate|equivocal|uncertain|unclear|ambiguous|unsure|undetermined)|"
    r"not\s+(?:entirely\s+|completely\s+|totally\s+|fully\s+|100%\s+)?(?:sure|certain|clear|definitive|conclusive)|"
    r"(?:no|not\s+enough|insufficient|limited)\s+(?:\w+\s+)?(?:information|detail|resolution|context|data)|"
    r"(?:would\s+need|need(?:s|ed)?|requires?|required|without)\s+(?:further|additional|more)\s+"
    r"(?:[\w-]+\s+){0,2}?(?:information|tests?|testing|context|evaluation|imaging|investigation|"
    r"examination|analysis|studies|history|views?)|"
    r"(?:no|not|n't|lack|without)\s+(?:\w+\s+){0,2}?(?:enough|sufficient|adequate)\s+(?:\w+\s+)?"
    r"(?:information|detail|resolution|context|data|evidence)|"
    r"(?:could|may|might|can)\s+also\s+be|not\s+necessarily|not\s+(?:a\s+)?(?:definitive|conclusive)|"
    r"further\s+(?:\w+\s+){0,2}?(?:tests?|testing|evaluation|imaging|investigation|examination|work-?up|"
    r"studies|assessment)\s+(?:\w+\s+){0,4}?(?:is|are|would\s+be|may\s+be|will\s+be)?\s*"
    r"(?:needed|required|necessary|recommended|warranted)|"
    r"both\s+\(?[A-Z]\)?\s+and\s+\(?[A-Z]\)?|either\s+(?:option\s+)?\(?[A-Z]\)?\s+or\s+(?:option\s+)?\(?[A-Z]\)?|"
    r"neither\s+(?:of\s+the\s+)?(?:\w+\s+)?(?:options|choices|answers)|"
    r"I\s+(?:don't|do\s+not)\s+know|no\s+idea|(?:cannot|can't|can\s+not|unable\s+to)\s+(?:be\s+)?(?:\w+\s+){0,2}?"
    r"(?:determined?|tell|say)(?=\s*(?:[.!]|$|\n|from|based|with|without))|"
    r"(?:too\s+(?:poor|low|blurry|small|limited|grainy)|insufficient|inadequate)\b[^.\n]{0,40}?\bto\s+"
    r"(?:make|determine|assess|tell|say|evaluate)|make\s+a\s+(?:definitive\s+)?determination|"
    r"(?:not\s+possible|impossible|difficult|hard|unable)(?:\s+to)?(?=\s*\Z)|"  # cut off mid-hedge
    r"yes\s+and\s+no|either\s+way|could\s+be\s+either|50/50|equally\s+likely)\b",
    re.I,
)


REFUSAL = re.compile(
    r"\b(?:I(?:'m|\s+am)\s+sorry|I\s+apologi[sz]e|unfortunately,?\s+I|"
    r"I(?:'m|\s+am)\s+(?:unable|not\s+able)\s+to\s+(?:\w+\s+){0,2}?(?:provide|give|offer|make|help|assist|comply|"
    r"diagnose|interpret|analy[sz]e|access|process|open|evaluate|examine|perform)\b(?!\s+(?:any|some|signs?|evidence)\b)|"
    r"as\s+an\s+(?:AI|artificial|language\s+model|assistant)|"
    r"I(?:'m|\s+am)\s+(?:just\s+|only\s+)?an?\s+(?:AI|language\s+model|text-based|virtual)|"
    r"I\s+(?:cannot|can't|can\s+not|am\s+unable\s+to|am\s+not\s+able\s+to|won't|will\s+not|do\s+not|don't)\s+"
    r"(?:\w+\s+){0,2}?(?:provide|give|offer|make|help|assist|comply|diagnose|interpret|analy[sz]e|"
    r"access|process|open|evaluate|examine|perform|fulfil)\b(?!\s+(?:any|some|signs?|evidence)\b)|"
    r"I\s+(?:do\s+not|don't)\s+have\s+(?:the\s+)?(?:ability|capability|access)|"
    r"not\s+(?:able|qualified|allowed|permitted|appropriate)\s+(?:for\s+me\s+)?to\s+(?:provide|give|make|"
    r"diagnose|interpret|offer)|not\s+qualified|"
    r"no\s+image\s+(?:was\s+|has\s+been\s+|is\s+)?(?:provided|attached|uploaded|shared|included)|"
    r"without\s+(?:actually\s+)?(?:seeing|viewing|access\s+to)\s+(?:the|an|this|your)\s+(?:actual\s+)?"
    r"(?:image|picture|scan|x-ray)|"
    r"(?:can(?:no|')?t|cannot|unable\s+to|do\s+not|don't|am\s+not\s+able\s+to)\s+(?:see|view|access|open|load)\s+"
    r"(?:the\s+|any\s+|this\s+|your\s+|an\s+)?(?:attached\s+|uploaded\s+|provided\s+)?"
    r"(?:image|picture|photo|file|x-ray|scan)s?\b)",
    re.I,
)


DISCLAIMER = re.compile(
    r"\b(?:consult|see|ask|contact|seek|visit|talk\s+to|speak\s+(?:to|with)|refer\s+to)\b(?:\s+[\w-]+){0,4}?\s+"
    r"\w*(?:professional|doctor|physician|radiologist|dermatologist|pathologist|oncologist|specialist|expert|"
    r"provider|clinician)s?|"
    r"\b(?:medical|professional)\s+(?:advice|evaluation|opinion|diagnosis)\b|\bnot\s+a\s+substitute\b|"
    r"\bnot\s+(?:a|an)\s+(?:doctor|physician|radiologist|medical\s+professional)\b",
    re.I,
)


VOID_OPENER = re.compile(
    r"\b(?:whether|if|unless|to\s+determine|to\s+rule\s+out|to\s+exclude|to\s+assess|"
    r"to\s+evaluate|to\s+check|to\s+look\s+for|look\s+for|depends\s+on)\b",
    re.I,
)


CONCLUSION = re.compile(
    r"\W*(?:in\s+conclusion|overall|in\s+summary|to\s+summari[sz]e|to\s+conclude|summary|therefore|thus|"
    r"hence|so|finally|final(?:\s+answer)?|conclusion|impression|answer|the\s+answer\s+is|"
    r"based\s+on\s+(?:the|these|this|my)\s+(?:image|findings|observations|analysis|evaluation))\b",
    re.I,
)


FORMAL = re.compile(
    r"\b(?:(?:the|my|final|correct|short)\s+)?answer(?:\s+to\s+(?:the|this|your)\s+question)?\s*(?:is|would\s+be|:|=)"
    r"\s*:?\s*|\b(?:I\s+(?:would\s+|will\s+)?)(?:choose|select|pick|go\s+with|opt\s+for)\s+(?:option\s+)?|"
    r"\b(?:correct|right|best|final)\s+(?:option|choice)\s*(?:is|:)\s*(?:option\s+)?",
    re.I,
)


@dataclass(frozen=True)
class Cue:
    value: str  # "yes"/"no"/letter, or "refusal"/"hedge"
    start: int
    end: int
    how: str
    tentative: bool = False
    weak: bool = False
    generic: bool = False  # textbook talk ("pneumonia typically appears as ..."), not about this image


def void_spans(text: str, sentences: list[tuple[int, int]], focus: Focus) -> list[tuple[int, int]]:
    """Stretches whose findings do not state anything: questions, whether/if clauses, hedges, refusals."""
    spans = []
    for s, e in sentences:
        if text[s:e].rstrip().endswith("?"):
            spans.append((s, e))
    for pattern in (VOID_OPENER, HEDGE, REFUSAL):
        for m in pattern.finditer(text):
            if pattern is HEDGE and is_question_word(m, focus):
                continue
            ss, se = sentence_at(sentences, m.start())
            start = m.start()
            if pattern is not VOID_OPENER:  # "Pneumonia cannot be ruled out": the whole clause
                start = sentences.clause_start(m.start())
            spans.append((start, sentences.clause_end(m.end(), se)))
    return Spans(spans)


def is_question_word(m: re.Match, focus: Focus) -> bool:
    """A hedge word the question itself uses as its target ("Is there an unclear area?")."""
    return bool(stems_of(m.group()) & focus.echo)


@lru_cache(maxsize=512)
def stems_of(words: str) -> frozenset[str]:
    return frozenset(stem(t.text) for t in tokens(words))


WORD_AT = re.compile(r"[\s\"'(]*([^\W\d_]+)", re.UNICODE)


LEANING = re.compile(
    r"[\s\"'(]*(?:(?P<no>(?:probably|likely|most\s+likely|almost\s+certainly|definitely|certainly)\s+not|"
    r"unlikely|not\s+likely|I\s+(?:don't|do\s+not)\s+(?:think|believe)\s+so)|"
    r"(?P<yes>I\s+(?:think|believe)\s+so|(?:most\s+)?likely|probably|possibly|definitely|certainly|absolutely))"
    r"(?=\s*(?:[,.;:!]|$|\n))",
    re.I,
)


LEADING_ADVERB = re.compile(
    r"[\s\"'(]*(?:(?:I\s+(?:think|believe|would\s+say)(?:\s+so)?|probably|likely|most\s+likely|"
    r"possibly|definitely|certainly|absolutely|perhaps)\s*,?\s*)",
    re.I,
)


def answer_word(text: str, pos: int) -> Optional[Cue]:
    """A yes/no opening text[pos:] and standing on its own ("Probably not." and "I think so, yes." too)."""
    leaning = LEANING.match(text, pos)
    if leaning:
        adverb = LEADING_ADVERB.match(text, pos)
        after = plain_answer_word(text, leaning.end() + 1) if text[leaning.end() : leaning.end() + 1] == "," else None
        if after is not None and adverb:
            return after  # "I think so, yes."
        s, e = leaning.span("no") if leaning.group("no") else leaning.span("yes")
        return Cue("no" if leaning.group("no") else "yes", s, e, "answer word")
    adverb = LEADING_ADVERB.match(text, pos)
    if adverb and adverb.end() > pos:
        cue = plain_answer_word(text, adverb.end())
        if cue is not None:
            return cue  # "Likely yes."
    return plain_answer_word(text, pos)


def plain_answer_word(text: str, pos: int) -> Optional[Cue]:
    rest = text[pos : pos + 40]
    stripped = rest.lstrip(" \t\n\"'(")
    offset = pos + len(rest) - len(stripped)
    for words, value in ((CJK_YES, "yes"), (CJK_NO, "no")):
        for w in sorted(words, key=len, reverse=True):
            if stripped.startswith(w) and not (w == "不" and stripped.startswith("不确定")):
                return Cue(value, offset, offset + len(w), "answer word")
    m = WORD_AT.match(text, pos)
    if not m:
        return None
    word = m.group(1).lower()
    value = "yes" if word in YES_WORDS else "no" if word in NO_WORDS else None
    if value is None:
        return None
    after = text[m.end(1) : m.end(1) + 30]
    nxt = after.lstrip(" \t")
    if nxt[:1] and nxt[:1] not in ",.;:!?)\n\"'-\u2014\u2013" and not after.startswith("\n"):
        if word in ("no", "non", "false", "true", "correct") and not re.match(
            r"(?:it|there|this|that|i|the|we|they|he|she|these|those|you|as|in|because|but|not)\b", nxt, re.I
        ):
            return None  # "No fracture is seen" is a statement, "True to form" is not an answer
        if word in ("si", "da", "ya", "ja") and not re.match(r"[,.;:!\s]*$", after[:3]):
            return None
    return Cue(value, m.start(1), m.end(1), "answer word")


# Whole one-word answers that say present or absent.
ONE_WORD = {
    "positive": "yes",
    "present": "yes",
    "detected": "yes",
    "seen": "yes",
    "visible": "yes",
    "negative": "no",
    "absent": "no",
    "none": "no",
    "not present": "no",
    "not seen": "no",
}


def explicit_answers(text: str, start: int, sentences: list[tuple[int, int]]) -> list[Cue]:
    """Yes/no at the start of the answer, after "the answer is", or opening a concluding sentence."""
    found = []
    whole = text[start:].strip(" \t\n.!\"'").lower()
    if whole in ONE_WORD:
        i = text.lower().index(whole, start)
        return [Cue(ONE_WORD[whole], i, i + len(whole), "one-word answer")]
    lead = answer_word(text, start)
    if lead:
        found.append(lead)
    for m in FORMAL.finditer(text):
        cue = answer_word(text, m.end())
        if cue and all(c.start != cue.start for c in found):
            found.append(Cue(cue.value, m.start(), cue.end, "formal answer"))
    for s, e in sentences[1:]:
        c = CONCLUSION.match(text, s)
        if not c:
            if (s, e) == sentences[-1]:  # the closing sentence: "...\n\nNo."
                cue = answer_word(text, s)
                if cue and all(abs(x.start - cue.start) > 2 for x in found):
                    found.append(Cue(cue.value, cue.start, cue.end, "closing answer"))
            continue
        cue = answer_word(text, c.end())
        if cue is None:
            m = re.match(r"[\s,]*(?:the\s+answer\s+is\s*:?)?", text[c.end() :])
            cue = answer_word(text, c.end() + m.end())
        if cue and all(abs(x.start - cue.start) > 2 for x in found):
            found.append(Cue(cue.value, cue.start, cue.end, "concluding answer"))
    return sorted(found, key=lambda c: c.start)


def find_stance(text: str, focus: Focus, sentences: list[tuple[int, int]], toks: list[Token]) -> Optional[Cue]:
    """A hedge or refusal when there is no answer: a hedge engages with the question, a refusal declines."""
    hedges = [m for m in HEDGE.finditer(text) if not is_question_word(m, focus)]
    refusals = list(REFUSAL.finditer(text))
    disclaimers = list(DISCLAIMER.finditer(text))
    target = focus.primary | focus.secondary | focus.echo
    for m in refusals[:5]:
        s, e = sentence_at(sentences, m.start())
        if re.search(
            r"\b(?:definitive|definite|certain|conclusive|accurate|precise|confident)\b", text[m.start() : e], re.I
        ):
            hedges.append(m)  # "I cannot provide a definitive diagnosis": engages, without a verdict
            continue
        e = sentences.clause_end(m.end(), e) if isinstance(sentences, Sentences) else e
        engaged = re.search(r"\b(?:whether|if)\b|presence", text[m.start() : e], re.I) or any(
            t.stem in target for t in toks if m.end() <= t.start < e
        )
        if engaged and re.search(
            r"\b(?:determine|tell|say|confirm|assess|know|be\s+(?:sure|certain))\b", text[m.start() : e], re.I
        ):
            hedges.append(m)
    if hedges:
        m = min(hedges, key=lambda x: x.start())
        return Cue("hedge", m.start(), m.end(), "hedge")
    if refusals:
        m = refusals[0]
        return Cue("refusal", m.start(), m.end(), "refusal")
    if disclaimers:
        m = disclaimers[0]
        return Cue("refusal", m.start(), m.end(), "refusal", weak=True)
    return None


NORMALITY_WORDS = NORMAL_STEMS | frozenset({stem("abnormal"), stem("pathological"), stem("pathologic")})


POSSIBLE_FRAME = re.compile(r"\bit\s+is\s+(?:possible|conceivable|plausible)\s+that\b", re.I)


def engaged_hedge(text: str, focus: Focus, sentences: list[tuple[int, int]], toks: list[Token]) -> Optional[Cue]:
    """A hedge whose own clause names the question's target ("difficult to determine whether there
    is pneumonia")."""
    target = focus.primary or (NORMALITY_WORDS if focus.normality else frozenset())
    if not target:
        return None
    at = [t.start for t in toks if t.stem in target]
    if not at:
        return None
    for m in HEDGE.finditer(text):
        if is_question_word(m, focus):
            continue
        s, e = sentence_at(sentences, m.start())
        end = sentences.clause_end(m.end(), e) if isinstance(sentences, Sentences) else e
        i = bisect_left(at, m.end())
        if i < len(at) and at[i] < end:
            return Cue("hedge", m.start(), m.end(), "hedge")
    return None


def echoes(focus: Focus, toks: list[Token], s: int, e: int) -> bool:
    return any(t.stem in focus.echo for t in toks if s <= t.start < e)
