"""The offline demo models: real architectures and processors, tiny sizes, random weights, cached builds."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from explorer.catalog.presets import load_catalog
from explorer.models import demo as demo_models
from explorer.models.demo import DemoSize, config_hash, ensure_demo_model, ensure_demo_text_model, read_marker

DEMOS = {
    "demo-llava": ("LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
    "demo-llava-med": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "demo-gemma": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
    "demo-medgemma": ("Gemma3ForConditionalGeneration", "Gemma3Processor"),
}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, catalog):
    root = tmp_path_factory.mktemp("demo-cache")
    paths = {}
    for alias in DEMOS:
        paths[alias] = ensure_demo_model(catalog.model(alias), cache_dir=root)
    return root, paths


def _image(w: int = 90, h: int = 60, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.mark.parametrize("alias", list(DEMOS))
def test_builds_real_classes_and_loads_through_from_pretrained(demo_cache, alias):
    _, paths = demo_cache
    model_class, processor_class = DEMOS[alias]
    path = paths[alias]
    assert path.name.startswith(f"{alias}-")
    config = AutoConfig.from_pretrained(path)
    assert config.architectures == [model_class]
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor).__name__ == processor_class
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == model_class
    gen = model.generation_config
    assert gen.pad_token_id == processor.tokenizer.pad_token_id
    assert processor.tokenizer.eos_token_id in (
        [gen.eos_token_id] if isinstance(gen.eos_token_id, int) else gen.eos_token_id
    )


def test_random_weight_markers(demo_cache):
    _, paths = demo_cache
    for alias, path in paths.items():
        marker = read_marker(path)
        assert marker["random_weights"] is True and marker["note"] == demo_models.RANDOM_WEIGHTS_NOTE
        assert json.loads((path / "config.json").read_text())["demo_random_weights"] is True
        assert "random weights" in (path / "README.md").read_text().lower()


def test_processor_details_match_the_real_conversions(demo_cache):
    _, paths = demo_cache
    # LLaVA-Med conversions ship patch_size=None and no chat template; the backend must fix that.
    med = json.loads((paths["demo-llava-med"] / "processor_config.json").read_text())
    assert med.get("patch_size") is None
    assert AutoProcessor.from_pretrained(paths["demo-llava-med"]).chat_template is None
    nxt = AutoProcessor.from_pretrained(paths["demo-llava"])
    assert nxt.patch_size == 14 and len(nxt.image_processor.image_grid_pinpoints) == 5
    rendered = nxt.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this image normal?"}]}],
        add_generation_prompt=True,
    )
    assert rendered == "[INST] <image>\nIs this image normal? [/INST]"
    gem = AutoProcessor.from_pretrained(paths["demo-gemma"])
    rendered = gem.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is this image normal?"}]}],
        add_generation_prompt=True,
    )
    assert (
        rendered
        == "<bos><start_of_turn>user\n<start_of_image>Is this image normal?<end_of_turn>\n<start_of_turn>model\n"
    )
    tok = gem.tokenizer
    assert tok.boi_token == "<start_of_image>" and tok.image_token == "<image_soft_token>"
    # AnyRes: a wide image gets more image tokens than a square one.
    wide = nxt(text=["<image>x"], images=[_image(200, 50)], return_tensors="pt")["input_ids"]
    square = nxt(text=["<image>x"], images=[_image(56, 56)], return_tensors="pt")["input_ids"]
    image_id = nxt.tokenizer.convert_tokens_to_ids("<image>")
    assert (wide == image_id).sum() != (square == image_id).sum()


def test_tokenizer_is_byte_level_and_noise_reads_as_words(demo_cache):
    _, paths = demo_cache
    tok = AutoTokenizer.from_pretrained(paths["demo-llava-med"])
    text = "Est-ce normal? ±5 mm, naïve 肺炎"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text
    assert len(tok.encode(" pneumonia", add_special_tokens=False)) == 1  # corpus words are whole tokens


def test_greedy_output_is_words_not_special_tokens(demo_cache):
    _, paths = demo_cache
    path = paths["demo-llava-med"]
    processor = AutoProcessor.from_pretrained(path)
    processor.patch_size = 14
    model = AutoModelForImageTextToText.from_pretrained(path)
    inputs = processor(text=["[INST] <image>\nIs this image abnormal? [/INST]"], images=[_image()], return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    text = processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    words = text.split()
    assert len(words) >= 4
    assert sum(w.strip(".,?").isalpha() for w in words) >= len(words) // 2


def test_second_call_reuses_the_cache(demo_cache, catalog, monkeypatch):
    root, paths = demo_cache
    marker_mtime = (paths["demo-gemma"] / demo_models.MARKER_FILE).stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt a cached demo model")

    monkeypatch.setattr(demo_models, "_build_into", no_build)
    assert ensure_demo_model(catalog.model("demo-gemma"), cache_dir=root) == paths["demo-gemma"]
    assert (paths["demo-gemma"] / demo_models.MARKER_FILE).stat().st_mtime_ns == marker_mtime
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_builds_are_seeded_and_identical(tmp_path, demo_cache, catalog):
    _, paths = demo_cache
    again = ensure_demo_model(catalog.model("demo-medgemma"), cache_dir=tmp_path)
    first, second = load_file(paths["demo-medgemma"] / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (again / "tokenizer.json").read_bytes() == (paths["demo-medgemma"] / "tokenizer.json").read_bytes()
    # demo-gemma and demo-medgemma differ only by seed, so their weights differ
    other = load_file(paths["demo-gemma"] / "model.safetensors")
    key = next(k for k in first if k.endswith("embed_tokens.weight"))
    assert not torch.equal(first[key], other[key])


def test_losing_a_build_race_uses_the_winners_copy(tmp_path, catalog, monkeypatch):
    spec = catalog.model("demo-llava-med")
    real_build = demo_models._build_into
    final = tmp_path / f"demo-llava-med-{config_hash('llava', 0, DemoSize.tiny())}"

    def build_then_lose(folder, *args):
        real_build(folder, *args)
        real_build_dir = final.with_name(final.name + ".other")  # another process finishes first
        real_build_dir.mkdir()
        real_build(real_build_dir, *args)
        real_build_dir.rename(final)

    monkeypatch.setattr(demo_models, "_build_into", build_then_lose)
    assert ensure_demo_model(spec, cache_dir=tmp_path) == final
    assert read_marker(final)["random_weights"] is True
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path))
    assert demo_models.cache_root() == tmp_path / "demo-models"


def test_demo_size_validation():
    with pytest.raises(ValueError, match="multiple"):
        DemoSize(llava_image_size=50, llava_patch_size=14)
    with pytest.raises(ValueError, match="square"):
        DemoSize(gemma_image_tokens=5)
    assert config_hash("gemma3", 0, DemoSize.tiny()) != config_hash("gemma3", 1, DemoSize.tiny())


def test_study_shapes_give_the_real_image_token_counts(tmp_path, catalog):
    """LLaVA-Med 576 tokens, Gemma 3 256 tokens, at small widths (and the model agrees with the processor)."""
    size = DemoSize.study_shapes(text_hidden=32, text_layers=1)
    for alias, expected in (("demo-llava-med", 576), ("demo-gemma", 256)):
        path = ensure_demo_model(catalog.model(alias), size=size, cache_dir=tmp_path)
        processor = AutoProcessor.from_pretrained(path)
        if alias == "demo-llava-med":
            processor.patch_size, processor.vision_feature_select_strategy = 14, "default"
            processor.num_additional_image_tokens = 1
            text = "[INST] <image>\nIs this image normal? [/INST]"
        else:
            text = "<start_of_image> Is this image normal?"
        inputs = processor(text=[text], images=[_image(300, 200)], return_tensors="pt")
        model = AutoModelForImageTextToText.from_pretrained(path)
        image_id = model.config.image_token_id
        assert int((inputs["input_ids"] == image_id).sum()) == expected
        with torch.inference_mode():
            model(**inputs)  # raises if features and image tokens disagree


def test_text_model_for_judge_and_diagnosis(tmp_path):
    path = ensure_demo_text_model(cache_dir=tmp_path)
    assert read_marker(path)["random_weights"] is True
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Is pneumonia present?"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<start_of_turn>model\n")
    ids = tok(prompt.removeprefix("<bos>"), return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
