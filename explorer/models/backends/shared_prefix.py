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

For models whose language model runs sdpa. Sliding-window layers (Gemma 3) keep every position:
transformers' mask hides what lies outside the window among the rows' own tokens (whose cache
indices are as far apart as their positions), and the attention function hides prefix positions by
their true distance from each query.
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
    """The language model attends with sdpa (or already with this function), with a dynamic cache."""
    cfg = _text_config(model)
    if getattr(cfg, "_attn_implementation", None) not in ("sdpa", ATTENTION_NAME):
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
            self,
            prefixes: Sequence[tuple[torch.Tensor, torch.Tensor]],
            groups: Sequence[int],
            width: int,
            room: int,
            window: Optional[int] = None,
            offsets: Sequence[int] = (),
        ):
            super().__init__(room)
            self.prefixes = list(prefixes)
            self.groups = list(groups)  # row -> index into prefixes
            self.width = int(width)  # the prefix region's width in cache indices
            # A sliding-window layer keeps every position and hides, by position, what lies outside
            # the window (transformers' mask does it for the own part; the attention function for
            # the prefixes). offsets: per row, a query's position minus its index in the own part.
            self.sliding_window = int(window) if window else None
            self.is_sliding = self.sliding_window is not None
            self.offsets = list(offsets)
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

        def query_positions(self, q_len: int, device: Any) -> torch.Tensor:
            """[rows, q_len]: the positions of the queries just stored (the last q_len)."""
            key = ("offsets", str(device))
            if key not in self._indices:
                self._indices[key] = torch.tensor(self.offsets, device=device)
            first = self.stored() - q_len
            return self._indices[key][:, None] + torch.arange(first, first + q_len, device=device)[None]

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
    offsets: Sequence[int] = (),
):
    """A DynamicCache of SharedPrefixLayers, sliding where generate() would make a sliding layer.
    prefixes: per distinct prefix, its (keys, values) per layer; offsets: see SharedPrefixLayer."""
    from transformers import DynamicCache

    cache = DynamicCache(config=_text_config(model))
    shared = layer_class()
    cache.layers = [
        shared(
            [p[i] for p in prefixes],
            groups,
            width,
            room,
            window=getattr(layer, "sliding_window", None) if getattr(layer, "is_sliding", False) else None,
            offsets=offsets,
        )
        for i, layer in enumerate(cache.layers)
    ]
    return cache


# ---------------------------------------------------------------- the attention function
def _outside_window(
    layer: Any, rows: list[int], q_len: int, rep: int, length: int, query: torch.Tensor
) -> Optional[torch.Tensor]:
    """For a sliding-window layer, the additive mask that hides prefix positions a query's window
    no longer reaches (query position - key position >= window), as [1, 1, rows * rep * q_len,
    length]; None when every query still sees the whole prefix."""
    if layer.sliding_window is None:
        return None
    first_seen = layer.query_positions(q_len, query.device)[rows] - layer.sliding_window + 1  # [n, q_len]
    if int(first_seen.max()) <= 0:
        return None
    first_seen = first_seen[:, None, :].expand(-1, rep, -1).reshape(-1, 1)  # query rows in (row, rep, q) order
    hidden = torch.arange(length, device=query.device)[None] < first_seen
    return torch.zeros(hidden.shape, dtype=query.dtype, device=query.device).masked_fill_(hidden, float("-inf"))[
        None, None
    ]


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
                return _nothing_where_all_hidden(out, lse, bias)
        except (RuntimeError, TypeError):
            pass
        _FUSED_CPU["usable"] = False
    scores = torch.matmul(query, keys.transpose(-1, -2)).float().mul_(scale)
    if bias is not None:
        scores.add_(bias)
    lse = torch.logsumexp(scores, dim=-1)
    weights = scores.sub_(lse.unsqueeze(-1)).exp_().to(values.dtype)
    return _nothing_where_all_hidden(torch.matmul(weights, values), lse, bias)


def _nothing_where_all_hidden(
    out: torch.Tensor, lse: torch.Tensor, bias: Optional[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A query whose every key is hidden takes nothing from this part: output 0, log-sum-exp -inf
    (kernels leave NaN or an arbitrary average there)."""
    if bias is None:
        return out, lse
    hidden = torch.isneginf(bias).all(dim=-1).expand(lse.shape)
    if not bool(hidden.any()):
        return out, lse
    return out.masked_fill(hidden.unsqueeze(-1), 0.0), lse.masked_fill(hidden, float("-inf"))


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
        p_out, p_lse = _attend(
            flat,
            p_keys,
            p_values,
            _outside_window(layer, rows, q_len, heads // kv_heads, p_keys.shape[-2], query),
            scale,
        )
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
