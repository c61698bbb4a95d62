"""The reproduction report, from the first upload's eval_output CSVs and from a demo sweep; and the
import of those CSVs (their format: judging/gpt5_judge_*.py at de96238)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from explorer.analysis.metrics import cell_metrics
from explorer.analysis.report import NOT_GIVEN, build_report
from explorer.catalog.presets import load_catalog
from explorer.cli.main import main
from explorer.prompts.variants import prompt_set_variants
from explorer.runs.results_files import open_results
from explorer.runs.study_import import EVAL_OUTPUT_COLUMNS, ResultFileError

TOKENS = {
    "brain_tumor": ("TUMOR", "NO_TUMOR", "tumor", "no_tumor"),
    "pneumonia": ("POSITIVE", "NEGATIVE", "pneumonia", "no_pneumonia"),
    "skin_cancer": ("MALIGNANT", "BENIGN", "malignant", "benign"),
    "histo_idc": ("MALIGNANT", "BENIGN", "malignant", "benign"),
}
FILES = {
    "brain_tumor": "eval_output_brain.csv",
    "pneumonia": "eval_output_pneumonia.csv",
    "skin_cancer": "eval_output_skin.csv",
    "histo_idc": "eval_output.csv",
}
MODEL_IDS = [
    "google/medgemma-4b-it",
    "google/gemma-3-4b-it",
    "llava-hf/llava-v1.6-mistral-7b-hf",
    "wnkh/llava-med-v1.5-mistral-7b-hf",
]


def write_eval_output(
    path: Path, task: str, rows_per_class: int = 6, seed: int = 0, skill: float = 0.75, ambiguous: float = 0.1
) -> pd.DataFrame:
    """A file in the first upload's eval_output format, with SYNTHETIC judgments (a test fixture: a
    seeded coin per row with the given hit rate, not any model's answers)."""
    rng = np.random.default_rng(seed)
    pos_token, neg_token, pos_name, neg_name = TOKENS[task]
    prompts = [v.text for v in prompt_set_variants("paper-as-run", task)]
    rows = []
    for model in MODEL_IDS:
        for idx, prompt in enumerate(prompts):
            for k in range(2 * rows_per_class):
                label = k % 2
                draw = rng.random()
                if draw < ambiguous:
                    judgment = "AMBIGUOUS" if rng.random() < 0.8 else "ERROR"
                else:
                    right = rng.random() < skill
                    judgment = (pos_token if label else neg_token) if right else (neg_token if label else pos_token)
                pred = 1 if judgment == pos_token else (0 if judgment == neg_token else -1)
                rows.append(
                    {
                        "model_id": model,
                        "prompt_idx": idx,
                        "prompt": prompt.strip(),
                        "row_id": 100 + k,
                        "label": label,
                        "label_str": pos_name if label else neg_name,
                        "response": f"synthetic response {k}",
                        "gpt5_judgment": judgment,
                        "pred": pred,
                        "correct": int(pred == label) if pred in (0, 1) else None,
                    }
                )
    frame = pd.DataFrame(rows, columns=list(EVAL_OUTPUT_COLUMNS))
    frame.to_csv(path, index=False)  # as the script wrote it: correct becomes 1.0 / 0.0 / empty
    return frame


@pytest.fixture()
def study_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "first_upload"
    folder.mkdir()
    for i, (task, name) in enumerate(FILES.items()):
        write_eval_output(folder / name, task, seed=i, skill=0.9 - 0.1 * i)
    return folder


def test_eval_output_import_reads_tasks_prompts_and_judgments(study_folder):
    frame = open_results(study_folder)
    assert set(frame["task"]) == set(TOKENS)  # skin and IDC told apart by their prompts
    assert set(frame["model"]) == {"llava", "llava-med", "gemma", "medgemma"}
    brain = frame[frame["task"] == "brain_tumor"]
    # Every prompt matched to the as-run set: the fused prompt is closed-form, the description is not scored.
    assert set(brain["prompt_id"]) == {v.prompt_id for v in prompt_set_variants("paper-as-run", "brain_tumor")}
    fused = brain[brain["prompt_id"] == "mc_neg_first"]
    assert (fused["prompt_kind"] == "closed").all() and fused["prompt_text"].iloc[0].startswith("\n   Which")
    described = brain[brain["prompt_kind"] == "describe"]
    assert described["verdict"].isna().all() and len(described) > 0
    closed = frame[frame["prompt_kind"] == "closed"]
    raw = pd.concat(pd.read_csv(study_folder / f) for f in FILES.values())
    ambiguous = raw["gpt5_judgment"] == "AMBIGUOUS"
    assert (closed["verdict"] == "hedge").sum() == ambiguous[
        raw["prompt"].isin(
            [v.text.strip() for t in TOKENS for v in prompt_set_variants("paper-as-run", t) if v.kind == "closed"]
        )
    ].sum()
    assert closed.loc[closed["verdict_detail"].str.startswith("study judgment: ERROR"), "verdict"].eq("refusal").all()
    assert set(closed["verdict"]) <= {"positive", "negative", "hedge", "refusal"}


def test_eval_output_metrics_are_the_scripts_own(study_folder):
    """Accuracy and refusal counts per prompt equal what the judge script's compute_metrics printed."""
    frame = open_results(study_folder / FILES["pneumonia"])
    cells = cell_metrics(frame[frame["prompt_kind"] == "closed"], n_boot=0).set_index(["model", "prompt_id"])
    raw = pd.read_csv(study_folder / FILES["pneumonia"])
    catalog = load_catalog()
    ids = {v.text.strip(): v.prompt_id for v in prompt_set_variants("paper-as-run", "pneumonia")}
    for (model_id, prompt), grp in raw.groupby(["model_id", "prompt"]):
        if ids[prompt].startswith("describe"):
            continue
        alias = next(a for a, s in catalog.models.items() if s.hf_id == model_id)
        scored = grp[grp["pred"].isin([0, 1])]
        cell = cells.loc[(alias, ids[prompt])]
        assert cell["accuracy"] == pytest.approx((scored["pred"] == scored["label"]).mean())
        assert cell["n_refused"] == len(grp) - len(scored)  # the script's n_ambiguous


def test_eval_output_with_bad_cells_says_where(tmp_path):
    path = tmp_path / "eval_output.csv"
    frame = write_eval_output(path, "histo_idc")
    frame.loc[3, "pred"] = 1
    frame.loc[3, "gpt5_judgment"] = "BENIGN"
    frame.to_csv(path, index=False)
    with pytest.raises(
        ResultFileError, match=r"eval_output.csv, column 'pred', row 4: pred is 1 but the judgment is 'BENIGN'"
    ):
        open_results(path)
    frame["label_str"] = "cat"
    frame.to_csv(path, index=False)
    with pytest.raises(ResultFileError, match="label_str values \\['cat'\\] name none of the study's tasks"):
        open_results(path)


def test_report_from_imported_study_csvs(study_folder, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert (
        main(["reproduce", "--preset", "paper", "--import", str(study_folder), "--out", str(out), "--n-boot", "100"])
        == 0
    )
    printed = capsys.readouterr()
    assert "wrote" in printed.out and out.exists() and out.with_suffix(".md").exists()
    page = out.read_text(encoding="utf-8")
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    # Side by side: the paper column (not given in PROTOCOL.md), this run's values with intervals.
    assert page.count(NOT_GIVEN) > 10 and "<svg" in page and "<script" not in page
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", md)
    for statement in (
        "Accuracy falls toward chance",
        "Medical fine-tuning gives no consistent advantage",
        "Small wording changes swing",
    ):
        assert statement in md
    # The synthetic files were made with falling skill brain > pneumonia > skin > IDC.
    assert re.search(r"Accuracy falls toward chance[^\n]*\| agrees \|", md)
    assert "judge:study-import" in md


def _samples(root: Path) -> Path:
    for task in ("pneumonia", "brain_tumor"):
        for i, cls in enumerate(("negative", "positive")):
            for j in range(2):
                img = Image.new("L", (48, 48), color=30 + 60 * i + 10 * j)
                ImageDraw.Draw(img).ellipse((8, 8, 28 + 8 * i, 30), fill=220)
                (root / task / cls).mkdir(parents=True, exist_ok=True)
                img.save(root / task / cls / f"img{j}.png")
    return root


def test_report_from_a_demo_sweep_warns_what_is_not_comparable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    store = tmp_path / "demo.sqlite"
    assert (
        main(
            [
                "sweep",
                "--preset",
                "demo",
                "--samples",
                str(_samples(tmp_path / "samples")),
                "--tasks",
                "brain_tumor,pneumonia",
                "--models",
                "demo-gemma,demo-medgemma",
                "--prompts",
                "abnormal,normal,evidence",
                "--per-class",
                "2",
                "--max-new-tokens",
                "3",
                "--store",
                str(store),
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "demo.html"
    assert main(["reproduce", "--preset", "demo", "--store", str(store), "--out", str(out), "--n-boot", "50"]) == 0
    err = capsys.readouterr().err
    assert "random-weight stand-ins" in err and "rule-based answer reader" in err
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "| brain_tumor | demo-gemma | base | demo-gemma | not given |" in md
    assert "| brain_tumor | demo-gemma | medical | demo-medgemma | not given |" in md
    # Random weights can "agree" by chance: the findings say they are no evidence.
    assert re.search(r"Small wording changes swing[^\n]*\(would read: \w+\) \| not evidence \|", md)


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["reproduce", "--store", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "r.html")]) == 2
    assert "no results store at" in capsys.readouterr().err
    assert main(["reproduce", "--import", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "no *_vqa_results.csv (or first-upload eval_output*.csv) files" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no answers"):
        build_report(pd.DataFrame(columns=["model"]), catalog=load_catalog())
