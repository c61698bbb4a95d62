"""The facade under public mode: what a visitor of a public Space can and cannot make the engine do."""

from __future__ import annotations

import pytest
from PIL import Image
from test_study_import import BRAIN_PROMPTS, CASES, JUDGMENTS, study_records, write

from explorer.service.core import Explorer
from explorer.service.public import PolicyError


def test_the_facade_refuses_server_paths_in_public_mode_but_opens_uploads(tmp_path):
    study = write(
        tmp_path / "medgemma_brain_tumor_vqa_results.csv",
        study_records("brain_tumor", "google/medgemma-4b-it", CASES, BRAIN_PROMPTS, JUDGMENTS),
    )
    ex = Explorer("demo", store_path=tmp_path / "s.sqlite", public=True)
    try:
        with pytest.raises(PolicyError, match="does not read files from the server"):
            ex.open_results(str(study))
        assert len(ex.open_results(str(study), uploaded=True)) == len(CASES) * len(BRAIN_PROMPTS)
        assert ex.case_image("pneumonia", None) is None and ex.case_image("no-such-task", "abc") is None
    finally:
        ex.close()


def test_the_facade_applies_the_public_limits_to_uploads_models_and_sweeps(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORER_PUBLIC_MAX_PIXELS", "10000")
    monkeypatch.setenv("EXPLORER_PUBLIC_MAX_SWEEP_ITEMS", "5")
    big = tmp_path / "big.png"
    Image.new("L", (200, 200), 128).save(big)
    for i, cls in enumerate(("positive", "negative")):
        (tmp_path / "samples" / "pneumonia" / cls).mkdir(parents=True)
        Image.new("L", (64, 64), 40 * i).save(tmp_path / "samples" / "pneumonia" / cls / "a.png")
    ex = Explorer("demo", store_path=tmp_path / "s.sqlite", samples_dir=tmp_path / "samples", public=True)
    try:
        with pytest.raises(ValueError, match="megapixel"):
            ex.case_from_upload(str(big), "pneumonia")
        case = ex.case_from_upload(Image.new("L", (64, 64), 7), "pneumonia")
        with pytest.raises(PolicyError, match="not available here: some-other-model"):
            ex.ask(case, ex.variants("pneumonia")[0], ["some-other-model"])
        with pytest.raises(PolicyError, match="at most 5"):
            ex.sweep(ex.sweep_spec(tasks=["pneumonia"], per_class=1), progress=None)
        assert {m.alias for m in ex.model_specs()} == set(ex.preset.models)
    finally:
        ex.close()


def test_an_oversized_public_sweep_is_refused_before_any_dataset_is_touched(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("the dataset was loaded before the size check")

    monkeypatch.setattr("explorer.cases.hub.hf_cases", no_download)
    ex = Explorer("paper", store_path=tmp_path / "s.sqlite", public=True)  # cases from Hugging Face
    try:
        # 4 models x 100 images x 46 prompts: the as-run set has 11 closed prompts for brain and IDC.
        with pytest.raises(PolicyError, match="18,400 answers"):
            ex.sweep(ex.sweep_spec(judge=False), progress=None)
    finally:
        ex.close()


def test_a_public_store_keeps_no_upload_names_and_shows_no_one_elses_uploads(tmp_path):
    samples = tmp_path / "samples" / "pneumonia"
    for i, cls in enumerate(("positive", "negative")):
        (samples / cls).mkdir(parents=True)
        Image.new("L", (64, 64), 60 * i).save(samples / cls / "s.png")
    upload = tmp_path / "Jane_Doe_1961-03-02_chest.png"
    Image.new("L", (64, 64), 200).save(upload)
    ex = Explorer("demo", store_path=tmp_path / "s.sqlite", samples_dir=tmp_path / "samples", public=True)
    try:
        case = ex.case_from_upload(str(upload), "pneumonia")
        assert "Jane" not in case.source and "Jane" not in str(case.meta)
        prompt = ex.variants("pneumonia")[0]
        ex.ask(case, prompt, ["demo-gemma"])
        ex.ask(ex.example_cases("pneumonia")[0], prompt, ["demo-gemma"])
        assert len(ex.answers_frame()) == 2
        shown = ex.browsable_answers()
        assert len(shown) == 1 and ":upload:" not in shown["case_id"].iloc[0]
    finally:
        ex.close()
    stored = b"".join(f.read_bytes() for f in tmp_path.glob("s.sqlite*"))  # the WAL too
    assert b"Jane" not in stored
