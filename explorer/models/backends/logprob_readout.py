"""The first-token readout from a server's logprobs (OpenAI chat `logprobs` / `top_logprobs`, which vLLM
serves too): the same p_positive the transformers backend reads from logits, over the top tokens the
server returns instead of the whole vocabulary.

A server names tokens by their text, not by id, so the top tokens become a tiny vocabulary of their
own, and readout.answer_tokens sorts them into yes-like, no-like and option letters as it does for a
real tokenizer.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from explorer.models.readout import answer_tokens, readout
from explorer.schema import PromptVariant

TOP_LOGPROBS = 20  # the most OpenAI's API returns per position


class _TopTokens:
    """The server's top tokens as a tokenizer: id i is the i-th token text."""

    all_special_ids: list[int] = []

    def __init__(self, texts: Sequence[str]):
        self.texts = list(texts)

    def get_vocab(self) -> dict[str, int]:
        return {text: i for i, text in enumerate(self.texts)}

    def batch_decode(self, ids: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.texts[i[0]] for i in ids]


def wants_logprobs(variant: Optional[PromptVariant]) -> bool:
    return variant is not None and variant.kind == "closed"


def first_top_logprobs(completion: Any) -> Optional[list[tuple[str, float]]]:
    """[(token text, logprob)] of the first answer position of a chat completion, or None."""
    try:
        content = completion.choices[0].logprobs.content
    except (AttributeError, IndexError, TypeError):
        return None
    if not content:
        return None
    first = content[0]
    pairs = [(t.token, float(t.logprob)) for t in (getattr(first, "top_logprobs", None) or [])]
    return pairs or [(first.token, float(first.logprob))]


def readout_from_top(pairs: Sequence[tuple[str, float]], variant: PromptVariant) -> tuple[Optional[float], dict]:
    """(p_positive, raw) from (token text, logprob) pairs; tokens with the same text are summed."""
    merged: dict[str, float] = {}
    for text, logprob in pairs:
        merged[text] = merged.get(text, 0.0) + math.exp(logprob)
    vocab = _TopTokens(list(merged))
    p_positive, raw = readout([merged[t] for t in vocab.texts], variant, answer_tokens(vocab))
    if raw:
        raw["from"] = f"top-{len(merged)} logprobs"
    return p_positive, raw
