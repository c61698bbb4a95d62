"""An answer's working copy (same length, so spans index the original) and what is not an answer at all:
markup, a leaked next turn, an echo of the question, role and answer labels, copyright lines, code,
the choices restated, word salad.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from explorer.scoring.question_focus import Focus

# Stored with every rule-read verdict: a store can tell answers read by an older reader.
from explorer.scoring.text_layout import blank

TAG = re.compile(r"</?[A-Za-z_][\w-]{0,30}\s*/?>")


MARKDOWN = re.compile(r"[*_`#>|~\[\]{}]")


ROLE_LEAK = re.compile(r"\s*(?:human|user|patient|question|q|doctor|physician)\s*[:：]", re.I)


LABEL_PREFIX = re.compile(
    r"\s*(?:(?:assistant|gpt|ai|bot|model|response|output|system|radiologist|llava|gemini|medgemma)\s*[:：]|"
    r"[\"']?(?:final\s+|short\s+|my\s+)?answer[\"']?\s*[:：=-]|a\s*[:：](?=\s*(?:yes|no)\b)|ans\s*[:：])\s*",
    re.I,
)


NEXT_TURN = re.compile(
    r"\n[ \t]*(?:#+[ \t]*)?(?:human|user|patient|question|q|instruction)\s*[:：]|<\|im_start\|>|<start_of_turn>|"
    r"\[INST\]|</s>|<\|user\|>|<\|endoftext\|>",
    re.I,
)


# After a leaked "Human:" / "User:" label: the user's own words (a request, a question, their story).
USER_VOICE = re.compile(
    r"\s*(?:please|can\s+you|could\s+you|would\s+you|will\s+you|what|how|why|where|when|which|who|is|are|"
    r"does|do|did|tell\s+me|explain|describe|evaluate|show|give|help|I|I'm|I've|I'd|my|we|our|thanks?|thank\s+you)\b",
    re.I,
)


COPYRIGHT = re.compile(r"©|\bcopyright\b|all rights reserved|licen[cs]ed under|creative commons", re.I)


CODE = re.compile(
    r"^\s*(?:return\b|def\s|print\s*\(|import\s|from\s+\w+\s+import|#include|function\b|var\s|const\s|"
    r"let\s|public\s|private\s|if\s*\(|for\s*\(|while\s*\(|//|/\*)|;\s*$|\breturn\s+[\"']",
    re.I | re.M,
)


CHOICES_ONLY = re.compile(
    r"\W*(?:(?:options?|choices?)\W*(?:yes|no)\W*(?:or|/|,)?|(?:yes|no)\s*(?:or|/))\W*(?:yes|no)\W*$", re.I
)


CHOICE_MENTION = re.compile(r"\b(?:yes\s*(?:or|/)\s*no|no\s*(?:or|/)\s*yes)\b", re.I)


def working_copy(answer: str) -> str:
    """Same length as the answer: quotes straightened, markdown blanked, anything after a leaked
    next turn blanked."""
    text = answer.translate(QUOTES)
    text = TAG.sub(lambda m: " " * len(m.group()), text)  # <answer>No</answer>
    text = MARKDOWN.sub(" ", text)
    m = NEXT_TURN.search(text, 1)
    if m and text[: m.start()].strip():
        text = text[: m.start()] + " " * (len(text) - m.start())
    return CHOICE_MENTION.sub(lambda x: " " * len(x.group()), text)


# One character for one, so spans still index the answer: curly quotes, and full-width forms
# ("Ｙｅｓ", "，") as their ASCII twins.
QUOTES = str.maketrans(
    {
        "\u2019": "'",
        "\u2018": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u3002": ".",
        **{chr(c): chr(c - 0xFEE0) for c in range(0xFF01, 0xFF5F)},
    }
)


def skip_prefixes(text: str) -> tuple[str, int, bool, Optional[int]]:
    """(text with leading role/answer labels blanked, where the answer starts, whether a role leaked,
    where an "Answer:" label starts, if there is one: it belongs to the evidence)."""
    leaked = False
    pos = 0
    label_at = None
    for _ in range(3):
        m = ROLE_LEAK.match(text, pos)
        if m:
            leaked = True
            pos = m.end()
            continue
        m = LABEL_PREFIX.match(text, pos)
        if m and m.end() > pos:
            label_at = m.start() + len(m.group()) - len(m.group().lstrip())
            pos = m.end()
            continue
        break
    return blank(text, 0, pos), pos, leaked, label_at


def blank_echo(text: str, focus: Focus) -> str:
    core = focus.core.strip()
    if len(core) < 8:
        return text
    return re.sub(re.escape(core), lambda m: " " * len(m.group()), text, flags=re.I)


def not_an_answer(text: str, start: int, has_options: bool = False) -> Optional[str]:
    body = text[start:]
    letters = sum(ch.isalpha() for ch in body[:2000])
    if letters < 1 and not (has_options and re.fullmatch(r"\W*\d{1,2}\W*", body)):  # "2)" names an option
        return "no words"
    first_line = body.strip().split("\n", 1)[0]
    if COPYRIGHT.search(first_line):
        return "a copyright notice, not an answer"
    if CODE.search(body[:400]):
        return "code, not an answer"
    if CHOICES_ONLY.match(body[:200]) or re.match(r"^\W*options?\s*:", body, re.I):
        return "restates the choices without choosing"
    return None


COMMON = frozenset(
    "the a an is are was were be been of to in on at and or but this that these those there it its with "
    "as for by from not no yes image shows show appears i you we can may which have has".split()
)


def looks_like_noise(text: str) -> bool:
    """Word salad, as random-weight models write: hardly any common English words, one word
    repeated over and over ("diagnosis diagnosis diagnosis opacity You diagnosis ..."), or one
    phrase going round in a loop."""
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", text[:3000])]
    if len(words) < 8:
        return False
    if sum(w in COMMON for w in words) / len(words) < 0.08:
        return True
    run = longest = 1
    for a, b in zip(words, words[1:]):
        run = run + 1 if a == b else 1
        longest = max(longest, run)
    content = Counter(w for w in words if w not in COMMON)
    top = max(content.values(), default=0)
    if longest >= 3 or (len(words) >= 12 and top / len(words) > 0.25):
        return True
    # A phrase going round in a loop ("left pixels great region and left pixels great region ...").
    trigrams = list(zip(words, words[1:], words[2:]))
    return len(trigrams) >= 12 and len(set(trigrams)) / len(trigrams) < 0.5
