"""Importing the study's result CSVs and reading the explorer's own answer exports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from explorer.analysis.metrics import cell_metrics
from explorer.catalog.presets import PromptSelection, load_catalog
from explorer.prompts.variants import closed_variants
from explorer.runs.study_import import (
    ResultFileError,
    import_study_results,
    read_answers_file,
    read_study_results,
    study_family,
    study_prompt_id,
)

TOKENS = {"brain_tumor": ("TUMOR", "NO_TUMOR"), "pneumonia": ("POSITIVE", "NEGATIVE")}
# The study's prompt lists per task as its config names them: (prompt_type, text).
BRAIN_PROMPTS = [
    ("yesno", "Is this image abnormal?"),
    ("yesno", "Is this image normal?"),
    ("yesno", "Does this image contain evidence of tumors?"),
    (
        "yesno",
        "Does this image contain evidence of tumors? Consider signs of irregular masses and other atypical morphology.",
    ),
    ("ab", "Which does this image show? Choose one answer.\nA) Tumor\nB) No tumor"),
    ("ab", "Which does this image show? Choose one answer.\nA) No tumor\nB) Tumor"),
]
BRAIN_IDS = ["abnormal", "normal", "evidence", "guided", "mc_pos_first", "mc_neg_first"]


def study_records(task, model, cases, prompts, judgments, one_word=False):
    """Rows as the study's evaluate_vqa.py builds them (pred/correct derived from the judgment the same way)."""
    pos, neg = TOKENS[task]
    records = []
    for (ptype, text), row_judgments in zip(prompts, judgments):
        text = text + "\nAnswer in one word." if one_word else text
        for (row_id, label), judgment in zip(cases, row_judgments):
            pred = None if judgment is None else (1 if judgment == pos else (0 if judgment == neg else -1))
            records.append(
                {
                    "task": task,
                    "model": model,
                    "row_id": row_id,
                    "label": label,
                    "label_name": "tumor" if label else "no_tumor",
                    "prompt_type": ptype,
                    "one_word": one_word,
                    "prompt": text,
                    "response": f"answer to {row_id}",
                    "judgment": judgment,
                    "pred": pred,
                    "correct": int(pred == label) if pred in (0, 1) else None,
                }
            )
    return records


def write(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(records).to_csv(path, index=False)
    return path


CASES = [(5, 0), (9, 1), (12, 1)]
JUDGMENTS = [  # per prompt, per case
    ["NO_TUMOR", "TUMOR", "AMBIGUOUS"],
    ["TUMOR", "TUMOR", "NO_TUMOR"],
    ["NO_TUMOR", "ERROR", "TUMOR"],
    ["NO_TUMOR", "TUMOR", "TUMOR"],
    ["TUMOR", "NO_TUMOR", "TUMOR"],
    ["NO_TUMOR", "TUMOR", "AMBIGUOUS"],
]


@pytest.fixture
def study_dirs(tmp_path):
    plain = write(
        tmp_path / "plain" / "medgemma_brain_tumor_vqa_results.csv",
        study_records("brain_tumor", "google/medgemma-4b-it", CASES, BRAIN_PROMPTS, JUDGMENTS),
    )
    one_word = write(
        tmp_path / "ow" / "medgemma_brain_tumor_vqa_results.csv",
        study_records("brain_tumor", "google/medgemma-4b-it", CASES, BRAIN_PROMPTS, JUDGMENTS, True),
    )
    return plain, one_word


def test_study_file_becomes_answers(study_dirs):
    plain, _ = study_dirs
    df = read_study_results(plain)
    assert len(df) == 18
    assert set(df["model"]) == {"medgemma"} and set(df["model_id"]) == {"google/medgemma-4b-it"}
    assert set(df["pair"]) == {"gemma"} and set(df["role"]) == {"medical"}
    assert list(dict.fromkeys(df["prompt_id"])) == BRAIN_IDS
    assert list(dict.fromkeys(df["prompt_family"])) == BRAIN_IDS
    assert set(df["verdict_method"]) == {"judge:study-import"}
    first = df.iloc[0]
    assert (first.case_id, first.label, first.verdict, first.answer) == (
        "brain_tumor:hf:5",
        "negative",
        "negative",
        "answer to 5",
    )
    verdicts = df.set_index(["prompt_id", "case_id"])["verdict"]
    assert verdicts[("abnormal", "brain_tumor:hf:12")] == "hedge"  # AMBIGUOUS: its own outcome, still a non-answer
    assert verdicts[("evidence", "brain_tumor:hf:9")] == "refusal"  # ERROR
    assert verdicts[("mc_pos_first", "brain_tumor:hf:9")] == "negative"
    assert df["one_word"].eq(False).all() and df["p_positive"].isna().all()


def test_study_import_then_metrics(study_dirs):
    df = import_study_results([p.parent for p in study_dirs])
    assert len(df) == 36
    assert sorted(df["prompt_id"].unique()) == sorted(BRAIN_IDS + [i + "_ow" for i in BRAIN_IDS])
    cells = cell_metrics(df, n_boot=50).set_index("prompt_id")
    assert cells.loc["abnormal", "refusal_rate"] == pytest.approx(1 / 3)
    assert cells.loc["abnormal", "accuracy"] == 1.0 and cells.loc["abnormal", "f1_all"] == pytest.approx(2 / 3)
    assert cells.loc["normal_ow", "accuracy"] == pytest.approx(
        1 / 3
    )  # TUMOR on a negative and on a positive, NO_TUMOR on a positive
    with pytest.raises(ResultFileError, match="more than once"):
        import_study_results([study_dirs[0], study_dirs[0]])


@pytest.mark.parametrize("task", ["brain_tumor", "pneumonia", "skin_cancer", "histo_idc"])
def test_study_prompt_texts_map_to_the_explorers_prompt_ids(task):
    catalog = load_catalog()
    spec = catalog.task(task)
    for variant in closed_variants(catalog, task):
        assert study_family(variant.text, spec) == variant.family
        assert study_prompt_id(variant.text, variant.family, variant.one_word) == variant.prompt_id
    # Without the task, option names are still read from their wording.
    assert [study_family(v.text) for v in closed_variants(catalog, task)] == [
        v.family for v in closed_variants(catalog, task)
    ]
    # The original code's fused prompt (prompt 6 + a description prompt) is still prompt 6.
    fused = closed_variants(catalog, task, PromptSelection(original_code_defects=True))
    assert {study_family(v.text, spec) for v in fused} >= {"mc_neg_first"}


def test_unknown_wordings_become_distinct_custom_prompts():
    a = study_prompt_id("Is there a tumour here?", study_family("Is there a tumour here?"), False)
    b = study_prompt_id("Any lesion?", study_family("Any lesion?"), True)
    assert a.startswith("custom_") and b.startswith("custom_") and b.endswith("_ow") and a != b[:-3]


# ---------------------------------------------------------------- bad study files
def good_records():
    return study_records("brain_tumor", "google/medgemma-4b-it", CASES, BRAIN_PROMPTS[:2], JUDGMENTS[:2])


@pytest.mark.parametrize(
    "column, value, row, needle",
    [
        ("label", 2, 3, "label"),
        ("label", "tumor", 1, "label"),
        ("row_id", "abc", 2, "row_id"),
        ("one_word", "maybe", 4, "one_word"),
        ("prompt_type", "open", 1, "prompt_type"),
        ("task", "retina", 1, "task"),
        ("pred", 7, 2, "pred"),
        ("pred", 0, 1, "pred"),  # row 1's judgment is NO_TUMOR... make it disagree below
        ("correct", 1, 1, "correct"),
    ],
)
def test_bad_cells_name_column_and_row(tmp_path, column, value, row, needle):
    records = good_records()
    if (column, value) == ("pred", 0):
        records[row - 1]["judgment"] = "TUMOR"  # judgment positive, pred 0: they disagree
    elif column == "correct":
        records[row - 1]["correct"] = 1 - records[row - 1]["correct"]  # label 0, pred 0 -> correct 1
    else:
        records[row - 1][column] = value
    path = write(tmp_path / "bad_brain_tumor_vqa_results.csv", records)
    with pytest.raises(ResultFileError) as info:
        read_study_results(path)
    message = str(info.value)
    assert str(path) in message and f"'{needle}'" in message and f"row {row}" in message


def test_missing_column_is_named(tmp_path):
    path = write(tmp_path / "x_brain_tumor_vqa_results.csv", pd.DataFrame(good_records()).drop(columns="judgment"))
    with pytest.raises(ResultFileError, match="missing column.*'judgment'"):
        read_study_results(path)


def test_prompt_type_must_fit_the_prompt(tmp_path):
    records = good_records()
    records[0]["prompt_type"] = "ab"
    with pytest.raises(ResultFileError, match="'prompt_type', row 1"):
        read_study_results(write(tmp_path / "x_brain_tumor_vqa_results.csv", records))


def test_unjudged_and_empty_files(tmp_path):
    records = study_records("brain_tumor", "google/medgemma-4b-it", CASES, BRAIN_PROMPTS[:1], [[None] * 3])
    with pytest.raises(ResultFileError, match="no_judge"):
        read_study_results(write(tmp_path / "nj_brain_tumor_vqa_results.csv", records))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ResultFileError, match="empty"):
        read_study_results(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(pd.DataFrame(good_records()).columns) + "\n")
    assert read_study_results(header_only).empty
    with pytest.raises(ResultFileError, match="no such file"):
        read_study_results(tmp_path / "missing.csv")
    folder = tmp_path / "no_results_here"
    folder.mkdir()
    with pytest.raises(ResultFileError, match="no \\*_vqa_results.csv"):
        import_study_results(folder)


def test_row_in_both_classes_gets_two_case_ids(tmp_path):
    records = study_records(
        "pneumonia",
        "llava-hf/llava-v1.6-mistral-7b-hf",
        [(7, 0), (7, 1)],
        [("yesno", "Is this image abnormal?")],
        [["NEGATIVE", "POSITIVE"]],
    )
    df = read_study_results(write(tmp_path / "llava_pneumonia_vqa_results.csv", records))
    assert list(df["case_id"]) == ["pneumonia:hf:7", "pneumonia:hf:7:positive"]
    assert set(df["model"]) == {"llava"} and set(df["role"]) == {"base"}


# ---------------------------------------------------------------- the explorer's own exports
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json", ".jsonl"])
def test_read_answers_file_round_trip(tmp_path, study_dirs, suffix):
    frame = read_study_results(study_dirs[0])
    frame.loc[0, "p_positive"] = 0.25
    frame.loc[1, "label"] = None
    frame.loc[2, "answer"] = "NA"
    path = tmp_path / f"export{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".json":
        frame.to_json(path, orient="records")
    else:
        frame.to_json(path, orient="records", lines=True)
    back = read_answers_file(path)
    assert list(back.columns[:7]) == ["model", "task", "prompt_id", "prompt_family", "case_id", "label", "verdict"]
    assert back.loc[0, "p_positive"] == 0.25 and np.isnan(back.loc[3, "p_positive"])
    assert back.loc[1, "label"] is None and back.loc[2, "answer"] == "NA"
    assert back["one_word"].tolist() == [False] * len(frame)
    assert int(back.loc[0, "row_id"]) == 5
    pd.testing.assert_frame_equal(
        cell_metrics(back, n_boot=20).drop(columns=["auroc", "n_auroc"]),
        cell_metrics(frame, n_boot=20).drop(columns=["auroc", "n_auroc"]),
    )


def test_read_answers_file_errors(tmp_path):
    base = pd.DataFrame(
        [
            dict(
                model="m",
                task="t",
                prompt_id="p",
                prompt_family="f",
                case_id=f"c{i}",
                label="positive",
                verdict="positive",
                p_positive=0.5,
            )
            for i in range(3)
        ]
    )

    def check(frame, needle, name="a.csv"):
        path = tmp_path / name
        frame.to_csv(path, index=False)
        with pytest.raises(ResultFileError, match=needle):
            read_answers_file(path)

    check(base.drop(columns="verdict"), "missing column.*'verdict'")
    check(base.assign(verdict=["positive", "maybe", "positive"]), "'verdict', row 2: unknown value 'maybe'")
    check(base.assign(label=["positive", "negative", "sick"]), "'label', row 3")
    check(base.assign(p_positive=[0.5, 1.5, 0.1]), "'p_positive', row 2")
    check(base.assign(p_positive=[0.5, "high", 0.1]), "'p_positive', row 2")
    check(base.assign(case_id=["c1", "", "c3"]), "'case_id', row 2: empty")
    (tmp_path / "a.json").write_text(json.dumps({"not": "records"}))
    with pytest.raises(ResultFileError, match="list of records"):
        read_answers_file(tmp_path / "a.json")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ResultFileError, match="unknown file type"):
        read_answers_file(tmp_path / "a.txt")
