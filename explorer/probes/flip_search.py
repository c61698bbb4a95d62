"""The smallest edit of a wording that changes a model's verdict on one image.

Candidates are every variant the chosen wording families make from the starting wording, ordered by
how big the edit is: first the family's tier (presets/families.yaml: surface edits before rewordings,
framings and flipped questions), then the word-level edit distance to the starting wording. They are
asked in that order, a few at a time, until one reads differently from the start or the request budget
is spent; within the budget the flip found is the smallest in that order. Every answer goes through
`ask`, which the app and the CLI make from Explorer.grid: the store's cache serves what was asked
before, so a second search on the same image costs no generation.

A flip is a change of reading (positive, negative, or non-answer); `opposite_only` asks for
positive <-> negative only. A failed request is never a flip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from explorer.prompts.perturb import FamilyCatalog, Perturbed, TaskWords, generate, load_families
from explorer.schema import NON_ANSWERS, PromptVariant

# ask(variants) -> one answer per variant (any object with prompt_id, verdict, answer, error, cached)
Ask = Callable[[Sequence[PromptVariant]], Sequence[Any]]
DEFAULT_MAX_REQUESTS = 40
DEFAULT_BATCH = 4
# Families a flip search leaves out by default: the study's wordings are not edits of one wording, and
# paraphrases need a text model.
NOT_EDITS = ("study", "paraphrase")
_TOKENS = re.compile(r"\s+|\w+|[^\w\s]")


def word_distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace) between the word, punctuation and whitespace tokens of a and b."""
    x, y = _TOKENS.findall(a), _TOKENS.findall(b)
    previous = list(range(len(y) + 1))
    for i, tx in enumerate(x, 1):
        current = [i]
        for j, ty in enumerate(y, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (tx != ty)))
        previous = current
    return previous[-1]


def reading(view: Any) -> Optional[str]:
    """positive / negative / non-answer; None for a failed request."""
    if getattr(view, "error", None):
        return None
    verdict = getattr(view, "verdict", None) or "unclear"
    return "non-answer" if verdict in NON_ANSWERS else verdict


@dataclass(frozen=True)
class Candidate:
    item: Perturbed
    tier: int
    distance: int


@dataclass
class FlipResult:
    model: str
    base: PromptVariant
    base_answer: Any
    flip: Optional[Candidate] = None
    flip_answer: Any = None
    requests: int = 0  # answers asked for, the starting wording's included
    cached: int = 0  # of those, served from the store
    candidates: int = 0  # wordings the families made
    tried: list[tuple[Candidate, Any]] = field(default_factory=list)
    budget: int = DEFAULT_MAX_REQUESTS

    @property
    def found(self) -> bool:
        return self.flip is not None

    def message(self) -> str:
        if self.flip is None:
            return (
                f"No flip within {self.requests} requests: {len(self.tried)} of {self.candidates} edited wordings "
                f"tried, every one read as {reading(self.base_answer)}."
            )
        return (
            f"Flip found with {self.requests} requests: {self.flip.item.label} ({self.flip.item.family}, "
            f"{self.flip.distance} token edit{'s' if self.flip.distance != 1 else ''}) turns "
            f"{reading(self.base_answer)} into {reading(self.flip_answer)}."
        )


def candidates(
    base: PromptVariant,
    families: Sequence[str],
    words: TaskWords,
    seed: int = 0,
    family_catalog: Optional[FamilyCatalog] = None,
) -> list[Candidate]:
    """Every edited wording of `base` by these families, smallest edit first."""
    fc = family_catalog or load_families()
    order = {name: i for i, name in enumerate(families)}
    items = generate([base], families, words, seed=seed, count=0, family_catalog=fc)
    ranked = [Candidate(it, fc.family(it.family).tier, word_distance(base.text, it.variant.text)) for it in items]
    position = {id(c): i for i, c in enumerate(ranked)}
    return sorted(ranked, key=lambda c: (c.tier, c.distance, order[c.item.family], position[id(c)]))


def find_flip(
    ask: Ask,
    base: PromptVariant,
    words: TaskWords,
    model: str,
    families: Optional[Sequence[str]] = None,
    max_requests: int = DEFAULT_MAX_REQUESTS,
    seed: int = 0,
    batch: int = DEFAULT_BATCH,
    opposite_only: bool = False,
    family_catalog: Optional[FamilyCatalog] = None,
) -> FlipResult:
    """The smallest edit of `base` (by family tier, then edit distance) whose answer reads differently,
    asking at most `max_requests` answers (the starting wording's included)."""
    if max_requests < 2:
        raise ValueError("A flip search needs at least 2 requests: the starting wording and one edit.")
    fc = family_catalog or load_families()
    names = list(families) if families else [n for n in fc.names() if fc.family(n).generator not in NOT_EDITS]
    for name in names:
        if fc.family(name).generator == "paraphrase":
            raise ValueError(
                "The flip search does not use paraphrases (they need a text model); leave that family out."
            )
    pool = candidates(base, names, words, seed, fc)
    (base_answer,) = ask([base])
    start = reading(base_answer)
    if start is None:
        raise ValueError(f"The starting wording got no answer ({base_answer.error}); nothing to flip.")
    result = FlipResult(
        model=model,
        base=base,
        base_answer=base_answer,
        requests=1,
        cached=int(bool(getattr(base_answer, "cached", False))),
        candidates=len(pool),
        budget=max_requests,
    )
    position = 0
    while position < len(pool) and result.requests < max_requests:
        size = min(max(1, batch), max_requests - result.requests, len(pool) - position)
        chunk = pool[position : position + size]
        position += size
        answers = {getattr(a, "prompt_id", None): a for a in ask([c.item.variant for c in chunk])}
        result.requests += len(chunk)
        for candidate in chunk:  # in order, so the first flip is the smallest asked
            answer = answers.get(candidate.item.variant.prompt_id)
            result.cached += int(bool(getattr(answer, "cached", False)))
            result.tried.append((candidate, answer))
            now = reading(answer) if answer is not None else None
            if result.flip is None and _flips(start, now, opposite_only):
                result.flip, result.flip_answer = candidate, answer
        if result.flip is not None:
            break
    return result


def _flips(start: str, now: Optional[str], opposite_only: bool) -> bool:
    if now is None or now == start:
        return False
    return not opposite_only or {start, now} == {"positive", "negative"}
