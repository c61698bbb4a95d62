"""Sentences, clauses and spans of an answer's working copy, found once and searched by bisect."""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right

# Stored with every rule-read verdict: a store can tell answers read by an older reader.


def blank(text: str, start: int, end: int) -> str:
    return text[:start] + " " * (end - start) + text[end:]


SENTENCE = re.compile(r"[^\s][^\n]*?(?:[.!?]+(?=\s|$)|(?=\n)|$)")


CLAUSE_BREAK = re.compile(r"[;:]|\b(?:but|however|although|though|whereas|except|yet)\b", re.I)


class Sentences(list):
    """Sentence spans in order, with their starts and the clause breaks indexed for bisect."""

    def __init__(self, text: str) -> None:
        super().__init__((m.start(), m.end()) for m in SENTENCE.finditer(text) if m.group().strip())
        self.starts = [s for s, _ in self]
        breaks = [m.span() for m in CLAUSE_BREAK.finditer(text)]
        self.break_starts = [s for s, _ in breaks]
        self.break_ends = [e for _, e in breaks]

    def clause_end(self, pos: int, limit: int) -> int:
        """Where the clause holding pos ends: the next break at or after pos, else limit."""
        i = bisect_left(self.break_starts, pos)
        return self.break_starts[i] if i < len(self.break_starts) and self.break_starts[i] < limit else limit

    def clause_start(self, pos: int) -> int:
        """Where the clause holding pos starts: after the last break in its sentence, else the sentence."""
        sentence_start = sentence_at(self, pos)[0]
        i = bisect_right(self.break_ends, pos) - 1
        if i >= 0 and sentence_start <= self.break_ends[i] <= pos:
            return self.break_ends[i]
        return sentence_start


def sentences_of(text: str) -> Sentences:
    return Sentences(text)


def sentence_at(sentences: list[tuple[int, int]], pos: int) -> tuple[int, int]:
    starts = getattr(sentences, "starts", None) or [s for s, _ in sentences]
    i = bisect_right(starts, pos) - 1
    if i >= 0 and sentences[i][0] <= pos < sentences[i][1]:
        return sentences[i]
    return pos, pos


class Spans(list):
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


def within(spans: list[tuple[int, int]], pos: int) -> bool:
    if isinstance(spans, Spans):
        return spans.holds(pos)
    return any(s <= pos < e for s, e in spans)
