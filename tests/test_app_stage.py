"""Compare as a stage, in plain words, for a clinician, safe in public: the pieces without a browser.

History strip and word diff, cards that keep the old answers while new ones stream, base-vs-medical
flags, flips, both sides of a hedge, re-scoring on a new truth, names instead of ids, the non-answer
rate, DICOM de-identification and the modality warning, public refusals of load/unload.
"""

from __future__ import annotations

import io
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from explorer.app import history, names, render
from explorer.service.core import AnswerView


def _view(model: str, verdict: str, answer: str = "Yes.", **kw) -> AnswerView:
    base = dict(
        model=model,
        title=model,
        pair="p",
        role="base",
        prompt_id="abnormal",
        prompt_text="Is it abnormal?",
        answer=answer,
        verdict=verdict,
        evidence="",
        span=None,
        correct=None,
        label=None,
        latency_s=0.1,
        cached=False,
        error=None,
        p_positive=None,
        random_weights=True,
    )
    base.update(kw)
    return AnswerView(**base)


PAIRS = [
    (
        SimpleNamespace(alias="b", title="Base", role="base", pair="p"),
        SimpleNamespace(alias="m", title="Med", role="medical", pair="p"),
    )
]


def test_word_diff_marks_added_and_dropped_words():
    html = history.word_diff("Is this image abnormal?", "Is this chest image normal?")
    assert '<ins class="vx-ins">chest </ins>' in html or '<ins class="vx-ins">chest' in html
    assert '<del class="vx-del">abnormal?</del>' in html and '<ins class="vx-ins">normal?</ins>' in html
    assert history.word_diff("same words", "same words") == "same words"
    assert "&lt;b&gt;" in history.word_diff("x", "<b>")  # model or user text is escaped


def test_history_strip_keeps_wordings_per_image_and_measures_flips_from_the_one_before():
    rows = history.add(
        [],
        history.entry(
            "abnormal", "Is it abnormal?", "Is this image abnormal?", [_view("b", "positive"), _view("m", "negative")]
        ),
        "img1",
    )
    assert history.strip(rows, "img1", ["b", "m"], {}) == ""  # one wording: nothing to compare yet
    rows = history.add(
        rows,
        history.entry(
            "normal", "Is it normal?", "Is this image normal?", [_view("b", "positive"), _view("m", "positive")]
        ),
        "img1",
    )
    html = history.strip(rows, "img1", ["b", "m"], {"b": "Base", "m": "Med"})
    assert 'id="wording-diff"' in html and "Is it abnormal? &rarr; Is it normal?" in html
    assert html.count("<tr") == 3 and "Base" in html and html.index("Is it normal?") < html.index("<tbody>") + 60
    assert history.previous_verdicts(rows, "img1", "evidence") == {
        "b": {"verdict": "positive", "name": "Is it normal?"},
        "m": {"verdict": "positive", "name": "Is it normal?"},
    }
    # Another image starts a new strip; the same wording again replaces its row.
    assert history.strip(rows, "img2", ["b", "m"], {}) == ""
    again = history.add(
        rows, history.entry("abnormal", "Is it abnormal?", "Is this image abnormal?", [_view("b", "negative")]), "img1"
    )
    assert [r["prompt_id"] for r in again] == ["abnormal", "normal"]


def test_cards_keep_old_answers_while_new_ones_stream_and_flag_the_pair():
    old = {"b": _view("b", "positive", "Yes, old."), "m": _view("m", "negative", "No, old.")}
    streaming = render.cards(PAIRS, ["b", "m"], {}, {"b": "Ye"}, stale=old)
    assert "Yes, old." not in streaming and "Ye" in streaming  # b's new text replaced its old card
    assert "No, old." in streaming and "vx-stale" in streaming  # m's old answer stays, dimmed
    done = render.cards(
        PAIRS,
        ["b", "m"],
        {"b": _view("b", "positive"), "m": _view("m", "negative")},
        previous={"b": {"verdict": "negative", "name": "w1"}, "m": {"verdict": "negative", "name": "w1"}},
    )
    assert 'data-flag="disagree"' in done and "DISAGREE" in done
    assert "flipped: was negative" in done and "same as before" in done
    agree = render.cards(PAIRS, ["b", "m"], {"b": _view("b", "hedge"), "m": _view("m", "hedge")})
    assert 'data-flag="agree"' in agree
    differ = render.cards(PAIRS, ["b", "m"], {"b": _view("b", "positive"), "m": _view("m", "refusal")})
    assert 'data-flag="differ"' in differ
    assert "noise model" in done  # random-weight answers say so on every card


def test_a_hedge_marks_both_sides_of_its_conflict():
    answer = "Yes, there is a mass. However the image is normal."
    view = _view(
        "b",
        "hedge",
        answer,
        evidence="Yes",
        span=(0, 3),
        verdict_detail="answer word 'Yes' (positive) contradicted by 'the image is normal' (negative)",
    )
    html = render.answer_card("b", "Base", "base", view)
    assert html.count("<mark class='vx-evidence'>") == 2
    assert "<mark class='vx-evidence'>the image is normal</mark>" in html
    # A reader that gives every span itself is used as it is.
    assert render.evidence_spans(replace(view, verdict="positive")) == [(0, 3)]  # one side when not a hedge
    spans_view = SimpleNamespace(**{**view.__dict__, "spans": ((0, 3), (7, 15)), "verdict_detail": ""})
    assert render.evidence_spans(spans_view) == [(0, 3), (7, 15)]


def test_a_new_truth_rescores_without_asking_again():
    from explorer.app.compare import rescored

    yes, hedge = _view("b", "positive"), _view("m", "hedge")
    assert rescored(yes, "positive").correct is True and rescored(yes, "negative").correct is False
    assert rescored(yes, None).correct is None and rescored(hedge, "positive").correct is None
    assert rescored(yes, "negative").label == "negative"


def test_names_instead_of_ids():
    from explorer.catalog.presets import load_catalog

    catalog = load_catalog()
    assert names.prompt_name("mc_neg_first_ow") == "A/B, no finding first (one word)"
    assert names.prompt_name("custom_fb8bf17a", {"custom_fb8bf17a": 2}) == "your wording 2"
    assert names.prompt_name("describe_dx") == "Describe for a diagnosis"
    assert names.model_name(catalog.model("demo-llava-med")) == "Demo Llava"
    assert names.model_label(catalog.model("demo-llava-med")) == "Demo Llava \u00b7 medical"
    assert set(names.NON_ANSWER_CLASSES) | {"positive", "negative"} <= set(names.VERDICT_HELP)
    legend = render.legend()
    for word in ("refusal", "hedge", "unclear", "not scored"):
        assert word in legend


def test_non_answer_rate_counts_refusals_hedges_and_unclear_answers():
    from explorer.analysis import metrics

    verdicts = ["positive", "negative", "refusal", "hedge", "unclear", "positive", "negative", "positive"]
    frame = pd.DataFrame(
        {
            "model": "m",
            "task": "pneumonia",
            "prompt_id": "abnormal",
            "prompt_family": "abnormal",
            "case_id": [f"c{i}" for i in range(8)],
            "label": ["positive", "negative"] * 4,
            "verdict": verdicts,
        }
    )
    cell = metrics.cell_metrics(frame, n_boot=0).iloc[0]
    assert cell["non_answer_rate"] == pytest.approx(3 / 8)
    assert cell["hedge_rate"] == pytest.approx(1 / 8)
    summary = metrics.model_task_summary(frame, n_boot=0).iloc[0]
    assert summary["non_answer_rate_mean"] == pytest.approx(3 / 8)


def _dicom(modality: str = "CT", body_part: str = "CHEST") -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID = ExplicitVRLittleEndian, CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "MRN-4711", "19600101"
    ds.InstitutionName, ds.ReferringPhysicianName, ds.StudyDate = "St Elsewhere", "House^Gregory", "20240101"
    ds.StudyDescription = "CT THORAX Jane Doe"
    ds.Modality, ds.BodyPartExamined = modality, body_part
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = (
        CTImageStorage,
        meta.MediaStorageSOPInstanceUID,
        generate_uid(),
    )
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 40, 400
    ds.PixelData = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 3).tobytes()
    ds.add_new(0x00191010, "LO", "vendor secret")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_dicom_is_de_identified_and_still_an_image():
    import pydicom

    from explorer.cases import images

    raw = _dicom()
    clean = images.deidentify_dicom(raw)
    for secret in (b"Doe", b"MRN-4711", b"19600101", b"Elsewhere", b"House", b"vendor secret", b"20240101"):
        assert secret in raw and secret not in clean
    ds = pydicom.dcmread(io.BytesIO(clean))
    assert ds.PatientIdentityRemoved == "YES" and ds.Modality == "CT" and ds.BodyPartExamined == "CHEST"
    assert images.load_image(clean).image_hash == images.load_image(raw).image_hash  # the pixels are untouched
    pixels = images.dicom_pixels(clean)
    assert not any("Patient" in k for k in pixels.header)
    assert {"the file's window", "full range", "CT lung", "CT bone"} <= set(pixels.presets)
    lung = np.asarray(images.apply_window(pixels.values, *pixels.presets["CT lung"]))
    bone = np.asarray(images.apply_window(pixels.values, *pixels.presets["CT bone"]))
    assert lung.shape == (32, 32) and not np.array_equal(lung, bone)
    assert images.apply_window(pixels.values, *pixels.presets["full range"], zoom=2).size == (16, 16)


def test_a_chest_ct_under_the_brain_mri_task_is_flagged():
    from explorer.app import dicom_view

    header = {"Modality": "CT", "BodyPartExamined": "CHEST"}
    warning = dicom_view.mismatch(header, "brain_tumor", "Brain MRI (tumor)")
    assert "CT" in warning and "CHEST" in warning and "Brain MRI" in warning
    assert dicom_view.mismatch({"Modality": "MR", "BodyPartExamined": "BRAIN"}, "brain_tumor", "x") is None
    assert dicom_view.mismatch({"Modality": "DX"}, "pneumonia", "x") is None  # no body part: no guess
    assert dicom_view.mismatch({}, "pneumonia", "x") is None


@pytest.fixture()
def public_shared(tmp_path):
    from explorer.app.context import AppSettings, SharedExplorer

    shared = SharedExplorer(AppSettings(preset="demo", samples_dir=None, store_path=tmp_path / "s.sqlite", public=True))
    yield shared
    if shared._explorer is not None:
        shared.get().close()


def test_public_upload_is_de_identified_and_its_original_deleted(public_shared, tmp_path, monkeypatch):
    from explorer.app import compare

    monkeypatch.setattr(compare, "warn", lambda msg: None)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # where Gradio keeps uploads
    folder = tmp_path / "gradio" / "0123abcd"
    folder.mkdir(parents=True)
    original = folder / "Doe_Jane_MRN-4711.dcm"
    original.write_bytes(_dicom())
    h = compare.CompareHandlers(public_shared)
    case, image, caption, status, upload, label, pixels, details, mine = h.upload(
        str(original), "brain_tumor", "unknown", None, []
    )
    assert not original.exists() and not folder.exists()  # the original bytes and its name are gone
    assert "Doe" not in case.source and "Doe" not in caption and case.meta.get("name") == "upload"
    assert mine == [case.case_id] and pixels.header["Modality"] == "CT"
    # A refused upload is deleted too.
    big = folder.parent / "big"
    big.mkdir()
    too_large = big / "Doe.png"
    too_large.write_bytes(b"\0" * (public_shared.get().policy.max_upload_bytes + 1))
    out = h.upload(str(too_large), "brain_tumor", "unknown", None, [])
    assert "too large" in out[3] and not too_large.exists()
    # A path outside Gradio's upload folder is never deleted (it is not an upload).
    elsewhere = tmp_path / "mine.png"
    elsewhere.write_bytes(b"\0" * (public_shared.get().policy.max_upload_bytes + 1))
    h.upload(str(elsewhere), "brain_tumor", "unknown", None, [])
    assert elsewhere.exists()


def test_public_mode_refuses_load_and_unload(public_shared, monkeypatch):
    from explorer.app import models_tab

    monkeypatch.setattr(models_tab, "warn", lambda msg: None)
    h = models_tab.ModelHandlers(public_shared)
    for act in (h.load, h.unload):
        _, note = act("demo-llava")
        assert "does not let visitors load or unload" in note
    assert public_shared.get().model_status()  # nothing was loaded by the attempt
    assert not any(s.state == "loaded" for s in public_shared.get().model_status())


def test_results_show_a_public_visitor_their_own_uploads_and_nobody_elses(public_shared, monkeypatch):
    from explorer.app.results import ResultsHandlers

    ex = public_shared.get()
    rows = [
        dict(
            model="demo-gemma",
            task="pneumonia",
            case_id=cid,
            image_hash="h",
            label=None,
            prompt_id="abnormal",
            prompt_family="abnormal",
            prompt_text="Is this image abnormal?",
            verdict="positive",
            answer="Yes",
            pair="demo-gemma",
            role="base",
            prompt_kind="closed",
            error=None,
        )
        for cid in ("pneumonia:upload:mine", "pneumonia:upload:theirs", "pneumonia:file:negative/a.png")
    ]
    everything = pd.DataFrame(rows)
    monkeypatch.setattr(type(ex), "answers_frame", lambda self, **kw: everything)
    shown = lambda mine: set(ResultsHandlers(public_shared).open_store(mine)[0]["frame"]["case_id"])  # noqa: E731
    assert shown([]) == {"pneumonia:file:negative/a.png"}
    assert shown(["pneumonia:upload:mine"]) == {"pneumonia:file:negative/a.png", "pneumonia:upload:mine"}


def test_setting_the_truth_after_a_run_rescores_cards_and_strip(tmp_path):
    from PIL import Image

    from explorer.app.compare import CompareHandlers, case_key
    from explorer.app.context import AppSettings, SharedExplorer

    shared = SharedExplorer(AppSettings(preset="demo", samples_dir=None, store_path=tmp_path / "s.sqlite"))
    h = CompareHandlers(shared)
    case = shared.get().case_from_upload(Image.new("RGB", (32, 32)), "pneumonia", None, name="x.png")
    views = [_view("demo-llava", "positive"), _view("demo-llava-med", "negative")]
    last = {
        "heading": "h",
        "models": ["demo-llava", "demo-llava-med"],
        "describe": False,
        "views": views,
        "case": case_key(case),
        "prompt_id": "abnormal",
        "previous": {},
    }
    rows = history.add(
        [], history.entry("abnormal", "Is it abnormal?", "Is this image abnormal?", views), case_key(case)
    )
    case = replace(case, label="positive")
    html, last2, rows2 = h.rescore(case, last, rows, {})
    assert html.count("&#10003; correct") == 1 and html.count("&#10007; wrong") == 1
    assert rows2[0]["correct"] == {"demo-llava": True, "demo-llava-med": False}
    assert [v.correct for v in last2["views"]] == [True, False]
    shared.get().close()


def test_a_sweep_belongs_to_the_browser_cookie_else_the_session():
    from explorer.app.sweep_tab import VISITOR_COOKIE, owner_of

    page = SimpleNamespace(session_hash="s1", cookies={VISITOR_COOKIE: "0f8c2a1e-aaaa-bbbb-cccc-123456789abc"})
    reloaded = SimpleNamespace(
        session_hash="s2", cookies={}, headers={"cookie": f"x=1; {VISITOR_COOKIE}=0f8c2a1e-aaaa-bbbb-cccc-123456789abc"}
    )
    assert owner_of(page) == owner_of(reloaded) == "visitor:0f8c2a1e-aaaa-bbbb-cccc-123456789abc"
    api_client = SimpleNamespace(session_hash="s3", cookies={}, headers={})
    assert owner_of(api_client) == "s3"
    forged = SimpleNamespace(session_hash="s4", cookies={VISITOR_COOKIE: "<script>"}, headers={})
    assert owner_of(forged) == "s4"  # not an id we hand out: the session owns it
    assert owner_of(None) is None
