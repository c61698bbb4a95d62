"""Reusing an image's work across the prompts asked about it.

The study asks 12 prompts about every image. In all three prompt formats everything up to the end
of the image's tokens is the same for every prompt ("<s>USER: <image>...", "<s>[INST] <image>...",
Gemma's "<bos><start_of_turn>user\n\n\n<start_of_image><image_soft_token>..."), so the expensive
part of a request - the vision tower, the projector and the 576-2,900 image positions of the
language model - is the same for all 12. Two ways to share it, both exact up to floating-point order:

* features: run the vision tower + projector once per image and hand the features to generate
  (transformers' `mm_encoder_outputs`); the language model still reads every prompt whole.
* prefix: also run the language model once over that prefix and keep its KV cache; extend it with
  each prompt's own tokens (the template text after the image included) in one batched pass, then
  generate from that cache. Because the prefix stops at the image, the same cached prefix also
  serves any later prompt about the image (ImageMemo keeps a few across calls).

The extended cache is laid out exactly as a left-padded batch generated from scratch would be
(pads first, then the row's tokens), so positions, masks and sliding-window distances are the
ones one-at-a-time generation sees. Works for one image per request; anything else goes the plain way.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

# Keys of a processor's output that are per-token, not per-image.
_TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")


class ReuseNotApplicable(Exception):
    """This batch cannot share a prefix (an image after the text, a prompt longer than a sliding
    window, a static cache...); the caller falls back to a simpler path."""


# ---------------------------------------------------------------- processing each image once
class _OncePerImage:
    """Stands in for a processor's image processor: processes each distinct image object once and
    hands back the per-row outputs by indexing, so 12 prompts about one image cost one resize/tile.

    Only for batches with exactly one image per sample; everything else is passed through.
    """

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        flat = _one_image_per_sample(images)
        if flat is None:
            return self._inner(images, *args, **kwargs)
        unique: dict[int, int] = {}
        order = [unique.setdefault(id(img), len(unique)) for img in flat]
        if len(unique) == len(flat):
            return self._inner(images, *args, **kwargs)
        firsts = list({id(img): img for img in flat}.values())
        nested = isinstance(images[0], (list, tuple))
        out = self._inner([[img] for img in firsts] if nested else firsts, *args, **kwargs)
        for key in list(out.keys()):
            out[key] = _take_rows(out[key], order, len(firsts))
        return out


def _one_image_per_sample(images: Any) -> Optional[list]:
    if not isinstance(images, (list, tuple)) or not images:
        return None
    if all(isinstance(s, (list, tuple)) for s in images):
        return [s[0] for s in images] if all(len(s) == 1 for s in images) else None
    if any(isinstance(s, (list, tuple)) for s in images):
        return None
    return list(images)


def _take_rows(value: Any, order: list[int], n_unique: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == n_unique:
        if n_unique == 1:  # one image for every row: a view, not 12 copies of the pixels
            return value.expand(len(order), *value.shape[1:])
        return value[torch.tensor(order)]
    if hasattr(value, "shape") and hasattr(value, "take") and len(value) == n_unique:  # numpy
        return value.take(order, axis=0)
    if isinstance(value, (list, tuple)) and len(value) == n_unique:
        return type(value)(value[i] for i in order)
    raise ReuseNotApplicable(f"cannot share an image processor output of type {type(value).__name__}")


class TokenMemo:
    """Remembers a tokenizer's output for a batch of texts. The processor expands each image into its
    576-2,900 image tokens before tokenizing, so the 12 prompts about every image of one size are the
    same 12 long texts; tokenizing them again for each image costs LLaVA-1.6 about as much as a
    prompt's whole image processing. A few batches are kept (least recently used dropped)."""

    def __init__(self, size: int = 8):
        self.size = size
        self._kept: "OrderedDict[Any, Any]" = OrderedDict()

    def __call__(self, tokenizer: Any, text: Any, kwargs: dict) -> Any:
        if not isinstance(text, (list, tuple)) or not all(isinstance(t, str) for t in text):
            return tokenizer(text, **kwargs)
        key = (id(tokenizer), tuple(text), repr(sorted(kwargs.items())))
        found = self._kept.get(key)
        if found is None:
            found = self._kept[key] = tokenizer(text, **kwargs)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        # A fresh container with fresh tensors: the caller may change what it gets back.
        return type(found)(
            {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v) for k, v in found.items()}
        )


class _MemoTokenizer:
    """Stands in for a processor's tokenizer: calls with a batch of texts go through a TokenMemo."""

    def __init__(self, inner: Any, memo: TokenMemo):
        self._inner, self._memo = inner, memo

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, text: Any = None, *args: Any, **kwargs: Any) -> Any:
        if args:
            return self._inner(text, *args, **kwargs)
        return self._memo(self._inner, text, kwargs)


def encode_once_per_image(
    processor: Any, texts: Sequence[str], images: Sequence[Any], token_memo: Optional[TokenMemo] = None
) -> Any:
    """processor(text=texts, images=[[image] per text], padding=True) with each distinct image
    object resized/tiled once, and the texts' tokens taken from token_memo when it has them. Same
    output as the plain call."""
    shared = copy.copy(processor)  # a shallow copy, so the loaded processor itself is never changed
    shared.image_processor = _OncePerImage(processor.image_processor)
    if token_memo is not None and getattr(processor, "tokenizer", None) is not None:
        shared.tokenizer = _MemoTokenizer(processor.tokenizer, token_memo)
    try:
        return shared(text=list(texts), images=[[img] for img in images], padding=True, return_tensors="pt")
    except ReuseNotApplicable:
        return processor(text=list(texts), images=[[img] for img in images], padding=True, return_tensors="pt")


# ---------------------------------------------------------------- rows of a processed batch
@dataclass
class Rows:
    """A processed batch taken apart per row (without padding)."""

    ids: list[list[int]]  # each row's token ids
    token_types: Optional[list[list[int]]]  # Gemma 3: 1 on image tokens (bidirectional attention)
    image_inputs: list[dict[str, Any]]  # per row: pixel_values, image_sizes... as a one-row batch
    image_mask_ids: frozenset[int]  # token ids that stand for image features


def split_rows(inputs: Any, image_token_ids: Sequence[int]) -> Rows:
    mask = inputs["attention_mask"].bool()
    ids = [row[m].tolist() for row, m in zip(inputs["input_ids"], mask)]
    types = None
    for key in ("token_type_ids", "mm_token_type_ids"):
        if key in inputs:
            types = [row[m].tolist() for row, m in zip(inputs[key], mask)]
            break
    per_image = {k: v for k, v in inputs.items() if k not in _TOKEN_KEYS}
    image_inputs = [
        {k: v[row : row + 1] for k, v in per_image.items() if isinstance(v, (torch.Tensor, list, tuple))}
        for row in range(len(ids))
    ]
    return Rows(ids, types, image_inputs, frozenset(int(t) for t in image_token_ids if t is not None))


def encode_rows(
    processor: Any,
    texts: Sequence[str],
    images: Sequence[Any],
    image_token_ids: Sequence[int],
    token_memo: Optional[TokenMemo] = None,
) -> Rows:
    """The rows of encode_once_per_image, processed one distinct image at a time: the rows of an image
    then hold views of its one processed copy, where one call over several images would copy the
    pixels into every row (36 rows of 896x896 pixels: a third of a GB, and as long to copy as the
    vision tower takes). Rows come back in the order asked."""
    groups: dict[int, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(id(image), []).append(index)
    placed: list[Any] = [None] * len(texts)  # row -> (the Rows of its image, its row there)
    for indexes in groups.values():
        part = split_rows(
            encode_once_per_image(processor, [texts[i] for i in indexes], [images[i] for i in indexes], token_memo),
            image_token_ids,
        )
        for local, index in enumerate(indexes):
            placed[index] = (part, local)
    first = placed[0][0]
    return Rows(
        [part.ids[local] for part, local in placed],
        None if first.token_types is None else [part.token_types[local] for part, local in placed],
        [part.image_inputs[local] for part, local in placed],
        first.image_mask_ids,
    )


def image_span_end(rows: Rows, row: int) -> int:
    """One past the last position that holds image features in this row (0 when none)."""
    last = 0
    types = rows.token_types[row] if rows.token_types is not None else None
    for pos, tok in enumerate(rows.ids[row]):
        if tok in rows.image_mask_ids or (types is not None and types[pos]):
            last = pos + 1
    return last


def image_inputs_of_row(rows: Rows, row: int) -> dict[str, Any]:
    return rows.image_inputs[row]


# ---------------------------------------------------------------- features path
def check_features_applicable(model: Any) -> None:
    """Raise ReuseNotApplicable where generate() takes no precomputed image features (transformers
    before 5.2x has no mm_encoder_outputs: it would reject the keyword and fail every request)."""
    if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
        raise ReuseNotApplicable("this transformers version takes no precomputed image features (mm_encoder_outputs)")


def image_features(model: Any, image_inputs: dict[str, Any]) -> Any:
    """The model's own get_image_features (vision tower + projector) for one image, as the
    forward pass would call it, returned as the BaseModelOutputWithPooling it passes on."""
    inner = getattr(model, "model", model)
    fn = inner.get_image_features
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in image_inputs.items() if k in params and k != "pixel_values"}
    if (
        "image_sizes" in params
        and "image_sizes" not in kwargs
        and params["image_sizes"].default is inspect.Parameter.empty
    ):
        raise ReuseNotApplicable("the image processor gave no image_sizes")
    pixel_values = image_inputs["pixel_values"].to(model.device, dtype=model.dtype)
    if "image_sizes" in kwargs and isinstance(kwargs["image_sizes"], torch.Tensor):
        kwargs["image_sizes"] = kwargs["image_sizes"].to(model.device)
    return fn(pixel_values=pixel_values, return_dict=True, **kwargs)


def features_for_rows(per_image_outputs: Sequence[Any]) -> Any:
    """One image-feature output per row (the same object for rows that share an image), joined
    the way the model's forward reads them: a list of per-image tensors, or a batch tensor."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    pooled = [out.pooler_output for out in per_image_outputs]
    if all(isinstance(p, (list, tuple)) for p in pooled):
        joined: Any = [t for p in pooled for t in p]
    elif all(isinstance(p, torch.Tensor) for p in pooled):
        joined = torch.cat(pooled, dim=0)
    else:
        raise ReuseNotApplicable("unexpected image feature type")
    return BaseModelOutputWithPooling(pooler_output=joined)


# ---------------------------------------------------------------- prefix path
@dataclass
class Prefix:
    """The KV cache of one image's shared prefix (batch of one), kept per layer."""

    ids: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values), each [1, heads, len, head_dim]

    @property
    def length(self) -> int:
        return len(self.ids)


def _text_config(model: Any) -> Any:
    return model.config.get_text_config(decoder=True)


def sliding_window(model: Any) -> Optional[int]:
    cfg = _text_config(model)
    window = getattr(cfg, "sliding_window", None)
    layer_types = getattr(cfg, "layer_types", None)
    if window and (layer_types is None or any("sliding" in str(t) for t in layer_types)):
        return int(window)
    return None


# The transformers releases this module was run against (its tests and bench/bench_speed.py). Outside
# them prefix reuse still runs, through the same public calls, but says so once (see version_note).
TESTED_TRANSFORMERS = ("5.17", "5.25")


def version_note() -> Optional[str]:
    """A warning when the installed transformers is not one prefix reuse was tested on, else None."""
    import transformers

    version = transformers.__version__
    if any(version == t or version.startswith(t + ".") for t in TESTED_TRANSFORMERS):
        return None
    return (
        f"prefix reuse was tested on transformers {', '.join(TESTED_TRANSFORMERS)}, this is {version}: "
        "answers are checked against plain generation by tests/test_speed_paths.py; run it"
    )


def cache_arg(model: Any) -> str:
    """The keyword a model's forward() takes its KV cache by: "cache" from transformers 5.2x (where
    "past_key_values" is deprecated, to be removed in 5.40), "past_key_values" before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output: Any) -> Any:
    """The KV cache of a forward() output, under either name."""
    found = getattr(output, "cache", None) if "cache" in getattr(output, "__dataclass_fields__", {}) else None
    return found if found is not None else output.past_key_values


def kv_cache_bytes(model: Any, rows: int, positions: int) -> int:
    """Bytes a KV cache of `rows` x `positions` takes in this model's dtype (every layer counted as
    full attention: an upper bound for Gemma 3's sliding-window layers)."""
    cfg = _text_config(model)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * int(positions) * int(rows) * itemsize


def initial_room(max_new_tokens: int, width: int) -> int:
    """Positions kept free after a batch's prompts before decoding starts: what the batch can reach
    (max_new_tokens + 1) when that is small, else an eighth of the prompt width (at least 64). The
    cache then grows by an eighth at a time (RoomyLayer), a handful of copies for a 2,048-token answer,
    instead of reserving 2,049 positions in every row up front (7.6 GB for 12 rows of LLaVA-1.6 7B)."""
    return min(int(max_new_tokens) + 1, max(64, int(width) // 8))


def positions_at_limit(own: int, max_new_tokens: int, room: int) -> int:
    """The positions a row's storage may hold once its answer reaches max_new_tokens: its own tokens
    and answer, grown an eighth at a time past what was needed (RoomyLayer), plus the first room."""
    return (int(own) + int(max_new_tokens)) * 9 // 8 + int(room)


@functools.lru_cache(maxsize=None)
def roomy_layer_class():
    """Defined on first use, so importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        """A full-attention cache layer that writes each new position into room kept free at its
        end, where DynamicLayer concatenates the whole cache into a new tensor at every token: with
        12 rows of 2,900 image positions that copy costs more than the step's attention reads.
        The keys and values are the same; only where they are stored differs."""

        def __init__(self, room: int = 64):
            super().__init__()
            self.room = max(1, int(room))
            self._k: Optional[torch.Tensor] = None
            self._v: Optional[torch.Tensor] = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            have = self.stored()
            new = key_states.shape[-2]
            if self._k is None or have + new > self._k.shape[-2] or self._k.shape[0] != key_states.shape[0]:
                self._make_room(key_states, value_states, have, have + new + self.room)
            self._k[:, :, have : have + new] = key_states
            self._v[:, :, have : have + new] = value_states
            self.keys, self.values = self._k[:, :, : have + new], self._v[:, :, : have + new]
            self.room = max(self.room, (have + new) // 8)  # later growth is geometric
            return self.keys, self.values

        def stored(self) -> int:
            """Positions held in this layer's own storage."""
            if not self.is_initialized or self.keys is None or self.keys.numel() == 0:
                return 0
            return int(self.keys.shape[-2])

        def adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
            """Take buffers whose first `length` positions are already filled (with room after
            them) as this layer's storage, instead of copying them in through update()."""
            if not self.is_initialized:
                self.lazy_initialization(keys, values)
            self._k, self._v = keys, values
            self.keys, self.values = keys[:, :, :length], values[:, :, :length]
            self.room = max(self.room, length // 8)

        def _make_room(self, key_states, value_states, have: int, capacity: int) -> None:
            k = key_states.new_empty(*key_states.shape[:2], capacity, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:2], capacity, value_states.shape[-1])
            if have:
                k[:, :, :have] = self.keys
                v[:, :, :have] = self.values
            self._k, self._v = k, v

        # Anything that rewrites the stored tensors hands them back to the plain layer's logic.
        def _forget_room(self) -> None:
            self._k = self._v = None

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            self._forget_room()

        def batch_repeat_interleave(self, repeats: int) -> None:
            super().batch_repeat_interleave(repeats)
            self._forget_room()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            super().batch_select_indices(indices)
            self._forget_room()

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            super().reorder_cache(beam_idx)
            self._forget_room()

        def reset(self) -> None:
            super().reset()
            self._forget_room()

        def offload(self):
            super().offload()
            self._forget_room()

    return RoomyLayer


def _new_cache(model: Any, layers: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None, room: int = 0):
    """A DynamicCache with the layer types (full / sliding window) generate() would create for this
    model, filled with `layers`. room > 0: full-attention layers keep room for that many more
    positions (see RoomyLayer)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=_text_config(model))
    if room:
        roomy = roomy_layer_class()
        cache.layers = [roomy(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    for layer, (k, v) in zip(cache.layers, layers or []):
        layer.update(k, v)
    return cache


def _cache_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for layer in cache.layers:
        if layer.keys is None or not layer.is_initialized:
            raise ReuseNotApplicable("a cache layer without keys (shared KV layers are not supported)")
        out.append((layer.keys, layer.values))
    return out


def check_prefix_applicable(model: Any, pass_width: int) -> None:
    """Raise ReuseNotApplicable where a prefix cache cannot be reused exactly.

    pass_width: positions of the batched pass that extends the prefixes (longest prefix + longest
    own tokens). A sliding-window layer keeps only its last window-1 positions, and inside that
    pass the padding between prefix and own tokens counts toward the window's distance; within
    window-1 positions nothing is cut and no distance reaches the window, so the result is exact.
    """
    if getattr(model.generation_config, "cache_implementation", None) not in (None, "dynamic", "hybrid"):
        raise ReuseNotApplicable(f"cache_implementation={model.generation_config.cache_implementation}")
    window = sliding_window(model)
    if window is not None and pass_width > window - 1:
        raise ReuseNotApplicable(f"a pass of {pass_width} positions exceeds the sliding window ({window})")


def prefill_prefix(model: Any, ids: Sequence[int], token_types: Optional[Sequence[int]], image_inputs: dict) -> Prefix:
    """Run the vision tower and the language model over one shared prefix (batch of one)."""
    device = model.device
    input_ids = torch.tensor([list(ids)], device=device)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "position_ids": torch.arange(len(ids), device=device)[None],
        cache_arg(model): _new_cache(model),
        "use_cache": True,
        "logits_to_keep": 1,
    }
    if token_types is not None:  # Gemma 3: image tokens attend to each other both ways
        kwargs["token_type_ids"] = torch.tensor([list(token_types)], device=device)
    for key, value in image_inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=model.dtype) if value.is_floating_point() else value.to(device)
        kwargs[key] = value
    out = model(**kwargs)
    return Prefix(tuple(ids), _cache_layers(cache_of(out)))


def _pad_positions(t: torch.Tensor, length: int) -> torch.Tensor:
    """Zeros appended along the position axis up to `length`."""
    if t.shape[-2] >= length:
        return t
    return torch.cat([t, t.new_zeros(*t.shape[:-2], length - t.shape[-2], t.shape[-1])], dim=-2)


@dataclass
class PreparedBatch:
    """What generate() needs to continue a batch from its prefixes: the whole prompts, left
    padded, and a cache holding every prompt token but the last of each row, laid out the same way."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: Any


def continue_from_prefixes(
    model: Any,
    rows: Sequence[Sequence[int]],
    prefixes: Sequence[Prefix],
    pad_id: int,
    room: int = 0,
    shared: bool = False,
) -> PreparedBatch:
    """Extend each row's prefix with the row's own tokens (all but its last) in one pass, then lay
    the cache out as a left-padded batch: [pads][prefix][own tokens] per row, which is the layout
    (and the positions) that generating the same rows from scratch with left padding produces.

    The pass is packed where the attention implementation takes an explicit mask (sdpa, eager):
    one sequence holding each distinct prefix once and then every row's own tokens one row after
    another, with explicit positions and a mask that lets each token see exactly its row's prefix
    and its row's earlier tokens. Only then is the prefix copied into every row, once, straight
    into the generation cache. Otherwise the rows are extended side by side, each starting from
    its own copy of its prefix (see _extend_side_by_side). Either way every real token sees the
    keys it sees in a plain left-padded batch, in the same order; only masked positions differ.

    shared=True: the cache keeps each distinct prefix once and only the rows' own tokens per row
    (see shared_prefix.py); generate() must then run inside shared_prefix.attending(cache).
    """
    device = model.device
    batch = len(rows)
    p_len = [p.length for p in prefixes]
    own = [list(r[p.length : -1]) for r, p in zip(rows, prefixes)]  # the row's tokens before its last
    if _packed_pass_ok(model):
        # One packed pass per image: the rows of one image never attend to another image's prefix,
        # so passing several together would only add masked work (it grows with their product).
        parts = []
        for group in _rows_by_prefix(prefixes):
            layers, segments = _extend_packed(model, [own[i] for i in group], [prefixes[i] for i in group])
            parts.append(_Part(layers, segments, group))
    else:
        parts = [_Part(*_extend_side_by_side(model, own, prefixes, pad_id), list(range(batch)))]
    if shared:
        return _shared_layout(model, rows, prefixes, parts, pad_id, room)

    # Rearrange every row to [pads][prefix][own tokens], written straight into the generation
    # cache's storage, layer by layer, each source layer dropped once moved.
    width = max(n + len(s) for n, s in zip(p_len, own))
    cache = _new_cache(model, room=room)
    roomy = roomy_layer_class()
    for layer_idx, target in enumerate(cache.layers):
        extra = target.room if isinstance(target, roomy) else 0
        k_out, v_out = _place_parts(parts, layer_idx, batch, width, extra, lambda runs: runs)
        if extra:
            target.adopt(k_out, v_out, width)
        else:
            target.update(k_out, v_out)
        del k_out, v_out

    full = width + 1
    input_ids = torch.full((batch, full), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, full), dtype=torch.long)
    prefix_ids: dict[int, torch.Tensor] = {}
    for i, (r, p) in enumerate(zip(rows, prefixes)):
        if id(p) not in prefix_ids:
            prefix_ids[id(p)] = torch.tensor(p.ids, dtype=torch.long)
        pad = full - len(r)
        input_ids[i, pad : pad + p.length] = prefix_ids[id(p)]
        input_ids[i, pad + p.length :] = torch.tensor(list(r[p.length :]), dtype=torch.long)
        attention_mask[i, pad:] = 1
    return PreparedBatch(input_ids.to(device), attention_mask.to(device), cache)


def _shared_layout(
    model: Any,
    rows: Sequence[Sequence[int]],
    prefixes: Sequence[Prefix],
    parts: list["_Part"],
    pad_id: int,
    room: int,
) -> PreparedBatch:
    """The batch as [prefix region][pads][own tokens] per row, its cache holding each distinct
    prefix once (the Prefix's own tensors, not copied) and each row's own tokens right-aligned."""
    from . import shared_prefix

    groups_of: dict[int, int] = {}
    groups = [groups_of.setdefault(id(p), len(groups_of)) for p in prefixes]
    distinct = list({id(p): p for p in prefixes}.values())
    region = max(p.length for p in prefixes)
    own_width = max(runs[-1][1] for part in parts for runs in part.segments)
    # A query's position is its index in the own part plus this (row's prefix length, own tokens,
    # less the own part's width): what sliding-window layers measure distances from.
    offsets = [p.length + (len(r) - p.length - 1) - own_width for r, p in zip(rows, prefixes)]
    cache = shared_prefix.new_cache(model, [p.layers for p in distinct], groups, region, room, offsets)
    for layer_idx, target in enumerate(cache.layers):
        # Each row's own-token run only: the prefixes stay where they are.
        k_out, v_out = _place_parts(parts, layer_idx, len(rows), own_width, target.room, lambda runs: runs[-1:])
        target.adopt(k_out, v_out, own_width)
        del k_out, v_out

    full = region + own_width + 1
    input_ids = torch.full((len(rows), full), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), full), dtype=torch.long)
    for i, (r, p) in enumerate(zip(rows, prefixes)):
        input_ids[i, : p.length] = torch.tensor(p.ids, dtype=torch.long)
        attention_mask[i, : p.length] = 1
        tail = list(r[p.length :])  # own tokens and the last one
        input_ids[i, full - len(tail) :] = torch.tensor(tail, dtype=torch.long)
        attention_mask[i, full - len(tail) :] = 1
    return PreparedBatch(input_ids.to(model.device), attention_mask.to(model.device), cache)


Segments = list[list[tuple[int, int]]]  # per row: (start, length) runs of source positions, in order


@dataclass
class _Part:
    """The extended cache of some of a batch's rows: per layer (keys, values), where each of its
    rows' positions sit in them, and which rows of the batch they are."""

    layers: list
    segments: Segments
    rows: list[int]


def _rows_by_prefix(prefixes: Sequence[Prefix]) -> list[list[int]]:
    """Row indices grouped by the prefix they share, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prefixes):
        groups.setdefault(id(p), []).append(i)
    return list(groups.values())


def _place_parts(parts: list[_Part], layer_idx: int, batch: int, width: int, room: int, pick) -> tuple:
    """One layer's keys and values for the whole batch, each part's rows placed from its own
    source (pick: which of a row's runs to take); each part's source layer dropped once moved."""
    k_out = v_out = None
    for part in parts:
        k, v = part.layers[layer_idx]
        part.layers[layer_idx] = None
        if k_out is None:
            k_out = k.new_empty(batch, k.shape[1], width + room, k.shape[-1])
            v_out = v.new_empty(batch, v.shape[1], width + room, v.shape[-1])
        segments = [pick(runs) for runs in part.segments]
        index: dict[Any, torch.Tensor] = {}
        _place_rows(k, segments, width, room, index, out=k_out, rows=part.rows)
        _place_rows(v, segments, width, room, index, out=v_out, rows=part.rows)
        del k, v
    return k_out, v_out


def _place_rows(
    src: torch.Tensor,
    segments: Segments,
    width: int,
    room: int,
    index: dict,
    gather: Optional[bool] = None,
    out: Optional[torch.Tensor] = None,
    rows: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """[batch, heads, width (+ room), head_dim]: row i holds, right-aligned, the positions
    segments[i] names of src (batch 1: shared by all rows; else row i of src), the pads before
    them filled with finite values (the attention mask hides them). With out and rows given, the
    rows are written into out's rows[i] instead of a new tensor.

    On CPU one contiguous copy per run (several times faster than a gather there); elsewhere one
    gather per tensor (fewer kernel launches). The positions that are not pads get the same values."""
    batch = len(segments)
    heads, dim = src.shape[1], src.shape[-1]
    whole = out is None or rows is None or list(rows) == list(range(out.shape[0]))
    if out is None:
        out = src.new_empty(batch, heads, width + room, dim)
    targets = list(range(batch)) if rows is None else list(rows)
    if gather is None:
        gather = src.device.type != "cpu"
    if not gather:
        for i, runs in enumerate(segments):
            row = src[0 if src.shape[0] == 1 else i]
            t = targets[i]
            at = width - sum(n for _, n in runs)
            if at:
                out[t, :, :at].zero_()
            for start, n in runs:
                out[t, :, at : at + n] = row[:, start : start + n]
                at += n
        return out
    if not whole:  # a part of the batch: gather its rows, then put them in place
        placed = _place_rows(src, segments, width, 0, index, gather=True)
        out[torch.tensor(targets, device=out.device), :, :width] = placed[:, :, :width]
        return out
    key = (src.device, heads, dim)
    if key not in index:  # per-layer device and shape (a model split over GPUs)
        flat = torch.zeros((batch, width), dtype=torch.long)
        for i, runs in enumerate(segments):
            taken = torch.cat([torch.arange(start, start + n) for start, n in runs]) if runs else flat.new_zeros(0)
            flat[i, width - len(taken) :] = taken
        index[key] = flat.to(src.device)[:, None, :, None].expand(batch, heads, width, dim)
    torch.gather(src.expand(batch, *src.shape[1:]), 2, index[key], out=out[:, :, :width])  # pads: copies of position 0
    return out


def _packed_pass_ok(model: Any) -> bool:
    """The packed pass hands the model its own 4-D mask, which sdpa and eager attention read as given."""
    from .shared_prefix import ATTENTION_NAME  # sdpa itself for a pass without a shared-prefix cache

    return getattr(_text_config(model), "_attn_implementation", None) in ("sdpa", "eager", ATTENTION_NAME)


def _extend_packed(
    model: Any, own: Sequence[Sequence[int]], prefixes: Sequence[Prefix]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], Segments]:
    """All rows' own tokens in one sequence after the distinct prefixes (batch of one).

    Returns the extended cache's layers ([1, heads, positions, head_dim]) and, per row, where its
    prefix and own tokens sit in them, in order. No row gets a copy of a prefix here, so a pass over
    12 prompts about a 2,900-token image moves one prefix's keys, not twelve.
    """
    from transformers import DynamicCache

    device = model.device
    start: dict[int, int] = {}
    distinct: list[Prefix] = []
    prefix_len = 0
    for p in prefixes:
        if id(p) not in start:
            start[id(p)] = prefix_len
            distinct.append(p)
            prefix_len += p.length
    total = sum(len(s) for s in own)
    segments, offsets, at = [], [], prefix_len
    for p, s in zip(prefixes, own):
        segments.append([(start[id(p)], p.length), (at, len(s))])
        offsets.append(at)
        at += len(s)
    if len(distinct) == 1:
        layers = list(distinct[0].layers)
    else:
        layers = [
            (
                torch.cat([p.layers[i][0] for p in distinct], dim=-2),
                torch.cat([p.layers[i][1] for p in distinct], dim=-2),
            )
            for i in range(len(distinct[0].layers))
        ]
    if not total:
        return layers, segments

    # Plain full-attention layers (the pass must keep every position; the mask below says who sees
    # what, and no distance inside it reaches a sliding window, see check_prefix_applicable).
    cache = DynamicCache()  # plain layers, filled through the public update()
    for layer_idx, (k, v) in enumerate(layers):
        cache.update(k, v, layer_idx)
    del layers
    input_ids = torch.tensor([[t for s in own for t in s]], dtype=torch.long, device=device)
    positions = torch.tensor([[p.length + j for p, s in zip(prefixes, own) for j in range(len(s))]], device=device)
    allowed = torch.zeros((total, prefix_len + total), dtype=torch.bool)
    for p, s, at in zip(prefixes, own, offsets):
        q = slice(at - prefix_len, at - prefix_len + len(s))
        allowed[q, start[id(p)] : start[id(p)] + p.length] = True
        allowed[q, at : at + len(s)] = torch.ones((len(s), len(s)), dtype=torch.bool).tril()
    if _text_config(model)._attn_implementation == "eager":  # an additive mask
        mask = torch.zeros(allowed.shape, dtype=model.dtype).masked_fill(~allowed, torch.finfo(model.dtype).min)
    else:
        mask = allowed
    model(
        input_ids=input_ids,
        attention_mask=mask[None, None].to(device),
        position_ids=positions,
        **{cache_arg(model): cache},
        use_cache=True,
        logits_to_keep=1,
    )
    return _cache_layers(cache), segments


def _extend_side_by_side(
    model: Any, own: Sequence[Sequence[int]], prefixes: Sequence[Prefix], pad_id: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], Segments]:
    """Every row starts from its prefix, padded to the longest one (the mask hides the padding),
    and the rows' own tokens are appended side by side: [prefix][pads][own tokens][pads].

    Returns the extended layers ([batch, heads, positions, head_dim]) and, per row, where its
    prefix and own tokens sit in its row of them."""
    device = model.device
    batch = len(own)
    p_len = [p.length for p in prefixes]
    p_max = max(p_len)
    s_max = max(len(s) for s in own)
    # One image for all rows: expanded views, copied once into the cache.
    same = all(p is prefixes[0] for p in prefixes)
    extended = _new_cache(model)
    for layer_idx, target in enumerate(extended.layers):
        if same:
            k, v = prefixes[0].layers[layer_idx]
            k, v = k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])
        else:
            k = torch.cat([_pad_positions(p.layers[layer_idx][0], p_max) for p in prefixes], dim=0)
            v = torch.cat([_pad_positions(p.layers[layer_idx][1], p_max) for p in prefixes], dim=0)
        target.update(k, v)
        del k, v

    if s_max:
        suffix = torch.full((batch, s_max), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((batch, p_max + s_max), dtype=torch.long, device=device)
        for i, (s, n) in enumerate(zip(own, p_len)):
            suffix[i, : len(s)] = torch.tensor(s, dtype=torch.long, device=device)
            mask[i, :n] = 1
            mask[i, p_max : p_max + len(s)] = 1
        positions = torch.tensor(p_len, device=device)[:, None] + torch.arange(s_max, device=device)[None]
        model(
            input_ids=suffix,
            attention_mask=mask,
            position_ids=positions,
            **{cache_arg(model): extended},
            use_cache=True,
            logits_to_keep=1,
        )
    segments = [[(0, n), (p_max, len(s))] for n, s in zip(p_len, own)]
    return _cache_layers(extended), segments
