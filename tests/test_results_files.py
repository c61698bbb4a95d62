"""Opening results someone already has (store, export, the study's CSVs) and finding the cases worth a look."""

from __future__ import annotations

import pandas as pd
import pytest
from test_study_import import BRAIN_PROMPTS, CASES, JUDGMENTS, study_records, write

from explorer.analysis.exports import import_answers
from explorer.runs.results_files import disagreements, open_results
from explorer.runs.store import Store
from explorer.runs.study_import import ResultFileError


def answers(rows):
    """Rows (model, pair, role, case, prompt, verdict) as an answers frame."""
    return pd.DataFrame(
        [
            {
                "model": m,
                "pair": p,
                "role": r,
                "task": "pneumonia",
                "case_id": c,
                "image_hash": f"h{c}",
                "label": "positive",
                "prompt_id": q,
                "verdict": v,
                "prompt_kind": "closed",
                "error": None,
            }
            for m, p, r, c, q, v in rows
        ]
    )


def test_disagreements_find_pairs_that_differ_and_wording_that_flips():
    frame = answers(
        [
            # case 1: the base says positive everywhere; its medical twin says negative once -> pair n=1, wording n=1
            ("base", "llava", "base", "1", "a", "positive"),
            ("med", "llava", "medical", "1", "a", "positive"),
            ("base", "llava", "base", "1", "b", "positive"),
            ("med", "llava", "medical", "1", "b", "negative"),
            ("base", "llava", "base", "1", "c", "positive"),
            ("med", "llava", "medical", "1", "c", "positive"),
            # case 2: everyone agrees everywhere -> nothing
            ("base", "llava", "base", "2", "a", "negative"),
            ("med", "llava", "medical", "2", "a", "negative"),
            # case 3: a refusal counts as a reading of its own; the twin is missing -> only wording, n=2
            ("base", "llava", "base", "3", "a", "refusal"),
            ("base", "llava", "base", "3", "b", "positive"),
            ("base", "llava", "base", "3", "c", "hedge"),
            ("base", "llava", "base", "3", "d", "positive"),
        ]
    )
    out = disagreements(frame)
    got = {(r.case_id, r.kind, r.models, r.n) for r in out.itertuples()}
    assert got == {("1", "pair", "base vs med", 1), ("1", "wording", "med", 1), ("3", "wording", "base", 2)}
    assert list(out["n"]) == sorted(out["n"], reverse=True)
    assert out.loc[out["case_id"] == "1", "image_hash"].iloc[0] == "h1"


def test_disagreements_skip_descriptions_and_errors_and_take_empty_frames():
    frame = answers([("base", "llava", "base", "1", "a", "positive"), ("base", "llava", "base", "1", "b", "negative")])
    frame.loc[1, "error"] = "timeout"
    assert disagreements(frame).empty
    frame.loc[1, ["error", "prompt_kind"]] = [None, "describe"]
    assert disagreements(frame).empty
    assert list(disagreements(pd.DataFrame()).columns) == [
        "task",
        "case_id",
        "image_hash",
        "label",
        "kind",
        "models",
        "n",
    ]


def test_open_results_reads_the_study_csv_an_export_and_a_store(tmp_path):
    study = write(
        tmp_path / "medgemma_brain_tumor_vqa_results.csv",
        study_records("brain_tumor", "google/medgemma-4b-it", CASES, BRAIN_PROMPTS, JUDGMENTS),
    )
    frame = open_results(study)
    assert len(frame) == len(CASES) * len(BRAIN_PROMPTS) and set(frame["task"]) == {"brain_tumor"}
    # The same file under another name is still recognised by its columns.
    renamed = tmp_path / "renamed.csv"
    renamed.write_bytes(study.read_bytes())
    assert len(open_results(renamed)) == len(frame)
    # Export -> open, and store -> open give the same answers back.
    export = tmp_path / "answers.csv"
    frame.to_csv(export, index=False)
    assert sorted(open_results(export)["verdict"].fillna("-")) == sorted(frame["verdict"].fillna("-"))
    with Store(tmp_path / "other.sqlite") as store:
        added, _ = import_answers(store, frame, origin="test")
    assert added == len(frame)
    assert len(open_results(tmp_path / "other.sqlite")) == len(frame)
    # A folder is the study code's output folder.
    assert len(open_results(tmp_path)) == len(frame)


@pytest.mark.parametrize(
    "content, name",
    [(b"\x00\x01garbage", "x.parquet"), (b"a,b\n1,2\n", "x.csv"), (b"SQLite format 3\x00" + b"\x00" * 200, "x.sqlite")],
)
def test_open_results_refuses_what_it_cannot_read_with_the_file_name(tmp_path, content, name):
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=name.split(".")[0]):
        open_results(bad)
    with pytest.raises(ResultFileError, match="no such file"):
        open_results(tmp_path / "missing.csv")


def test_an_uploaded_file_that_cannot_be_read_is_named_without_the_server_folder(tmp_path):
    from explorer.service.core import Explorer

    upload_dir = tmp_path / "gradio" / "6fb9056defece50"
    upload_dir.mkdir(parents=True)
    bad = upload_dir / "garbage.csv"
    bad.write_text('a,b\n"unterminated\n')
    fake_store = upload_dir / "results.sqlite"
    fake_store.write_text("not a database")
    ex = Explorer("demo", store_path=tmp_path / "s.sqlite")
    try:
        for path, why in ((bad, "garbage.csv"), (fake_store, "results.sqlite: not an SQLite database")):
            with pytest.raises(ValueError) as info:
                ex.open_results(str(path), uploaded=True)
            assert why in str(info.value) and str(upload_dir) not in str(info.value)
    finally:
        ex.close()
