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
# PyTorch's fused CPU attention kernel returns the log-sum-exp that joining two parts needs; it is an
# internal op, so it is used where it answers and replaced by the same math in plain ops where not.
_FUSED_CPU: dict[str, bool] = {"usable": True}


def _attend(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(query . keys * scale + bias) . values, and the log-sum-exp of each query's scores.
    query [n, h, q, d], keys/values [n or 1, h, k, d], bias broadcastable to [n, h, q, k] or None."""
    if query.device.type == "cpu" and _FUSED_CPU["usable"]:
        fused = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        try:
            if fused is not None:
                if keys.shape[0] != query.shape[0]:
                    keys, values = keys.expand(query.shape[0], -1, -1, -1), values.expand(query.shape[0], -1, -1, -1)
                out, lse = fused(query, keys, values, attn_mask=bias, scale=scale)
                return out, lse
        except (RuntimeError, TypeError):
            pass
        _FUSED_CPU["usable"] = False
    scores = torch.matmul(query, keys.transpose(-1, -2)).float().mul_(scale)
    if bias is not None:
        scores.add_(bias)
    lse = torch.logsumexp(scores, dim=-1)
    weights = scores.sub_(lse.unsqueeze(-1)).exp_().to(values.dtype)
    return torch.matmul(weights, values), lse


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
    bias = None
    if attention_mask is not None:  # sdpa's mask over the own part, as an additive one per query row
        mask = attention_mask[:, :, None].expand(batch, attention_mask.shape[1], heads // kv_heads, q_len, -1)
        mask = mask.reshape(batch, attention_mask.shape[1], rows_q, -1)
        bias = (
            mask
            if mask.dtype != torch.bool
            else torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, float("-inf"))
        )
    own_out, own_lse = _attend(q, key, value, bias, scale)  # [batch, kv_heads, rows_q, dim], [..., rows_q]
    out = torch.empty(batch, kv_heads, rows_q, dim, dtype=query.dtype, device=query.device)
    for group, rows in layer.rows_of.items():
        p_keys, p_values = layer.prefixes[group]  # [1, kv_heads, length, dim]
        whole = len(rows) == batch
        index = None if whole else layer.row_index(group, query.device)
        n = len(rows)
        qg = q if whole else q.index_select(0, index)
        # Every query of the group against one copy of the prefix: [1, kv_heads, n * rows_q, dim].
        flat = qg.transpose(0, 1).reshape(1, kv_heads, n * rows_q, dim)
        p_out, p_lse = _attend(flat, p_keys, p_values, None, scale)
        p_out = p_out.reshape(kv_heads, n, rows_q, dim).transpose(0, 1)
        p_lse = p_lse.reshape(kv_heads, n, rows_q).transpose(0, 1)
        o_out = own_out if whole else own_out.index_select(0, index)
        o_lse = own_lse if whole else own_lse.index_select(0, index)
        # One softmax over both parts: each part's output weighted by its share of the total mass.
        share = torch.sigmoid(p_lse.float() - o_lse.float()).unsqueeze(-1)
        part = torch.lerp(o_out.float(), p_out.float(), share).to(query.dtype)
        if whole:
            out = part
        else:
            out.index_copy_(0, index, part)
    # [batch, q, heads, dim], as transformers' attention functions return it.
    return out.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None
