"""Presets load into typed specs; broken files get messages naming the file and the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from explorer.catalog.presets import PRESETS_DIR, Catalog, PresetError, PromptSelection
from explorer.prompts.variants import (
    all_variants,
    closed_variants,
    custom_variant,
    describe_variants,
    validate_prompt_text,
)


@pytest.fixture()
def catalog() -> Catalog:
    return Catalog()


def test_study_models_match_protocol(catalog):
    assert catalog.model("llava").hf_id == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert catalog.model("llava").architecture == "llava_next"
    assert catalog.model("llava-med").architecture == "llava"
    assert catalog.model("llava-med").fix_patch_size
    assert catalog.model("gemma").gated and catalog.model("medgemma").gated
    assert catalog.model("medgemma").dtype == "bfloat16"
    assert catalog.model("llava").prompt_format("paper") == "USER: <image>\n{prompt}\nASSISTANT:"
    assert catalog.model("llava").prompt_format("official") == "chat_template"
    assert catalog.model("llava-med").prompt_format("paper") == "[INST] <image>\n{prompt} [/INST]"
    for alias in ("llava", "llava-med"):
        g = catalog.model(alias).generation.settings()
        assert (g.max_new_tokens, g.min_new_tokens, g.do_sample) == (2048, 32, False)
    assert catalog.model("gemma").generation.settings().min_new_tokens == 0
    assert [m.alias for m in catalog.pair_of("medgemma")] == ["gemma", "medgemma"]


def test_every_demo_model_stands_in_for_a_study_model(catalog):
    demos = [m for m in catalog.models.values() if m.is_demo]
    assert sorted(m.demo_of for m in demos) == ["gemma", "llava", "llava-med", "medgemma"]
    for m in demos:
        assert m.architecture == catalog.model(m.demo_of).architecture
        assert "noise" in m.title


def test_twelve_prompts_with_polarity(catalog):
    for task in catalog.tasks:
        variants = closed_variants(catalog, task)
        assert len(variants) == 12
        assert len({v.prompt_id for v in variants}) == 12
        assert sum(v.one_word for v in variants) == 6
        by_id = {v.prompt_id: v for v in variants}
        assert by_id["abnormal"].yes_means == "positive"
        assert by_id["normal"].yes_means == "negative"
        assert by_id["guided"].yes_means == "positive"
        assert by_id["mc_pos_first"].option_map()["A"][0] == "positive"
        assert by_id["mc_neg_first"].option_map()["A"][0] == "negative"
        assert by_id["normal_ow"].text.endswith("\nAnswer in one word.")


def test_prompt_texts_are_the_studys(catalog):
    by_id = {v.prompt_id: v for v in closed_variants(catalog, "pneumonia")}
    assert by_id["guided"].text == (
        "Does this image contain evidence of pneumonia? "
        "Consider signs of consolidation, air bronchograms, and silhouettes."
    )
    assert by_id["mc_neg_first"].text == (
        "Which does this image show? Choose one answer.\nA) No pneumonia\nB) Pneumonia"
    )
    skin = {v.prompt_id: v for v in closed_variants(catalog, "skin_cancer")}
    assert skin["abnormal"].text == "Is this skin lesion abnormal?"
    histo = describe_variants(catalog.task("histo_idc"))
    assert histo[1].text == (
        "Describe this image in great detail and pay attention to any relevant features. "
        "Imagine a pathologist will use your description to diagnose invasive ductal carcinoma."
    )
    assert len(all_variants(catalog, "brain_tumor")) == 14


def test_original_code_defect_is_reproducible_on_request(catalog):
    faithful = PromptSelection(original_code_defects=True)
    brain = {v.prompt_id: v for v in closed_variants(catalog, "brain_tumor", faithful)}
    assert "mc_neg_first_ow" not in brain
    assert brain["mc_neg_first"].text.endswith("Imagine a physician will use your description.")
    pneumonia = closed_variants(catalog, "pneumonia", faithful)
    assert len(pneumonia) == 12  # the defect was only in the brain and IDC scripts


def test_diagnosis_templates(catalog):
    assert set(catalog.diagnosis_templates) == {"one_word", "tight", "disease"}
    t = catalog.task("pneumonia").diagnosis
    text = catalog.diagnosis_templates["one_word"].format(
        role=t.role, image_kind=t.image_kind, condition=t.condition, desc="DESC"
    )
    assert text.startswith("You are a careful clinician.\nGiven the following chest X-ray description")
    assert text.endswith("\n\nDescription:\nDESC\n")


def _copy_presets(tmp_path: Path) -> Path:
    target = tmp_path / "presets"
    shutil.copytree(PRESETS_DIR, target)
    return target


def test_unknown_key_names_file_and_key(tmp_path):
    d = _copy_presets(tmp_path)
    data = yaml.safe_load((d / "models.yaml").read_text())
    data["models"]["llava"]["colour"] = "red"
    (d / "models.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PresetError) as err:
        Catalog(d)
    assert "models.yaml" in str(err.value) and "models.llava.colour" in str(err.value)
    assert "unknown key" in str(err.value)


def test_missing_prompt_and_bad_polarity(tmp_path):
    d = _copy_presets(tmp_path)
    data = yaml.safe_load((d / "tasks.yaml").read_text())
    del data["tasks"]["pneumonia"]["prompts"]["normal"]
    (d / "tasks.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PresetError) as err:
        Catalog(d)
    assert "tasks.yaml" in str(err.value) and "tasks.pneumonia.prompts.normal" in str(err.value)

    data["tasks"]["pneumonia"]["prompts"]["normal"] = "Is this image normal?"
    data["tasks"]["pneumonia"]["labels"] = {"scheme": "two_columns", "negative_column": "No Finding"}
    (d / "tasks.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PresetError) as err:
        Catalog(d)
    assert "tasks.pneumonia.labels" in str(err.value) and "positive_column" in str(err.value)


def test_bad_yaml_and_bad_study_preset(tmp_path):
    d = _copy_presets(tmp_path)
    (d / "tasks.yaml").write_text("tasks: [unclosed\n")
    with pytest.raises(PresetError, match=r"tasks\.yaml.*not valid YAML"):
        Catalog(d)

    d = _copy_presets(tmp_path / "again")
    (d / "mine.yaml").write_text("name: mine\nmodels: [llava, gpt-9]\ntasks: [pneumonia]\n")
    with pytest.raises(PresetError, match=r"mine\.yaml: key 'models\.1': unknown model 'gpt-9'"):
        Catalog(d).study("mine")
    (d / "mine.yaml").write_text("name: mine\nmodels: [llava]\ntasks: [pneumonia]\nprompt_format: fancy\n")
    with pytest.raises(PresetError, match=r"mine\.yaml: key 'prompt_format'"):
        Catalog(d).study("mine")


def test_raw_prompt_format_needs_placeholder(tmp_path):
    d = _copy_presets(tmp_path)
    data = yaml.safe_load((d / "models.yaml").read_text())
    data["models"]["llava"]["prompt_formats"]["paper"] = "USER: <image>\nASSISTANT:"
    (d / "models.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(PresetError, match=r"models\.llava.*\{prompt\}"):
        Catalog(d)


def test_shipped_study_presets_load(catalog):
    assert {"paper", "demo"} <= set(catalog.study_names())
    paper = catalog.study("paper")
    assert paper.cases.per_class == 50 and paper.cases.seed == 42
    assert paper.judge.model == "gpt-5" and not paper.judge.send_temperature
    assert all(catalog.model(m).is_demo for m in catalog.study("demo").models)


def test_custom_prompts_keep_or_infer_polarity(catalog):
    task = catalog.task("pneumonia")
    by_id = {v.prompt_id: v for v in closed_variants(catalog, "pneumonia")}
    edited = custom_variant("Does this X-ray look normal to you?", task, by_id["normal"])
    assert edited.yes_means == "negative" and edited.custom
    assert custom_variant("Is there an abnormality?", task).yes_means == "positive"
    mc = custom_variant("Pick one.\nA) No pneumonia\nB) Pneumonia", task)
    assert mc.option_map() == {"A": ("negative", "No pneumonia"), "B": ("positive", "Pneumonia")}
    with pytest.raises(ValueError, match="empty"):
        validate_prompt_text("   ")
    with pytest.raises(ValueError, match="limit"):
        validate_prompt_text("x" * 100_000)
    assert validate_prompt_text("Is\x00 it\x07 normal?") == "Is it normal?"
