"""Describe -> diagnose: descriptions from a real (demo) sweep, diagnoses through the Responses API, Chat
Completions (a local fake server) and a local text model, the diagnoses table and its cache, and metrics."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
from fake_openai_server import FakeOpenAIServer, Fault, fake_openai  # noqa: F401  (fixture)
from PIL import Image

from explorer.cases.hub import upload_case
from explorer.catalog.presets import load_catalog
from explorer.cli import probes as cli_probes
from explorer.models.backends.base import BackendError
from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.probes import describe as D
from explorer.probes import diagnosers as DX
from explorer.prompts.variants import describe_variants
from explorer.runs.store import Store
from explorer.runs.sweep import plan_sweep, run_sweep

TASK = "pneumonia"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture(scope="module")
def explorer_cache(tmp_path_factory):
    """$EXPLORER_CACHE for the CLI; demo models built by the fixtures below land where it looks."""
    return tmp_path_factory.mktemp("explorer-cache")


@pytest.fixture(scope="module")
def demo_cache(explorer_cache):
    return explorer_cache / "demo-models"


def _image(seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy())


@pytest.fixture(scope="module")
def described(catalog, demo_cache, tmp_path_factory):
    """A store holding demo-llava-med's answers to both description prompts on 4 labelled images."""
    cases = [
        upload_case(_image(i), TASK, label=("positive" if i % 2 else "negative"), name=f"x{i}.png") for i in range(4)
    ]
    plan = plan_sweep(
        catalog,
        ["demo-llava-med"],
        [TASK],
        {TASK: cases},
        {TASK: describe_variants(catalog.task(TASK))},
        generation_override={"max_new_tokens": 8},
    )
    backend = TransformersBackend(catalog, demo_cache_dir=demo_cache)
    path = tmp_path_factory.mktemp("store") / "results.sqlite"
    with Store(path) as store:
        summary = run_sweep(plan, backend, store)
    backend.close()
    assert summary.computed == 8 and summary.errors == 0
    return path, summary.run_id


@pytest.fixture
def store(described, tmp_path):
    """A fresh copy of the described store for each test, so diagnoses of one test do not serve another."""
    import shutil

    path, run_id = described
    src = Store(path)
    src._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    src.close()
    copy = tmp_path / "results.sqlite"
    shutil.copy(path, copy)
    with Store(copy) as s:
        yield s


def _answers(store: Store, described) -> list[dict]:
    rows = D.description_answers(store, run_id=described[1])
    assert len(rows) == 8 and all(r["prompt_kind"] == "describe" and r["answer"] for r in rows)
    return rows


def _distinct(answers: list[dict], k: int) -> list[dict]:
    """k answers with different descriptions (random-weight models repeat themselves)."""
    picked = list({a["answer"]: a for a in reversed(answers)}.values())[::-1][:k]
    assert len(picked) == k
    return picked


def _endpoint(server: FakeOpenAIServer, api: str, **extra) -> OpenAIBackend:
    cfg = EndpointConfig(
        base_url=server.base_url,
        model="gpt-5.1",
        api=api,
        timeout_s=2.0,
        max_retries=0,
        max_concurrency=1,
        stream=False,
        **extra,
    )
    return OpenAIBackend({"dx": cfg})


# ------------------------------------------------------------------ prompts and parsing
def test_templates_are_the_studys_filled_from_the_task(catalog):
    assert D.template_names(catalog) == ["one_word", "tight", "disease"]
    brain = catalog.task("brain_tumor")
    one_word = D.diagnosis_prompt(catalog.diagnosis_templates["one_word"], brain, "A {curly} scan.")
    assert one_word == (
        "You are a careful radiologist.\nGiven the following brain MRI image description, answer ONLY whether "
        "a brain tumor is present.\nReturn a single word: Yes or No.\n\nDescription:\nA {curly} scan.\n"
    )
    tight = D.diagnosis_prompt(catalog.diagnosis_templates["tight"], catalog.task("histo_idc"), "d")
    assert (
        tight == "Task: Decide if invasive ductal carcinoma is present.\nOutput must be Yes or No.\n\nDescription:\nd\n"
    )
    with pytest.raises(ValueError, match="placeholder"):
        D.diagnosis_prompt("{organ} {desc}", brain, "d")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ('{"answer": "Yes"}', "yes"),
        ('{"answer":"No"}', "no"),
        ('```json\n{"answer": "No"}\n```', "no"),
        ("Yes.", "yes"),
        ("No", "no"),
        ("**No**, there is no consolidation.", "no"),
        ("  yes - clear tumor", "yes"),
        ("The answer is no.", "no"),
        ('"Yes"', "yes"),
        ('{"answer": "Maybe"}', "unparsed"),
        ("Yes or No?", "unparsed"),
        ("Not sure.", "unparsed"),
        ("", "unparsed"),
        ('{"answer": "Ye', "unparsed"),
        ('{"answer": Yes}', "unparsed"),
        ("heart middle image", "unparsed"),
    ],
)
def test_parse_yes_no(raw, expected):
    assert D.parse_yes_no(raw)[0] == expected


# ------------------------------------------------------------------ OpenAI Responses API
def test_responses_api_with_the_studys_settings_and_cache(store, described, catalog, fake_openai):
    answers = _answers(store, described)
    dx = DX.openai_diagnoser("gpt-5.1", base_url=fake_openai.base_url)  # the study's settings by default
    assert isinstance(dx, DX.StructuredDiagnoser) and dx.label == "openai:gpt-5.1"
    summary = D.diagnose_descriptions(store, dx, catalog, answers)
    assert (summary.planned, summary.computed + summary.cached, summary.errors) == (24, 24, 0)
    # Random-weight descriptions often repeat: each distinct prompt is asked once.
    distinct = {
        D.diagnosis_prompt(catalog.diagnosis_templates[t], catalog.task(TASK), a["answer"])
        for a in answers
        for t in D.TEMPLATE_ORDER
    }
    assert len(fake_openai.requests) == len(distinct)

    body = fake_openai.requests[0].body
    assert fake_openai.requests[0].path == "/v1/responses"
    assert body["model"] == "gpt-5.1" and body["temperature"] == 0 and body["max_output_tokens"] == 64
    assert body["reasoning"] == {"effort": "none"}
    assert body["text"]["format"] == {
        "type": "json_schema",
        "name": "yes_no_answer",
        "schema": DX.YES_NO_SCHEMA,
        "strict": True,
    }
    prompts = {r.body["input"][0]["content"] for r in fake_openai.requests}
    first = answers[0]
    expected = D.diagnosis_prompt(catalog.diagnosis_templates["one_word"], catalog.task(TASK), first["answer"])
    assert expected in prompts  # the exact description, verbatim, in the study's template

    frame = D.diagnoses_frame(store, answers, summary.diagnoser_key)
    assert len(frame) == 24 and set(frame["parsed"]) == {"yes"}  # the server's schema-conforming reply
    assert set(frame["template"]) == {"one_word", "tight", "disease"} and frame["error"].isna().all()

    again = D.diagnose_descriptions(store, dx, catalog, answers)
    assert (again.cached, again.computed) == (24, 0) and len(fake_openai.requests) == len(distinct)  # from the table
    dx.close()


def test_failed_call_is_stored_and_retried(store, described, catalog, fake_openai):
    answers = _answers(store, described)[:1]
    dx = DX.StructuredDiagnoser(_endpoint(fake_openai, "responses"), "dx")
    fake_openai.add_faults(Fault.http(400, "model overloaded in a non-retryable way"))
    first = D.diagnose_descriptions(store, dx, catalog, answers, ["tight"])
    assert first.errors == 1 and "HTTP 400" in D.diagnoses_frame(store, answers)["error"].iloc[0]
    second = D.diagnose_descriptions(store, dx, catalog, answers, ["tight"])
    assert (second.computed, second.cached) == (1, 0)
    frame = D.diagnoses_frame(store, answers)
    assert len(frame) == 1 and frame["error"].isna().all() and frame["parsed"].iloc[0] == "yes"


def test_responses_reply_that_is_not_json_is_unparsed(store, described, catalog, fake_openai):
    answers = _answers(store, described)[:1]
    dx = DX.StructuredDiagnoser(_endpoint(fake_openai, "responses"), "dx")
    fake_openai.add_faults(Fault.reply('{"answer": Yes'))
    summary = D.diagnose_descriptions(store, dx, catalog, answers, ["one_word"])
    assert (summary.computed, summary.errors, summary.unparsed) == (1, 0, 1)
    frame = D.diagnoses_frame(store, answers)
    assert frame["parsed"].tolist() == ["unparsed"] and frame["raw"].tolist() == ['{"answer": Yes']
    assert frame["error"].isna().all()


def test_diagnoser_from_arg_follows_the_preset(catalog, demo_cache, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):  # said before any work starts
        DX.diagnoser_from_arg("preset", catalog, catalog.study("paper").describe)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    paper = DX.diagnoser_from_arg("preset", catalog, catalog.study("paper").describe)
    ident = paper.identity()
    assert isinstance(paper, DX.StructuredDiagnoser) and paper.label == "openai:gpt-5.1"
    assert ident["backend"]["api"] == "responses" and ident["backend"]["extra"] == {"reasoning": {"effort": "none"}}
    assert ident["max_output_tokens"] == 64 and ident["temperature"] == 0.0
    plain = DX.diagnoser_from_arg(
        "openai:my-model", catalog, api="chat", reasoning_effort=None, base_url="http://127.0.0.1:9/v1"
    )
    assert "extra" not in plain.identity()["backend"] and plain.identity()["backend"]["api"] == "chat"
    demo = DX.diagnoser_from_arg("preset", catalog, catalog.study("demo").describe, cache_dir=demo_cache)
    assert isinstance(demo, DX.TextDiagnoser) and demo.choice and demo.generation.max_new_tokens == 1
    with pytest.raises(ValueError, match="unknown diagnoser"):
        DX.diagnoser_from_arg("gpt", catalog)
    for dx in (paper, plain, demo):
        dx.close()


# ------------------------------------------------------------------ Chat Completions
def test_chat_json_schema_and_invalid_json_is_unparsed(store, described, catalog, fake_openai):
    answers = _distinct(_answers(store, described), 2)
    dx = DX.StructuredDiagnoser(_endpoint(fake_openai, "chat"), "dx")
    fake_openai.add_faults(Fault.reply("Sure! The patient {clearly has"), Fault.reply("No."))
    summary = D.diagnose_descriptions(store, dx, catalog, answers, ["one_word"])
    assert (summary.computed, summary.errors, summary.unparsed) == (2, 0, 1)
    req = fake_openai.requests[0]
    assert req.path == "/v1/chat/completions"
    assert req.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "yes_no_answer", "schema": DX.YES_NO_SCHEMA, "strict": True},
    }
    frame = D.diagnoses_frame(store, answers).set_index("answer_id")
    assert frame.loc[answers[0]["id"], "parsed"] == "unparsed"
    assert frame.loc[answers[0]["id"], "raw"] == "Sure! The patient {clearly has"  # kept as it came
    assert frame.loc[answers[1]["id"], "parsed"] == "no"  # plain text where JSON was asked for still counts


def test_chat_server_without_json_schema_falls_back_to_plain(store, described, catalog, fake_openai):
    answers = _distinct(_answers(store, described), 2)
    dx = DX.StructuredDiagnoser(_endpoint(fake_openai, "chat"), "dx")
    fake_openai.add_faults(
        Fault.http(400, "response_format json_schema is not supported"), Fault.reply("No."), Fault.reply("Yes")
    )
    summary = D.diagnose_descriptions(store, dx, catalog, answers, ["disease"])
    assert (summary.computed, summary.errors) == (2, 0)
    bodies = [r.body for r in fake_openai.requests]
    assert "response_format" in bodies[0] and all("response_format" not in b for b in bodies[1:])
    frame = D.diagnoses_frame(store, answers).set_index("answer_id")
    assert list(frame.loc[[a["id"] for a in answers], "parsed"]) == ["no", "yes"]
    assert set(frame["mode"]) == {"plain"}


def test_plain_chat_diagnoser_reads_text(store, described, catalog, fake_openai):
    answers = _answers(store, described)[:1]
    dx = DX.openai_diagnoser(
        "some-local-model", api="chat", base_url=fake_openai.base_url, structured=False, reasoning_effort=None
    )
    assert isinstance(dx, DX.TextDiagnoser)
    fake_openai.add_faults(Fault.reply("Yes, there is consolidation."))
    D.diagnose_descriptions(store, dx, catalog, answers, ["tight"])
    body = fake_openai.requests[0].body
    assert "response_format" not in body and "reasoning" not in body
    assert D.diagnoses_frame(store, answers)["parsed"].tolist() == ["yes"]
    dx.close()


# ------------------------------------------------------------------ local text model
def test_local_demo_text_model_noise_is_parsed_not_crashed(store, described, catalog, demo_cache):
    answers = _answers(store, described)
    dx = DX.demo_diagnoser(catalog, max_output_tokens=6, cache_dir=demo_cache)
    assert dx.identity()["backend"]["random_weights"] is True
    summary = D.diagnose_descriptions(store, dx, catalog, answers)
    assert summary.computed + summary.cached == 24 and summary.errors == 0
    frame = D.diagnoses_frame(store, answers, summary.diagnoser_key)
    assert set(frame["parsed"]) <= {"yes", "no", "unparsed"} and frame["raw"].str.len().gt(0).all()
    assert (D.diagnose_descriptions(store, dx, catalog, answers).cached) == 24
    table = D.describe_metrics(frame)
    assert len(table) == 6 and set(table["template"]) == {"one_word", "tight", "disease"}
    dx.close()


# ------------------------------------------------------------------ metrics
def test_metrics_and_signal_recovered_on_a_constructed_set():
    labels = ["positive"] * 3 + ["negative"] * 3
    parsed = ["yes", "yes", "unparsed", "no", "yes", "no"]
    rows = [
        dict(
            answer_id=i,
            model="m",
            task=TASK,
            case_id=f"c{i}",
            image_hash=f"h{i}",
            label=lab,
            prompt_id="describe",
            description="",
            template="tight",
            diagnoser="dx",
            diagnoser_key="k",
            parsed=p,
            raw=p,
            mode="json_schema",
            error=None,
            cached_copy=False,
        )
        for i, (lab, p) in enumerate(zip(labels, parsed))
    ]
    rows.append(
        {**rows[0], "answer_id": 99, "case_id": "c99", "image_hash": "h99", "parsed": None, "error": "HTTP 500"}
    )
    closed = []
    for i, lab in enumerate(labels + ["positive"]):  # h6 is not among the described images
        closed.append(
            dict(
                model="m",
                task=TASK,
                prompt_id="evidence",
                prompt_family="evidence",
                prompt_kind="closed",
                case_id=f"c{i}",
                image_hash=f"h{i}",
                label=lab,
                verdict=lab if i < 6 else "negative",
            )
        )
        closed.append(
            dict(
                model="m",
                task=TASK,
                prompt_id="normal",
                prompt_family="normal",
                prompt_kind="closed",
                case_id=f"c{i}",
                image_hash=f"h{i}",
                label=lab,
                verdict="refusal",
            )
        )
    [row] = D.describe_metrics(pd.DataFrame(rows), pd.DataFrame(closed)).to_dict("records")
    assert (row["n"], row["n_parsed"], row["n_unparsed"], row["n_failed"]) == (6, 5, 1, 1)
    assert row["accuracy"] == pytest.approx(4 / 5) and row["accuracy_all"] == pytest.approx(4 / 6)
    assert row["yes_rate"] == pytest.approx(3 / 5)
    assert row["f1"] == pytest.approx(4 / 5)  # TP 2, FP 1, FN 0
    assert row["f1_all"] == pytest.approx(4 / 6)  # the unparsed positive counts as an error
    assert row["closed_f1_all"] == pytest.approx(0.5) and row["closed_prompts"] == 2 and row["closed_cases"] == 6
    assert row["signal_recovered"] == pytest.approx(4 / 6 - 0.5)
    assert np.isnan(D.describe_metrics(pd.DataFrame(rows))["closed_f1_all"].iloc[0])


# ------------------------------------------------------------------ the command line
def test_describe_cli_offline(tmp_path, monkeypatch, capsys, explorer_cache):
    monkeypatch.setenv("EXPLORER_CACHE", str(explorer_cache))
    folder = tmp_path / "samples" / TASK
    for i in range(4):
        sub = folder / ("positive" if i % 2 else "negative")
        sub.mkdir(parents=True, exist_ok=True)
        _image(100 + i).save(sub / f"img{i}.png")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for register in cli_probes.REGISTER:
        register(sub)
    argv = [
        "describe",
        "--models",
        "demo-llava-med",
        "--tasks",
        TASK,
        "--samples",
        str(tmp_path / "samples"),
        "--store",
        str(tmp_path / "s.sqlite"),
        "--diagnoser",
        "demo",
        "--max-new-tokens",
        "6",
        "--prompts",
        "evidence_ow,normal_ow",
        "--csv",
        str(tmp_path / "m.csv"),
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in out and "16 items, 16 new" in out  # 4 images x (2 closed + 2 describe prompts)
    assert "24 diagnoses, " in out and "0 failed" in out
    table = pd.read_csv(tmp_path / "m.csv")
    assert len(table) == 6 and table["closed_prompts"].eq(2).all() and table["closed_cases"].eq(4).all()
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    again = capsys.readouterr().out
    assert "16 items, 0 new, 16 cached" in again and "24 diagnoses, 0 new, 24 cached" in again


def test_a_local_diagnoser_chooses_yes_or_no_from_its_first_token_and_is_never_unparsed(catalog, demo_cache):
    """The local counterpart of the study's strict {"answer": "Yes"|"No"} schema: read, never guessed."""
    choosing = DX.demo_diagnoser(catalog, cache_dir=demo_cache)
    prompts = [
        f"Description: {t}\nDoes this patient have pneumonia? Answer Yes or No."
        for t in ("patchy opacity in the right lower lobe", "clear lungs", "", "x" * 300)
    ]
    replies = choosing.diagnose(prompts)
    assert all(r.error is None and r.mode == "first-token choice" for r in replies)
    for reply in replies:
        data = json.loads(reply.raw)
        assert data["answer"] == ("Yes" if data["p_yes"] >= 0.5 else "No")
        assert D.parse_yes_no(reply.raw)[0] == data["answer"].lower()
    assert choosing.identity()["choice"] == "first-token yes/no"
    free = DX.local_diagnoser(
        catalog, choosing.backend.local_paths[DX.DEMO_TEXT_ALIAS], DX.DEMO_TEXT_ALIAS, max_output_tokens=4, choice=False
    )
    assert "choice" not in free.identity() and all(r.mode == "plain" for r in free.diagnose(prompts[:1]))
    choosing.close()
    free.close()
