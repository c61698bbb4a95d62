"""The fast paths of the transformers backend give the answers of one-at-a-time generation, and
encode each image once; the first-token readout maps answer-token probabilities through polarity."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from explorer.catalog.presets import load_catalog
from explorer.models.backends import prefix_reuse as reuse_lib
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.models.readout import FirstLogits, answer_tokens, readout, readout_from_logits
from explorer.prompts.variants import closed_variants, describe_variants
from explorer.schema import GenerationSettings, ImagePart, PromptVariant, Request

DEMOS = ("demo-llava", "demo-llava-med", "demo-gemma", "demo-medgemma")
GEN = GenerationSettings(max_new_tokens=6, min_new_tokens=2)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="module")
def backends(catalog, cache_dir):
    made = {
        mode: TransformersBackend(catalog, demo_cache_dir=cache_dir, reuse=mode)
        for mode in ("prefix", "features", "none")
    }
    for mode in ("features", "none"):  # one copy of the weights: the three share loaded models
        made[mode].models = made["prefix"].models
    yield made
    made["prefix"].close()


@pytest.fixture(scope="module")
def variants(catalog):
    return closed_variants(catalog, "pneumonia")  # the study's 12 closed prompts


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


IMAGES = (_image(90, 60, 10), _image(56, 112, 11))


def _requests(alias, variants, fmt, images=IMAGES, gen=GEN, hashed=True):
    return [
        Request(
            model=alias,
            generation=gen,
            prompt_format=fmt,
            readout=v,
            messages=({"role": "user", "content": (ImagePart(im, f"img{id(im)}" if hashed else ""), v.text)},),
        )
        for im in images
        for v in variants
    ]


def _takes_features(model) -> bool:
    try:
        reuse_lib.check_features_applicable(model)
        return True
    except reuse_lib.ReuseNotApplicable:
        return False


def _count_vision_calls(lm):
    tower = lm.model.model.vision_tower
    calls = []
    handle = tower.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0] if args else 1))
    return calls, handle


# ------------------------------------------------------------------ same answers
@pytest.mark.parametrize("alias", DEMOS)
def test_reuse_paths_answer_like_one_at_a_time(backends, catalog, variants, alias):
    fmt = catalog.model(alias).prompt_format("paper")
    # The 12 prompts of one image, and a few of a second image of another size (AnyRes tiles differ).
    requests = _requests(alias, variants, fmt, images=IMAGES[:1]) + _requests(
        alias, variants[::4], fmt, images=IMAGES[1:]
    )
    single = [backends["none"].generate([r])[0] for r in requests]
    assert all(r.ok for r in single), [r.error for r in single]
    lm = backends["prefix"].load(alias)
    for mode in ("prefix", "features"):
        backends[mode].memo.clear()
        batched = backends[mode].generate(requests)
        # Before transformers 5.2x generate() takes no precomputed features: the plain path answers.
        expected = mode if mode == "prefix" or _takes_features(lm.model) else "none"
        assert [r.extra["reuse"] for r in batched] == [expected] * len(requests), batched[0].extra
        assert [r.text for r in batched] == [r.text for r in single], mode
        assert [r.output_tokens for r in batched] == [r.output_tokens for r in single]
        assert [r.input_tokens for r in batched] == [r.input_tokens for r in single]
        for a, b in zip(batched, single):  # the readout sees the same first-token distribution
            assert a.p_positive == pytest.approx(b.p_positive, abs=1e-4)


def test_official_chat_template_also_shares_the_prefix(backends, catalog, variants):
    requests = _requests("demo-llava", variants[:6], catalog.model("demo-llava").prompt_format("official"))
    single = [backends["none"].generate([r])[0].text for r in requests]
    batched = backends["prefix"].generate(requests)
    assert [r.extra["reuse"] for r in batched] == ["prefix"] * len(requests)
    assert [r.text for r in batched] == single


def test_image_after_the_question_falls_back_to_shared_features(backends, variants):
    fmt = "Question: {prompt}\n<image>\nAnswer:"  # the prompts differ before the image tokens
    requests = _requests("demo-llava-med", variants[:4], fmt, images=IMAGES[:1])
    batched = backends["prefix"].generate(requests)
    features = _takes_features(backends["prefix"].load("demo-llava-med").model)
    assert {r.extra["reuse"] for r in batched} == {"features" if features else "none"}
    assert ("differ before" if features else "mm_encoder_outputs") in batched[0].extra["reuse_skipped"]
    assert [r.text for r in batched] == [backends["none"].generate([r])[0].text for r in requests]


def test_streaming_through_the_prefix_path(backends, catalog, variants):
    req = _requests("demo-gemma", variants[:1], "chat_template", images=IMAGES[:1])[0]
    seen = []
    [streamed] = backends["prefix"].generate([req], on_text=lambda i, text: seen.append(text))
    assert streamed.extra["reuse"] == "prefix" and seen and seen[-1].strip() == streamed.text
    assert streamed.text == backends["none"].generate([req])[0].text


def test_generation_stops_when_every_row_has_finished(backends, catalog, variants, monkeypatch):
    """Rows that reach an end token are padded while the others go on, and generate stops as soon
    as all have ended; the answers are those of one-at-a-time generation with the same end tokens."""
    b = backends["prefix"]
    lm = b.load("demo-llava-med")
    gen = GenerationSettings(max_new_tokens=8)
    requests = _requests(
        "demo-llava-med",
        variants[:6],
        catalog.model("demo-llava-med").prompt_format("paper"),
        images=IMAGES[:1],
        gen=gen,
    )
    steps: list[torch.Tensor] = []
    handle = lm.model.register_forward_hook(lambda mod, args, out: steps.append(out.logits[:, -1].argmax(-1)))
    try:
        b.generate(requests)  # record each row's greedy tokens
        picked = steps[-8:]  # the generate() steps of that batch (the prefix passes come before)
        # Make the token some rows pick at step 1 and the others at step 3 end the answer.
        ends = {int(picked[1][0])} | {int(t) for t in picked[3]}
        original = lm.model.generation_config.eos_token_id
        original = set(original) if isinstance(original, (list, tuple)) else {original}
        monkeypatch.setattr(lm.model.generation_config, "eos_token_id", sorted(ends | original))
        steps.clear()
        stopped = b.generate(requests)
        assert len(steps) <= 4 + 2  # prefix + own-token passes, then at most 4 steps, not 8
    finally:
        handle.remove()
    assert all(r.output_tokens <= 4 for r in stopped) and any(r.output_tokens < 4 for r in stopped)
    assert [r.text for r in stopped] == [backends["none"].generate([r])[0].text for r in requests]


# ------------------------------------------------------------------ each image once
def test_each_image_is_encoded_once_and_remembered(backends, catalog, variants):
    b = backends["prefix"]
    lm = b.load("demo-llava-med")
    fmt = catalog.model("demo-llava-med").prompt_format("paper")
    requests = _requests("demo-llava-med", variants, fmt)  # 2 images x 12 prompts
    b.memo.clear()
    calls, handle = _count_vision_calls(lm)
    try:
        first = b.generate(requests)
        assert sum(calls) == 2  # one vision pass per image, not 24
        # LLaVA's short prefixes: the 24 prompts of both images go in one batch (up to 3 images).
        assert b.images_per_batch("demo-llava-med") == 3
        assert [r.extra["images_encoded"] for r in first] == [2] * 24
        assert {r.extra["batch_size"] for r in first} == {24}
        calls.clear()
        again = b.generate(requests[:5])  # the next batch of prompts about an image: nothing re-encoded
        assert sum(calls) == 0 and again[0].extra["images_encoded"] == 0
        assert [r.text for r in again] == [r.text for r in first[:5]]
        calls.clear()
        backends["none"].generate(requests[:12])
        assert sum(calls) == 12  # the plain path encodes its own copy per row
    finally:
        handle.remove()


def test_an_edited_wording_reuses_every_models_prefix(backends, catalog, variants):
    """Compare asks each model about one image in turn; the next wording on that image finds every
    model's prefix remembered (one model's entries never push out another's)."""
    b = backends["prefix"]
    b.memo.clear()
    fmt = {alias: catalog.model(alias).prompt_format("paper") for alias in DEMOS}
    for alias in DEMOS:  # a sweep batch of 3 images before, as a model's recent work
        b.generate(_requests(alias, variants[:1], fmt[alias], images=IMAGES + (_image(40, 40, 12),)))
    for alias in DEMOS:
        b.generate(_requests(alias, variants[:1], fmt[alias], images=IMAGES[:1]))
    edited = [b.generate(_requests(alias, variants[1:2], fmt[alias], images=IMAGES[:1]))[0] for alias in DEMOS]
    assert not any(r.error for r in edited)
    assert [r.extra["images_encoded"] for r in edited] == [0] * len(DEMOS)


def test_unhashed_images_are_shared_within_a_call_but_not_remembered(backends, catalog, variants):
    b = backends["prefix"]
    lm = b.load("demo-gemma")
    b.memo.clear()
    calls, handle = _count_vision_calls(lm)
    try:
        responses = b.generate(_requests("demo-gemma", variants[:4], "chat_template", images=IMAGES[:1], hashed=False))
    finally:
        handle.remove()
    assert all(r.extra["reuse"] == "prefix" for r in responses)
    assert sum(calls) == 1 and len(b.memo) == 0  # an object id may name another image later


def test_batches_keep_one_image_together_and_answers_in_asked_order(backends, catalog, variants):
    fmt = catalog.model("demo-llava-med").prompt_format("paper")
    a, b_ = (
        _requests("demo-llava-med", variants[:3], fmt, images=IMAGES[:1]),
        _requests("demo-llava-med", variants[:3], fmt, images=IMAGES[1:]),
    )
    interleaved = [x for pair in zip(a, b_) for x in pair]
    backend = backends["prefix"]
    assert backend._plan_batches(interleaved) == [[0, 2, 4, 1, 3, 5]]
    answers = backend.generate(interleaved)
    assert [r.text for r in answers] == [backends["none"].generate([r])[0].text for r in interleaved]


# ------------------------------------------------------------------ the machinery itself
def test_prefix_cache_is_laid_out_like_a_left_padded_batch(backends, catalog, variants):
    """The cache built from a shared prefix holds, at every real position, the keys and values a
    plain left-padded forward pass over the same prompts computes."""
    b = backends["prefix"]
    lm = b.load("demo-gemma")
    requests = _requests("demo-gemma", variants[:5], "chat_template", images=IMAGES[:1])
    texts = [b.prompt_text(lm, r) for r in requests]
    with torch.inference_mode():
        inputs = reuse_lib.encode_once_per_image(lm.processor, texts, [IMAGES[0]] * len(texts))
        rows = reuse_lib.split_rows(inputs, [lm.model.config.image_token_id])
        end = reuse_lib.image_span_end(rows, 0)
        prefix = reuse_lib.prefill_prefix(
            lm.model, rows.ids[0][:end], rows.token_types[0][:end], reuse_lib.image_inputs_of_row(rows, 0)
        )
        built = reuse_lib.continue_from_prefixes(lm.model, rows.ids, [prefix] * len(texts), lm.tokenizer.pad_token_id)
        plain = lm.processor(text=texts, images=[[IMAGES[0]]] * len(texts), padding=True, return_tensors="pt")
        assert torch.equal(built.input_ids, plain["input_ids"]) and torch.equal(
            built.attention_mask, plain["attention_mask"]
        )
        head = {k: v[:, :-1] if k in ("input_ids", "attention_mask", "token_type_ids") else v for k, v in plain.items()}
        positions = (head["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate() derives them
        out = lm.model(**head, position_ids=positions, use_cache=True)
    mask = plain["attention_mask"][:, :-1].bool()
    for (k1, v1), (k2, v2) in zip(reuse_lib._cache_layers(built.cache), reuse_lib._cache_layers(out.past_key_values)):
        assert k1.shape == k2.shape
        for row in range(len(texts)):
            torch.testing.assert_close(k1[row][:, mask[row]], k2[row][:, mask[row]], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(v1[row][:, mask[row]], v2[row][:, mask[row]], atol=1e-4, rtol=1e-4)


def test_packed_and_side_by_side_extensions_build_the_same_cache(backends, variants, monkeypatch):
    """Two images of different sizes (AnyRes: prefixes of different lengths) in one batch: the
    packed pass (one sequence, explicit mask) and the side-by-side pass give the same cache at every
    real position, and placing rows by copies (CPU) or by one gather (GPUs) gives the same values."""
    b = backends["prefix"]
    lm = b.load("demo-llava")
    requests = _requests("demo-llava", variants[:3], "chat_template", images=IMAGES)
    texts = [b.prompt_text(lm, r) for r in requests]
    images = [IMAGES[0]] * 3 + [IMAGES[1]] * 3
    with torch.inference_mode():
        inputs = reuse_lib.encode_once_per_image(lm.processor, texts, images)
        rows = reuse_lib.split_rows(inputs, [lm.model.config.image_token_id])
        prefixes = []
        for row in (0, 3):
            end = reuse_lib.image_span_end(rows, row)
            prefixes.append(
                reuse_lib.prefill_prefix(lm.model, rows.ids[row][:end], None, reuse_lib.image_inputs_of_row(rows, row))
            )
        assert prefixes[0].length != prefixes[1].length
        per_row = [prefixes[0]] * 3 + [prefixes[1]] * 3
        assert reuse_lib._packed_pass_ok(lm.model)
        packed = reuse_lib.continue_from_prefixes(lm.model, rows.ids, per_row, lm.tokenizer.pad_token_id, room=4)
        monkeypatch.setattr(reuse_lib, "_packed_pass_ok", lambda model: False)
        side = reuse_lib.continue_from_prefixes(lm.model, rows.ids, per_row, lm.tokenizer.pad_token_id, room=4)
    assert torch.equal(packed.input_ids, side.input_ids) and torch.equal(packed.attention_mask, side.attention_mask)
    assert torch.equal(packed.input_ids, inputs["input_ids"]) and torch.equal(
        packed.attention_mask, inputs["attention_mask"]
    )
    mask = packed.attention_mask[:, :-1].bool()
    for (k1, v1), (k2, v2) in zip(reuse_lib._cache_layers(packed.cache), reuse_lib._cache_layers(side.cache)):
        assert k1.shape == k2.shape
        for row in range(len(texts)):
            torch.testing.assert_close(k1[row][:, mask[row]], k2[row][:, mask[row]], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(v1[row][:, mask[row]], v2[row][:, mask[row]], atol=1e-5, rtol=1e-5)

    src = torch.randn(1, 2, 20, 3)
    segments = [[(0, 5), (12, 3)], [(5, 7), (15, 0)], [(0, 5), (15, 5)]]
    by_copy = reuse_lib._place_rows(src, segments, 12, 2, {}, gather=False)
    by_gather = reuse_lib._place_rows(src, segments, 12, 2, {}, gather=True)
    for row, runs in enumerate(segments):
        taken = torch.cat([src[0, :, s : s + n] for s, n in runs], dim=1)
        width = taken.shape[1]
        assert torch.equal(by_copy[row, :, 12 - width : 12], taken) and torch.equal(
            by_gather[row, :, 12 - width : 12], taken
        )
        assert torch.isfinite(by_copy[row, :, :12]).all() and torch.isfinite(by_gather[row, :, :12]).all()
    # A part of a batch (the rows of one image) written into a shared output, both ways.
    for gather in (False, True):
        out = torch.full((5, 2, 14, 3), float("nan"))
        reuse_lib._place_rows(src, segments, 12, 2, {}, gather=gather, out=out, rows=[4, 0, 2])
        for row, target in zip(range(3), (4, 0, 2)):
            taken = torch.cat([src[0, :, s : s + n] for s, n in segments[row]], dim=1)
            assert torch.equal(out[target, :, 12 - taken.shape[1] : 12], taken)
            assert torch.isfinite(out[target, :, :12]).all()
        assert torch.isnan(out[1]).all() and torch.isnan(out[3]).all()


def test_prompts_reaching_a_sliding_window_are_not_reused():
    from types import SimpleNamespace

    text = SimpleNamespace(sliding_window=64, layer_types=["sliding_attention", "full_attention"])
    model = SimpleNamespace(
        config=SimpleNamespace(get_text_config=lambda decoder=True: text),
        generation_config=SimpleNamespace(cache_implementation=None),
    )
    reuse_lib.check_prefix_applicable(model, 63)  # the window keeps 63 positions: nothing is cut
    with pytest.raises(reuse_lib.ReuseNotApplicable, match="sliding window"):
        reuse_lib.check_prefix_applicable(model, 64)
    model.generation_config.cache_implementation = "static"
    with pytest.raises(reuse_lib.ReuseNotApplicable, match="static"):
        reuse_lib.check_prefix_applicable(model, 10)


def test_sliding_window_answers_match_when_generation_runs_past_the_window(catalog, cache_dir, variants, monkeypatch):
    """Gemma 3's sliding-window layers: with a window shorter than prompt + answer, the prefix path
    (short prompts) and its fallback (long prompts) still answer like one-at-a-time generation."""
    b = TransformersBackend(catalog, demo_cache_dir=cache_dir, reuse="prefix")
    plain = TransformersBackend(catalog, demo_cache_dir=cache_dir, reuse="none")
    plain.models = b.models
    lm = b.load("demo-medgemma")
    text_config = lm.model.config.get_text_config(decoder=True)
    assert all("sliding" in t for t in text_config.layer_types)  # the demo's 2 layers are both sliding
    monkeypatch.setattr(text_config, "sliding_window", 40)  # masks and caches read it from the config
    gen = GenerationSettings(max_new_tokens=24)  # prompt + answer > 40 positions
    short = [v for v in variants if v.family in ("abnormal", "normal")]
    long = [v for v in variants if v.family.startswith("mc_")]
    fallback = "features" if _takes_features(b.load("demo-medgemma").model) else "none"
    for chosen, path in ((short, "prefix"), (long, fallback)):
        requests = _requests("demo-medgemma", chosen, "chat_template", images=IMAGES[:1], gen=gen)
        batched = b.generate(requests)
        assert {r.extra["reuse"] for r in batched} == {path}
        if path == "prefix":  # one copy of the prefix, hidden by distance once the window passes it
            assert {r.extra["kv_layout"] for r in batched} == {"shared prefix"}
        assert all(r.input_tokens + r.output_tokens > 40 for r in batched)
        assert [r.text for r in batched] == [plain.generate([r])[0].text for r in requests]
    b.close()


def test_image_processor_runs_once_and_gives_the_plain_output(backends, catalog, variants):
    lm = backends["prefix"].load("demo-llava")
    texts = [backends["prefix"].prompt_text(lm, r) for r in _requests("demo-llava", variants[:3], "chat_template")]
    images = [IMAGES[0]] * 3 + [IMAGES[1]] * 3
    seen = []
    inner = lm.processor.image_processor
    original = type(inner).__call__
    try:
        type(inner).__call__ = lambda self, imgs, *a, **k: (seen.append(len(imgs)), original(self, imgs, *a, **k))[1]
        shared = reuse_lib.encode_once_per_image(lm.processor, texts, images)
    finally:
        type(inner).__call__ = original
    assert seen == [2]  # two distinct images, one call
    plain = lm.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt")
    for key in plain:
        assert torch.equal(shared[key], plain[key]), key


@pytest.mark.parametrize("alias", ["demo-llava", "demo-gemma"])
def test_rows_of_several_images_match_the_plain_processor_and_share_pixels(backends, variants, alias):
    """encode_rows processes each distinct image once: every row's ids and token types are the plain
    processor's, each row's image inputs are its image's own (Gemma 3: equal to the plain batch row),
    and the rows of one image hold views of one tensor rather than copies."""
    lm = backends["prefix"].load(alias)
    texts = [backends["prefix"].prompt_text(lm, r) for r in _requests(alias, variants[:3], "chat_template")]
    images = [IMAGES[0]] * 3 + [IMAGES[1]] * 3
    order = [0, 3, 1, 4, 2, 5]  # images interleaved: rows must come back in the order asked
    texts, images = [texts[i] for i in order], [images[i] for i in order]
    image_ids = [lm.model.config.image_token_id]
    rows = reuse_lib.encode_rows(lm.processor, texts, images, image_ids)
    plain = reuse_lib.split_rows(
        lm.processor(text=texts, images=[[im] for im in images], padding=True, return_tensors="pt"), image_ids
    )
    assert rows.ids == plain.ids
    assert rows.token_types == plain.token_types
    assert (rows.token_types is not None) == (alias == "demo-gemma")
    for row, image in enumerate(images):
        alone = lm.processor(text=texts[row : row + 1], images=[[image]], return_tensors="pt")
        assert torch.equal(rows.image_inputs[row]["pixel_values"], alone["pixel_values"])
        if alias == "demo-gemma":
            assert torch.equal(rows.image_inputs[row]["pixel_values"], plain.image_inputs[row]["pixel_values"])
    pixels = [rows.image_inputs[row]["pixel_values"] for row in range(len(images))]
    same_image = [row for row, image in enumerate(images) if image is IMAGES[0]]
    assert len({pixels[row].untyped_storage().data_ptr() for row in same_image}) == 1
    assert pixels[0].untyped_storage().data_ptr() != pixels[1].untyped_storage().data_ptr()


def test_prompts_are_tokenized_once_per_image_size(backends, variants):
    """Another image of the same size expands to the same texts: their tokens come from the memo,
    equal to the plain processor's, and changing what the caller got back changes nothing kept."""
    lm = backends["prefix"].load("demo-llava")
    texts = [
        backends["prefix"].prompt_text(lm, r)
        for r in _requests("demo-llava", variants[:4], "chat_template", images=IMAGES[:1])
    ]
    same_size = _image(*IMAGES[0].size, seed=99)  # AnyRes: the same size gives the same image tokens
    memo = reuse_lib.TokenMemo()
    calls = []
    original = type(lm.processor.tokenizer).__call__
    try:
        type(lm.processor.tokenizer).__call__ = lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1]
        first = reuse_lib.encode_once_per_image(lm.processor, texts, [IMAGES[0]] * 4, memo)
        first["input_ids"][:, -1] = -7  # the caller's copy
        second = reuse_lib.encode_once_per_image(lm.processor, texts, [same_size] * 4, memo)
        other = reuse_lib.encode_once_per_image(lm.processor, texts[:2], [same_size] * 2, memo)
    finally:
        type(lm.processor.tokenizer).__call__ = original
    assert len(calls) == 2  # the first batch and the other batch; the second image hit the memo
    plain = lm.processor(text=texts, images=[[same_size]] * 4, padding=True, return_tensors="pt")
    for key in plain:
        assert torch.equal(second[key], plain[key]), key
    assert other["input_ids"].shape[0] == 2


# ------------------------------------------------------------------ first-token readout
def test_answer_tokens_cover_the_spellings_of_yes_no_and_letters(backends):
    for alias in ("demo-llava", "demo-gemma"):
        tok = backends["prefix"].load(alias).tokenizer
        tokens = answer_tokens(tok)
        assert tokens is answer_tokens(tok)  # computed once per tokenizer
        for word, group in ((" Yes", tokens.yes), ("Yes", tokens.yes), (" no", tokens.no), (" No", tokens.no)):
            ids = tok.encode(word, add_special_tokens=False)
            if len(ids) == 1:
                assert ids[0] in group, (alias, word)
        assert tokens.yes and tokens.no and tokens.letters["A"] and tokens.letters["B"]
        for token_id in tokens.yes:
            assert tok.decode([token_id]).strip().lower().rstrip(".,!:") == "yes"
        assert not set(tokens.yes) & set(tokens.no)
        assert not set(tokens.letters["A"]) & set(tokens.letters["B"])


def _variant(catalog, family):
    return next(v for v in closed_variants(catalog, "pneumonia") if v.family == family)


def test_readout_maps_probabilities_through_polarity(catalog):
    from explorer.models.readout import AnswerTokens

    tokens = AnswerTokens(yes=(1, 2), no=(3,), letters={"A": (4,), "B": (5,), "C": (), "D": ()})
    probs = torch.tensor([0.1, 0.4, 0.2, 0.2, 0.06, 0.04])  # P(yes)=0.6, P(no)=0.2, P(A)=0.06, P(B)=0.04
    abnormal, normal = _variant(catalog, "abnormal"), _variant(catalog, "normal")
    p, raw = readout(probs, abnormal, tokens)
    assert p == pytest.approx(0.75) and raw["p_yes"] == pytest.approx(0.6) and raw["p_no"] == pytest.approx(0.2)
    q, _ = readout(probs, normal, tokens)
    assert q == pytest.approx(1 - p)  # the same yes/no probabilities read under the opposite polarity
    pos_first, neg_first = _variant(catalog, "mc_pos_first"), _variant(catalog, "mc_neg_first")
    p_mc, raw_mc = readout(probs, pos_first, tokens)
    assert p_mc == pytest.approx(0.6) and raw_mc["p_A"] == pytest.approx(0.06)
    assert readout(probs, neg_first, tokens)[0] == pytest.approx(0.4)
    # From logits: the softmax first, then the same mapping.
    assert readout_from_logits(torch.log(probs), abnormal, tokens)[0] == pytest.approx(0.75)
    # No polarity, or no probability on either answer: no reading.
    assert readout(probs, describe_variants(catalog.task("pneumonia"))[0], tokens) == (None, {})
    assert readout(probs, None, tokens) == (None, {})
    none_left = readout(torch.tensor([1.0, 0, 0, 0, 0, 0]), abnormal, tokens)
    assert none_left[0] is None and none_left[1]["answer_mass"] == 0.0
    custom = PromptVariant("x", "custom", "Anything?", yes_means=None)
    assert readout(probs, custom, tokens)[0] is None


def test_readout_comes_with_every_closed_answer(backends, catalog, variants):
    responses = backends["prefix"].generate(_requests("demo-medgemma", variants, "chat_template", images=IMAGES[:1]))
    for r, v in zip(responses, variants):
        assert 0.0 <= r.p_positive <= 1.0
        raw = r.extra["readout"]
        if v.is_multiple_choice:
            positive = next(letter for letter, reading, _ in v.options if reading == "positive")
            assert r.p_positive == pytest.approx(raw[f"p_{positive}"] / (raw["p_A"] + raw["p_B"]))
        else:
            mine = raw["p_yes"] if v.yes_means == "positive" else raw["p_no"]
            assert r.p_positive == pytest.approx(mine / (raw["p_yes"] + raw["p_no"]))
    # Description prompts and requests without a readout get none.
    plain = _requests("demo-medgemma", variants[:1], "chat_template", images=IMAGES[:1])[0]
    from dataclasses import replace

    [no_readout] = backends["prefix"].generate([replace(plain, readout=None)])
    assert no_readout.p_positive is None and "readout" not in no_readout.extra


def test_first_logits_are_generates_own_first_step(backends):
    lm = backends["prefix"].load("demo-llava-med")
    inputs = lm.processor(
        text=["[INST] <image>\nIs this image normal? [/INST]"], images=[[IMAGES[0]]], return_tensors="pt"
    )
    with torch.inference_mode(), FirstLogits(lm.model) as first:
        out = lm.model.generate(
            **inputs,
            max_new_tokens=3,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    torch.testing.assert_close(first.logits, out.logits[0].float())
