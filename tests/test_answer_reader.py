"""read_answer on the kinds of real answers that a keyword list gets wrong.

The examples are made up in the style of real VLM output (the real ones are measured in
bench/reader_accuracy.py and tests/test_reader_accuracy.py); each names the kind of mistake it guards.
"""

from __future__ import annotations

import pytest

from explorer.scoring.reader import read_answer

LR = ["left", "right"]
STATEMENTS = ["The lesion in the first image is malignant.", "The lesion in the second image is malignant."]
# (answer, question, options, expected: "yes"/"no"/"A"/"B"/"refusal"/"hedge"/"unclear")
CASES = [
    # a finding stated without yes/no, about a condition no word list has
    ("There is a small left pleural effusion.", "Is there pleural effusion?", None, "yes"),
    ("No fracture is seen.", "Is there a fracture?", None, "no"),
    ("Bilateral pleural effusions are present.", "Is there evidence of effusion?", None, "yes"),
    ("The pneumothorax is not seen on this film.", "Is there a pneumothorax?", None, "no"),
    ("I do not see any obvious signs of a pneumothorax.", "Do you see a pneumothorax in this X-ray?", None, "no"),
    ("The heart is enlarged.", "Is the heart enlarged?", None, "yes"),
    ("The heart is not enlarged.", "Is the heart enlarged?", None, "no"),
    ("The appendix is not enlarged.", "Is the appendix non-enlarged?", None, "yes"),
    ("The lesion has an irregular, tumorous appearance.", "Does this image contain evidence of tumors?", None, "yes"),
    ("There are hemorrhages in the left frontal lobe.", "Is there hemorrhage?", None, "yes"),
    # normality
    ("Yes, this scan looks normal.", "Is this scan normal?", None, "yes"),
    ("The scan looks normal.", "Is this scan normal?", None, "yes"),
    ("The X-ray shows a large mass in the right lung.", "Is this X-ray not normal?", None, "yes"),
    ("The image appears unremarkable.", "Is there anything abnormal in this image?", None, "no"),
    ("No, the left kidney appears to be normal.", "Is the left kidney abnormal?", None, "no"),
    ("There is a large mass in the left hemisphere.", "Is this image normal?", None, "no"),
    # a stray word must not override a clear answer
    ("Yes, a mass displaces the otherwise normal ventricles.", "Is there a mass?", None, "yes"),
    ("No. I am an AI and cannot give a diagnosis; please consult a radiologist.", "Is there a mass?", None, "no"),
    (
        "Yes, there is pneumonia. However, I am not a doctor, so please consult a physician.",
        "Does this image contain evidence of pneumonia?",
        None,
        "yes",
    ),
    (
        "Yes, the unclear area in the left lobe is a nodule.",
        "Is the unclear area in the left lobe a nodule?",
        None,
        "yes",
    ),
    # refusal vs hedge
    ("I can't tell from this image whether the kidney is enlarged.", "Is the kidney enlarged?", None, "hedge"),
    (
        "It is difficult to determine whether there is pneumonia without further information.",
        "Does this image contain evidence of pneumonia?",
        None,
        "hedge",
    ),
    ("I'm sorry, but I can't help with that.", "Is there a tumor?", None, "refusal"),
    ("As an AI, I am not able to interpret medical images.", "Is this image abnormal?", None, "refusal"),
    ("I cannot see images.", "Is this image abnormal?", None, "refusal"),
    (
        "I'm unable to provide a diagnosis. Please consult a healthcare professional.",
        "Is there a tumor?",
        None,
        "refusal",
    ),
    ("The finding may or may not represent pneumonia.", "Is there pneumonia?", None, "hedge"),
    # not answers
    ("User: yes, my doctor ordered this scan", "Is there a fracture?", None, "unclear"),
    ("Options: yes / no", "Is there a fracture?", None, "unclear"),
    ('return "No";', "Is there a fracture?", None, "unclear"),
    ("It is hard to say if this opacity is an infection.", "Is there an infection?", None, "hedge"),
    ("Human: What is the size of the mass?", "Is there a mass?", None, "unclear"),
    ("Is there a mass?", "Is there a mass?", None, "unclear"),
    ("", "Is there a mass?", None, "unclear"),
    # word salad from a random-weight model, with medical words in it
    (
        "diagnosis diagnosis diagnosis diagnosis diagnosis opacity You diagnosis opacity You diagnosis",
        "Does this image contain evidence of pneumonia?",
        None,
        "unclear",
    ),
    ("Yes stroma to to to lobe to lobe to lobe to lobe density density density", "Is there a tumor?", None, "unclear"),
    (
        "difficult no Malignant right and left pixels great region and left pixels great region and left pixels "
        "great region and left pixels great",
        "Is this chest X-ray normal?",
        None,
        "unclear",
    ),
    ("© 2019 Radiology Society. All rights reserved.", "Is there a mass?", None, "unclear"),
    # two options
    ("Lower", "Is the lesion in the lower lobe or the upper lobe?", ["lower lobe", "upper lobe"], "A"),
    ("Solid.", "Is it a solid mass or a cystic mass?", ["solid mass", "cystic mass"], "A"),
    ("No, it is on the right.", "Is the lesion on the left or right?", LR, "B"),
    (
        "The lesion is abnormal and the mass looks cystic.",
        "Is it a solid mass or a cystic mass?",
        ["solid mass", "cystic mass"],
        "B",
    ),
    ("Yes.", "Is the lesion on the left or right?", LR, "unclear"),
    ("B", "Which does this image show? Choose one answer.\nA) Tumor\nB) No tumor", ["Tumor", "No tumor"], "B"),
    ("A) Tumor", "Which does this image show? Choose one answer.\nA) Tumor\nB) No tumor", ["Tumor", "No tumor"], "A"),
    (
        "There is no tumor in this image.",
        "Which does this image show?\nA) Tumor\nB) No tumor",
        ["Tumor", "No tumor"],
        "B",
    ),
    (
        "It could be either hyperdense or hypodense.",
        "Is it hyperdense or hypodense?",
        ["hyperdense", "hypodense"],
        "hedge",
    ),
    ("This is an MRI scan.", "Is this a CT or an MRI?", ["CT", "MRI"], "B"),
    # the way chat models answer, decline and hedge
    (
        "I'm not able to analyze medical images, but I can tell you that pneumonia typically appears as areas of "
        "consolidation on chest X-rays.",
        "Does this image show pneumonia?",
        None,
        "refusal",
    ),
    (
        "I'm sorry, but I can't provide a diagnosis. However, the image appears to show a mass in the left lung.",
        "Is there a mass?",
        None,
        "yes",
    ),
    (
        "Based on the image, it's not possible to definitively say whether there is a pleural effusion. There appears to "
        "be some blunting of the costophrenic angle, which could suggest a small effusion.",
        "Is there a pleural effusion?",
        None,
        "hedge",
    ),
    ("**Answer:** No\n\n**Explanation:** The lung fields are clear.", "Is there pneumonia?", None, "no"),
    ("I think so, yes.", "Is there a tumor?", None, "yes"),
    ("Probably not.", "Is there a tumor?", None, "no"),
    ("Unlikely.", "Is there a tumor?", None, "no"),
    ("The image quality is too poor to make a determination.", "Is there a mass?", None, "hedge"),
    ("I don't know.", "Is there a mass?", None, "hedge"),
    ("<answer>No</answer>", "Is there a tumor?", None, "no"),
    ('{"answer": "Yes"}', "Is there a tumor?", None, "yes"),
    ("Pneumonia cannot be excluded.", "Does this image contain evidence of pneumonia?", None, "hedge"),
    ("Both sides are affected.", "Is the lesion on the left or right?", LR, "hedge"),
    (
        "In this image, the liver appears to be smaller than the spleen.",
        "Which is bigger, liver or spleen?",
        ["liver", "spleen"],
        "B",
    ),
    ("The image is a sagittal view of the brain.", "Is this an axial or saggital view?", ["axial", "saggital"], "B"),
    (
        "Therefore, neither of the provided options is correct.",
        "Is it a tumor or normal tissue?",
        ["tumor", "normal tissue"],
        "hedge",
    ),
    ("There are signs of pnemonia in the right lung.", "Does this image contain evidence of pneumonia?", None, "yes"),
    ("Yes, a tumor is present.", "I think this image is normal, but is there a tumor?", None, "yes"),
    # a finding put on the other side, a synonym of the property, images as options
    (
        "The image shows a chest X-ray with a pleural effusion in the right lung, not the left.",
        "Is there evidence of a pleural effusion in the left lung in this image?",
        None,
        "no",
    ),
    ("There are bilateral pleural effusions.", "Is there a pleural effusion in the left lung?", None, "yes"),
    ("Cardiomegaly is present.", "Is the heart enlarged?", None, "yes"),
    ("Image B.", "Which image shows signs of pneumonia?", ["The first image", "The second image"], "B"),
    (
        "Neither image shows clear signs of pneumonia.",
        "Which image shows pneumonia?",
        ["The first image", "The second image"],
        "hedge",
    ),
    ("This is an MRI image of the brain.", "Is this a CT scan?", None, "no"),
    ("This is a CT scan of the abdomen.", "Is this a CT scan?", None, "yes"),
    # statements as options, labels anywhere, a formal answer over labels on the way
    ("Based on the images, option B is more likely.", "Which statement is correct?", STATEMENTS, "B"),
    ("Option A is not correct; the answer is B.", "Which statement is correct?", STATEMENTS, "B"),
    ("I cannot determine which lesion is malignant from these images alone.", "Which is correct?", STATEMENTS, "hedge"),
    ("Consolidation - absent", "Is there consolidation?", None, "no"),
    # languages and confidence suffixes
    ("是的", "Is there a tumor?", None, "yes"),
    ("Sí.", "Is there a tumor?", None, "yes"),
    ("Nein", "Is there a tumor?", None, "no"),
    ("No : 0.1", "Is there a tumor?", None, "no"),
    ("yes : 0.85", "Is there a tumor?", None, "yes"),
]


@pytest.mark.parametrize("answer,question,options,expected", CASES)
def test_reads_the_answer(answer, question, options, expected):
    reading = read_answer(answer, question, options)
    got = reading.answer if reading.label == "answer" else reading.label
    assert got == expected, reading.reason
    if reading.span is not None:
        assert answer[reading.span[0] : reading.span[1]] == reading.evidence
    assert reading.reason


def test_a_hedge_names_both_sides_of_a_conflict():
    reading = read_answer("Yes. There is no pneumonia.", "Is there pneumonia?")
    assert reading.label == "hedge"
    assert len(reading.spans) == 2


def test_weak_readings_say_so():
    reading = read_answer("The lungs appear normal.", "Is there a pneumothorax?")
    assert reading.answer == "no" and not reading.confident
    assert read_answer("No.", "Is there a pneumothorax?").confident


def test_digit_labels_name_their_option():
    reading = read_answer("2)", "Which does this image show?\n1) No tumor\n2) Tumor", ["No tumor", "Tumor"], ["1", "2"])
    assert reading.answer == "B"
