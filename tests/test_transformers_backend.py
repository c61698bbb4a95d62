"""The transformers backend on the offline demo models: the same from_pretrained, processor, chat
template, batching and streaming code the study's real models go through."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from explorer.catalog.presets import load_catalog
from explorer.models.backends import transformers_backend as tb
from explorer.models.backends.base import BackendError
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.models.demo import ensure_demo_text_model
from explorer.schema import GenerationSettings, ImagePart, Request

DEMOS = ("demo-llava", "demo-llava-med", "demo-gemma", "demo-medgemma")
SHORT = GenerationSettings(max_new_tokens=8, min_new_tokens=3)
PROMPTS = (
    "Is this image abnormal?",
    "Does this image contain evidence of pneumonia? Consider signs of consolidation, air bronchograms, and silhouettes.",
    "Which does this image show? Choose one answer.\nA) Pneumonia\nB) No pneumonia\nAnswer in one word.",
)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def backend(tmp_path_factory, catalog):
    b = TransformersBackend(catalog, batch_size=8, demo_cache_dir=tmp_path_factory.mktemp("demo-cache"))
    yield b
    b.close()


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


IMAGES = (_image(90, 60, 0), _image(56, 56, 1), _image(40, 120, 2))


def _request(alias: str, prompt: str, image, fmt: str, gen: GenerationSettings = SHORT) -> Request:
    content = (ImagePart(image, f"h{id(image)}"), prompt) if image is not None else (prompt,)
    return Request(model=alias, messages=({"role": "user", "content": content},), generation=gen, prompt_format=fmt)


def test_identity_needs_no_loading_and_marks_random_weights(catalog, tmp_path):
    b = TransformersBackend(catalog, demo_cache_dir=tmp_path)
    ident = b.identity("demo-llava-med")
    assert b.loaded() == [] and not list(tmp_path.iterdir())
    assert ident["backend"] == "transformers" and ident["random_weights"] is True
    assert ident["model"] == "demo/demo-llava-med" and ident["config_hash"] and ident["transformers"]
    assert ident["dtype"] == "float32" and ident["device"] == "cpu"
    real = b.identity("gemma")
    assert real["model"] == "google/gemma-3-4b-it" and real["random_weights"] is False
    assert real["dtype"] == "bfloat16"  # the preset's dtype, fp16 never for Gemma 3
    assert TransformersBackend(catalog, dtype="float16").identity("medgemma")["dtype"] != "float16"
    with pytest.raises(BackendError, match="unknown model"):
        b.identity("no-such-model")


@pytest.mark.parametrize("alias", DEMOS)
def test_each_architecture_answers_through_both_prompt_paths(backend, catalog, alias):
    spec = catalog.model(alias)
    for fmt in dict.fromkeys(spec.prompt_formats.values()):
        [resp] = backend.generate([_request(alias, PROMPTS[0], IMAGES[0], fmt)])
        assert resp.ok, resp.error
        assert resp.text.strip() and resp.output_tokens >= SHORT.min_new_tokens
        assert resp.input_tokens > 5 and resp.extra["batch_size"] == 1
        assert resp.latency_s > 0
    assert alias in backend.loaded()


@pytest.mark.parametrize("alias", DEMOS)
def test_batched_equals_one_at_a_time(backend, catalog, alias):
    fmt = catalog.model(alias).prompt_format("paper")
    requests = [_request(alias, p, im, fmt) for p, im in zip(PROMPTS, IMAGES)]
    batched = backend.generate(requests)
    single = [backend.generate([r])[0] for r in requests]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.output_tokens for r in batched] == [r.output_tokens for r in single]
    assert all(r.extra["batch_size"] == 3 for r in batched)
    assert batched[0].latency_s == pytest.approx(batched[0].extra["batch_wall_s"] / 3)


def test_llava_med_patch_size_is_fixed_from_the_model_config(backend):
    lm = backend.load("demo-llava-med")
    assert lm.processor.patch_size == lm.model.config.vision_config.patch_size == 14
    assert any("patch_size" in f for f in lm.fixes)
    assert lm.processor.vision_feature_select_strategy == "default"


def test_raw_template_maps_image_marker_and_strips_double_bos(backend):
    lm = backend.load("demo-gemma")
    req = _request("demo-gemma", "Is <image> here?", IMAGES[0], "USER: <image>\n{prompt}\nASSISTANT:")
    text = backend.prompt_text(lm, req)
    assert text == "USER: <start_of_image>\nIs <image> here?\nASSISTANT:"
    chat = backend.prompt_text(lm, _request("demo-gemma", "Hi", IMAGES[0], "chat_template"))
    assert chat.startswith("<start_of_turn>user")  # the tokenizer adds <bos> itself


def test_mixed_requests_keep_their_order(backend):
    requests = [
        _request("demo-gemma", PROMPTS[0], IMAGES[0], "chat_template"),
        _request("demo-llava-med", PROMPTS[0], IMAGES[0], "[INST] <image>\n{prompt} [/INST]"),
        _request("demo-gemma", "Is pneumonia present? Answer yes or no.", None, "chat_template"),  # text only
        _request("demo-gemma", PROMPTS[1], IMAGES[1], "chat_template", GenerationSettings(max_new_tokens=4)),
    ]
    responses = backend.generate(requests)
    assert all(r.ok for r in responses), [r.error for r in responses]
    assert responses[1].text == backend.generate([requests[1]])[0].text
    assert responses[3].output_tokens <= 4


def test_one_bad_request_does_not_fail_the_rest(backend):
    good = [_request("demo-llava-med", p, im, "[INST] <image>\n{prompt} [/INST]") for p, im in zip(PROMPTS, IMAGES)]
    bad = _request("demo-llava-med", "Is this normal?", Image.new("RGB", (0, 0)), "[INST] <image>\n{prompt} [/INST]")
    no_template = _request("demo-llava-med", "Hello", IMAGES[0], "chat_template")  # LLaVA-Med ships none
    responses = backend.generate([good[0], bad, good[1], no_template, good[2]])
    assert [r.ok for r in responses] == [True, False, True, False, True]
    assert "no chat template" in responses[3].error
    assert [responses[i].text for i in (0, 2, 4)] == [backend.generate([g])[0].text for g in good]


def test_out_of_memory_halves_the_batch(backend, monkeypatch):
    lm = backend.load("demo-medgemma")
    real_generate = lm.model.generate
    sizes = []

    def tight_memory(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(**kwargs)

    monkeypatch.setattr(lm.model, "generate", tight_memory)
    requests = [_request("demo-medgemma", p, im, "chat_template") for p, im in zip(PROMPTS, IMAGES)]
    responses = backend.generate(requests)
    assert all(r.ok for r in responses) and all(r.extra["batch_size"] == 1 for r in responses)
    assert sizes[0] == 3 and sizes.count(1) == 3


def test_streaming_reports_growing_text(backend):
    seen = []
    req = _request("demo-llava", PROMPTS[2], IMAGES[2], "chat_template")
    [resp] = backend.generate([req], on_text=lambda i, text: seen.append((i, text)))
    assert seen and all(i == 0 for i, _ in seen)
    assert all(len(a[1]) <= len(b[1]) for a, b in zip(seen, seen[1:]))
    assert seen[-1][1].strip() == resp.text
    assert resp.text == backend.generate([req])[0].text  # streaming does not change the answer


def test_greedy_passes_no_sampling_parameters(backend):
    lm = backend.load("demo-gemma")
    greedy = backend._generation_kwargs(lm, GenerationSettings(max_new_tokens=5, temperature=0.7))
    assert greedy["do_sample"] is False and "temperature" not in greedy and "top_p" not in greedy
    sampled = backend._generation_kwargs(lm, GenerationSettings(max_new_tokens=5, do_sample=True, temperature=0.7))
    assert sampled["temperature"] == 0.7


def test_unload(backend):
    backend.load("demo-medgemma")
    assert backend.unload("demo-medgemma") and "demo-medgemma" not in backend.loaded()
    assert not backend.unload("demo-medgemma")


def test_text_model_through_local_paths(catalog, tmp_path):
    path = ensure_demo_text_model(cache_dir=tmp_path)
    b = TransformersBackend(catalog, local_paths={"demo-text": path})
    assert b.identity("demo-text")["random_weights"] is True
    req = _request(
        "demo-text",
        "Task: Decide if pneumonia is present.\nOutput must be Yes or No.",
        None,
        "chat_template",
        GenerationSettings(max_new_tokens=5, min_new_tokens=5),
    )
    [resp] = b.generate([req])
    assert resp.ok and resp.text
    [with_image] = b.generate([_request("demo-text", "Describe.", IMAGES[0], "chat_template")])
    assert not with_image.ok and "text-only" in with_image.error


def test_missing_model_offline_is_a_clear_error(catalog, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hf-home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "no-hf-home" / "hub"))
    b = TransformersBackend(catalog)
    with pytest.raises(BackendError, match="offline .* not in the local cache"):
        b.load("llava-med")
    with pytest.raises(BackendError, match="wnkh/llava-med-v1.5-mistral-7b-hf, chaoyinshe"):
        b.generate([_request("llava-med", "Hi", IMAGES[0], "[INST] <image>\n{prompt} [/INST]")])
    assert b.loaded() == []


def test_gated_model_says_to_set_hf_token(catalog, tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import GatedRepoError

    def gated(repo_id, filename, revision=None):
        response = SimpleNamespace(headers={}, request=None)  # what the Hub's 401 reply carries
        raise GatedRepoError(f"Access to {repo_id} is restricted", response=response)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(BackendError, match="gated: set HF_TOKEN after accepting the licence of google/medgemma-4b-it"):
        TransformersBackend(catalog).load("medgemma")


def test_not_enough_memory_is_refused_before_loading(backend, catalog, monkeypatch):
    path = backend.load("demo-llava-med").source
    monkeypatch.setattr(tb, "_memory_available_bytes", lambda: 1000)
    b = TransformersBackend(catalog, local_paths={"mine": path})
    with pytest.raises(BackendError, match="not enough memory: needs about .* RAM free"):
        b.load("mine")


def test_real_sample_image_through_all_demos(backend, samples_dir):
    from explorer.cases.images import load_image

    path = sorted((samples_dir / "pneumonia").rglob("*.jp*g"))[0]
    image = load_image(path).image
    for alias in DEMOS:
        [resp] = backend.generate(
            [_request(alias, PROMPTS[1], image, backend.catalog.model(alias).prompt_format("paper"))]
        )
        assert resp.ok and resp.text, (alias, resp.error)


def test_asking_for_cuda_without_a_gpu_says_so():
    import torch

    from explorer.catalog.presets import load_catalog
    from explorer.models.backends.base import BackendError
    from explorer.models.backends.transformers_backend import TransformersBackend

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError, match="no CUDA GPU"):
        TransformersBackend(load_catalog(), device="cuda:0").device
