"""The probes in the app: the Embeddings and Describe & diagnose handlers and their facade methods, on the
offline demo models, a temporary store and images this test makes (3 per class, pneumonia)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from explorer.analysis.plots import LABEL_COLOURS, VERDICT_SYMBOLS
from explorer.app.context import AppSettings, SharedExplorer
from explorer.app.diagnose_view import ALL_RUNS, COMPARE_CASE, DiagnoseHandlers, case_cards
from explorer.app.embeddings_tab import EmbeddingHandlers
from explorer.probes import describe as D
from explorer.service.core import Explorer
from explorer.service.probes import CaseDiagnosis
from explorer.service.public import PolicyError

TASK = "pneumonia"
MODELS = ["demo-llava", "demo-gemma"]  # a CLIP and a SigLIP tower
TEMPLATES = ["one_word", "tight", "disease"]


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(0)
    for label, shift in (("negative", 0), ("positive", 90)):
        folder = root / TASK / label
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 120, (40, 48, 3)) + shift
            Image.fromarray(pixels.astype("uint8")).save(folder / f"{label}_{i}.png")
    return root


@pytest.fixture(scope="module")
def shared(samples, tmp_path_factory):
    settings = AppSettings(preset="demo", samples_dir=samples, store_path=tmp_path_factory.mktemp("store") / "s.sqlite")
    sh = SharedExplorer(settings)
    yield sh
    if sh._explorer is not None:
        sh._explorer.close_diagnosers()
        sh._explorer.close()


def _last(generator):
    with warnings.catch_warnings():  # gr.Warning outside a running app is a Python warning
        warnings.simplefilter("ignore")
        outputs = list(generator)
    assert outputs, "the handler yielded nothing"
    return outputs


# ------------------------------------------------------------------ embeddings
def test_embeddings_tab_draws_scatter_and_probe_beside_model_accuracy(shared):
    outputs = _last(EmbeddingHandlers(shared).compute(TASK, MODELS, "samples", "evidence", True))
    progress, status, figure, probes, notes, download = outputs[-1]
    assert 'data-state="done"' in progress and "vx-notice-ok" in status
    assert any('data-state="running"' in o[0] for o in outputs[:-1])  # progress was shown on the way
    # Colour = true class, marker = the model's verdict (the plots module's palette and symbols).
    markers = [t for t in figure.data if t.mode == "markers"]
    assert markers and {t.marker.color for t in markers} <= {LABEL_COLOURS["positive"], LABEL_COLOURS["negative"]}
    assert {t.marker.symbol for t in markers} <= set(VERDICT_SYMBOLS.values())
    assert sum(len(t.x) for t in markers) == 2 * 6
    # The hover names the case and lists its answers (the evidence prompt was asked first).
    hover = [row for t in markers for row in t.customdata]
    assert all(row[0].startswith(f"{TASK}:file:") for row in hover)
    assert all("evidence: <b>" in row[3] for row in hover)
    for alias in MODELS:
        assert f'data-alias="{alias}"' in probes
    assert "linear probe" in probes and "model's own answers" in probes and "%" in probes
    assert "perplexity was lowered" in notes and "random weights" in notes
    table = pd.read_csv(download["value"])
    assert set(table["model"]) == set(MODELS) and {"x", "y", "probe_probe_accuracy"} <= set(table.columns)


def test_embedding_probe_facade_compares_on_the_answered_cases(shared):
    ex = shared.get()
    ex.embedding_probe(TASK, ["demo-medgemma"], verdict_prompt="abnormal")  # asks "abnormal" on all six
    view = ex.embedding_probe(TASK, ["demo-medgemma"], source="answered", verdict_prompt="abnormal", ask_verdicts=False)
    # "answered": the images with stored closed-form answers; the probe and the model see the same set.
    assert view.n_cases == 6 and list(view.probes["model"]) == ["demo-medgemma"]
    row = view.probes.iloc[0]
    assert row["closed_prompts"] >= 1 and row["closed_cases"] == 6
    assert 0 <= row["probe_ci_lo"] <= row["probe_accuracy"] <= row["probe_ci_hi"] <= 1
    assert view.random_weights and view.perplexity_lowered


def test_embeddings_bad_input_is_reported_where_the_user_looks(shared, tmp_path, samples):
    h = EmbeddingHandlers(shared)
    out = _last(h.compute(TASK, [], "samples", "evidence", True))[-1]
    assert "Choose at least one model" in out[1]
    out = _last(h.compute("brain_tumor", MODELS, "samples", "evidence", False))[-1]  # no brain images here
    assert "No sample images" in out[1] and 'data-state="failed"' in out[0]
    ex = Explorer(preset="demo", store_path=tmp_path / "empty.sqlite", samples_dir=samples)
    try:
        with pytest.raises(ValueError, match="no closed-form answers"):
            ex.embedding_cases(TASK, "answered")
        with pytest.raises(ValueError, match="Unknown case source"):
            ex.embedding_cases(TASK, "everything")
    finally:
        ex.close()


def test_a_model_without_local_weights_is_reported_and_the_rest_still_run(samples, tmp_path):
    from types import SimpleNamespace

    from explorer.models.backends.openai_backend import EndpointConfig

    # demo-gemma served by an endpoint: no vision tower to read features from (nothing is sent to it).
    ex = Explorer(
        preset="demo",
        store_path=tmp_path / "r.sqlite",
        samples_dir=samples,
        endpoints={"demo-gemma": EndpointConfig(base_url="http://127.0.0.1:9/v1", model="x")},
    )
    try:
        h = EmbeddingHandlers(SimpleNamespace(get=lambda: ex))
        out = _last(h.compute(TASK, ["demo-llava", "demo-gemma"], "samples", "evidence", False))[-1]
    finally:
        ex.close()
    assert "could not be analysed: demo-gemma" in out[1] and "locally loaded model" in out[4]
    assert 'data-alias="demo-llava"' in out[3] and 'data-alias="demo-gemma"' not in out[3]


def test_public_mode_refuses_models_outside_the_preset(samples, tmp_path):
    ex = Explorer(preset="demo", store_path=tmp_path / "p.sqlite", samples_dir=samples, public=True)
    try:
        with pytest.raises(PolicyError):
            ex.embedding_probe(TASK, ["llava"])
        with pytest.raises(PolicyError):
            ex.describe_case(ex.example_cases(TASK)[0], ["medgemma"])
    finally:
        ex.close()


# ------------------------------------------------------------------ describe -> diagnose
def test_tab_entry_lists_cases_diagnosers_and_runs(shared, monkeypatch):
    h = DiagnoseHandlers(shared)
    cases, diagnoser, runs = h.shown(TASK, None)
    assert cases["choices"][0][1] == COMPARE_CASE and len(cases["choices"]) == 7
    assert cases["value"] == cases["choices"][1][1]  # the first sample case until the user picks one
    assert diagnoser["value"] == "demo" and [v for _, v in diagnoser["choices"]] == ["demo"]
    assert runs["value"] == ALL_RUNS
    picked = cases["choices"][3][1]
    assert h.shown(TASK, "demo", picked, ALL_RUNS)[0]["value"] == picked  # the user's pick survives a revisit
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # only checked for presence; nothing is sent
    assert [v for _, v in shared.get().diagnoser_options()] == ["demo", "openai:gpt-5.1"]


def test_describe_and_diagnose_one_case(shared):
    h = DiagnoseHandlers(shared)
    case = shared.get().example_cases(TASK)[3]
    outputs = _last(h.run_case(TASK, case.case_id, MODELS, "demo", TEMPLATES, None))
    progress, status, cards = outputs[-1]
    assert 'data-state="done"' in progress and "4 descriptions, 12 diagnoses" in status
    assert "random-weight" in status.lower()
    for alias in MODELS:
        assert f'data-alias="{alias}"' in cards
    assert cards.count("<tr data-template=") == 12 and f"truth: <b>{case.label}</b>" in cards
    # Again: descriptions and diagnoses come from the store.
    status = _last(h.run_case(TASK, case.case_id, MODELS, "demo", TEMPLATES, None))[-1][1]
    assert "(12 from the store" in status


def test_one_case_from_the_compare_tab_under_another_task(shared, samples):
    """The image open in Compare (uploaded as another task) is described for this tab's task."""
    from explorer.cases.hub import upload_case

    compare_case = upload_case(next((samples / TASK / "positive").glob("*.png")), "brain_tumor", name="up.png")
    out = _last(
        DiagnoseHandlers(shared).run_case(TASK, COMPARE_CASE, ["demo-medgemma"], "demo", ["tight"], compare_case)
    )[-1]
    assert "2 descriptions, 2 diagnoses" in out[1] and 'data-alias="demo-medgemma"' in out[2]


def test_one_case_needs_an_image_and_a_template(shared):
    h = DiagnoseHandlers(shared)
    out = _last(h.run_case(TASK, COMPARE_CASE, MODELS, "demo", TEMPLATES, None))[-1]
    assert "No image is open in Compare" in out[1]
    out = _last(h.run_case(TASK, "nope", MODELS, "demo", [], None))[-1]
    assert "No sample case" in out[1] or "template" in out[1]


def test_cards_mark_right_and_wrong_diagnoses(shared):
    """The demo diagnoser rarely says a clean Yes/No, so the marks are checked on a made-up result."""
    case = shared.get().example_cases(TASK)[4]  # positive
    described = pd.DataFrame(
        [
            {
                "model": "demo-llava",
                "prompt_id": "describe",
                "prompt_text": "Describe.",
                "description": "Patchy <opacity>.",
                "error": None,
                "cached": False,
            }
        ]
    )
    rows = [
        {
            "model": "demo-llava",
            "prompt_id": "describe",
            "template": t,
            "parsed": p,
            "raw": p,
            "error": None,
            "label": case.label,
        }
        for t, p in zip(TEMPLATES, ("yes", "no", "unparsed"))
    ]
    diag = pd.DataFrame(rows)
    diag["correct"] = [True, False, None]
    result = CaseDiagnosis(case, described, diag, "demo", D.DiagnoseSummary(), True)
    html = case_cards(result, shared.get().models_in_pairs())
    assert "&#10003; correct" in html and "&#10007; wrong" in html and "not scored" in html
    assert "&lt;opacity&gt;" in html  # model text is escaped


def test_describe_sweep_metrics_then_stored_descriptions_from_the_store(shared):
    h = DiagnoseHandlers(shared)
    out = _last(h.new_sweep([TASK], 1, True, ALL_RUNS, MODELS, "demo", TEMPLATES, None))[-1]
    progress, status, table, recovered, download, runs, state = out
    assert 'data-state="done"' in progress and "vx-notice-ok" in status
    # 2 VLMs x 2 description prompts x 3 templates, each with its closed-form reference.
    # The table shows plain names (the CSV download keeps the ids).
    assert len(table) == 12 and set(table["diagnosis template"]) == set(TEMPLATES)
    assert {
        "accuracy (answered)",
        "yes rate",
        "F1",
        "F1, non-answers wrong",
        "closed-form F1",
        "signal recovered",
    } <= set(table.columns)
    assert table["closed-form F1"].notna().all()
    assert set(recovered["model"]) == set(MODELS)
    assert len(pd.read_csv(download["value"])) == 12
    run_id = runs["value"]
    assert run_id != ALL_RUNS and run_id in [v for _, v in runs["choices"]]
    # Diagnosing the stored run again asks the text model nothing new.
    out = _last(h.stored([TASK], 1, True, run_id, MODELS, "demo", TEMPLATES, None))[-1]
    assert "(24 from the store" in out[1] and len(out[2]) == 12


def test_cancel_without_a_running_sweep_says_so(shared):
    assert "Nothing is running" in DiagnoseHandlers(shared).cancel(None)


def test_app_has_the_probe_tabs(samples, tmp_path):
    from explorer.app.layout import build_demo

    demo = build_demo(AppSettings(preset="demo", samples_dir=samples, store_path=tmp_path / "a.sqlite"))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"tab-embeddings", "emb-run", "emb-plot", "tab-diagnose", "dx-run-case", "dx-metrics"} <= ids


def test_the_studys_hugging_face_embedding_sample_is_a_case_source(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from explorer.cases import hub as datasets
    from explorer.service.core import Explorer
    from explorer.service.public import PolicyError

    asked = {}

    def fake_sample(task, per_class, seed, frontal_only):
        asked.update(task=task, per_class=per_class, seed=seed)
        return SimpleNamespace(cases=[f"case{i}" for i in range(2 * per_class)])

    monkeypatch.setattr(datasets, "embedding_cases", fake_sample)
    ex = Explorer("paper", store_path=tmp_path / "s.sqlite")
    try:
        assert len(ex.embedding_cases("pneumonia", "huggingface")) == 600
        assert asked == {"task": "pneumonia", "per_class": 300, "seed": 42}  # the study's sample
    finally:
        ex.close()
    # A public Space bounds it like a sweep: one forward pass per image and model.
    monkeypatch.setenv("EXPLORER_PUBLIC_MAX_SWEEP_ITEMS", "100")
    ex = Explorer("paper", store_path=tmp_path / "p.sqlite", public=True)
    try:
        with pytest.raises(PolicyError, match="1,200 answers"):
            ex.embedding_probe("pneumonia", ["llava", "llava-med"], source="huggingface")
    finally:
        ex.close()
