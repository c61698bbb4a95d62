"""Checks bench_speed.py runs on the engine's answers: an answer-length mix for random-weight models
(mix_answer_lengths) and the first-token logits of a batch against each prompt alone
(first_token_logit_gap)."""

from __future__ import annotations

import statistics
from dataclasses import replace


# ------------------------------------------------------------------ an answer-length mix
def mix_answer_lengths(backend, lm, requests, max_new_tokens: int, min_new_tokens: int = 0) -> list[int]:
    """Random weights never pick the end token, so every answer runs to the limit. Real answers to
    closed questions stop anywhere from a word to a paragraph. This picks up to three tokens the model
    itself chooses greedily at different steps of different rows and makes them end tokens too (in
    the model's generation_config, which the study's loop and the engine both read), so rows stop at
    different lengths, decided by the model's own greedy choices (no earlier than min_new_tokens,
    before which generate() does not let an answer end). Returns the tokens added."""
    steps: list = []
    handle = lm.model.register_forward_hook(lambda mod, args, out: steps.append(out.logits[:, -1].argmax(-1).tolist()))
    try:
        backend.forget_reused()
        backend.generate(requests)
    finally:
        handle.remove()
    picked = [row for row in steps if len(row) == len(requests)][-max_new_tokens:]
    first: dict[int, list[int]] = {}  # token -> per row, the first step it is picked (limit if never)
    for step, row_tokens in enumerate(picked):
        if step + 1 <= min_new_tokens:
            continue
        for row, token in enumerate(row_tokens):
            first.setdefault(token, [max_new_tokens] * len(requests))
            first[token][row] = min(first[token][row], step + 1)
    chosen: list[int] = []
    lengths = [max_new_tokens] * len(requests)
    for _ in range(3):

        def spread(token):  # most distinct lengths first, then the widest spread
            mixed = [min(a, b) for a, b in zip(lengths, first[token])]
            return (len(set(mixed)), statistics.pstdev(mixed)) if len(set(mixed)) > 1 else (0, -1.0)

        best = max((t for t in first if t not in chosen), key=spread, default=None)
        if best is None or spread(best)[0] == 0:
            break
        chosen.append(best)
        lengths = [min(a, b) for a, b in zip(lengths, first[best])]
        if statistics.median(lengths) < max_new_tokens:
            break
    eos = lm.model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
    lm.model.generation_config.eos_token_id = sorted(set(eos) | set(chosen))
    backend.forget_reused()
    return chosen


# ------------------------------------------------------------------ first-token logits
def first_token_logit_gap(backend, lm, requests) -> float:
    """Largest |difference| between the engine's first-step logits (the requests as one batch, the
    backend's reuse mode) and a plain forward pass over each prompt alone, which is the first step
    of the study's one-at-a-time call."""
    import torch

    first = [replace(r, generation=replace(r.generation, max_new_tokens=1, min_new_tokens=0)) for r in requests]
    seen: list = []
    handle = lm.model.register_forward_hook(lambda mod, args, out: seen.append(out.logits[:, -1].float().cpu()))
    try:
        backend.forget_reused()
        backend.generate(first)
    finally:
        handle.remove()
    batch = next(x for x in seen if x.shape[0] == len(first))
    gap = 0.0
    for row, req in enumerate(first):
        text = backend.prompt_text(lm, req)
        inputs = lm.processor(text=[text], images=[[req.images()[0]]], return_tensors="pt")
        inputs = inputs.to(lm.model.device, dtype=lm.model.dtype)
        with torch.inference_mode():
            alone = lm.model(**inputs).logits[0, -1].float().cpu()
        gap = max(gap, float((alone - batch[row]).abs().max()))
    backend.forget_reused()
    return gap
