"""First-token readout: how likely the positive reading is, from the logits of the first answer token.

For a yes/no prompt it compares the probability of yes-like tokens ("Yes", " yes", "YES", "▁Yes"...)
with no-like tokens; for a multiple-choice prompt the option letters ("A" vs "B"). The prompt's
polarity (variant.yes_means, variant.options) maps them to the positive reading, so
p_positive = P(positive answer token) / (P(yes-like) + P(no-like)) for yes/no, and the same with the
letters for multiple choice. The raw probabilities (and how much probability the two sets hold
at all, which says whether the model was about to answer in one word) go in Response.extra.

Token variants differ per tokenizer (SentencePiece "▁Yes", byte-level "ĠYes", capitalisation),
so the sets are found by decoding every vocabulary entry that could match, once per tokenizer.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional

from explorer.schema import PromptVariant

YES_WORDS = frozenset({"yes"})
NO_WORDS = frozenset({"no"})
LETTERS = ("A", "B", "C", "D")
# A letter token may carry the option's punctuation: "A", "A)", "A.", "(A", "A:".
_LETTER_RE = re.compile(r"^\(?([A-D])[\).:]?$")
_WORD_RE = re.compile(r"^([A-Za-z]+)[.,!:]?$")


@dataclass(frozen=True)
class AnswerTokens:
    """Token ids whose decoded text is one of the answer words, per tokenizer."""

    yes: tuple[int, ...]
    no: tuple[int, ...]
    letters: dict[str, tuple[int, ...]] = field(default_factory=dict)


_CACHE: "weakref.WeakKeyDictionary[Any, AnswerTokens]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _could_match(raw: str) -> bool:
    """A cheap look at a raw vocabulary entry ("▁Yes", "ĠNo", "(A"): short and starting like a word."""
    text = raw.replace("▁", " ").replace("Ġ", " ").strip()
    return 0 < len(text) <= 6 and (text[0].isalpha() or text[0] == "(")


def answer_tokens(tokenizer: Any) -> AnswerTokens:
    """Yes-like, no-like and option-letter token ids of this tokenizer (computed once, cached)."""
    try:
        with _CACHE_LOCK:
            if tokenizer in _CACHE:
                return _CACHE[tokenizer]
    except TypeError:  # not weak-referenceable: compute every time
        pass
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    yes, no = [], []
    letters: dict[str, list[int]] = {letter: [] for letter in LETTERS}
    # Only entries that could match are decoded (the raw vocabulary spells spaces and bytes its own
    # way, e.g. byte-level "ĊYes" is a newline and Yes), in one batch.
    candidates = sorted(
        token_id for raw, token_id in tokenizer.get_vocab().items() if token_id not in special and _could_match(raw)
    )
    texts = tokenizer.batch_decode([[i] for i in candidates], skip_special_tokens=False)
    for token_id, text in zip(candidates, texts):
        text = text.strip()
        word = _WORD_RE.match(text)
        if word and word.group(1).lower() in YES_WORDS:
            yes.append(token_id)
        elif word and word.group(1).lower() in NO_WORDS:
            no.append(token_id)
        letter = _LETTER_RE.match(text)
        if letter:
            letters[letter.group(1)].append(token_id)
    result = AnswerTokens(tuple(sorted(yes)), tuple(sorted(no)), {k: tuple(sorted(v)) for k, v in letters.items()})
    try:
        with _CACHE_LOCK:
            _CACHE[tokenizer] = result
    except TypeError:
        pass
    return result


def readout(
    probs: Any, variant: Optional[PromptVariant], tokens: AnswerTokens
) -> tuple[Optional[float], dict[str, float]]:
    """(p_positive, raw probabilities) from one row of next-token probabilities (a 1-D tensor or
    sequence summing to 1). p_positive is None for prompts without a polarity, or when neither
    answer set has any probability."""
    if variant is None or variant.kind != "closed":
        return None, {}

    def mass(ids: tuple[int, ...]) -> float:
        return float(sum(float(probs[i]) for i in ids)) if ids else 0.0

    if variant.is_multiple_choice:
        options = variant.option_map()
        raw = {f"p_{letter}": mass(tokens.letters.get(letter, ())) for letter in options}
        positive = sum(raw[f"p_{letter}"] for letter, (reading, _) in options.items() if reading == "positive")
        total = sum(raw.values())
    elif variant.yes_means in ("positive", "negative"):
        raw = {"p_yes": mass(tokens.yes), "p_no": mass(tokens.no)}
        positive = raw["p_yes"] if variant.yes_means == "positive" else raw["p_no"]
        total = raw["p_yes"] + raw["p_no"]
    else:
        return None, {}
    raw["answer_mass"] = total
    if total <= 0.0:
        return None, raw
    return min(1.0, max(0.0, positive / total)), raw


def readout_from_logits(
    logits: Any, variant: Optional[PromptVariant], tokens: AnswerTokens
) -> tuple[Optional[float], dict[str, float]]:
    """The same from one row of raw logits (softmax over the whole vocabulary first)."""
    import torch

    probs = torch.softmax(torch.as_tensor(logits).float(), dim=-1)
    return readout(probs, variant, tokens)


class FirstLogits:
    """Keeps the logits of the last position from the first forward call of a model (the
    prefill of generate(), whose last position predicts the first answer token) and nothing after.

    A forward hook rather than generate(output_scores=True): scores of every step would be kept
    (batch x vocabulary x steps; about 1 MB per row and step for Gemma's 262k vocabulary), and
    scores come after logits processors (min_new_tokens sets the end-of-text token to -inf).

        with FirstLogits(model) as first:
            model.generate(...)
        first.logits  # [batch, vocab] float32 on CPU, or None
    """

    def __init__(self, model: Any, enabled: bool = True):
        self.model = model
        self.enabled = enabled
        self.logits = None
        self._handle = None

    def _hook(self, module: Any, args: Any, output: Any) -> None:
        if self.logits is not None:
            return
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)) and output:
            logits = output[0]
        if logits is not None:
            self.logits = logits[:, -1, :].detach().float().cpu()

    def __enter__(self) -> "FirstLogits":
        if self.enabled:
            self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
