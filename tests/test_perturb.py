"""Wording families: each keeps or flips the meaning as declared, with the polarity right, the same under a seed."""

from __future__ import annotations

import textwrap

import pytest

from explorer.catalog.presets import PresetError, PromptSelection, load_catalog
from explorer.prompts.perturb import (
    FamilySpec,
    Parts,
    decompose,
    family_group,
    generate,
    load_families,
    perturb,
    task_words,
    variant_id,
)
from explorer.prompts.variants import closed_variants
from explorer.runs.store import polarity_of, variant_from_row
from explorer.schema import PromptVariant
from explorer.scoring.question_focus import question_polarity
from explorer.scoring.verdicts import parse_verdict

CATALOG = load_catalog()
FAMILIES = load_families()
OPPOSITE = {"positive": "negative", "negative": "positive"}
TEXT_FAMILIES = [n for n in FAMILIES.names() if FAMILIES.family(n).generator not in ("study", "paraphrase")]


def study(task="brain_tumor"):
    return {v.prompt_id: v for v in closed_variants(CATALOG, task)}


def words(task="brain_tumor"):
    return task_words(CATALOG, task, FAMILIES)


def all_of(family, parent, seed=0, task="brain_tumor"):
    return perturb(parent, FAMILIES.family(family), words(task), seed=seed, count=0, catalog=CATALOG)


def read(text_answer, variant):
    return parse_verdict(text_answer, variant).label


def assert_reads_right(variant):
    """A plain answer reads as the variant's polarity says: "Yes"/"No", or each option by its name and label."""
    if variant.options:
        for letter, reading, text in variant.options:
            assert read(text, variant) == reading, (text, variant.text)
            if letter != text and not letter.isdigit():  # bare digits: see test_digit_labels_read_as_options
                assert read(f"{letter})", variant) == reading, (letter, variant.text)
            assert read(f"Option {letter}", variant) == reading, (letter, variant.text)
    else:
        assert read("Yes.", variant) == variant.yes_means, variant.text
        assert read("No.", variant) == OPPOSITE[variant.yes_means], variant.text


# ---------------------------------------------------------------- the file and its loader
def test_every_declared_family_loads_with_a_known_generator():
    assert {
        "casing",
        "punctuation",
        "whitespace",
        "typos",
        "answer_format",
        "option_order",
        "option_labels",
        "rephrase",
        "synonyms",
        "polarity_flip",
        "framing",
        "study",
        "paraphrase",
    } <= set(FAMILIES.names())
    assert FAMILIES.family("polarity_flip").meaning == "flipped"
    assert all(FAMILIES.family(n).meaning == "kept" for n in FAMILIES.names() if n != "polarity_flip")
    assert set(FAMILIES.findings) == set(CATALOG.tasks)


def test_a_user_adds_a_family_in_yaml_only(tmp_path):
    path = tmp_path / "families.yaml"
    path.write_text(
        textwrap.dedent("""
        families:
          my_questions:
            title: My questions
            generator: templates
            count: 2
            params: {yes_no: ["Would you say there is {finding} here?", "Any {finding}?"]}
        tasks: {brain_tumor: {findings: [tumors]}}
    """)
    )
    mine = load_families(path)
    out = generate(
        [study()["evidence"]], ["my_questions"], task_words(CATALOG, "brain_tumor", mine), family_catalog=mine
    )
    assert [p.variant.text for p in out] == ["Would you say there is tumors here?", "Any tumors?"]
    assert all(p.variant.yes_means == "positive" and p.variant.family == "my_questions" for p in out)


@pytest.mark.parametrize(
    "body, message",
    [
        ("families: {x: {generator: nope}}", "generator"),
        ("families: {x: {generator: casing, meaning: maybe}}", "meaning"),
        ("families: {x: {generator: casing, count: 0}}", "count"),
        ("families: {x: {generator: casing, colour: red}}", "unknown keys"),
        ("families: {}", "families"),
    ],
)
def test_a_bad_family_file_says_which_key(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(PresetError, match=message):
        load_families(path)


def test_unknown_family_name_lists_the_known_ones():
    with pytest.raises(PresetError, match="casing"):
        generate([study()["evidence"]], ["no_such_family"], words())


# ---------------------------------------------------------------- taking a wording apart
@pytest.mark.parametrize("task", sorted(CATALOG.tasks))
def test_the_study_wordings_decompose_and_compose_back(task):
    for v in closed_variants(CATALOG, task):
        parts = decompose(v, CATALOG.one_word_suffix)
        assert parts is not None and parts.text() == v.text, v.prompt_id
        assert parts.variant(v).options == v.options and parts.variant(v).one_word == v.one_word


def test_a_description_prompt_is_not_perturbed():
    describe = PromptVariant("describe", "describe", "Describe this image.", kind="describe")
    assert decompose(describe) is None
    assert generate([describe], TEXT_FAMILIES, words()) == []


# ---------------------------------------------------------------- each family
@pytest.mark.parametrize("family", TEXT_FAMILIES)
@pytest.mark.parametrize("task", sorted(CATALOG.tasks))
def test_every_variant_reads_as_its_polarity_says(family, task):
    """Whatever the edit, a plain "Yes"/"No" or a chosen option reads as the variant's own polarity."""
    for parent in closed_variants(CATALOG, task):
        for item in all_of(family, parent, task=task):
            v = item.variant
            assert v.family == family and v.parent == parent.prompt_id and v.text != parent.text
            assert bool(v.options) == bool(parent.options)  # yes/no stays yes/no, choice stays choice
            assert_reads_right(v)


@pytest.mark.parametrize(
    "family", ["casing", "punctuation", "whitespace", "typos", "answer_format", "framing", "option_labels"]
)
def test_meaning_kept_families_keep_the_polarity(family):
    for parent in study().values():
        for item in all_of(family, parent):
            v = item.variant
            assert item.meaning == "kept"
            assert v.yes_means == parent.yes_means
            assert [o[1] for o in v.options] == [o[1] for o in parent.options]
            assert [o[2].lower() for o in v.options] == [o[2].lower() for o in parent.options]


def test_surface_edits_change_only_the_surface():
    ev = study()["evidence_ow"]
    texts = {
        i.label: i.variant.text for i in all_of("casing", ev) + all_of("punctuation", ev) + all_of("whitespace", ev)
    }
    assert texts["upper case"] == "DOES THIS IMAGE CONTAIN EVIDENCE OF TUMORS?\nANSWER IN ONE WORD."
    assert texts["no question mark"] == "Does this image contain evidence of tumors\nAnswer in one word."
    assert texts["leading newline"] == "\n" + ev.text
    assert texts["one line"] == "Does this image contain evidence of tumors? Answer in one word."
    for text in texts.values():
        assert " ".join(text.lower().replace("?", " ").replace(".", " ").split()) == " ".join(
            ev.text.lower().replace("?", " ").replace(".", " ").split()
        )


def test_typos_are_seeded_and_spare_the_words_that_carry_polarity():
    normal = study()["normal"]
    one = [i.variant.text for i in all_of("typos", normal, seed=7)]
    assert one == [i.variant.text for i in all_of("typos", normal, seed=7)]
    assert one != [i.variant.text for i in all_of("typos", normal, seed=8)]
    for item in all_of("typos", normal, seed=7) + all_of("typos", normal, seed=8):
        assert item.variant.text.endswith("normal?") and item.variant.yes_means == "negative"
        assert item.params["seed"] is not None  # the draw's seed is part of the id's parameters


def test_answer_format_sets_one_word_from_the_instruction():
    ev = study()["evidence"]
    by_text = {i.variant.text.split("\n")[-1]: i.variant for i in all_of("answer_format", ev)}
    assert by_text["Answer in one word."].one_word and not by_text["Answer yes or no."].one_word
    mc = study()["mc_pos_first_ow"]
    instructions = [i.variant.text.split("\n")[-1] for i in all_of("answer_format", mc)]
    assert "Respond with A or B." in instructions and 'Reply in JSON: {"answer": "A" or "B"}' in instructions
    labelled = all_of("option_labels", mc)[0].variant  # 1) 2)
    assert "Respond with 1 or 2." in [i.variant.text.split("\n")[-1] for i in all_of("answer_format", labelled)]


def test_rephrase_and_synonyms_ask_about_the_finding_with_yes_meaning_positive():
    normal = study()["normal"]  # a yes means NEGATIVE here; the templates ask about the finding instead
    for item in all_of("rephrase", normal) + all_of("synonyms", normal):
        assert item.variant.yes_means == "positive"
        assert question_polarity(item.variant.text) == "positive", item.variant.text
    synonyms = [i.variant.text for i in all_of("synonyms", study()["evidence"])]
    assert "Does this image contain evidence of a neoplasm?" in synonyms


@pytest.mark.parametrize("task", ["brain_tumor", "pneumonia"])
def test_polarity_flips_flip_the_reading(task):
    vs = study(task)
    for parent in (vs["evidence"], vs["abnormal"], vs["normal"], vs["guided_ow"]):
        items = all_of("polarity_flip", parent, task=task)
        assert items
        for item in items:
            v = item.variant
            assert item.meaning == "flipped" and v.yes_means == OPPOSITE[parent.yes_means]
            # The reader's own reading of the new question agrees with the flipped polarity.
            assert question_polarity(decompose(v).stem) == v.yes_means, v.text
    assert [i.variant.text for i in all_of("polarity_flip", vs["abnormal"])][0] == "Is this image normal?"
    assert [i.variant.text for i in all_of("polarity_flip", vs["normal"])][0] == "Is this image abnormal?"


@pytest.mark.parametrize("task", ["skin_cancer", "histo_idc"])
def test_the_reader_sees_the_flip_of_multiword_findings(task):
    for item in all_of("polarity_flip", study(task)["evidence"], task=task):
        assert question_polarity(item.variant.text) == item.variant.yes_means, item.variant.text


def test_multiple_choice_flip_and_order():
    mc = study()["mc_pos_first"]  # A) Tumor B) No tumor
    flipped = all_of("polarity_flip", mc)[0].variant
    assert flipped.text.startswith("Which does this image not show?")
    assert [(o[0], o[1]) for o in flipped.options] == [("A", "negative"), ("B", "positive")]
    assert read("A", flipped) == "negative"
    order = all_of("option_order", mc)[0].variant
    assert order.text.endswith("A) No tumor\nB) Tumor")
    assert [(o[0], o[1]) for o in order.options] == [("A", "negative"), ("B", "positive")]


def test_option_labels_set_the_letter_to_the_label_shown():
    mc = study()["mc_neg_first_ow"]  # A) No tumor B) Tumor
    by_style = {i.params["style"]: i.variant for i in all_of("option_labels", mc)}
    assert set(by_style) == {"1)", "(a)", "none"}
    assert "\n1) No tumor\n2) Tumor\n" in by_style["1)"].text
    assert [o[0] for o in by_style["1)"].options] == ["1", "2"]
    assert "\n(a) No tumor\n(b) Tumor\n" in by_style["(a)"].text
    assert [o[0] for o in by_style["(a)"].options] == ["a", "b"]
    assert read("(a)", by_style["(a)"]) == "negative" and read("(b)", by_style["(a)"]) == "positive"
    assert read("b", by_style["(a)"]) == "positive"
    assert "\nNo tumor\nTumor\n" in by_style["none"].text
    assert read("Tumor", by_style["none"]) == "positive" and read("No tumor", by_style["none"]) == "negative"
    assert read("Option 2", by_style["1)"]) == "positive" and read("2) Tumor", by_style["1)"]) == "positive"


def test_digit_labels_read_as_options():
    labelled = {i.params["style"]: i.variant for i in all_of("option_labels", study()["mc_neg_first"])}["1)"]
    assert read("1", labelled) == "negative" and read("2)", labelled) == "positive"


def test_json_answers_are_read():
    json_variant = [i.variant for i in all_of("answer_format", study()["evidence"]) if "JSON" in i.variant.text][0]
    assert read('{"answer": "yes"}', json_variant) == "positive"
    assert read('{"answer": "no"}', json_variant) == "negative"


def test_framing_adds_a_role_cue_context_or_confidence_and_keeps_the_question():
    ev = study()["evidence"]
    items = all_of("framing", ev)
    kinds = {i.params["kind"] for i in items}
    assert kinds == {"role", "leading_cue", "patient_context", "confidence"}
    for item in items:
        assert ev.text in item.variant.text and item.variant.yes_means == "positive"
    role = [i.variant.text for i in items if i.params["kind"] == "role"][0]
    assert role == "You are a radiologist. Does this image contain evidence of tumors?"


def test_the_study_family_is_the_twelve():
    items = perturb(study()["evidence"], FAMILIES.family("study"), words(), count=0, catalog=CATALOG)
    assert [i.variant for i in items] == closed_variants(CATALOG, "brain_tumor")
    assert len(items) == 12 and {family_group(i.variant.family) for i in items} == {"study"}


# ---------------------------------------------------------------- ids, seeds, counts, paraphrases
def test_ids_come_from_family_parent_and_parameters():
    ev = study()["evidence"]
    first = generate([ev], TEXT_FAMILIES, words(), seed=3)
    again = generate([ev], TEXT_FAMILIES, words(), seed=3)
    assert [(p.variant.prompt_id, p.variant.text) for p in first] == [
        (p.variant.prompt_id, p.variant.text) for p in again
    ]
    assert len({p.variant.prompt_id for p in first}) == len(first)
    casing = all_of("casing", ev)[0]
    assert casing.variant.prompt_id == variant_id("casing", ev, casing.params)
    # A deterministic edit does not depend on the seed; a random one does.
    assert all_of("casing", ev, seed=1)[0].variant.prompt_id == all_of("casing", ev, seed=2)[0].variant.prompt_id
    assert all_of("typos", ev, seed=1)[0].variant.prompt_id != all_of("typos", ev, seed=2)[0].variant.prompt_id


def test_count_picks_a_seeded_subset():
    ev = study()["evidence"]
    spec = FAMILIES.family("rephrase")
    every = [i.variant.prompt_id for i in perturb(ev, spec, words(), count=0)]
    picked = [i.variant.prompt_id for i in perturb(ev, spec, words(), seed=5, count=2)]
    assert len(every) == 5 and len(picked) == 2 and set(picked) <= set(every)
    assert picked == [i.variant.prompt_id for i in perturb(ev, spec, words(), seed=5, count=2)]
    assert len(perturb(ev, spec, words())) == spec.count


def test_paraphrases_come_from_the_configured_text_model_and_keep_polarity():
    calls = []

    def fake_text_model(instruction, n, seed):
        calls.append((instruction, n, seed))
        return ["Do you see a tumour in this scan?", "Is this scan free of tumors?", "  "][:n]

    ev = study()["evidence_ow"]
    items = perturb(ev, FAMILIES.family("paraphrase"), words(), seed=4, count=3, paraphraser=fake_text_model)
    assert calls and "Does this image contain evidence of tumors?" in calls[0][0] and calls[0][1:] == (3, 4)
    # The second paraphrase asks the other way round: it is dropped, not given a guessed polarity.
    assert [i.variant.text for i in items] == ["Do you see a tumour in this scan?\nAnswer in one word."]
    assert items[0].variant.yes_means == "positive"
    with pytest.raises(ValueError, match="text model"):
        perturb(ev, FAMILIES.family("paraphrase"), words())


def test_the_store_keeps_family_and_parent():
    item = all_of("casing", study()["normal"])[0]
    row = {
        "prompt_id": item.variant.prompt_id,
        "prompt_family": item.variant.family,
        "prompt_text": item.variant.text,
        "prompt_kind": "closed",
        "polarity": polarity_of(item.variant),
        "one_word": 0,
        "custom": 0,
    }
    assert variant_from_row(row) == item.variant
    assert "parent" not in polarity_of(study()["normal"])  # the study's own rows are unchanged


def test_parts_labels_phrase():
    parts = Parts(stem="Which?", options=(("positive", "Tumor"), ("negative", "No tumor")), label_style="(a)")
    assert parts.labels_phrase() == "a or b" and parts.text() == "Which?\n(a) Tumor\n(b) No tumor"
    assert FamilySpec("x", "X", "casing").count == 3


def test_a_sweep_spec_adds_the_families_edits_seeded_by_its_seed():
    from explorer.runs.sweep import SweepSpec

    preset = CATALOG.study("demo")
    plain = SweepSpec.from_preset(preset, prompt_ids=["evidence", "mc_pos_first"])
    mixed = SweepSpec.from_preset(
        preset, prompt_ids=["evidence", "mc_pos_first"], families=["typos", "study"], family_count=1, seed=3
    )
    variants = mixed.variants(CATALOG, "pneumonia")
    assert variants[:2] == plain.variants(CATALOG, "pneumonia")
    typos = [v for v in variants if v.family == "typos"]
    assert len(typos) == 2 and {v.parent for v in typos} == {"evidence", "mc_pos_first"}
    # the study family adds one of the study's other wordings (the two chosen are already there)
    assert len([v for v in variants if family_group(v.family) == "study"]) == 3
    assert [v.prompt_id for v in mixed.variants(CATALOG, "pneumonia")] == [v.prompt_id for v in variants]
    with pytest.raises(PresetError, match="unknown wording family"):
        SweepSpec.from_preset(preset, families=["nope"]).variants(CATALOG, "pneumonia")


def test_the_perturb_command_lists_wordings_and_names_bad_families(capsys):
    from explorer.cli.main import main

    assert main(["perturb", "--task", "pneumonia", "--images", "none", "--families", "option_labels", "--list"]) == 0
    out = capsys.readouterr().out
    assert "3 wordings from 2 starting wording(s) by 1 family (seed 0)" in out
    assert "1=positive 2=negative" in out and "a=positive b=negative" in out
    assert main(["perturb", "--task", "pneumonia", "--images", "none", "--families", "nope", "--list"]) == 2
    assert "unknown wording family 'nope'" in capsys.readouterr().err


def test_a_configured_text_model_writes_the_paraphrase_family():
    from explorer.cli.perturb import backend_paraphraser
    from explorer.schema import Response

    class TextModel:
        def __init__(self, reply="", error=None):
            self.reply, self.error, self.asked = reply, error, []

        def generate(self, requests, on_text=None):
            self.asked.extend(requests)
            return [Response(text=self.reply, error=self.error)]

    model = TextModel(
        "1. Do you see pneumonia on this X-ray?\n2) Is pneumonia visible here?\n\n- Is this X-ray free of pneumonia?"
    )
    items = perturb(
        study("pneumonia")["evidence"],
        FAMILIES.family("paraphrase"),
        words("pneumonia"),
        seed=2,
        count=3,
        paraphraser=backend_paraphraser(model, "text-model"),
    )
    asked = model.asked[0]
    assert asked.model == "text-model" and asked.generation.seed == 2 and "Give 3 different versions" in asked.text()
    # numbering stripped; the one that asks the other way round is dropped rather than guessed
    assert [i.variant.text for i in items] == ["Do you see pneumonia on this X-ray?", "Is pneumonia visible here?"]
    with pytest.raises(ValueError, match="text-model failed: HTTP 500"):
        perturb(
            study()["evidence"],
            FAMILIES.family("paraphrase"),
            words(),
            paraphraser=backend_paraphraser(TextModel(error="HTTP 500"), "text-model"),
        )


def test_an_edit_that_lands_on_a_study_wording_is_left_to_the_study():
    abnormal = study()["abnormal"]
    free = generate([abnormal], ["polarity_flip"], words(), count=0)
    assert "Is this image normal?" in [p.variant.text for p in free]  # no catalog: the flip search wants it
    with_catalog = generate([abnormal], ["polarity_flip"], words(), catalog=CATALOG, count=0)
    assert "Is this image normal?" not in [p.variant.text for p in with_catalog] and with_catalog


def test_the_study_as_run_keeps_its_fused_description_request_through_every_edit():
    """paper-as-run's prompt 6 (brain, IDC) has the description prompt fused after its options: every edit
    keeps it; the as-run whitespace is normalised (one line per part)."""
    as_run = {
        v.prompt_id: v for v in closed_variants(CATALOG, "brain_tumor", PromptSelection(prompt_set="paper-as-run"))
    }
    fused = as_run["mc_neg_first"]
    tail = "Describe this image in great detail"
    assert tail in fused.text
    for family in ("casing", "option_labels", "option_order", "framing", "polarity_flip"):
        for item in all_of(family, fused):
            assert tail.lower() in item.variant.text.lower(), (family, item.variant.text)
            assert_reads_right(item.variant)


def test_a_wording_the_reader_cannot_read_like_its_parent_is_left_out():
    """A typo in the finding ("tumrs") or a cue naming it leaves the rule reader unable to read
    "There are signs of tumors": a flip there would be the reader's, so generate() leaves it out."""
    ev = study()["evidence"]
    every = generate([ev], ["typos", "framing"], words(), seed=0, count=0, reader_check=False)
    kept = generate([ev], ["typos", "framing"], words(), seed=0, count=0)
    dropped = {p.variant.text for p in every} - {p.variant.text for p in kept}
    assert "I think this image is normal, but please check. Does this image contain evidence of tumors?" in dropped
    assert all(read("There are signs of tumors in this image.", p.variant) == "positive" for p in kept)
    assert any(read("There are signs of tumors in this image.", p.variant) != "positive" for p in every)
    # a synonym is read with its own word
    synonyms = generate([ev], ["synonyms"], words(), count=0)
    assert "Does this image contain evidence of a neoplasm?" in [p.variant.text for p in synonyms]
    # the count is filled from the candidates that pass
    assert len(generate([ev], ["framing"], words(), seed=1, count=6)) == 6
