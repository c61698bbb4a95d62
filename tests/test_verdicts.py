"""The rule-based verdict parser on the study's six prompt types for its four tasks.

Prompts are built here as schema.PromptVariant objects with the study's wording and polarity
(../shared/PROTOCOL.md): "abnormal" yes->positive, "normal" yes->negative, "evidence" and "guided"
yes->positive, multiple choice "A) Pos B) Neg" and the swapped "A) Neg B) Pos".
"""

from __future__ import annotations

import pytest

from explorer.schema import PromptVariant, Verdict
from explorer.scoring.verdicts import RULES_METHOD, parse_verdict

ONE_WORD = "\nAnswer in one word."
MC_STEM = "Which does this image show? Choose one answer."

# task -> (abnormal question, normal question, evidence of X, guided signs, positive option, negative option)
TASKS = {
    "brain": (
        "Is this image abnormal?",
        "Is this image normal?",
        "tumors",
        "irregular masses and other atypical morphology.",
        "Tumor",
        "No tumor",
    ),
    "pneumonia": (
        "Is this image abnormal?",
        "Is this image normal?",
        "pneumonia",
        "consolidation, air bronchograms, and silhouettes.",
        "Pneumonia",
        "No pneumonia",
    ),
    "skin": (
        "Is this skin lesion abnormal?",
        "Is this skin lesion normal?",
        "malignant skin cancer",
        "irregular borders, asymmetry, uneven pigmentation, and other atypical morphology.",
        "Malignant",
        "Benign",
    ),
    "idc": (
        "Is this image abnormal?",
        "Is this image normal?",
        "invasive ductal carcinoma",
        "irregular masses and other atypical cell morphology.",
        "Carcinoma",
        "No carcinoma",
    ),
}


def variant(task: str, family: str, one_word: bool = False) -> PromptVariant:
    abnormal, normal, x, signs, pos, neg = TASKS[task]
    suffix = ONE_WORD if one_word else ""
    pid = family + ("_ow" if one_word else "")
    if family == "mc_pos_first":
        options = (("A", "positive", pos), ("B", "negative", neg))
    elif family == "mc_neg_first":
        options = (("A", "negative", neg), ("B", "positive", pos))
    else:
        stem, yes_means = {
            "abnormal": (abnormal, "positive"),
            "normal": (normal, "negative"),
            "evidence": (f"Does this image contain evidence of {x}?", "positive"),
            "guided": (f"Does this image contain evidence of {x}? Consider signs of {signs}", "positive"),
        }[family]
        return PromptVariant(prompt_id=pid, family=family, text=stem + suffix, yes_means=yes_means, one_word=one_word)
    text = f"{MC_STEM}\nA) {options[0][2]}\nB) {options[1][2]}{suffix}"
    return PromptVariant(prompt_id=pid, family=family, text=text, options=options, one_word=one_word)


# (task, family, one_word, answer, expected label)
CASES = [
    # ---- prompt 1 "Is this image abnormal?": yes -> positive
    ("brain", "abnormal", False, "Yes.", "positive"),
    ("brain", "abnormal", True, "yes", "positive"),
    ("brain", "abnormal", True, "No.", "negative"),
    ("brain", "abnormal", True, "**Yes**", "positive"),
    ("skin", "abnormal", True, "No", "negative"),
    ("idc", "abnormal", True, "Abnormal", "positive"),
    ("brain", "abnormal", True, "Normal.", "negative"),
    ("brain", "abnormal", True, "Tumor", "positive"),
    ("pneumonia", "abnormal", False, "The image appears normal.", "negative"),
    ("pneumonia", "abnormal", False, "No, the image does not appear abnormal.", "negative"),
    (
        "skin",
        "abnormal",
        False,
        "Yes, this skin lesion is abnormal. It has irregular borders and uneven pigmentation.",
        "positive",
    ),
    (
        "pneumonia",
        "abnormal",
        False,
        "Yes, there are signs of pneumonia, including consolidation in the right lower lobe.",
        "positive",
    ),
    (
        "brain",
        "abnormal",
        False,
        "Yes. However, I am not a doctor and you should consult a medical professional.",
        "positive",
    ),
    ("brain", "abnormal", False, "No. The image is normal with no abnormalities.", "negative"),
    ("brain", "abnormal", False, "Yes. The image is normal and shows no abnormalities.", "hedge"),
    ("idc", "abnormal", False, "I'm sorry, but I cannot provide a medical diagnosis based on this image.", "refusal"),
    (
        "pneumonia",
        "abnormal",
        False,
        "It is difficult to determine whether this image is abnormal without more clinical information.",
        "hedge",
    ),
    (
        "idc",
        "abnormal",
        False,
        "This histopathology image shows densely packed, irregular cells with large nuclei. "
        "Overall, the tissue appears abnormal.",
        "positive",
    ),
    ("brain", "abnormal", False, "", "unclear"),
    ("brain", "abnormal", True, "   \n\t ", "unclear"),
    # ---- prompt 2 "Is this image normal?": yes -> NEGATIVE
    ("brain", "normal", True, "Yes.", "negative"),
    ("pneumonia", "normal", True, "No.", "positive"),
    ("idc", "normal", True, "NO", "positive"),
    ("skin", "normal", True, "yes", "negative"),
    ("brain", "normal", False, "Yes, the image appears normal.", "negative"),
    ("brain", "normal", False, "No, the image is not normal. There is a mass in the left frontal lobe.", "positive"),
    ("pneumonia", "normal", False, "No, this image is abnormal.", "positive"),
    ("pneumonia", "normal", True, "Not normal.", "positive"),
    ("idc", "normal", True, "Normal", "negative"),
    ("skin", "normal", True, "Abnormal.", "positive"),
    (
        "skin",
        "normal",
        False,
        "Yes, this skin lesion appears to be normal, with a uniform color and regular borders.",
        "negative",
    ),
    ("pneumonia", "normal", False, "No abnormality is seen.", "negative"),
    ("pneumonia", "normal", True, "No abnormalities", "negative"),
    (
        "pneumonia",
        "normal",
        False,
        "The image does not look normal; there is a large consolidation in the left lung.",
        "positive",
    ),
    ("brain", "normal", False, "Yes, the image is abnormal.", "hedge"),
    (
        "pneumonia",
        "normal",
        False,
        "The chest X-ray shows the lungs, heart and ribs. The costophrenic angles are sharp. In conclusion, yes.",
        "negative",
    ),
    ("brain", "normal", False, "As an AI, I can't interpret medical images. Please consult a radiologist.", "refusal"),
    ("skin", "normal", False, "The lesion may or may not be normal.", "hedge"),
    ("idc", "normal", False, "Yes. No.", "hedge"),
    # ---- prompt 3 "Does this image contain evidence of X?": yes -> positive
    ("brain", "evidence", True, "Yes", "positive"),
    ("brain", "evidence", False, "No, there is no evidence of a tumor in this image.", "negative"),
    ("brain", "evidence", False, "There are signs of a tumor in the left hemisphere.", "positive"),
    ("pneumonia", "evidence", False, "There is no evidence of pneumonia.", "negative"),
    ("pneumonia", "evidence", False, "The lungs are clear without consolidation.", "negative"),
    ("pneumonia", "evidence", False, "I cannot rule out pneumonia based on this image.", "hedge"),
    ("pneumonia", "evidence", False, "Pneumonia cannot be ruled out.", "hedge"),
    ("skin", "evidence", False, "The image may or may not show malignant skin cancer.", "hedge"),
    ("skin", "evidence", True, "Malignant.", "positive"),
    ("skin", "evidence", True, "Benign.", "negative"),
    ("skin", "evidence", False, "This lesion appears benign.", "negative"),
    ("skin", "evidence", False, "This lesion is not benign.", "positive"),
    ("idc", "evidence", False, "The tissue is non-malignant.", "negative"),
    ("idc", "evidence", False, "The histopathology image shows invasive ductal carcinoma.", "positive"),
    ("idc", "evidence", False, "There is no invasive ductal carcinoma in this image.", "negative"),
    ("brain", "evidence", False, "Yes and no.", "hedge"),
    ("brain", "evidence", False, "I'm not able to determine whether there is a tumor from this image.", "hedge"),
    (
        "brain",
        "evidence",
        False,
        "As an AI language model, I cannot diagnose medical conditions. Please consult a radiologist.",
        "refusal",
    ),
    ("pneumonia", "evidence", False, "Please consult a medical professional for an accurate diagnosis.", "refusal"),
    ("pneumonia", "evidence", False, "No, I cannot determine that from this image.", "hedge"),
    ("pneumonia", "evidence", False, "It is not possible to tell whether there is pneumonia.", "hedge"),
    ("brain", "evidence", False, "I don't see any signs of a tumor.", "negative"),
    ("brain", "evidence", False, "Tumor is not visible.", "negative"),
    ("pneumonia", "evidence", False, "Pneumonia is absent.", "negative"),
    (
        "brain",
        "evidence",
        False,
        "The image shows a brain MRI. I am not a radiologist, but the image appears to show a mass, "
        "which could be a tumor. A radiologist should review it.",
        "positive",
    ),
    (
        "brain",
        "evidence",
        False,
        "This MRI shows the cerebral hemispheres, ventricles and the cerebellum in an axial slice. "
        "The contrast is good and the anatomy is well seen. In conclusion, yes.",
        "positive",
    ),
    (
        "brain",
        "evidence",
        False,
        "The image shows a tumor, and the surrounding brain tissue appears normal.",
        "positive",
    ),
    (
        "brain",
        "evidence",
        False,
        "Yes, the image shows a tumor, and the surrounding brain tissue appears normal.",
        "positive",
    ),
    ("brain", "evidence", True, "No tumor.", "negative"),
    ("pneumonia", "evidence", True, "Negative", "negative"),
    ("pneumonia", "evidence", True, "Positive", "positive"),
    ("idc", "evidence", True, "Present.", "positive"),
    ("idc", "evidence", True, "Absent", "negative"),
    ("brain", "evidence", False, "Yes, there is no tumor.", "hedge"),
    ("pneumonia", "evidence", False, "It could be pneumonia.", "positive"),
    ("pneumonia", "evidence", False, "It could be pneumonia, but it could also be normal.", "hedge"),
    ("pneumonia", "evidence", False, "The findings may suggest pneumonia, but it is difficult to determine.", "hedge"),
    (
        "pneumonia",
        "evidence",
        False,
        "It is difficult to be certain. However, the image shows clear signs of consolidation "
        "consistent with pneumonia.",
        "positive",
    ),
    ("brain", "evidence", False, "**Answer:** Yes\n\n**Explanation:** The image shows a mass.", "positive"),
    ("brain", "evidence", False, "Answer: No", "negative"),
    ("skin", "evidence", False, "The answer is yes.", "positive"),
    ("skin", "evidence", False, "The answer to your question is no.", "negative"),
    ("idc", "evidence", False, "I do not have enough information to answer.", "hedge"),
    ("brain", "evidence", False, "I cannot give a simple yes or no answer. Please consult a doctor.", "refusal"),
    (
        "skin",
        "evidence",
        False,
        "The lesion shows asymmetry and irregular borders, which are concerning features. "
        "A dermatologist should evaluate it.\n\nNo.",
        "negative",
    ),
    # ---- prompt 4, the guided variant: yes -> positive
    (
        "pneumonia",
        "guided",
        False,
        "Yes, there is consolidation and air bronchograms consistent with pneumonia.",
        "positive",
    ),
    (
        "pneumonia",
        "guided",
        False,
        "No. The lung fields are clear, with no consolidation, air bronchograms, or silhouette signs.",
        "negative",
    ),
    ("brain", "guided", True, "No", "negative"),
    ("skin", "guided", True, "Yes", "positive"),
    (
        "idc",
        "guided",
        False,
        "Yes, the cells show atypical morphology with irregular masses suggestive of invasive ductal carcinoma.",
        "positive",
    ),
    (
        "brain",
        "guided",
        False,
        "Based on the irregular masses, I would say yes, there is evidence of a tumor.",
        "positive",
    ),
    (
        "skin",
        "guided",
        False,
        "The lesion has regular borders and even pigmentation. There is no evidence of malignant skin cancer.",
        "negative",
    ),
    ("brain", "guided", False, "I'm unable to provide a diagnosis. Consider consulting a neuroradiologist.", "refusal"),
    # ---- prompt 5 multiple choice A = positive, B = negative
    ("brain", "mc_pos_first", True, "A", "positive"),
    ("brain", "mc_pos_first", True, "B", "negative"),
    ("brain", "mc_pos_first", False, "A) Tumor", "positive"),
    ("brain", "mc_pos_first", False, "B) No tumor", "negative"),
    ("pneumonia", "mc_pos_first", False, "**Answer: B**", "negative"),
    ("pneumonia", "mc_pos_first", False, "The answer is (A)", "positive"),
    ("pneumonia", "mc_pos_first", True, "No pneumonia", "negative"),
    ("pneumonia", "mc_pos_first", True, "Pneumonia", "positive"),
    ("skin", "mc_pos_first", True, "Benign", "negative"),
    ("skin", "mc_pos_first", True, "Malignant.", "positive"),
    ("idc", "mc_pos_first", True, "No carcinoma.", "negative"),
    ("idc", "mc_pos_first", True, "Carcinoma", "positive"),
    ("brain", "mc_pos_first", False, "(B)", "negative"),
    ("brain", "mc_pos_first", True, "B.", "negative"),
    ("brain", "mc_pos_first", True, "b", "negative"),
    ("brain", "mc_pos_first", False, "A tumor is visible in the left hemisphere.", "positive"),
    ("pneumonia", "mc_pos_first", False, "I would choose B) No pneumonia.", "negative"),
    ("skin", "mc_pos_first", False, "Option B", "negative"),
    ("brain", "mc_pos_first", False, "A) No tumor", "hedge"),
    ("brain", "mc_pos_first", False, "Both A and B are possible.", "hedge"),
    ("idc", "mc_pos_first", False, "I cannot choose between A and B without more information.", "hedge"),
    ("brain", "mc_pos_first", False, "The image shows a brain MRI scan with a large mass. A) Tumor", "positive"),
    (
        "brain",
        "mc_pos_first",
        False,
        "Answer: A) Tumor\nExplanation: The image shows a mass with surrounding edema.",
        "positive",
    ),
    ("brain", "mc_pos_first", True, "Yes", "unclear"),
    ("brain", "mc_pos_first", False, "The image shows no signs of a tumor. Answer: A", "hedge"),
    ("brain", "mc_pos_first", False, "A) Tumor\nB) No tumor", "hedge"),
    ("brain", "mc_pos_first", False, "A) Tumor\nB) No tumor\n\nThe image shows a tumor.", "positive"),
    (
        "pneumonia",
        "mc_pos_first",
        False,
        "## Analysis\nThe lungs are well expanded and clear.\n\n### Answer\n**B) No pneumonia**",
        "negative",
    ),
    (
        "skin",
        "mc_pos_first",
        False,
        "I'm not a dermatologist and cannot give medical advice, and a biopsy is the only way to be sure. "
        "That said, the answer is A) Malignant.",
        "positive",
    ),
    # ---- prompt 6 multiple choice swapped: A = negative, B = positive
    ("brain", "mc_neg_first", True, "A", "negative"),
    ("brain", "mc_neg_first", True, "B", "positive"),
    ("brain", "mc_neg_first", False, "A) No tumor", "negative"),
    ("brain", "mc_neg_first", False, "B) Tumor", "positive"),
    ("pneumonia", "mc_neg_first", False, "**Answer: B**", "positive"),
    ("pneumonia", "mc_neg_first", False, "The answer is (A)", "negative"),
    ("pneumonia", "mc_neg_first", True, "No pneumonia", "negative"),
    ("pneumonia", "mc_neg_first", True, "Pneumonia.", "positive"),
    ("skin", "mc_neg_first", False, "A) Benign", "negative"),
    ("skin", "mc_neg_first", False, "B) Malignant", "positive"),
    ("brain", "mc_neg_first", False, "A tumor is visible.", "positive"),
    ("brain", "mc_neg_first", False, "A) Tumor", "hedge"),
    ("idc", "mc_neg_first", False, "The correct answer is B) Carcinoma.", "positive"),
    ("idc", "mc_neg_first", True, "I choose A.", "negative"),
    (
        "pneumonia",
        "mc_neg_first",
        False,
        "Based on the image, there is a dense area of consolidation in the right lung. "
        "Therefore, the answer is B) Pneumonia.",
        "positive",
    ),
    ("pneumonia", "mc_neg_first", False, "The image shows normal lung fields.\n\nAnswer: A", "negative"),
    ("skin", "mc_neg_first", False, "Either A or B could be correct.", "hedge"),
    (
        "skin",
        "mc_neg_first",
        False,
        "I'm sorry, I can't help with diagnosing skin lesions. Please see a dermatologist.",
        "refusal",
    ),
    ("idc", "mc_neg_first", True, "No", "unclear"),
    # ---- noise from random-weight models and other junk
    ("brain", "abnormal", False, "ucc Pref ogram mitt ellipse Kw suffix aroo zyg tit Nat Rox quen dd vv", "unclear"),
    (
        "pneumonia",
        "mc_pos_first",
        False,
        "Pref ogram mitt ellipse normal Kw suffix aroo zyg tit Nat tumor Rox quen",
        "unclear",
    ),
    ("skin", "evidence", False, "asdkjh qwe zzz", "unclear"),
    ("idc", "normal", False, "<unk><unk><unk>", "unclear"),
    ("brain", "mc_neg_first", False, "!!!!!!", "unclear"),
    ("pneumonia", "guided", False, "12345", "unclear"),
]

DECIDED = ("positive", "negative")


def _id(case) -> str:
    task, family, ow, answer, expected = case
    return f"{task}-{family}{'-ow' if ow else ''}-{expected}-{answer[:30]!r}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_rule_verdicts(case):
    task, family, one_word, answer, expected = case
    verdict = parse_verdict(answer, variant(task, family, one_word))
    assert isinstance(verdict, Verdict)
    assert verdict.method == RULES_METHOD
    assert verdict.label == expected, verdict.detail
    assert verdict.detail
    if verdict.label in DECIDED:
        # Every decided verdict points at the text that decided it, for highlighting.
        assert verdict.span is not None and verdict.evidence.strip()
    if verdict.span is not None:
        s, e = verdict.span
        assert answer[s:e] == verdict.evidence
    else:
        assert verdict.evidence == ""


def test_enough_cases_for_every_prompt_type_and_task():
    assert len(CASES) >= 100
    families = {c[1] for c in CASES}
    assert families == {"abnormal", "normal", "evidence", "guided", "mc_pos_first", "mc_neg_first"}
    assert {c[0] for c in CASES} == set(TASKS)
    assert {c[4] for c in CASES} == {"positive", "negative", "refusal", "hedge", "unclear"}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_polarity_flips_with_the_prompt(task):
    """The same word means opposite things under opposite prompts."""
    assert parse_verdict("Yes.", variant(task, "abnormal")).label == "positive"
    assert parse_verdict("Yes.", variant(task, "normal")).label == "negative"
    assert parse_verdict("A", variant(task, "mc_pos_first")).label == "positive"
    assert parse_verdict("A", variant(task, "mc_neg_first")).label == "negative"
    neg_text = TASKS[task][5]
    for family in ("mc_pos_first", "mc_neg_first"):
        # The negative option's text never reads as the positive one it contains.
        assert parse_verdict(neg_text, variant(task, family, True)).label == "negative"


@pytest.mark.parametrize(
    "answer, family, evidence",
    [
        ("**Answer: B**", "mc_pos_first", "Answer: B"),
        ("The answer is (A)", "mc_pos_first", "The answer is (A)"),
        ("No pneumonia", "mc_pos_first", "No pneumonia"),
        ("Yes.", "abnormal", "Yes"),
        ("There is no evidence of pneumonia.", "evidence", "no evidence of pneumonia"),
        ("Pneumonia is absent.", "evidence", "Pneumonia is absent"),
        ("The image appears normal.", "abnormal", "normal"),
        ("The lungs look fine. In conclusion, yes.", "evidence", "yes"),
    ],
)
def test_evidence_is_the_deciding_text(answer, family, evidence):
    verdict = parse_verdict(answer, variant("pneumonia", family))
    assert verdict.evidence == evidence
    s, e = verdict.span
    assert answer[s:e] == evidence


def test_evidence_span_indexes_the_original_text_through_markdown():
    answer = "### Findings\n> The lungs are *clear*.\n\n**Final answer:** __B) No pneumonia__"
    verdict = parse_verdict(answer, variant("pneumonia", "mc_pos_first"))
    assert verdict.label == "negative"
    s, e = verdict.span
    assert answer[s:e] == verdict.evidence
    assert "B" in verdict.evidence


def test_echoed_prompt_is_not_read_as_the_answer():
    prompt = variant("brain", "mc_pos_first")
    assert parse_verdict(prompt.text + "\nAnswer: B", prompt).label == "negative"
    prompt = variant("brain", "normal")
    assert parse_verdict(prompt.text + " Yes.", prompt).label == "negative"


def test_description_prompts_are_not_parsed():
    describe = PromptVariant(
        prompt_id="describe", family="describe", kind="describe", text="Describe this image in great detail."
    )
    verdict = parse_verdict("The image shows a large tumor.", describe)
    assert verdict.label == "unclear"
    assert "description" in verdict.detail
    assert verdict.span is None


def test_prompt_without_polarity_is_unclear():
    bare = PromptVariant(prompt_id="x", family="custom", text="What is this?")
    assert parse_verdict("Yes", bare).label == "unclear"


def test_custom_option_texts_are_used():
    prompt = PromptVariant(
        prompt_id="custom_1",
        family="custom_mc",
        text="Pick one.\nA) Glioma present\nB) Healthy brain",
        options=(("A", "positive", "Glioma present"), ("B", "negative", "Healthy brain")),
        custom=True,
    )
    assert parse_verdict("Healthy brain", prompt).label == "negative"
    assert parse_verdict("Glioma present.", prompt).label == "positive"
    assert parse_verdict("B", prompt).label == "negative"


def test_verdict_correctness_uses_the_schema():
    prompt = variant("brain", "normal")
    assert parse_verdict("Yes", prompt).correct("negative") is True
    assert parse_verdict("No", prompt).correct("negative") is False
    assert parse_verdict("I'm sorry, I cannot help.", prompt).correct("negative") is None


# ---- whatever the text, the parser answers with a valid verdict whose span indexes the answer
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st

from explorer.schema import VERDICT_LABELS

_PIECES = st.sampled_from(
    [
        "Yes",
        "No",
        "yes",
        "no",
        ",",
        ".",
        "\n",
        " ",
        "**",
        "A)",
        "B)",
        "(A)",
        "B",
        "A",
        "Answer:",
        "the answer is",
        "not",
        "no evidence of",
        "normal",
        "abnormal",
        "tumor",
        "No tumor",
        "pneumonia",
        "No pneumonia",
        "benign",
        "malignant",
        "carcinoma",
        "may or may not",
        "cannot rule out",
        "I cannot provide a diagnosis",
        "consult a doctor",
        "difficult to determine",
        "both A and B",
        "In conclusion,",
        "?",
        "I would choose",
        "non-malignant",
        "is absent",
        "\u2019",
        "#",
        "_",
    ]
)
_FAMILIES = ["abnormal", "normal", "evidence", "guided", "mc_pos_first", "mc_neg_first"]


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(_PIECES, max_size=25),
    noise=st.text(max_size=40),
    task=st.sampled_from(sorted(TASKS)),
    family=st.sampled_from(_FAMILIES),
)
def test_any_text_gives_a_valid_verdict(pieces, noise, task, family):
    answer = " ".join(pieces) + noise
    verdict = parse_verdict(answer, variant(task, family))
    assert verdict.label in VERDICT_LABELS
    if verdict.span is not None:
        s, e = verdict.span
        assert 0 <= s < e <= len(answer) and answer[s:e] == verdict.evidence
    if verdict.label in DECIDED:
        assert verdict.span is not None
