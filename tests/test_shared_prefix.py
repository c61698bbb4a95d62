"""Shared-prefix decoding: each image's prefix kept once, read once per step for all its rows, with
the answers of a cache that copies it into every row."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from explorer.catalog.presets import load_catalog
from explorer.models.backends import shared_prefix
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.prompts.variants import closed_variants
from explorer.schema import GenerationSettings, ImagePart, Request


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


IMAGES = (_image(90, 60, 20), _image(56, 112, 21))  # AnyRes: prefixes of different lengths


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def backends(catalog, tmp_path_factory):
    cache = tmp_path_factory.mktemp("demo-cache")
    shared = TransformersBackend(catalog, demo_cache_dir=cache, shared_prefix=True)
    copies = TransformersBackend(catalog, demo_cache_dir=cache, shared_prefix=False)
    plain = TransformersBackend(catalog, demo_cache_dir=cache, reuse="none")
    copies.models = plain.models = shared.models  # one copy of the weights
    yield SimpleNamespace(shared=shared, copies=copies, plain=plain)
    shared.close()


def _requests(catalog, alias, variants, images, gen):
    fmt = catalog.model(alias).prompt_format("paper")
    return [
        Request(
            model=alias,
            generation=gen,
            prompt_format=fmt,
            readout=v,
            messages=({"role": "user", "content": (ImagePart(im, f"img{id(im)}"), v.text)},),
        )
        for im in images
        for v in variants
    ]


# ------------------------------------------------------------------ the attention function
def _reference(query, keys, values, mask, scale):
    """Eager attention over whole rows (GQA by repeating the key/value heads)."""
    rep = query.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(rep, 1), values.repeat_interleave(rep, 1)
    scores = (query @ keys.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return (torch.softmax(scores, -1) @ values).transpose(1, 2)


@pytest.mark.parametrize("window", [None, 6, 9], ids=["full", "window-6", "window-9"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "plain-ops"])
@pytest.mark.parametrize("q_len", [1, 3])
def test_attention_equals_attention_over_whole_rows(q_len, fused, window, monkeypatch):
    """Two images (prefixes of 7 and 4 positions) over five rows in mixed order, rows with padding
    among their own tokens, grouped query heads, full or sliding-window attention (a window of 6
    leaves some queries nothing of their prefix): the same output as attending to each row's
    prefix and own tokens laid out in one sequence."""
    monkeypatch.setitem(shared_prefix._FUSED_CPU, "usable", fused)
    torch.manual_seed(0)
    heads, kv_heads, dim, own = 4, 2, 8, 6
    prefixes = [(torch.randn(1, kv_heads, n, dim), torch.randn(1, kv_heads, n, dim)) for n in (7, 4)]
    groups = [0, 1, 0, 0, 1]
    batch = len(groups)
    pads = [0, 2, 0, 1, 0]  # before rows 1 and 3's own tokens
    lengths = [prefixes[g][0].shape[2] for g in groups]
    offsets = [n - pad for n, pad in zip(lengths, pads)]  # a position minus its own-part index
    layer = shared_prefix.layer_class()(prefixes, groups, width=7, room=2, window=window, offsets=offsets)
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    query = torch.randn(batch, heads, q_len, dim)
    keys, values = torch.randn(batch, kv_heads, own, dim), torch.randn(batch, kv_heads, own, dim)
    layer.adopt(keys, values, own)
    mask = torch.ones(batch, 1, q_len, own, dtype=torch.bool)
    for row, pad in enumerate(pads):
        mask[row, ..., :pad] = False
    mask[..., own - q_len :] &= torch.ones(q_len, q_len, dtype=torch.bool).tril()  # causal among the new ones
    if window:  # what transformers' sliding mask hides among the own tokens (indices = positions there)
        q_index = torch.arange(own - q_len, own)[:, None]
        mask &= (q_index - torch.arange(own)[None]) < window
    with shared_prefix.attending(SimpleNamespace(layers=[layer])):
        out, _ = shared_prefix.shared_prefix_attention(module, query, keys, values, mask, scaling=dim**-0.5)
    for row, group in enumerate(groups):
        p_keys, p_values = prefixes[group]
        whole_k = torch.cat([p_keys, keys[row : row + 1]], dim=2)
        whole_v = torch.cat([p_values, values[row : row + 1]], dim=2)
        seen = torch.ones(1, 1, q_len, p_keys.shape[2], dtype=torch.bool)
        if window:
            q_pos = offsets[row] + torch.arange(own - q_len, own)[:, None]
            seen &= (q_pos - torch.arange(p_keys.shape[2])[None]) < window
        whole_mask = torch.cat([seen, mask[row : row + 1]], -1)
        expected = _reference(query[row : row + 1], whole_k, whole_v, whole_mask, dim**-0.5)
        torch.testing.assert_close(out[row : row + 1], expected, atol=1e-5, rtol=1e-5)


def test_without_a_shared_cache_the_function_is_sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(1)
    module = SimpleNamespace(layer_idx=0, num_key_value_groups=2, is_causal=True, training=False)
    query, keys, values = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    ours, _ = shared_prefix.shared_prefix_attention(module, query, keys, values, None, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, query, keys, values, None, scaling=0.3)
    assert torch.equal(ours, theirs)


# ------------------------------------------------------------------ through the backend
def test_shared_prefix_answers_like_copies_and_like_one_at_a_time(backends, catalog):
    """Two images of different prefix lengths in one batch, answers long enough that the rows'
    storage grows past its first room: the same tokens as the per-row copies and as one request at
    a time, the same first-token readout, and the prefix held once."""
    variants = closed_variants(catalog, "pneumonia")[:5]
    gen = GenerationSettings(max_new_tokens=72, min_new_tokens=72)  # past the 64 positions of first room
    requests = _requests(catalog, "demo-llava", variants, IMAGES, gen)
    shared = backends.shared.generate(requests)
    copies = backends.copies.generate(requests)
    assert {r.extra["kv_layout"] for r in shared} == {"shared prefix"}
    assert {r.extra["kv_layout"] for r in copies} == {"copy per row"}
    assert [r.text for r in shared] == [r.text for r in copies]
    assert [r.output_tokens for r in shared] == [72] * len(requests)
    for a, b in zip(shared, copies):
        assert a.p_positive == pytest.approx(b.p_positive, abs=1e-5)
    single = [backends.plain.generate([r])[0].text for r in requests[:2] + requests[-2:]]
    assert single == [r.text for r in shared[:2] + shared[-2:]]
    # The shared cache allocates room for the rows' own tokens only, not 10 copies of two prefixes
    # (the shorter of which is over half the longer).
    from explorer.models.backends.prefix_reuse import kv_cache_bytes

    per_row_position = kv_cache_bytes(backends.shared.load("demo-llava").model, 1, 1)
    saved = copies[0].extra["kv_estimate_bytes"] - shared[0].extra["kv_estimate_bytes"]
    assert saved >= per_row_position * len(requests) * shared[0].extra["prefix_tokens"] // 2


def test_shared_prefix_streams_and_is_kept_for_sharing_rows_only(backends, catalog):
    variants = closed_variants(catalog, "pneumonia")[:3]
    gen = GenerationSettings(max_new_tokens=5, min_new_tokens=2)
    one = _requests(catalog, "demo-llava-med", variants[:1], IMAGES[:1], gen)
    seen = []
    [streamed] = backends.shared.generate(one, on_text=lambda i, text: seen.append(text))
    assert streamed.extra["kv_layout"] == "copy per row"  # a lone row: plain sdpa is faster
    assert seen and streamed.text == backends.plain.generate(one)[0].text
    many = _requests(catalog, "demo-llava-med", variants, IMAGES[:1], gen)
    assert {r.extra["kv_layout"] for r in backends.shared.generate(many)} == {"shared prefix"}


def test_sliding_window_models_share_the_prefix_too(backends, catalog):
    """Gemma 3's sliding-window layers: one copy of the prefix, the same tokens and readout as the
    per-row copies (the past-the-window case is in test_speed_paths)."""
    variants = closed_variants(catalog, "pneumonia")[:4]
    gen = GenerationSettings(max_new_tokens=12, min_new_tokens=1)
    requests = _requests(catalog, "demo-gemma", variants, IMAGES, gen)
    shared = backends.shared.generate(requests)
    copies = backends.copies.generate(requests)
    assert {r.extra["kv_layout"] for r in shared} == {"shared prefix"}
    assert {r.extra["kv_layout"] for r in copies} == {"copy per row"}
    assert [r.text for r in shared] == [r.text for r in copies]
    for a, b in zip(shared, copies):
        assert a.p_positive == pytest.approx(b.p_positive, abs=1e-5)


def test_short_shared_prefixes_batch_several_images(catalog, backends):
    """With shared-prefix decoding a batch (and a sweep's unit) holds 3 images' prompts; the other
    reuse modes, exact mode and unknown models keep one image per batch."""
    shared = backends.shared
    for alias in ("demo-llava-med", "demo-llava", "demo-gemma"):
        assert shared.images_per_batch(alias) == 3
    assert shared.scheduling("demo-llava-med", 12)["batch"] == 36
    assert backends.copies.images_per_batch("demo-llava-med") == 1
    assert backends.plain.images_per_batch("demo-llava-med") == 1
    assert shared.images_per_batch("no-such-model") == 1
    exact = TransformersBackend(catalog, exact=True)
    assert exact.scheduling("demo-llava-med", 12)["batch"] == 1


def test_several_images_batch_is_split_before_prefill_when_its_worst_case_kv_would_not_fit(
    catalog, backends, monkeypatch
):
    """On a GPU with room for one image's rows at max_new_tokens but not two images', a batch of three
    images is split at image boundaries before anything is prefilled, keeping remembered prefixes;
    the answers are those of the whole batch."""
    shared = backends.shared
    variants = closed_variants(catalog, "pneumonia")[:3]
    gen = GenerationSettings(max_new_tokens=8, min_new_tokens=1)
    images = IMAGES + (_image(70, 70, 22),)
    requests = _requests(catalog, "demo-llava-med", variants, images, gen)
    monkeypatch.setattr(shared, "batch_size", 3)  # 3 images' prompts make a batch of 9 rows
    needs = []
    short = shared._kv_short
    monkeypatch.setattr(
        shared, "_kv_short", lambda lm, need, what="": (needs.append((need, what)), short(lm, need, what))[1]
    )
    shared.forget_reused()
    roomy = [r.text for r in shared.generate(requests)]
    [(three_images, what)] = [(need, what) for need, what in needs if what]
    assert what == "9 prompts of 3 images at 8 new tokens"
    monkeypatch.setattr(shared, "_kv_free_bytes", lambda lm: int(0.5 * three_images / 0.9))
    calls = []  # per _prepare_prefix call: rows per image
    prepare = type(shared)._prepare_prefix

    def counting(self, lm, keys, rows, n):
        calls.append(sorted(keys.count(k) for k in set(keys)))
        return prepare(self, lm, keys, rows, n)

    monkeypatch.setattr(type(shared), "_prepare_prefix", counting)
    tight = shared.generate(requests)
    assert [r.text for r in tight] == roomy and not any(r.error for r in tight)
    # Three images refused, then split where the image changes: every batch holds whole images.
    assert calls[0] == [3, 3, 3] and all(rows == [3] or len(rows) > 1 for rows in calls[1:])
    assert sum(1 for rows in calls if rows == [3]) == 3
    # Split before building anything: the prefixes the roomy run remembered are still there.
    assert [r.extra["images_encoded"] for r in tight] == [0] * len(tight)
    assert {r.extra["kv_layout"] for r in tight} == {"shared prefix"}


def test_an_enlarged_batch_that_cannot_share_its_prefixes_is_split_per_image(catalog, backends, monkeypatch):
    """Where shared-prefix decoding does not apply (say another attention implementation), a batch
    enlarged for it would hold 3x the rows with a copy of the prefix each: it is split per image
    before anything is built, and answers as before."""
    shared = backends.shared
    variants = closed_variants(catalog, "pneumonia")[:3]
    gen = GenerationSettings(max_new_tokens=6, min_new_tokens=1)
    requests = _requests(catalog, "demo-llava-med", variants, IMAGES + (_image(70, 70, 23),), gen)
    expected = [r.text for r in backends.copies.generate(requests)]
    monkeypatch.setattr(shared, "batch_size", 3)
    monkeypatch.setattr(shared_prefix, "enable", lambda model: False)
    answers = shared.generate(requests)
    assert [r.text for r in answers] == expected and not any(r.error for r in answers)
    assert {r.extra["batch_size"] for r in answers} == {3}  # one image's prompts a batch
    assert {r.extra["kv_layout"] for r in answers} == {"copy per row"}


def test_a_model_unloaded_while_it_prefills_keeps_no_prefix(catalog, backends, monkeypatch):
    """Unloading frees a model's remembered prefixes; a batch still running on it must not put new
    ones back (each model keeps its own entries, so nothing else would push them out)."""
    shared = backends.shared
    variants = closed_variants(catalog, "pneumonia")[:2]
    requests = _requests(catalog, "demo-gemma", variants, IMAGES[:1], GenerationSettings(max_new_tokens=3))
    from explorer.models.backends import prefix_reuse

    prefill = prefix_reuse.prefill_prefix

    def unloading(model, *args):
        shared.unload("demo-gemma")
        return prefill(model, *args)

    shared.forget_reused()
    monkeypatch.setattr(prefix_reuse, "prefill_prefix", unloading)
    answers = shared.generate(requests)
    assert not any(r.error for r in answers)
    assert len(shared.memo) == 0
