"""Decoding against one copy of each image's prefix (shared-prefix, or "cascade", attention).

With prefix reuse the 12 prompts about one image share the image's 576-2,900 prefix positions, but
a plain cache still holds a copy of them in every row, and every decoding step reads all 12 copies:
with LLaVA-1.6 7B that is about 5.7 GB of keys and values per step at 12 rows (the weights are
14 GB), and as much memory again before the first token. Here the cache keeps each distinct prefix
once and only the rows' own tokens per row; an attention function registered with transformers'
AttentionInterface scores each row's queries against its prefix (all rows of one image in one
matrix product) and against its own tokens, and takes one softmax over both, as eager attention
does over the whole row. The answers are those of a plain left-padded batch up to floating-point
order, which tests/test_speed_paths.py checks token for token.

Cache index layout: [prefix region, as wide as the longest prefix][pads][own tokens][answer]. A
row with a shorter prefix has masked positions at the end of the region (they are never stored);
generate() derives positions from the attention mask, so every real token keeps the position it
has in a plain batch.

Only for models whose language model runs sdpa with full attention in every layer (the LLaVA
models). Sliding-window layers (Gemma 3) count distances in cache indices, which the prefix region
would change, so those models keep the plain layout.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Iterator, Optional, Sequence

import torch

ATTENTION_NAME = "explorer_shared_prefix"

# The cache of the generate() call running in this thread (generate() takes no extra keywords).
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("explorer_shared_prefix_cache", default=None)


@contextlib.contextmanager
def attending(cache: Any) -> Iterator[None]:
    """Within this block (in this thread) the attention function reads prefixes from `cache`;
    with cache=None it does nothing."""
    if cache is None:
        yield
        return
    token = _ACTIVE.set(cache)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@functools.lru_cache(maxsize=None)
def register() -> str:
    """Register the attention function (and sdpa's mask builder under the same name) once."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, shared_prefix_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def _text_config(model: Any) -> Any:
    return model.config.get_text_config(decoder=True)


def applicable(model: Any) -> bool:
    """The language model attends with sdpa (or already with this function) in every layer, fully."""
    cfg = _text_config(model)
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", ATTENTION_NAME):
        return False
    if getattr(cfg, "sliding_window", None) or any("sliding" in str(t) for t in getattr(cfg, "layer_types", ()) or ()):
        return False
    return getattr(model.generation_config, "cache_implementation", None) in (None, "dynamic")


def enable(model: Any) -> bool:
    """Switch the language model's attention to this module's function (which is plain sdpa for
    every call that does not carry a shared-prefix cache). True when it is in place."""
    if not applicable(model):
        return False
    cfg = _text_config(model)
    if cfg._attn_implementation == ATTENTION_NAME:
        return True
    register()
    sub = next((name for name in getattr(model.config, "sub_configs", {}) if getattr(model.config, name) is cfg), None)
    model.set_attn_implementation({sub: ATTENTION_NAME} if sub else ATTENTION_NAME)
    return _text_config(model)._attn_implementation == ATTENTION_NAME


# ---------------------------------------------------------------- the cache layer
@functools.lru_cache(maxsize=None)
def layer_class():
    """Defined on first use, so importing this module does not import transformers."""
    from .prefix_reuse import roomy_layer_class

    roomy = roomy_layer_class()

    class SharedPrefixLayer(roomy):
        """Each distinct prefix once ([1, kv_heads, length, head_dim]) and, per row, the row's own
        tokens and answer (a RoomyLayer: written into room kept free, grown geometrically). update()
        returns the rows' own part only; the attention function adds the prefixes."""

        def __init__(
            self, prefixes: Sequence[tuple[torch.Tensor, torch.Tensor]], groups: Sequence[int], width: int, room: int
        ):
            super().__init__(room)
            self.prefixes = list(prefixes)
            self.groups = list(groups)  # row -> index into prefixes
            self.width = int(width)  # the prefix region's width in cache indices
            self.rows_of: dict[int, list[int]] = {}
            for row, group in enumerate(self.groups):
                self.rows_of.setdefault(group, []).append(row)
            self._indices: dict[Any, torch.Tensor] = {}

        def row_index(self, group: int, device: Any) -> torch.Tensor:
            """The rows of one prefix as an index tensor, made once per device (not every step)."""
            key = (group, str(device))
            if key not in self._indices:
                self._indices[key] = torch.tensor(self.rows_of[group], device=device)
            return self._indices[key]

        def get_seq_length(self) -> int:
            return self.width + self.stored()

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            # The mask covers the stored part only; its indices start after the prefix region.
            return self.stored() + query_length, self.width

        def _unsupported(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError("a shared-prefix cache supports greedy and sampled decoding only")

        crop = batch_repeat_interleave = batch_select_indices = reorder_cache = offload = _unsupported

    return SharedPrefixLayer


def new_cache(
    model: Any,
    prefixes: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]],
    groups: Sequence[int],
    width: int,
    room: int,
):
    """A DynamicCache of SharedPrefixLayers. prefixes: per distinct prefix, its (keys, values) per layer."""
    from transformers import DynamicCache

    cache = DynamicCache(config=_text_config(model))
    shared = layer_class()
    cache.layers = [shared([p[i] for p in prefixes], groups, width, room) for i in range(len(cache.layers))]
    return cache


# ---------------------------------------------------------------- the attention function
def shared_prefix_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention over [the row's prefix][the row's own tokens], the prefix read once per image.

    query [batch, heads, q, dim]; key/value [batch, kv_heads, own, dim] (what the cache layer
    returned); attention_mask: sdpa's mask over the own part ([batch, 1, q, own], bool or additive)
    or None. Without a shared-prefix cache this is transformers' sdpa attention, unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cache = _ACTIVE.get()
    layer_idx = getattr(module, "layer_idx", None)
    layer = cache.layers[layer_idx] if cache is not None and layer_idx is not None else None
    if not isinstance(layer, layer_class()):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    rows_q = heads // kv_heads * q_len  # queries per key/value head and row
    scale = scaling if scaling is not None else dim**-0.5
    # Query heads grouped under their key/value head (head h reads key/value head h // rep).
    q = query.reshape(batch, kv_heads, rows_q, dim)
    # Scores against the rows' own tokens, masked as sdpa's mask says; the softmax runs in float32
    # (as eager attention's does), split in two parts joined by their maxima and sums.
    own_scores = torch.matmul(q, key.transpose(-1, -2)).float().mul_(scale)
    if attention_mask is not None:
        mask = attention_mask[:, :, None].expand(batch, attention_mask.shape[1], heads // kv_heads, q_len, -1)
        mask = mask.reshape(batch, attention_mask.shape[1], rows_q, -1)
        if mask.dtype == torch.bool:
            own_scores.masked_fill_(~mask, torch.finfo(torch.float32).min)
        else:
            own_scores.add_(mask)
    out = torch.empty_like(q) if len(layer.rows_of) > 1 else None
    for group, rows in layer.rows_of.items():
        p_keys, p_values = layer.prefixes[group]  # [1, kv_heads, length, dim]
        whole = len(rows) == batch
        index = None if whole else layer.row_index(group, query.device)
        qg = q if whole else q.index_select(0, index)
        n = len(rows)
        # Every query of the group against one copy of the prefix: [kv_heads, n * rows_q, length].
        flat = qg.permute(1, 0, 2, 3).reshape(kv_heads, n * rows_q, dim)
        prefix_scores = torch.matmul(flat, p_keys[0].transpose(-1, -2)).float().mul_(scale)
        p_max = prefix_scores.amax(-1, keepdim=True)
        prefix_scores.sub_(p_max).exp_()
        p_sum = prefix_scores.sum(-1, keepdim=True)
        from_prefix = torch.matmul(prefix_scores.to(p_values.dtype), p_values[0])
        # Back to [n, kv_heads, rows_q, ...].
        from_prefix, p_max, p_sum = (
            t.reshape(kv_heads, n, rows_q, -1).transpose(0, 1) for t in (from_prefix, p_max, p_sum)
        )
        scores = own_scores if whole else own_scores.index_select(0, index)
        top = torch.maximum(p_max, scores.amax(-1, keepdim=True))
        scores = (scores - top).exp_()
        prefix_share = (p_max - top).exp_()
        total = p_sum * prefix_share + scores.sum(-1, keepdim=True)
        values = value if whole else value.index_select(0, index)
        from_own = torch.matmul(scores.to(values.dtype), values)
        part = ((from_prefix.float() * prefix_share + from_own.float()) / total).to(query.dtype)
        if out is None:
            out = part
        else:
            out.index_copy_(0, index, part)
    # [batch, q, heads, dim], as transformers' attention functions return it.
    return out.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None
