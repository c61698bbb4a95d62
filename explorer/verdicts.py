"""Free text -> verdict, by an ordered set of rules, with the span of text that decided it.

A VLM's answer becomes positive / negative / refusal / hedge / unclear. The prompt's polarity is
applied here and nowhere else: a "yes" to "Is this image normal?" is a NEGATIVE reading, and the
letter "A" means opposite things in the two multiple-choice orderings.

The rules, in the order they are tried (the first that decides wins):

  0. Nothing to read: a description prompt, a prompt without polarity, empty output.
  1. A formal answer: "Answer: B", "The answer is (A)", "I would choose B", "The answer is no".
  2. Equal hedges that name both sides: "may or may not", "both A and B are possible", "yes and no".
  3. Noise (random-weight models): many words, almost none of them common English -> unclear.
  4. Answer words: a yes/no standing on its own ("Yes.", "No, there is...", "In conclusion, yes."),
     for multiple choice a leading or line-start letter ("A) Tumor", "B", "(B)") or an option text
     given as the answer ("No pneumonia.").
  5. Findings: what the text says about the image, negation-aware ("appears normal", "signs of a
     tumor", "no evidence of pneumonia", "not normal"). Mixed findings are settled only by a
     concluding sentence ("In conclusion, ...", "Impression: ...").
  6. Refusal and hedge cues with no answer ("I cannot provide a diagnosis", "consult a doctor",
     "it is difficult to determine"): the earliest one names the label. Both options listed and
     neither chosen ("A) Tumor  B) No tumor"): hedge.
  7. Otherwise unclear.

Precision over recall: when cues of one rule disagree, or a formal/answer-word cue is contradicted
by the findings, the verdict is "hedge", never a guess.

Offsets: markdown characters are blanked to spaces (same length) before matching, so every span
found in the working text indexes the original answer: answer[start:end] == evidence.
"""
from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Iterable, Optional

from .schema import PromptVariant, Reading, Verdict

__all__ = ["parse_verdict"]

_OPPOSITE = {"positive": "negative", "negative": "positive"}

# ---------------------------------------------------------------- text preparation
# Markdown emphasis, headings, quotes, code and tables carry no meaning for the answer.
_MARKDOWN = re.compile(r"[*_`#>~|]")
# Mentions of the choices themselves are not answers ("I can't give a simple yes or no").
_CHOICE_MENTION = re.compile(r"\b(?:yes\s*(?:or|/)\s*no|no\s*(?:or|/)\s*yes)\b", re.I)


def _prepare(answer: str, prompt: PromptVariant) -> str:
    """Same-length working copy: markdown blanked, curly quotes straightened, echoes blanked."""
    text = answer.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = _MARKDOWN.sub(" ", text)
    text = _CHOICE_MENTION.sub(lambda m: " " * len(m.group()), text)
    # Some pipelines return the prompt followed by the answer: the prompt's own words
    # ("Is this image normal?", "A) Tumor / B) No tumor") must not be read as the answer.
    echo = prompt.text.strip()
    if echo:
        text = re.sub(re.escape(echo), lambda m: " " * len(m.group()), text, flags=re.I)
    return text


def _blank(text: str, spans: Iterable[tuple[int, int]]) -> str:
    chars = list(text)
    for s, e in spans:
        chars[s:e] = " " * (e - s)
    return "".join(chars)


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    """Shrink a span to its non-space, non-punctuation-edge core (keeps ')' after a letter)."""
    while s < e and (text[s].isspace() or text[s] in ",;:"):
        s += 1
    while e > s and (text[e - 1].isspace() or text[e - 1] in ",;:"):
        e -= 1
    return s, e


# Sentences end at . ! ? or a line break; clauses also at ; and contrast words.
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_CLAUSE_BREAK = re.compile(
    r"[.;!?\n]|\b(?:but|however|although|though|whereas|yet|except|and there|and it)\b", re.I
)


@lru_cache(maxsize=8)
def _sentences(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(m.span() for m in _SENTENCE.finditer(text))


@lru_cache(maxsize=8)
def _clause_breaks(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    spans = [m.span() for m in _CLAUSE_BREAK.finditer(text)]
    return tuple(s for s, _ in spans), tuple(e for _, e in spans)


def _sentence_of(text: str, pos: int) -> tuple[int, int]:
    spans = _sentences(text)
    i = bisect_right([s for s, _ in spans], pos) - 1
    if i >= 0 and spans[i][0] <= pos < spans[i][1]:
        return spans[i]
    return pos, pos


def _clause_of(text: str, pos: int) -> tuple[int, int]:
    """From the end of the last break at or before pos to the start of the next break after it."""
    starts, ends = _clause_breaks(text)
    i = bisect_right(ends, pos)  # breaks that end at or before pos
    start = ends[i - 1] if i else 0
    j = bisect_left(starts, pos)  # first break starting at or after pos
    return start, (starts[j] if j < len(starts) else len(text))


# ---------------------------------------------------------------- cue lists
@dataclass(frozen=True)
class _Cue:
    label: str  # a reading ("positive"/"negative") or "refusal"/"hedge"
    start: int
    end: int
    rule: str  # which rule found it, for the verdict's detail
    tentative: bool = False


def _words(*alternatives: str) -> str:
    return "(?:" + "|".join(alternatives) + ")"


_ABLE_VERBS = _words(
    "provide", "give", "make", "offer", "determine", "diagnose", "tell", "say", "answer", "assess",
    "interpret", "analy[sz]e", "evaluate", "choose", "pick", "select", "decide", "identify", "confirm",
    "comment", "help", "assist", "view", "access", r"see (?:the |this |any |your )?(?:image|picture|scan)s?",
)
_PROFESSIONAL = _words(
    "professional", "doctor", "physician", "radiologist", "dermatologist", "pathologist", "oncologist",
    "specialist", "expert", "provider", "clinician",
)

# Inability and declining: the model says it will not or cannot answer. These also void any
# finding in the same clause ("I cannot tell whether there is a tumor" states no tumor).
_REFUSAL = [
    re.compile(p, re.I)
    for p in (
        r"\bI(?:'m| am)\s+(?:not able|unable)\s+to\b",
        r"\b(?:I|we)\s+(?:cannot|can't|can not|could not|couldn't|won't|will not|do not|don't|am unable to)"
        r"\s+(?:\w+\s+){0,2}?" + _ABLE_VERBS + r"\b",
        r"\b(?:not|n't)\s+(?:possible|able|feasible|appropriate)\s+(?:for me\s+)?to\s+(?:\w+\s+){0,2}?"
        + _ABLE_VERBS + r"\b",
        r"\bimpossible\s+to\s+(?:\w+\s+){0,1}?" + _ABLE_VERBS + r"\b",
        r"\bunable\s+to\s+(?:\w+\s+){0,2}?" + _ABLE_VERBS + r"\b",
        r"\bcannot\s+be\s+(?:determined|diagnosed|assessed|confirmed|answered|said|told)\b",
        r"\bas an AI\b",
        r"\bI(?:'m| am)\s+(?:just\s+|only\s+)?an?\s+(?:AI|language model|text-based)\b",
        r"\bI(?:'m| am)\s+sorry\b",
        r"\bI apologi[sz]e\b",
        r"\bnot qualified\b",
    )
]
# Disclaimers: a refusal when nothing else is said, but they do not void a finding beside them
# ("The image shows a tumor; please consult a doctor" still answers).
_DISCLAIMER = [
    re.compile(p, re.I)
    for p in (
        r"\b(?:consult|see|ask|contact|seek|visit|talk to|speak (?:to|with)|refer to)\b(?:\s+[\w-]+){0,4}?\s+"
        + _PROFESSIONAL + r"s?\b",
        r"\bI(?:'m| am)\s+not\s+an?\s+(?:doctor|physician|radiologist|medical professional|dermatologist|pathologist|clinician)\b",
        r"\bnot\s+(?:a\s+substitute|intended)\s+for\b",
        r"\b(?:professional|medical)\s+(?:advice|evaluation|opinion|diagnosis)\b",
    )
]
# Uncertainty: the model weighs the question without settling it.
_HEDGE = [
    re.compile(p, re.I)
    for p in (
        r"\b(?:difficult|hard|challenging|tricky|not easy)\s+to\s+(?:\w+\s+){0,2}?"
        r"(?:determine|say|tell|assess|know|judge|conclude|diagnose|distinguish|certain|sure|definitive)\w*",
        r"\b(?:may|might|could)\s+or\s+(?:may|might|could)\s+not\b",
        r"\b(?:cannot|can't|can not|could not|couldn't|not)\s+(?:be\s+)?(?:completely\s+|entirely\s+|definitively\s+|fully\s+)?"
        r"rule[ds]?\s+out\b",
        r"\b(?:inconclusive|indeterminate|equivocal|uncertain|unclear|ambiguous|unsure)\b",
        r"\bnot\s+(?:entirely\s+|completely\s+|totally\s+|fully\s+|100%\s+)?(?:sure|certain|clear|definitive|conclusive)\b",
        r"\b(?:(?:not|n't|no)\s+(?:\w+\s+)?(?:enough|sufficient)|insufficient|limited)\s+"
        r"(?:information|detail|resolution|context|data|quality)\b",
        r"\b(?:without|need(?:s|ed)?|requires?|required|would need)\s+(?:further|additional|more)\s+(?:[\w-]+\s+){0,2}?"
        r"(?:information|tests?|testing|context|evaluation|imaging|investigation|examination|analysis|studies|history|views?)\b",
    )
]
# Hedges that name both sides equally: these outrank answer words (rule 2).
_EQUAL_HEDGE = [
    re.compile(p, re.I)
    for p in (
        r"\b(?:may|might|could)\s+or\s+(?:may|might|could)\s+not\b",
        r"\byes\s+and\s+no\b",
        r"\bboth\s+(?:\(?[AB]\)?\s+and\s+\(?[AB]\)?|(?:the\s+)?(?:two\s+)?(?:options|answers|choices|possibilities))"
        r"(?:\s+\w+){0,3}?\s+(?:possible|plausible|likely|valid|correct)\b",
        r"\bboth\s+(?:are|seem|could be|might be|may be)\s+(?:equally\s+)?(?:possible|plausible|likely)\b",
        r"\beither\s+(?:option\s+)?\(?[AB]\)?\s+or\s+(?:option\s+)?\(?[AB]\)?",
        r"\bcould be either\b",
        r"\b(?:50/50|fifty-fifty|equally likely)\b",
    )
]


def _cues(patterns: list[re.Pattern], text: str, label: str, rule: str) -> list[_Cue]:
    found = []
    for pattern in patterns:
        for m in pattern.finditer(text):
            s, e = _trim(text, m.start(), m.end())
            found.append(_Cue(label, s, e, rule))
    return sorted(found, key=lambda c: c.start)


def _voiding_spans(text: str) -> list[tuple[int, int]]:
    """Clauses whose findings do not count: refusals, hedges, questions, conditionals."""
    spans = [_clause_of(text, c.start) for c in _cues(_REFUSAL + _HEDGE, text, "", "")]
    for m in re.finditer(r"\b(?:whether|if)\b", text, re.I):
        spans.append(_clause_of(text, m.start()))
    for s, e in _sentences(text):
        if text[s:e].rstrip().endswith("?"):
            spans.append((s, e))
    return spans


# ---------------------------------------------------------------- findings vocabulary (rule 5)
_POSITIVE_TERMS = [
    r"tumou?rs?", r"tumou?rous", r"mass(?:es)?", r"neoplasms?", r"neoplastic", r"neoplasia",
    r"gliomas?", r"glioblastomas?", r"meningiomas?", r"metasta\w+",
    r"pneumonias?", r"consolidations?", r"infiltrates?", r"opacit(?:y|ies)", r"air bronchograms?",
    r"malignan(?:t|cy|cies)", r"melanomas?", r"carcinomas?", r"cancers?", r"cancerous", r"IDC",
    r"invasive ductal", r"abnormal(?:ity|ities)?", r"diseased?", r"pathologic(?:al)?",
    r"acute (?:cardiopulmonary|intracranial|pulmonary) (?:process|disease|abnormality|findings?)",
]
_NEGATIVE_TERMS = [
    r"normal", r"healthy", r"benign", r"unremarkable", r"non-?(?:cancerous|malignant|neoplastic|tumou?rous)",
    r"(?:tumou?r|cancer|disease|pneumonia)-free",
]
# Words that flip a term when they come before it in the same clause.
_NEGATOR_BEFORE = re.compile(
    r"\b(?:no|not|without|neither|nor|never|none|absence of|absent|free of|negative for|lack of|lacks?|"
    r"ruled? out|excludes?|excluded|cannot|can't|don't|doesn't|didn't|isn't|aren't|wasn't|weren't)\b|n't\b",
    re.I,
)
# Phrases where "no"/"not" does not negate the finding.
_NOT_NEGATION = re.compile(r"\b(?:no doubt|no question|not only|no matter)\b", re.I)
# ... and after it: "pneumonia is not seen", "tumor is absent".
_NEGATOR_AFTER = re.compile(
    r"^\s*(?:(?:is|are|was|were|appears?|seems?)\s+(?:to\s+be\s+)?(?:not|absent|excluded|ruled out)\b|"
    r"(?:is|are)?\s*(?:not\s+(?:seen|visible|present|evident|detected|identified|observed|noted|apparent|shown))\b|"
    r"absent\b)",
    re.I,
)
_TENTATIVE = re.compile(
    r"\b(?:may|might|could|possibl[ey]|perhaps|potential(?:ly)?|suspicious|concerning|questionable)\b", re.I
)
# Whole one-word answers that name a reading without any of the terms above.
_ONE_WORD = {
    "positive": "positive", "present": "positive", "detected": "positive", "diseased": "positive",
    "negative": "negative", "absent": "negative", "none": "negative", "clear": "negative",
}
_CONCLUSION = re.compile(
    r"^\W*(?:in conclusion|overall|in summary|to summarize|to conclude|summary|therefore|thus|hence|so|"
    r"final(?:ly)?(?: answer)?|conclusion|impression|based on (?:the|these|this|my) (?:image|findings|observations|analysis))\b",
    re.I,
)


@lru_cache(maxsize=64)
def _term_patterns(prompt: PromptVariant) -> tuple[re.Pattern, re.Pattern]:
    """The lexicon plus the prompt's own class words (custom prompts name other conditions)."""
    pos, neg = list(_POSITIVE_TERMS), list(_NEGATIVE_TERMS)
    for _, reading, option in prompt.options:
        words = option.strip().rstrip(".").strip()
        bare = re.sub(r"^(?:no|not|non-?)\s*", "", words, flags=re.I)
        if bare != words:  # "No pneumonia" names the positive class, negated
            pos.append(re.escape(bare) + "s?")
        elif reading == "positive":
            pos.append(re.escape(words) + "s?")
        else:
            neg.append(re.escape(words))
    m = re.search(r"evidence of (?:an? |any )?([^?.\n]+)", prompt.text, re.I)
    if m:
        pos.append(re.escape(m.group(1).strip()))
    flags = re.I
    pos_re = re.compile(r"\b(?:" + "|".join(sorted(set(pos), key=len, reverse=True)) + r")\b", flags)
    neg_re = re.compile(r"(?<![\w-])(?:" + "|".join(sorted(set(neg), key=len, reverse=True)) + r")\b", flags)
    return pos_re, neg_re


def _outermost(matches: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Drop matches inside a longer one ("malignant" inside "non-malignant")."""
    kept: list[tuple[int, int, str]] = []
    reach = -1
    for s, e, label in sorted(matches, key=lambda m: (m[0], -m[1])):
        if e <= reach:
            continue
        kept.append((s, e, label))
        reach = e
    return kept


def _findings(
    text: str, prompt: PromptVariant, void: list[tuple[int, int]], lo: int = 0, hi: Optional[int] = None
) -> list[_Cue]:
    """Findings whose terms lie in text[lo:hi]; negation is looked for no further back than lo."""
    hi = len(text) if hi is None else hi
    pos_re, neg_re = _term_patterns(prompt)
    matches = [(m.start(), m.end(), "positive") for m in pos_re.finditer(text, lo, hi)]
    matches += [(m.start(), m.end(), "negative") for m in neg_re.finditer(text, lo, hi)]
    matches = _outermost(matches)
    found = []
    for s, e, reading in sorted(matches):
        if any(vs <= s < ve for vs, ve in void):
            continue
        clause_start, clause_end = _clause_of(text, s)
        before = text[max(clause_start, s - 80, lo):s]
        before_clean = _NOT_NEGATION.sub(lambda m: " " * len(m.group()), before)
        negators = list(_NEGATOR_BEFORE.finditer(before_clean))
        after = text[e:clause_end]
        start = s
        if negators:
            start = s - len(before) + negators[0].start()
            reading = _OPPOSITE[reading]
        elif _NEGATOR_AFTER.match(after):
            e = e + _NEGATOR_AFTER.match(after).end()
            reading = _OPPOSITE[reading]
        tentative = bool(_TENTATIVE.search(before))
        found.append(_Cue(reading, start, e, "finding", tentative))
    # A one-word answer such as "Negative." or "Present".
    word = text[lo:hi].strip().strip(".!").strip().lower()
    if not found and word in _ONE_WORD:
        s = text.lower().index(word, lo)
        found.append(_Cue(_ONE_WORD[word], s, s + len(word), "finding"))
    return found


def _findings_reading(findings: list[_Cue], text: str) -> tuple[Optional[str], list[_Cue], str]:
    """(reading or None if mixed, the cues behind it, how it was settled)."""
    if not findings:
        return None, [], ""
    readings = {f.label for f in findings}
    if len(readings) == 1:
        definite = [f for f in findings if not f.tentative]
        return readings.pop(), definite or findings, "all findings agree"
    # Mixed: a concluding sentence settles it, the last one that speaks with one voice.
    for s, e in reversed(_sentences(text)):
        if not _CONCLUSION.match(text[s:e]):
            continue
        inside = [f for f in findings if s <= f.start < e]
        if inside and len({f.label for f in inside}) == 1:
            return inside[0].label, inside, "the concluding sentence"
    return None, findings, "mixed findings"


# ---------------------------------------------------------------- answer cues (rules 1 and 4)
_YES_NO = re.compile(r"\b(yes|yeah|yep|no|nope)\b", re.I)
_AFTER_NO = re.compile(r"\s+(?:it|there|this|that|i|the image|we)\b", re.I)
# "Answer: X", "The answer to the question is X", "I would choose X", "Correct option: X".
_FORMAL = re.compile(
    r"(?:\b(?:(?:final|correct|right|best|short|my|the)\s+)?answer(?:\s+to\s+(?:the|this|your)\s+question)?"
    r"\s*(?:is|would be|will be|:|-|=)|"
    r"\b(?:I\s+(?:would\s+|will\s+)?)?(?:choose|chose|select|selected|pick|picked|go with|opt for)\b|"
    r"\bI(?:'d|\s+would)\s+say\b|"
    r"\b(?:correct|right|best|final)\s+(?:option|choice)\s*(?:is|:)|"
    r"\b(?:option|choice)(?=\s*\(?[A-Z]\b))"
    r"\s*:?\s*(?:(?:option|choice)\b\s*:?\s*)?",
    re.I,
)


def _yes_no_reading(word: str, prompt: PromptVariant) -> Reading:
    yes = word.lower() in ("yes", "yeah", "yep")
    return prompt.yes_means if yes else _OPPOSITE[prompt.yes_means]


def _stands_alone(text: str, m: re.Match) -> bool:
    """What follows a yes/no: punctuation or the end, any words after "yes", a new clause after "no"
    ("No there is..." without the comma), but not a noun ("No abnormalities")."""
    rest = text[m.end():]
    if not rest.strip() or rest.lstrip(" \t")[:1] in tuple(",.;:!?)\n\"'-\u2014\u2013"):
        return True
    if m.group(1).lower() in ("yes", "yeah", "yep"):
        return True
    return bool(_AFTER_NO.match(rest))


def _is_answer_word(text: str, m: re.Match) -> bool:
    """A yes/no that opens the answer or a clause and stands on its own."""
    before = text[: m.start()].rstrip(" \t")
    if before and before[-1] not in ".!?,;:\n(\"'-":
        return False
    return _stands_alone(text, m)


def _letter_at(text: str, i: int, prompt: PromptVariant) -> Optional[tuple[str, int]]:
    """The option letter at text[i] (optionally in parentheses) and where the cue ends.

    A bare "A" followed by a word is the article ("A tumor is seen"), unless that word is the
    option's own text ("A Tumor"); "A) ..." and "(A)" are always letters.
    """
    options = prompt.option_map()
    m = re.match(r"\(?\s*([A-Za-z])\s*(\)|\]|\.|:|-)?", text[i:])
    if not m or m.group(1).upper() not in options:
        return None
    letter, end = m.group(1).upper(), i + m.end()
    rest = text[end:]
    if m.group(1).islower() and rest.strip() and not m.group(2):
        return None
    if m.group(2) or not rest.strip() or rest.lstrip()[:1] in tuple(",;!?\n\"'"):
        return letter, end
    if rest[:1].isalnum():  # "Ab..." is a word, not a letter
        return None
    for other, (_, option_text) in options.items():
        if rest.lstrip().lower().startswith(option_text.lower()):
            return (letter, end) if other == letter else None
    return None


def _option_text_at(text: str, i: int, prompt: PromptVariant, need_end: bool) -> Optional[tuple[str, int]]:
    """An option text (the longest that fits) starting at text[i]: ("A", end)."""
    rest = text[i:]
    for letter, _, option_text in sorted(prompt.options, key=lambda o: -len(o[2])):
        m = re.match(re.escape(option_text) + r"s?\b", rest, re.I)
        if not m:
            continue
        after = rest[m.end():].lstrip(" \t")
        if need_end and after and after[0] not in ".!;,\n)":
            return None
        return letter, i + m.end()
    return None


def _mc_cue(text: str, i: int, prompt: PromptVariant, rule: str) -> list[_Cue]:
    """Letter and/or option text at i. A letter with the other option's text gives both cues."""
    return [_Cue(c.label, *_trim(text, c.start, c.end), c.rule) for c in _mc_cue_untrimmed(text, i, prompt, rule)]


def _mc_cue_untrimmed(text: str, i: int, prompt: PromptVariant, rule: str) -> list[_Cue]:
    options = prompt.option_map()
    got = _letter_at(text, i, prompt)
    if got:
        letter, end = got
        cues = [_Cue(options[letter][0], i, end, rule)]
        follow = re.match(r"[ \t]*", text[end:]).end() + end
        named = _option_text_at(text, follow, prompt, need_end=False)
        if named:
            cues = [_Cue(options[letter][0], i, named[1], rule)]
            if named[0] != letter:  # "A) No tumor" when A is "Tumor": the model contradicts itself
                cues.append(_Cue(options[named[0]][0], follow, named[1], rule))
        return cues
    named = _option_text_at(text, i, prompt, need_end=True)
    if named:
        return [_Cue(options[named[0]][0], i, named[1], rule)]
    return []


def _formal_cues(text: str, prompt: PromptVariant, void: list[tuple[int, int]]) -> list[_Cue]:
    """Rule 1: what follows "Answer:" / "I choose" etc."""
    cues = []
    for m in _FORMAL.finditer(text):
        i = m.end()
        i += len(text[i:]) - len(text[i:].lstrip(" \t("))
        i -= 1 if text[i - 1:i] == "(" else 0
        if prompt.is_multiple_choice:
            found = _mc_cue(text, i, prompt, "formal answer")
            if found:
                s = _trim(text, m.start(), m.end())[0]
                cues.extend(_Cue(c.label, min(s, c.start), c.end, c.rule) for c in found)
                continue
        else:
            yn = _YES_NO.match(text, i)
            if yn and _stands_alone(text, yn):
                s = _trim(text, m.start(), m.end())[0]
                cues.append(_Cue(_yes_no_reading(yn.group(1), prompt), s, yn.end(), "formal answer"))
                continue
        # "Answer: Normal" / "Answer: No abnormality": read the words that follow as a finding.
        clause_end = _clause_of(text, i)[1]
        found = _findings(text, prompt, void, lo=i, hi=min(clause_end, i + 60))
        if found and len({f.label for f in found}) == 1:
            s = _trim(text, m.start(), m.end())[0]
            cues.append(_Cue(found[0].label, s, found[-1].end, "formal answer"))
    return cues


def _answer_word_cues(text: str, prompt: PromptVariant, void: list[tuple[int, int]]) -> list[_Cue]:
    """Rule 4 for yes/no prompts: a yes/no standing on its own, unless it opens a refusal."""
    cues = []
    for m in _YES_NO.finditer(text):
        if not _is_answer_word(text, m):
            continue
        if any(vs <= m.start() < ve for vs, ve in void):  # "No, I cannot determine that."
            continue
        cues.append(_Cue(_yes_no_reading(m.group(1), prompt), m.start(), m.end(), "answer word"))
    return cues


def _letter_cues(text: str, prompt: PromptVariant) -> tuple[list[_Cue], list[tuple[int, int]]]:
    """Rule 4 for multiple choice: a letter at the start or a line start, "X)" or "(X)" anywhere,
    an option text given as the whole answer or as its first words.

    Returns (cues, restated spans). When two separate places each name a different option
    ("A) Tumor ... B) No tumor"), the model is restating the choices, not answering: those spans
    are returned for blanking and no letter decides.
    """
    letters = "".join(re.escape(letter) for letter in prompt.option_map())  # "(" or "]" is a letter too
    starts = {0} | {m.end() for m in re.finditer(r"\n", text)}
    starts |= {m.start() for m in re.finditer(r"\(\s*[" + letters + r"]\s*\)|\b[" + letters + r"]\)", text)}
    groups: list[list[_Cue]] = []
    for i in sorted(starts):
        i += len(text[i:]) - len(text[i:].lstrip(" \t"))
        if i < len(text) and not any(c.start <= i < c.end for g in groups for c in g):
            group = _mc_cue(text, i, prompt, "answer letter")
            if group:
                groups.append(group)
    plain = [g[0].label for g in groups if len({c.label for c in g}) == 1]
    if len(set(plain)) > 1:
        return [], [(min(c.start for c in g), max(c.end for c in g)) for g in groups]
    return [c for g in groups for c in g], []


# ---------------------------------------------------------------- noise (rule 3)
_COMMON = frozenset(
    "the a an is are was were be been of to in on at and or but this that these those there it its with "
    "as for by from not no yes image shows show appears i you we can may which have has".split()
)


def _looks_like_noise(text: str) -> bool:
    words = re.findall(r"[A-Za-z']+", text)
    if len(words) < 8:
        return False
    common = sum(w.lower() in _COMMON for w in words)
    return common / len(words) < 0.08


# ---------------------------------------------------------------- the rules
def _verdict(answer: str, label: str, cue: Optional[_Cue], detail: str) -> Verdict:
    if cue is None:
        return Verdict(label=label, evidence="", span=None, method="rules", detail=detail)
    return Verdict(label=label, evidence=answer[cue.start:cue.end], span=(cue.start, cue.end),
                   method="rules", detail=detail)


def _quote(answer: str, cue: _Cue) -> str:
    return repr(answer[cue.start:cue.end])


def _decide(answer: str, text: str, cues: list[_Cue], findings: list[_Cue], rule: str) -> Verdict:
    """An answer cue decides unless answer cues disagree or the findings contradict it."""
    labels = {c.label for c in cues}
    if len(labels) > 1:
        a = cues[0]
        b = next(c for c in cues if c.label != a.label)
        return _verdict(answer, "hedge", a, f"conflicting {rule}s: {_quote(answer, a)} ({a.label}) vs "
                                            f"{_quote(answer, b)} ({b.label})")
    cue = cues[0]
    definite = [f for f in findings if not f.tentative]
    # Same sentence says the opposite ("Yes, there is no tumor"): contradiction.
    s, e = _sentence_of(text, cue.start)
    in_sentence = [f for f in definite if s <= f.start < e]
    against = in_sentence if in_sentence and all(f.label != cue.label for f in in_sentence) else []
    # Or every definite finding says the opposite ("Yes. The image is normal, no abnormality.").
    if not against and definite and all(f.label != cue.label for f in definite):
        against = definite
    if against:
        f = against[0]
        return _verdict(answer, "hedge", cue, f"{rule} {_quote(answer, cue)} ({cue.label}) contradicted by "
                                              f"{_quote(answer, f)} ({f.label})")
    return _verdict(answer, cue.label, cue, f"{rule} {_quote(answer, cue)}")


def _well_formed_options(prompt: PromptVariant) -> PromptVariant:
    """The prompt with only the options that can be read: a non-empty letter, a reading that is
    positive or negative (anything else would become a verdict label) and a text."""
    kept = tuple(o for o in prompt.options
                 if isinstance(o, (tuple, list)) and len(o) == 3 and isinstance(o[0], str) and o[0]
                 and o[1] in ("positive", "negative") and isinstance(o[2], str))
    return prompt if kept == prompt.options else replace(prompt, options=kept)


def parse_verdict(answer: str, prompt: PromptVariant) -> Verdict:
    """Read a VLM's free-text answer to `prompt` as positive / negative / refusal / hedge / unclear."""
    # Rule 0: nothing to read.
    if prompt.kind == "describe":
        return _verdict(answer or "", "unclear", None, "description prompts are not parsed into a verdict")
    prompt = _well_formed_options(prompt)
    if not prompt.is_multiple_choice and prompt.yes_means not in ("positive", "negative"):
        return _verdict(answer or "", "unclear", None, "the prompt has no polarity (no yes_means, no options)")
    answer = answer if isinstance(answer, str) else ("" if answer is None else str(answer))
    text = _prepare(answer, prompt)
    if not text.strip():
        return _verdict(answer, "unclear", None, "empty output")

    void = _voiding_spans(text)

    # Rule 1: a formal answer ("Answer: B") outranks everything else in the text.
    formal = _formal_cues(text, prompt, void)
    answer_spans = [(c.start, c.end) for c in formal]

    # Rule 4 cues are gathered now so findings are read with answer words blanked out
    # (the "No," of "No, the image is not normal" must not negate "normal").
    restated: list[tuple[int, int]] = []
    if prompt.is_multiple_choice:
        words, restated = _letter_cues(_blank(text, answer_spans), prompt)
    else:
        words = _answer_word_cues(_blank(text, answer_spans), prompt, void)
    findings_text = _blank(text, answer_spans + [(c.start, c.end) for c in words] + restated)
    findings = _findings(findings_text, prompt, void)

    if formal:
        return _decide(answer, text, formal, findings, "formal answer")

    # Rule 2: hedges that name both sides.
    equal = _cues(_EQUAL_HEDGE, text, "hedge", "equal hedge")
    if equal:
        return _verdict(answer, "hedge", equal[0], f"hedges between both answers: {_quote(answer, equal[0])}")

    # Rule 3: noise from a random-weight model: no claim can be read from it.
    if _looks_like_noise(text):
        return _verdict(answer, "unclear", None, "looks like noise: hardly any common English words")

    # Rule 4: answer words, letters, option texts.
    if words:
        return _decide(answer, text, words, findings, words[0].rule)

    # Rule 5: findings.
    reading, behind, how = _findings_reading(findings, findings_text)
    stance = _cues(_REFUSAL + _HEDGE + _DISCLAIMER, text, "", "")
    if reading is not None:
        if all(f.tentative for f in behind) and stance:
            # Only "may be a tumor" next to "difficult to determine": not an answer.
            first = _stance(text, stance[0])
            return _verdict(answer, first.label, first, f"only tentative findings ({_quote(answer, behind[0])}) "
                                                        f"beside {first.label} {_quote(answer, first)}")
        tentative = " (tentative)" if all(f.tentative for f in behind) else ""
        return _verdict(answer, reading, behind[0], f"finding {_quote(answer, behind[0])}{tentative}; {how}")
    if findings:
        a = findings[0]
        b = next(f for f in findings if f.label != a.label)
        return _verdict(answer, "hedge", a, f"mixed findings: {_quote(answer, a)} ({a.label}) vs "
                                            f"{_quote(answer, b)} ({b.label})")

    # Rule 6: no answer at all, only refusal or hedge language.
    if stance:
        first = _stance(text, stance[0])
        return _verdict(answer, first.label, first, f"{first.label} with no answer: {_quote(answer, first)}")
    # ... or a list of both options with nothing chosen.
    if restated:
        s, e = restated[0]
        return _verdict(answer, "hedge", _Cue("hedge", s, e, "restated"), "restates both options without choosing")

    # Rule 7.
    if prompt.is_multiple_choice and _YES_NO.fullmatch(text.strip(" .!\n\t")):
        return _verdict(answer, "unclear", None, "a yes/no answer to a multiple-choice prompt")
    return _verdict(answer, "unclear", None, "no answer, finding, refusal or hedge found")


def _stance(text: str, cue: _Cue) -> _Cue:
    """Label a refusal/hedge/disclaimer cue: hedges are hedges, the rest refusals."""
    for pattern in _HEDGE:
        m = pattern.match(text, cue.start)
        if m:
            return _Cue("hedge", cue.start, cue.end, "hedge")
    return _Cue("refusal", cue.start, cue.end, "refusal")
