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
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

from explorer.scoring.question_focus import Focus, read_question
from explorer.scoring.words import (
    ABNORMAL_STEMS,
    ANTONYMS,
    CJK_NO,
    CJK_YES,
    NEGATORS,
    NO_WORDS,
    NORMAL_STEMS,
    POST_NEGATION,
    PSEUDO_NEGATION,
    SCOPE_BREAKERS,
    SYNONYMS,
    TENTATIVE,
    YES_WORDS,
    Token,
    stem,
    tokens,
)

__all__ = ["AnswerReading", "READER_VERSION", "read_answer"]

# Stored with every rule-read verdict: a store can tell answers read by an older reader.
READER_VERSION = "reader-2"

_HEAD = 6000
_TAIL = 1500


@dataclass(frozen=True)
class AnswerReading:
    answer: Optional[str]  # "yes" / "no" / an option letter; None when label is not "answer"
    label: str  # "answer", "refusal", "hedge", "unclear"
    evidence: str = ""
    span: Optional[tuple[int, int]] = None  # answer[span[0]:span[1]] == evidence
    reason: str = ""
    confident: bool = True
    spans: tuple[tuple[int, int], ...] = ()  # every span behind the reading (both sides of a conflict)


# ---------------------------------------------------------------- clean-up
_TAG = re.compile(r"</?[A-Za-z_][\w-]{0,30}\s*/?>")
_MARKDOWN = re.compile(r"[*_`#>|~\[\]{}]")
_ROLE_LEAK = re.compile(r"\s*(?:human|user|patient|question|q|doctor|physician)\s*[:：]", re.I)
_LABEL_PREFIX = re.compile(
    r"\s*(?:(?:assistant|gpt|ai|bot|model|response|output|system|radiologist|llava|gemini|medgemma)\s*[:：]|"
    r"[\"']?(?:final\s+|short\s+|my\s+)?answer[\"']?\s*[:：=-]|a\s*[:：](?=\s*(?:yes|no)\b)|ans\s*[:：])\s*",
    re.I,
)
_NEXT_TURN = re.compile(
    r"\n[ \t]*(?:#+[ \t]*)?(?:human|user|patient|question|q|instruction)\s*[:：]|<\|im_start\|>|<start_of_turn>|"
    r"\[INST\]|</s>|<\|user\|>|<\|endoftext\|>",
    re.I,
)
# After a leaked "Human:" / "User:" label: the user's own words (a request, a question, their story).
_USER_VOICE = re.compile(
    r"\s*(?:please|can\s+you|could\s+you|would\s+you|will\s+you|what|how|why|where|when|which|who|is|are|"
    r"does|do|did|tell\s+me|explain|describe|evaluate|show|give|help|I|I'm|I've|I'd|my|we|our|thanks?|thank\s+you)\b",
    re.I,
)
_COPYRIGHT = re.compile(r"©|\bcopyright\b|all rights reserved|licen[cs]ed under|creative commons", re.I)
_CODE = re.compile(
    r"^\s*(?:return\b|def\s|print\s*\(|import\s|from\s+\w+\s+import|#include|function\b|var\s|const\s|"
    r"let\s|public\s|private\s|if\s*\(|for\s*\(|while\s*\(|//|/\*)|;\s*$|\breturn\s+[\"']",
    re.I | re.M,
)
_CHOICES_ONLY = re.compile(
    r"\W*(?:(?:options?|choices?)\W*(?:yes|no)\W*(?:or|/|,)?|(?:yes|no)\s*(?:or|/))\W*(?:yes|no)\W*$", re.I
)
_CHOICE_MENTION = re.compile(r"\b(?:yes\s*(?:or|/)\s*no|no\s*(?:or|/)\s*yes)\b", re.I)


def _working_copy(answer: str) -> str:
    """Same length as the answer: quotes straightened, markdown blanked, anything after a leaked
    next turn blanked."""
    text = answer.translate(_QUOTES)
    text = _TAG.sub(lambda m: " " * len(m.group()), text)  # <answer>No</answer>
    text = _MARKDOWN.sub(" ", text)
    m = _NEXT_TURN.search(text, 1)
    if m and text[: m.start()].strip():
        text = text[: m.start()] + " " * (len(text) - m.start())
    return _CHOICE_MENTION.sub(lambda x: " " * len(x.group()), text)


# One character for one, so spans still index the answer: curly quotes, and full-width forms
# ("Ｙｅｓ", "，") as their ASCII twins.
_QUOTES = str.maketrans(
    {
        "\u2019": "'",
        "\u2018": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u3002": ".",
        **{chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)},
    }
)


def _blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


def _skip_prefixes(text: str) -> tuple[str, int, bool, Optional[int]]:
    """(text with leading role/answer labels blanked, where the answer starts, whether a role leaked,
    where an "Answer:" label starts, if there is one: it belongs to the evidence)."""
    leaked = False
    pos = 0
    label_at = None
    for _ in range(3):
        m = _ROLE_LEAK.match(text, pos)
        if m:
            leaked = True
            pos = m.end()
            continue
        m = _LABEL_PREFIX.match(text, pos)
        if m and m.end() > pos:
            label_at = m.start() + len(m.group()) - len(m.group().lstrip())
            pos = m.end()
            continue
        break
    return _blank(text, 0, pos), pos, leaked, label_at


def _blank_echo(text: str, focus: Focus) -> str:
    core = focus.core.strip()
    if len(core) < 8:
        return text
    return re.sub(re.escape(core), lambda m: " " * len(m.group()), text, flags=re.I)


# ---------------------------------------------------------------- sentences and clauses
_SENTENCE = re.compile(r"[^\s][^\n]*?(?:[.!?]+(?=\s|$)|(?=\n)|$)")
_CLAUSE_BREAK = re.compile(r"[;:]|\b(?:but|however|although|though|whereas|except|yet)\b", re.I)


class _Sentences(list):
    """Sentence spans in order, with their starts and the clause breaks indexed for bisect."""

    def __init__(self, text: str) -> None:
        super().__init__((m.start(), m.end()) for m in _SENTENCE.finditer(text) if m.group().strip())
        self.starts = [s for s, _ in self]
        breaks = [m.span() for m in _CLAUSE_BREAK.finditer(text)]
        self.break_starts = [s for s, _ in breaks]
        self.break_ends = [e for _, e in breaks]

    def clause_end(self, pos: int, limit: int) -> int:
        """Where the clause holding pos ends: the next break at or after pos, else limit."""
        i = bisect_left(self.break_starts, pos)
        return self.break_starts[i] if i < len(self.break_starts) and self.break_starts[i] < limit else limit

    def clause_start(self, pos: int) -> int:
        """Where the clause holding pos starts: after the last break in its sentence, else the sentence."""
        sentence_start = _sentence_at(self, pos)[0]
        i = bisect_right(self.break_ends, pos) - 1
        if i >= 0 and sentence_start <= self.break_ends[i] <= pos:
            return self.break_ends[i]
        return sentence_start


def _sentences(text: str) -> _Sentences:
    return _Sentences(text)


def _sentence_at(sentences: list[tuple[int, int]], pos: int) -> tuple[int, int]:
    starts = getattr(sentences, "starts", None) or [s for s, _ in sentences]
    i = bisect_right(starts, pos) - 1
    if i >= 0 and sentences[i][0] <= pos < sentences[i][1]:
        return sentences[i]
    return pos, pos


class _Spans(list):
    """Merged, sorted spans with a bisect membership test."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for s, e in sorted(spans):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        super().__init__((s, e) for s, e in merged)
        self.starts = [s for s, _ in self]

    def holds(self, pos: int) -> bool:
        i = bisect_right(self.starts, pos) - 1
        return i >= 0 and pos < self[i][1]


# ---------------------------------------------------------------- stance: hedges and refusals
_HEDGE = re.compile(
    r"\b(?:(?:difficult|hard|challenging|tricky|not\s+easy|impossible|not\s+possible|unable|not\s+able)\s+"
    r"(?:for\s+me\s+)?to\s+(?:\w+\s+){0,2}?(?:determine|say|tell|assess|know|judge|conclude|confirm|"
    r"distinguish|establish|ascertain|evaluate|identify|differentiate|be\s+(?:certain|sure)|answer)|"
    r"(?:can(?:no|')?t|can\s+not|could\s*n[o']?t|cannot|unable\s+to)\s+(?:\w+\s+){0,2}?"
    r"(?:determine|tell|say|confirm|assess|ascertain|establish|be\s+(?:certain|sure))\s+"
    r"(?:(?:\w+\s+){0,5}?)(?:whether|if|the\s+presence|for\s+(?:sure|certain)|definitively|with\s+certainty|"
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
_REFUSAL = re.compile(
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
_DISCLAIMER = re.compile(
    r"\b(?:consult|see|ask|contact|seek|visit|talk\s+to|speak\s+(?:to|with)|refer\s+to)\b(?:\s+[\w-]+){0,4}?\s+"
    r"\w*(?:professional|doctor|physician|radiologist|dermatologist|pathologist|oncologist|specialist|expert|"
    r"provider|clinician)s?|"
    r"\b(?:medical|professional)\s+(?:advice|evaluation|opinion|diagnosis)\b|\bnot\s+a\s+substitute\b|"
    r"\bnot\s+(?:a|an)\s+(?:doctor|physician|radiologist|medical\s+professional)\b",
    re.I,
)
_VOID_OPENER = re.compile(
    r"\b(?:whether|if|unless|to\s+determine|to\s+rule\s+out|to\s+exclude|to\s+assess|"
    r"to\s+evaluate|to\s+check|to\s+look\s+for|look\s+for|depends\s+on)\b",
    re.I,
)
_CONCLUSION = re.compile(
    r"\W*(?:in\s+conclusion|overall|in\s+summary|to\s+summari[sz]e|to\s+conclude|summary|therefore|thus|"
    r"hence|so|finally|final(?:\s+answer)?|conclusion|impression|answer|the\s+answer\s+is|"
    r"based\s+on\s+(?:the|these|this|my)\s+(?:image|findings|observations|analysis|evaluation))\b",
    re.I,
)
_FORMAL = re.compile(
    r"\b(?:(?:the|my|final|correct|short)\s+)?answer(?:\s+to\s+(?:the|this|your)\s+question)?\s*(?:is|would\s+be|:|=)"
    r"\s*:?\s*|\b(?:I\s+(?:would\s+|will\s+)?)(?:choose|select|pick|go\s+with|opt\s+for)\s+(?:option\s+)?|"
    r"\b(?:correct|right|best|final)\s+(?:option|choice)\s*(?:is|:)\s*(?:option\s+)?",
    re.I,
)


@dataclass(frozen=True)
class _Cue:
    value: str  # "yes"/"no"/letter, or "refusal"/"hedge"
    start: int
    end: int
    how: str
    tentative: bool = False
    weak: bool = False
    generic: bool = False  # textbook talk ("pneumonia typically appears as ..."), not about this image


def _void_spans(text: str, sentences: list[tuple[int, int]], focus: Focus) -> list[tuple[int, int]]:
    """Stretches whose findings do not state anything: questions, whether/if clauses, hedges, refusals."""
    spans = []
    for s, e in sentences:
        if text[s:e].rstrip().endswith("?"):
            spans.append((s, e))
    for pattern in (_VOID_OPENER, _HEDGE, _REFUSAL):
        for m in pattern.finditer(text):
            if pattern is _HEDGE and _is_question_word(m, focus):
                continue
            ss, se = _sentence_at(sentences, m.start())
            start = m.start()
            if pattern is not _VOID_OPENER:  # "Pneumonia cannot be ruled out": the whole clause
                start = sentences.clause_start(m.start())
            spans.append((start, sentences.clause_end(m.end(), se)))
    return _Spans(spans)


def _is_question_word(m: re.Match, focus: Focus) -> bool:
    """A hedge word the question itself uses as its target ("Is there an unclear area?")."""
    return bool(_stems_of(m.group()) & focus.echo)


@lru_cache(maxsize=512)
def _stems_of(words: str) -> frozenset[str]:
    return frozenset(stem(t.text) for t in tokens(words))


def _in(spans: list[tuple[int, int]], pos: int) -> bool:
    if isinstance(spans, _Spans):
        return spans.holds(pos)
    return any(s <= pos < e for s, e in spans)


# ---------------------------------------------------------------- statements about the target
_LISTED = re.compile(r"\b(?:such\s+as|including|e\.g\.|for\s+example|for\s+instance)\b", re.I)
# Textbook talk, not a statement about this image.
_GENERIC_MOOD = re.compile(r"\b(?:typically|usually|generally|commonly|often|tends?\s+to|in\s+general)\b", re.I)


def _negated(text: str, toks: list[Token], i: int, clause_start: int) -> tuple[bool, int]:
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


def _statements(
    text: str,
    toks: list[Token],
    stems: frozenset[str],
    void: list[tuple[int, int]],
    sentences: list[tuple[int, int]],
    antonyms: frozenset[str] = frozenset(),
) -> list[_Cue]:
    """Each mention of a stem (or an antonym) outside void spans: "yes" when affirmed, "no" when negated."""
    found: list[_Cue] = []
    for i, tok in enumerate(toks):
        s = tok.stem
        if s not in stems and s not in antonyms:
            continue
        if _in(void, tok.start):
            continue
        if isinstance(sentences, _Sentences):
            clause_start = sentences.clause_start(tok.start)
        else:
            clause_start = _sentence_at(sentences, tok.start)[0]
        if i > 0 and toks[i - 1].lower == "otherwise":  # "the otherwise normal ventricles"
            continue
        negated, neg_start = _negated(text, toks, i, clause_start)
        affirmed = not negated
        if s in antonyms and s not in stems:
            affirmed = not affirmed
        end = tok.end
        post = POST_NEGATION.match(text, tok.end)
        if post:
            end = post.end()
        generic = bool(_GENERIC_MOOD.search(text, *_sentence_at(sentences, tok.start)))  # "X typically appears as"
        before = [t.lower for t in toks[max(0, i - 15) : i] if t.start >= clause_start]
        # "could potentially be a tumor or ... carcinoma", "conditions such as fibrosis": possibilities.
        tentative = (
            generic or any(w in TENTATIVE for w in before) or bool(_LISTED.search(text, clause_start, tok.start))
        )
        found.append(_Cue("yes" if affirmed else "no", neg_start, end, "statement", tentative, generic=generic))
    return found


def _normality_statements(
    text: str,
    toks: list[Token],
    void: list[tuple[int, int]],
    sentences: list[tuple[int, int]],
    subject: frozenset[str] = frozenset(),
) -> list[_Cue]:
    """For normality questions: "yes" = the image is normal, "no" = abnormal. Words of the question's
    own subject ("Is this skin lesion normal?") are not findings."""
    normal = _statements(text, toks, NORMAL_STEMS - {stem("clear")}, void, sentences)
    abnormal = _statements(text, toks, ABNORMAL_STEMS - subject, void, sentences)
    # A stated finding makes the image abnormal; a denied one ("no mass") is weak evidence of normal.
    cues = list(normal)
    for c in abnormal:
        if c.value == "yes":
            cues.append(_Cue("no", c.start, c.end, "finding", c.tentative))
        else:
            cues.append(_Cue("yes", c.start, c.end, "finding", c.tentative, weak=True))
    return sorted(cues, key=lambda c: c.start)


# ---------------------------------------------------------------- answer words
_WORD_AT = re.compile(r"[\s\"'(]*([^\W\d_]+)", re.UNICODE)


_LEANING = re.compile(
    r"[\s\"'(]*(?:(?P<no>(?:probably|likely|most\s+likely|almost\s+certainly|definitely|certainly)\s+not|"
    r"unlikely|not\s+likely|I\s+(?:don't|do\s+not)\s+(?:think|believe)\s+so)|"
    r"(?P<yes>I\s+(?:think|believe)\s+so|(?:most\s+)?likely|probably|possibly|definitely|certainly|absolutely))"
    r"(?=\s*(?:[,.;:!]|$|\n))",
    re.I,
)
_LEADING_ADVERB = re.compile(
    r"[\s\"'(]*(?:(?:I\s+(?:think|believe|would\s+say)(?:\s+so)?|probably|likely|most\s+likely|"
    r"possibly|definitely|certainly|absolutely|perhaps)\s*,?\s*)",
    re.I,
)


def _answer_word(text: str, pos: int) -> Optional[_Cue]:
    """A yes/no opening text[pos:] and standing on its own ("Probably not." and "I think so, yes." too)."""
    leaning = _LEANING.match(text, pos)
    if leaning:
        adverb = _LEADING_ADVERB.match(text, pos)
        after = _answer_word_plain(text, leaning.end() + 1) if text[leaning.end() : leaning.end() + 1] == "," else None
        if after is not None and adverb:
            return after  # "I think so, yes."
        s, e = leaning.span("no") if leaning.group("no") else leaning.span("yes")
        return _Cue("no" if leaning.group("no") else "yes", s, e, "answer word")
    adverb = _LEADING_ADVERB.match(text, pos)
    if adverb and adverb.end() > pos:
        cue = _answer_word_plain(text, adverb.end())
        if cue is not None:
            return cue  # "Likely yes."
    return _answer_word_plain(text, pos)


def _answer_word_plain(text: str, pos: int) -> Optional[_Cue]:
    rest = text[pos : pos + 40]
    stripped = rest.lstrip(" \t\n\"'(")
    offset = pos + len(rest) - len(stripped)
    for words, value in ((CJK_YES, "yes"), (CJK_NO, "no")):
        for w in sorted(words, key=len, reverse=True):
            if stripped.startswith(w) and not (w == "不" and stripped.startswith("不确定")):
                return _Cue(value, offset, offset + len(w), "answer word")
    m = _WORD_AT.match(text, pos)
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
    return _Cue(value, m.start(1), m.end(1), "answer word")


# Whole one-word answers that say present or absent.
_ONE_WORD = {
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


def _explicit_answers(text: str, start: int, sentences: list[tuple[int, int]]) -> list[_Cue]:
    """Yes/no at the start of the answer, after "the answer is", or opening a concluding sentence."""
    found = []
    whole = text[start:].strip(" \t\n.!\"'").lower()
    if whole in _ONE_WORD:
        i = text.lower().index(whole, start)
        return [_Cue(_ONE_WORD[whole], i, i + len(whole), "one-word answer")]
    lead = _answer_word(text, start)
    if lead:
        found.append(lead)
    for m in _FORMAL.finditer(text):
        cue = _answer_word(text, m.end())
        if cue and all(c.start != cue.start for c in found):
            found.append(_Cue(cue.value, m.start(), cue.end, "formal answer"))
    for s, e in sentences[1:]:
        c = _CONCLUSION.match(text, s)
        if not c:
            if (s, e) == sentences[-1]:  # the closing sentence: "...\n\nNo."
                cue = _answer_word(text, s)
                if cue and all(abs(x.start - cue.start) > 2 for x in found):
                    found.append(_Cue(cue.value, cue.start, cue.end, "closing answer"))
            continue
        cue = _answer_word(text, c.end())
        if cue is None:
            m = re.match(r"[\s,]*(?:the\s+answer\s+is\s*:?)?", text[c.end() :])
            cue = _answer_word(text, c.end() + m.end())
        if cue and all(abs(x.start - cue.start) > 2 for x in found):
            found.append(_Cue(cue.value, cue.start, cue.end, "concluding answer"))
    return sorted(found, key=lambda c: c.start)


# ---------------------------------------------------------------- the reading
def _result(
    answer: str,
    label: str,
    value: Optional[str],
    cue: Optional[_Cue],
    reason: str,
    confident: bool = True,
    others: Sequence[_Cue] = (),
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


def _quote(answer: str, cue: _Cue) -> str:
    words = answer[cue.start : cue.end]
    return repr(words if len(words) <= 80 else words[:77] + "...")


def _not_an_answer(text: str, start: int, has_options: bool = False) -> Optional[str]:
    body = text[start:]
    letters = sum(ch.isalpha() for ch in body[:2000])
    if letters < 1 and not (has_options and re.fullmatch(r"\W*\d{1,2}\W*", body)):  # "2)" names an option
        return "no words"
    first_line = body.strip().split("\n", 1)[0]
    if _COPYRIGHT.search(first_line):
        return "a copyright notice, not an answer"
    if _CODE.search(body[:400]):
        return "code, not an answer"
    if _CHOICES_ONLY.match(body[:200]) or re.match(r"^\W*options?\s*:", body, re.I):
        return "restates the choices without choosing"
    return None


_COMMON = frozenset(
    "the a an is are was were be been of to in on at and or but this that these those there it its with "
    "as for by from not no yes image shows show appears i you we can may which have has".split()
)


def _looks_like_noise(text: str) -> bool:
    """Word salad, as random-weight models write: hardly any common English words, or one word
    repeated over and over ("diagnosis diagnosis diagnosis opacity You diagnosis ...")."""
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", text[:3000])]
    if len(words) < 8:
        return False
    if sum(w in _COMMON for w in words) / len(words) < 0.08:
        return True
    run = longest = 1
    for a, b in zip(words, words[1:]):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    content = Counter(w for w in words if w not in _COMMON)
    top = max(content.values(), default=0)
    return longest >= 3 or (len(words) >= 12 and top / len(words) > 0.25)


def _stance(text: str, focus: Focus, sentences: list[tuple[int, int]], toks: list[Token]) -> Optional[_Cue]:
    """A hedge or refusal when there is no answer: a hedge engages with the question, a refusal declines."""
    hedges = [m for m in _HEDGE.finditer(text) if not _is_question_word(m, focus)]
    refusals = list(_REFUSAL.finditer(text))
    disclaimers = list(_DISCLAIMER.finditer(text))
    target = focus.primary | focus.secondary | focus.echo
    for m in refusals[:5]:
        s, e = _sentence_at(sentences, m.start())
        if re.search(
            r"\b(?:definitive|definite|certain|conclusive|accurate|precise|confident)\b", text[m.start() : e], re.I
        ):
            hedges.append(m)  # "I cannot provide a definitive diagnosis": engages, without a verdict
            continue
        e = sentences.clause_end(m.end(), e) if isinstance(sentences, _Sentences) else e
        engaged = re.search(r"\b(?:whether|if)\b|presence", text[m.start() : e], re.I) or any(
            t.stem in target for t in toks if m.end() <= t.start < e
        )
        if engaged and re.search(
            r"\b(?:determine|tell|say|confirm|assess|know|be\s+(?:sure|certain))\b", text[m.start() : e], re.I
        ):
            hedges.append(m)
    if hedges:
        m = min(hedges, key=lambda x: x.start())
        return _Cue("hedge", m.start(), m.end(), "hedge")
    if refusals:
        m = refusals[0]
        return _Cue("refusal", m.start(), m.end(), "refusal")
    if disclaimers:
        m = disclaimers[0]
        return _Cue("refusal", m.start(), m.end(), "refusal", weak=True)
    return None


_NORMALITY_WORDS = NORMAL_STEMS | frozenset({stem("abnormal"), stem("pathological"), stem("pathologic")})
_POSSIBLE_FRAME = re.compile(r"\bit\s+is\s+(?:possible|conceivable|plausible)\s+that\b", re.I)


def _engaged_hedge(text: str, focus: Focus, sentences: list[tuple[int, int]], toks: list[Token]) -> Optional[_Cue]:
    """A hedge whose own clause names the question's target ("difficult to determine whether there
    is pneumonia")."""
    target = focus.primary or (_NORMALITY_WORDS if focus.normality else frozenset())
    if not target:
        return None
    at = [t.start for t in toks if t.stem in target]
    if not at:
        return None
    for m in _HEDGE.finditer(text):
        if _is_question_word(m, focus):
            continue
        s, e = _sentence_at(sentences, m.start())
        end = sentences.clause_end(m.end(), e) if isinstance(sentences, _Sentences) else e
        i = bisect_left(at, m.end())
        if i < len(at) and at[i] < end:
            return _Cue("hedge", m.start(), m.end(), "hedge")
    return None


def _echoes(focus: Focus, toks: list[Token], s: int, e: int) -> bool:
    return any(t.stem in focus.echo for t in toks if s <= t.start < e)


def _settle(cues: list[_Cue], text: str, sentences: list[tuple[int, int]]) -> tuple[Optional[_Cue], list[_Cue], str]:
    """One value from statements: all agree, or the concluding sentence speaks with one voice."""
    strong = [c for c in cues if not c.weak] or cues
    values = {c.value for c in strong}
    if len(values) == 1:
        definite = [c for c in strong if not c.tentative] or strong
        return definite[0], [], "agree"
    for s, e in reversed(sentences):
        if not _CONCLUSION.match(text, s):
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
    text = _working_copy(answer)
    text = _blank_echo(text, focus)
    restated = False
    if focus.options:
        before = text
        text = _blank_option_list(text, focus)
        restated = text != before
    text, start, leaked, label_at = _skip_prefixes(text)
    if not text.strip():
        if restated:
            return _result(answer, "hedge", None, None, "restates the options without choosing")
        return _result(answer, "unclear", None, None, "empty output")
    problem = _not_an_answer(text, start, bool(focus.options))
    if problem:
        return _result(answer, "unclear", None, None, problem)
    if _looks_like_noise(text):
        return _result(answer, "unclear", None, None, "looks like noise: hardly any common English words")
    sentences = _sentences(text)
    toks = tokens(text)
    void = _void_spans(text, sentences, focus)
    if focus.options:
        reading = _read_choice(answer, text, start, leaked, focus, sentences, toks, void)
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
            text = _blank(text, m.start(), m.end())
    return text


def target_statements(
    text: str, focus: Focus, toks: list[Token], void: list[tuple[int, int]], sentences: list[tuple[int, int]]
) -> tuple[list[_Cue], bool]:
    """(statements answering the question, whether they rest on the question's own target)."""
    if focus.normality is not None:
        cues = _normality_statements(text, toks, void, sentences, focus.secondary)
        if focus.normality == "abnormal":
            cues = [_Cue("no" if c.value == "yes" else "yes", c.start, c.end, c.how, c.tentative, c.weak) for c in cues]
        return _flip(cues, focus.negated), True
    antonyms = frozenset().union(*(ANTONYMS.get(s, frozenset()) for s in focus.primary)) - focus.primary
    # A misspelt finding ("pnemonia") still names it; a word that is another target term does not.
    near = _near_spellings(toks, focus.primary, focus.primary | antonyms | focus.secondary, strict=True)
    cues = _statements(text, toks, focus.primary | near, void, sentences, antonyms)
    if cues:
        return _flip(cues, focus.negated), True
    if focus.secondary:
        # The subject instead of the finding ("Is the heart enlarged?" - "The heart is normal in size").
        normal = _statements(text, toks, NORMAL_STEMS, void, sentences)
        subject = _statements(text, toks, focus.secondary, void, sentences)
        if normal and subject:
            cues = [
                _Cue("no" if c.value == "yes" else "yes", c.start, c.end, "normal", c.tentative, True) for c in normal
            ]
            return _flip(cues, focus.negated), False
    if focus.primary & ABNORMAL_STEMS or _pathological(focus):
        whole = [c for c in _normality_statements(text, toks, void, sentences, focus.secondary) if c.how != "finding"]
        if whole:
            cues = [
                _Cue("no" if c.value == "yes" else "yes", c.start, c.end, "normal", c.tentative, True) for c in whole
            ]
            return _flip(cues, focus.negated), False
    return [], False


def _pathological(focus: Focus) -> bool:
    return bool(focus.primary) and not (focus.primary & NORMAL_STEMS)


def _flip(cues: list[_Cue], negated: bool) -> list[_Cue]:
    if not negated:
        return cues
    return [_Cue("no" if c.value == "yes" else "yes", c.start, c.end, c.how, c.tentative, c.weak) for c in cues]


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
        cue = _Cue("hedge", both.start(), both.end(), "hedge")
        return _result(answer, "hedge", None, cue, f"answers both ways: {_quote(answer, cue)}")
    explicit = _explicit_answers(text, start, sentences)
    # Answer words are not findings: "No, there is effusion" must not read "no effusion".
    scrubbed = text
    for c in explicit:
        scrubbed = _blank(scrubbed, c.start, c.end)
    statements, on_target = target_statements(scrubbed, focus, tokens(scrubbed), void, sentences)
    if explicit:
        first = explicit[0]
        s, e = _sentence_at(sentences, first.start)
        if leaked and not _echoes(focus, toks, s, e):
            return _result(
                answer,
                "unclear",
                None,
                first,
                f"a leaked role turn ({_quote(answer, first)}) that does not answer the question",
            )
        if re.match(
            r"[\s,]*(?:please|can\s+you|could\s+you|would\s+you|I\s+would\s+like|I\s+want)\b", text[first.end :], re.I
        ):
            return _result(answer, "unclear", None, first, f"{_quote(answer, first)} opens a request, not an answer")
        stance_after = _HEDGE.search(text, first.end, e) or _REFUSAL.search(text, first.end, e)
        if stance_after and re.match(r"[\s,.;:!-]*(?:I|it|this|we|that)\b", text[first.end : stance_after.start()]):
            # "No, I cannot determine that from this image": the "no" answers nothing.
            stance = _stance(text, focus, sentences, toks) or _Cue(
                "hedge", stance_after.start(), stance_after.end(), "hedge"
            )
            return _result(
                answer,
                stance.value,
                None,
                stance,
                f"{_quote(answer, first)} opens a {stance.value}: {_quote(answer, stance)}",
                others=[first],
            )
        against = [c for c in explicit[1:] if c.value != first.value]
        if against:
            return _result(
                answer,
                "hedge",
                None,
                first,
                f"says both {_quote(answer, first)} and {_quote(answer, against[0])}",
                others=[against[0]],
            )
        in_sentence = [c for c in statements if s <= c.start < e and not c.weak and not c.tentative]
        if in_sentence and all(c.value != first.value for c in in_sentence):
            return _result(
                answer,
                "hedge",
                None,
                first,
                f"{_quote(answer, first)} contradicted in the same sentence by {_quote(answer, in_sentence[0])}",
                others=[in_sentence[0]],
            )
        definite = [c for c in statements if not c.weak and not c.tentative and on_target]
        if definite and all(c.value != first.value for c in definite):
            return _result(
                answer,
                "hedge",
                None,
                first,
                f"{_quote(answer, first)} contradicted by {_quote(answer, definite[0])}",
                others=[definite[0]],
            )
        return _result(answer, "answer", first.value, first, f"{first.how} {_quote(answer, first)}")

    if leaked and _USER_VOICE.match(text, start):
        return _result(answer, "unclear", None, None, "a leaked role turn in the user's voice, not an answer")
    stance = _stance(text, focus, sentences, toks)
    if statements:
        if leaked and not any(_echoes(focus, toks, *_sentence_at(sentences, c.start)) for c in statements):
            statements = []
    engaged = _engaged_hedge(text, focus, sentences, toks)
    if statements and engaged is not None:
        concluding = [c for c in statements if _CONCLUSION.match(text, _sentence_at(sentences, c.start)[0])]
        if not concluding:
            # "it is not clear if the lesion is typical ...": the question is weighed, not answered.
            return _result(
                answer,
                "hedge",
                None,
                engaged,
                f"weighs the question without answering it: {_quote(answer, engaged)}",
                others=statements[:1],
            )
    if statements:
        cue, conflict, how = _settle(statements, text, sentences)
        if cue is None:
            return _result(
                answer,
                "hedge",
                None,
                conflict[0],
                f"mixed statements: {_quote(answer, conflict[0])} vs {_quote(answer, conflict[1])}",
                others=conflict[1:],
            )
        if (
            stance is not None
            and stance.value == "refusal"
            and not stance.weak
            and all(c.generic or c.weak for c in statements)
        ):
            # "I'm not able to analyze medical images, but pneumonia typically appears as ...": declined.
            return _result(
                answer,
                "refusal",
                None,
                stance,
                f"declines, then only talks in general: {_quote(answer, stance)}",
                others=[cue],
            )
        if stance is not None and stance.value == "hedge" and (cue.tentative or not stance.start > cue.start):
            # "difficult to determine whether ... ; there may be ..." ends without a verdict.
            if cue.tentative or cue.weak:
                return _result(
                    answer,
                    "hedge",
                    None,
                    stance,
                    f"hedge {_quote(answer, stance)} beside only a tentative {_quote(answer, cue)}",
                    others=[cue],
                )
        frame = _POSSIBLE_FRAME.search(text, *_sentence_at(sentences, statements[0].start))
        if (
            frame
            and all(c.tentative or frame.start() <= c.start < frame.end() + 400 for c in statements)
            and re.search(r"\b(?:however|but)\b", text[cue.end :], re.I)
        ):
            # "It is possible that the mass could represent ... However, further tests ...": weighed, not answered.
            hedge = _Cue("hedge", frame.start(), frame.end(), "hedge")
            return _result(
                answer,
                "hedge",
                None,
                hedge,
                f"only a possibility, then a caveat: {_quote(answer, hedge)}",
                others=[cue],
            )
        confident = on_target and how == "agree" and not cue.weak and stance is None
        return _result(
            answer,
            "answer",
            cue.value,
            cue,
            f"{'states' if on_target else 'implies'} {_quote(answer, cue)}"
            + (
                ""
                if how == "agree"
                else f" ({'the concluding sentence' if how == 'conclusion' else 'the opening statement'})"
            ),
            confident=confident,
        )
    if stance is not None:
        return _result(
            answer,
            stance.value,
            None,
            stance,
            f"{stance.value} with no answer: {_quote(answer, stance)}",
            confident=not stance.weak,
        )
    if not focus.has_target:
        return _result(
            answer,
            "unclear",
            None,
            None,
            "no answer word, and the question names no target to look for",
            confident=False,
        )
    return _result(
        answer,
        "unclear",
        None,
        None,
        "no answer to the question: no yes/no, and nothing said about "
        + ", ".join(sorted(focus.primary)[:3] or [focus.normality or "the target"]),
    )


# ---------------------------------------------------------------- either/or and multiple choice
def _label_at(text: str, pos: int, focus: Focus) -> Optional[_Cue]:
    """An option label opening text[pos:] ("B", "(B)", "B)", "Option B", "**B**"), not the article "A"."""
    m = re.match(r"[\s\"'(]*(?:(?:option|choice)\s*)?\(?", text[pos : pos + 60], re.I)
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
            named = _option_named_at(tail, focus)
            if named is not None and named != index:
                return _Cue("conflict", i, end, f"label {label} names {focus.options[named].text!r}")
            return _Cue(chr(ord("A") + index), i, end + (closed.end() if closed else 0), "option label")
        if _option_named_at(tail, focus) == index:  # "A Tumor" when A is "Tumor"
            return _Cue(chr(ord("A") + index), i, end, "option label")
    return None


def _option_named_at(text: str, focus: Focus) -> Optional[int]:
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


def _edit_distance(a: str, b: str, limit: int = 2) -> int:
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


def _near_spellings(
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
                and _edit_distance(t.stem, target, limit) <= limit
            ):
                near.add(t.stem)
    return frozenset(near)


_MORE = re.compile(r"\b(?:larger|bigger|greater|more|higher|wider|longer|heavier|thicker)\b", re.I)
_LESS = re.compile(r"\b(?:smaller|less|lesser|lower|narrower|shorter|lighter|thinner|fewer)\b", re.I)
_COPULA_BEFORE = re.compile(
    r"\b(?:is|are|was|were|appears?|seems?|looks?|be)\s+(?:to\s+be\s+)?(?:an?\s+|the\s+)?$", re.I
)


def _comparison(text: str, s: int, e: int, inside: list[_Cue], question: str) -> Optional[_Cue]:
    """ "X is larger than Y" answering "Which is bigger, X or Y?": X; "X is smaller than Y": Y."""
    asks_more, asks_less = bool(_MORE.search(question)), bool(_LESS.search(question))
    if asks_more == asks_less:
        return None
    first, second = inside[0], next((c for c in inside if c.value != inside[0].value), None)
    if second is None:
        return None
    between = text[first.end : second.start]
    if not re.search(r"\bthan\b|\bcompared\s+(?:to|with)\b", between, re.I):
        return None
    more, less = _MORE.search(between), _LESS.search(between)
    if bool(more) == bool(less):
        return None
    return first if bool(more) == asks_more else second


def _predicate_choice(text: str, inside: list[_Cue]) -> Optional[_Cue]:
    """Of two options named in one sentence, the one stated as its predicate ("... appear to be solid")."""
    stated = [c for c in inside if _COPULA_BEFORE.search(text[max(0, c.start - 30) : c.start])]
    return stated[0] if len({c.value for c in stated}) == 1 else None


_NEITHER = re.compile(r"\b(?:neither|none)\s+of\s+(?:the\s+)?(?:\w+\s+)?(?:options|choices|answers|above)\b", re.I)
_RESTATES_BOTH = re.compile(r"\b(?:either|both|or|and|vs\.?|versus|between)\b", re.I)


def _choice_statements(
    text: str, toks: list[Token], focus: Focus, void: list[tuple[int, int]], sentences: list[tuple[int, int]]
) -> list[_Cue]:
    """Affirmed mentions of an option's own words: a cue for that option ("A", "B", ...); a denied
    mention of one of two options is weak support for the other."""
    opts = focus.options
    pair = next(((i, o.negated_of) for i, o in enumerate(opts) if o.negated_of is not None), None)
    cues: list[_Cue] = []
    if pair is not None:
        negative, positive = pair
        stems = frozenset().union(
            *(focus.options[positive].stems | SYNONYMS.get(s, frozenset()) for s in focus.options[positive].stems)
        )
        for c in _statements(text, toks, stems, void, sentences):
            index = positive if c.value == "yes" else negative
            cues.append(_Cue(chr(ord("A") + index), c.start, c.end, "names", c.tentative))
        return cues
    taken = frozenset().union(*(o.stems for o in opts))
    for index, option in enumerate(opts):
        for c in _statements(text, toks, option.stems | _near_spellings(toks, option.stems, taken), void, sentences):
            if c.value == "yes":
                cues.append(_Cue(chr(ord("A") + index), c.start, c.end, "names", c.tentative))
            elif len(opts) == 2:
                cues.append(_Cue(chr(ord("A") + 1 - index), c.start, c.end, "denies the other", c.tentative, True))
    return sorted(cues, key=lambda c: c.start)


def _read_choice(
    answer: str,
    text: str,
    start: int,
    leaked: bool,
    focus: Focus,
    sentences: list[tuple[int, int]],
    toks: list[Token],
    void: list[tuple[int, int]],
) -> AnswerReading:
    neither = _NEITHER.search(text)
    if neither:
        cue = _Cue("hedge", neither.start(), neither.end(), "hedge")
        return _result(answer, "hedge", None, cue, f"picks none of the options: {_quote(answer, cue)}")
    labels = []
    lead = _label_at(text, start, focus)
    if lead:
        labels.append(lead)
    for m in _FORMAL.finditer(text):
        cue = _label_at(text, m.end(), focus)
        if cue and all(c.start != cue.start for c in labels):
            labels.append(_Cue(cue.value, m.start(), cue.end, "formal answer"))
    seen = {c.start for c in labels}
    for m in re.finditer(r"(?:^|\n)[ \t]*|\((?=[A-Za-z0-9]\))", text):
        if m.end() > start + 1:
            cue = _label_at(text, m.end(), focus)
            if cue and not seen.intersection(range(cue.start - 2, cue.start + 3)):
                labels.append(cue)
                seen.add(cue.start)
    labels.sort(key=lambda c: c.start)
    # A leading yes/no is not a choice, and must not negate the option after it ("No, it is on the right").
    word = _answer_word(text, start)
    scrubbed = _blank(text, word.start, word.end) if word else text
    statements = _choice_statements(scrubbed, tokens(scrubbed), focus, void, sentences)
    if labels:
        conflict = [c for c in labels if c.value == "conflict"]
        if conflict:
            return _result(answer, "hedge", None, conflict[0], f"contradicts itself: {conflict[0].how}")
        first = labels[0]
        against = [c for c in labels[1:] if c.value != first.value]
        if against:
            return _result(
                answer,
                "hedge",
                None,
                first,
                f"names two options: {_quote(answer, first)} and {_quote(answer, against[0])}",
                others=[against[0]],
            )
        s, e = _sentence_at(sentences, first.start)
        contra = [
            c for c in statements if s <= c.start < e and c.value != first.value and not c.weak and c.start >= first.end
        ]
        definite = [c for c in statements if not c.weak and not c.tentative]
        if not contra and definite and all(c.value != first.value for c in definite):
            contra = definite
        if contra:
            return _result(
                answer,
                "hedge",
                None,
                first,
                f"{_quote(answer, first)} contradicted by {_quote(answer, contra[0])}",
                others=[contra[0]],
            )
        return _result(answer, "answer", first.value, first, f"{first.how} {_quote(answer, first)}")
    short = text[start:].strip(" \t\n.!\"'").lower()
    if 2 <= len(short) <= 20 and not statements and not word:
        prefixed = [i for i, o in enumerate(focus.options) if o.text.lower().startswith(short)]
        if len(prefixed) == 1:  # "mr" for "mri"
            i = text.lower().index(short, start)
            cue = _Cue(chr(ord("A") + prefixed[0]), i, i + len(short), "names")
            return _result(
                answer, "answer", cue.value, cue, f"starts the option {_quote(answer, cue)}", confident=False
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
            concluding = [c for c in later if _CONCLUSION.match(text, _sentence_at(sentences, c.start)[0])]
            if concluding:
                return _result(
                    answer,
                    "answer",
                    concluding[-1].value,
                    concluding[-1],
                    f"the concluding sentence names {_quote(answer, concluding[-1])}",
                    confident=False,
                )
            if leaked and not _echoes(focus, toks, s, e):
                return _result(answer, "unclear", None, cue, "a leaked role turn that does not answer the question")
            return _result(
                answer,
                "answer",
                cue.value,
                cue,
                f"names {_quote(answer, cue)}",
                confident=not later and not cue.tentative,
            )
        compared = _comparison(text, s, e, inside, focus.core)
        if compared is not None:
            return _result(
                answer,
                "answer",
                compared.value,
                compared,
                f"the comparison names {_quote(answer, compared)}",
                confident=False,
            )
        if not _RESTATES_BOTH.search(text[s:e]):
            stated = _predicate_choice(text, inside)
            if stated is not None:
                return _result(
                    answer, "answer", stated.value, stated, f"states {_quote(answer, stated)}", confident=False
                )
            a = inside[0]
            b = next(c for c in inside if c.value != a.value)
            return _result(
                answer, "hedge", None, a, f"names both {_quote(answer, a)} and {_quote(answer, b)}", others=[b]
            )
        if re.search(r"\b(?:both|either|could\s+be|may\s+be|might\s+be)\b", text[s:e], re.I):
            return _result(
                answer,
                "hedge",
                None,
                inside[0],
                f"leaves both options open: {_quote(answer, inside[0])}",
                others=[inside[-1]],
            )
        restated = restated or (s, e, inside)  # "X or Y?" restated: read on.
    weak = [c for c in statements if c.weak]
    if weak and len({c.value for c in weak}) == 1:
        return _result(
            answer, "answer", weak[0].value, weak[0], f"{weak[0].how}: {_quote(answer, weak[0])}", confident=False
        )
    stance = _stance(text, focus, sentences, toks)
    if stance is not None:
        return _result(
            answer,
            stance.value,
            None,
            stance,
            f"{stance.value} with no choice: {_quote(answer, stance)}",
            confident=not stance.weak,
        )
    both = re.search(r"\bboth\b", text[start:], re.I)
    if both:
        cue = _Cue("hedge", start + both.start(), start + both.end(), "hedge")
        return _result(answer, "hedge", None, cue, f"takes both options: {_quote(answer, cue)}")
    if word:
        return _result(answer, "unclear", None, word, f"{_quote(answer, word)} does not answer an either/or question")
    if restated:
        cue = restated[2][0]
        return _result(
            answer,
            "hedge",
            None,
            cue,
            f"restates both options without choosing: {_quote(answer, cue)}",
            others=restated[2][1:2],
        )
    return _result(answer, "unclear", None, None, "names none of the options")
