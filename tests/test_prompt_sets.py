"""The study's strings: as its first upload ran them (paper-as-run) and as its refactor tidied them
(paper-clean), diffed against the authors' constants in ../shared/study/strings.json when present."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from explorer.catalog.presets import PresetError, PromptSelection, load_catalog
from explorer.probes.describe import diagnosis_prompt
from explorer.prompts.messages import build_request
from explorer.prompts.variants import (
    all_variants,
    closed_variants,
    diagnosis_templates,
    prompt_set_info,
    prompt_set_variants,
)
from explorer.schema import Case

STRINGS = Path(__file__).resolve().parents[2] / "shared" / "study" / "strings.json"
TASKS = ("brain_tumor", "pneumonia", "skin_cancer", "histo_idc")
GEN = {
    "brain_tumor": "gen/brain_mri.py",
    "pneumonia": "gen/pneumonia.py",
    "skin_cancer": "gen/skin_cancer.py",
    "histo_idc": "gen/histo.py",
}
DESC = {"brain_tumor": "brain", "pneumonia": "pneumonia", "skin_cancer": "skin_cancer", "histo_idc": "idc"}
AS_RUN = PromptSelection(prompt_set="paper-as-run")
needs_strings = pytest.mark.skipif(not STRINGS.is_file(), reason="../shared/study/strings.json is absent")


@pytest.fixture(scope="module")
def authors() -> dict:
    return json.loads(STRINGS.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@needs_strings
@pytest.mark.parametrize("task", TASKS)
def test_as_run_prompts_are_the_authors_byte_for_byte_in_their_order(task, authors):
    expected = authors["as_run_de96238"][GEN[task]]["PROMPTS_AS_RUN"]
    assert [v.text for v in prompt_set_variants("paper-as-run", task)] == expected


@needs_strings
@pytest.mark.parametrize("task", TASKS)
def test_paper_preset_sends_exactly_the_as_run_strings(task, authors, catalog):
    preset = catalog.study("paper")
    assert preset.prompts.prompt_set == "paper-as-run"
    sent = [v.text for v in all_variants(catalog, task, preset.prompts)]
    assert sorted(sent) == sorted(authors["as_run_de96238"][GEN[task]]["PROMPTS_AS_RUN"])
    # ...and the request carries the string untouched (no strip of the leading newline or trailing spaces).
    variant = next(v for v in closed_variants(catalog, task, preset.prompts) if v.prompt_id == "mc_pos_first")
    case = Case(case_id="x", task=task, image=None, image_hash="h")
    request = build_request(catalog.model("llava"), variant, case)
    assert request.messages[0]["content"][1] == variant.text and variant.text.startswith("\n")


@needs_strings
@pytest.mark.parametrize("task", TASKS)
def test_as_run_diagnosis_templates_are_the_authors(task, authors, catalog):
    expected = authors["as_run_de96238"][f"desc_eval/gpt5_desc_to_{DESC[task]}_eval.py"]["PROMPT_VARIANTS"]
    mine = diagnosis_templates("paper-as-run", task)
    assert mine == expected
    # Filled the way the describe pipeline fills them: only the description goes in.
    filled = diagnosis_prompt(mine["one_word"], catalog.task(task), "DESC")
    assert filled == expected["one_word"].replace("{desc}", "DESC")


@needs_strings
def test_models_and_judge_model_are_the_authors(authors, catalog):
    preset = catalog.study("paper")
    ids = {catalog.model(alias).hf_id for alias in preset.models}
    for script in GEN.values():
        assert set(authors["as_run_de96238"][script]["MODELS"]) == ids
    head = authors["head_1e9dde1"]["src/config.py"]
    assert {alias: catalog.model(alias).hf_id for alias in preset.models} == head["MODEL_ALIASES"]
    assert (
        preset.judge.model == head["GPT_JUDGE_MODEL_DEFAULT"]
        and preset.describe.model == head["GPT_DESC_MODEL_DEFAULT"]
    )


@needs_strings
def test_one_word_suffix_is_the_authors(authors, catalog):
    prompts = authors["as_run_de96238"]["gen/pneumonia.py"]["PROMPTS_AS_RUN"]
    assert prompts[8] == prompts[0] + catalog.one_word_suffix


def test_fused_prompt_of_the_missing_comma_is_reproduced(catalog):
    for task in ("brain_tumor", "histo_idc"):
        variants = {v.prompt_id: v for v in all_variants(catalog, task, AS_RUN)}
        fused = variants["mc_neg_first"]
        describe_text = "Describe this image in great detail and pay attention to any relevant"
        assert describe_text in fused.text and fused.kind == "closed"
        assert [o[:2] for o in fused.options] == [("A", "negative"), ("B", "positive")]
        assert "mc_neg_first_ow" not in variants and "describe" not in variants  # both swallowed by the comma
        assert len([v for v in variants.values() if v.kind == "closed"]) == 11
    for task in ("pneumonia", "skin_cancer"):
        assert len(closed_variants(catalog, task, AS_RUN)) == 12


def test_as_run_polarity_and_options_are_read_from_the_text(catalog):
    variants = {v.prompt_id: v for v in closed_variants(catalog, "pneumonia", AS_RUN)}
    assert variants["normal"].yes_means == "negative" and variants["guided_ow"].yes_means == "positive"
    assert variants["mc_neg_first"].options == (("A", "negative", "No Pneumonia"), ("B", "positive", "Pneumonia"))
    assert variants["mc_pos_first_ow"].one_word and variants["mc_pos_first_ow"].options[0][1] == "positive"
    # The selection's filters apply to the as-run set as to the clean one.
    only = PromptSelection(prompt_set="paper-as-run", families=("normal",), one_word="only")
    assert [v.prompt_id for v in closed_variants(catalog, "pneumonia", only)] == ["normal_ow"]


def _normalised(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def test_clean_and_as_run_differ_exactly_where_the_protocol_says(catalog):
    """paper-clean (tasks.yaml, the 1e9dde1 refactor) against paper-as-run, whitespace set aside."""
    differences = {}
    for task in TASKS:
        clean = {v.prompt_id: v.text for v in all_variants(catalog, task)}
        as_run = {v.prompt_id: v.text for v in all_variants(catalog, task, AS_RUN)}
        assert set(as_run) <= set(clean)
        for pid, text in as_run.items():
            if _normalised(text) != _normalised(clean[pid]):
                differences.setdefault(task, set()).add(pid)
    assert differences == {
        "brain_tumor": {"mc_neg_first"},  # the fused prompt
        "histo_idc": {"mc_neg_first", "guided", "guided_ow"},  # fused; no final period
        "pneumonia": {"guided", "guided_ow", "mc_pos_first", "mc_neg_first", "mc_pos_first_ow", "mc_neg_first_ow"},
    }
    pneumonia = {v.prompt_id: v.text for v in all_variants(catalog, "pneumonia", AS_RUN)}
    assert pneumonia["guided"].startswith("Does this image contain pneumonia? Consider")
    assert "No Pneumonia" in pneumonia["mc_pos_first"]
    idc = {v.prompt_id: v.text for v in all_variants(catalog, "histo_idc", AS_RUN)}
    assert idc["guided"].endswith("cell morphology")
    # Whitespace: every as-run A/B prompt starts with a newline and indents its lines; some end in spaces.
    for task in TASKS:
        for v in closed_variants(catalog, task, AS_RUN):
            if v.family.startswith("mc_"):
                assert v.text.startswith("\n   ") and re.search(r"\n {3,4}A\) ", v.text), (task, v.prompt_id)
    assert "B) No carcinoma \n" in idc["mc_pos_first"]


def test_presets_say_which_set_and_why(catalog):
    assert catalog.study("paper").prompts.prompt_set == "paper-as-run"
    assert catalog.study("paper-clean").prompts.prompt_set == "paper-clean"
    info = prompt_set_info("paper-as-run")
    assert "de96238" in info["source"] and "published numbers" in info["why"]


def test_a_broken_prompt_set_file_says_where(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text(
        "tasks:\n  pneumonia:\n    options: {positive: Pneumonia, negative: No pneumonia}\n"
        "    prompts:\n    - {id: mc_pos_first, family: mc_pos_first, text: 'Which?\\nA) Yes\\nB) No'}\n"
    )
    with pytest.raises(PresetError, match=r"broken.yaml: tasks.pneumonia.prompts.0: the A\) and B\) lines"):
        prompt_set_variants("broken", "pneumonia", tmp_path)
    with pytest.raises(PresetError, match="has no task 'brain_tumor'"):
        prompt_set_variants("broken", "brain_tumor", tmp_path)
