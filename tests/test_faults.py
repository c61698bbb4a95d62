"""Faults in the middle of a sweep: a misbehaving server is retried where that can help, recorded as
an error where it cannot, and never ends the sweep; retry_errors (CLI --retry-errors) then re-runs
exactly the failed items. A local model that runs out of memory falls back to smaller batches."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
import yaml
from fake_openai_server import FakeOpenAIServer, Fault, fake_openai  # noqa: F401  (fixture)
from PIL import Image, ImageDraw
from sweep_worker import make_cases, small_plan

from explorer.catalog.presets import load_catalog
from explorer.cli.main import main
from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.prompts.variants import closed_variants
from explorer.runs.store import Store
from explorer.runs.sweep import plan_sweep, rejudge, retry_errors, run_sweep
from explorer.scoring.judge import JUDGE_ERROR, LLMJudge

KEY_ENV = "EXPLORER_FAULTS_TEST_KEY"
PASS = Fault.delay(0.0)  # an ordinary answer: ends a run of scripted faults for one item
MODEL = "demo-gemma"  # its prompt format is the chat template, which a server applies itself


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv(KEY_ENV, "sk-faults-test-key")
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path_factory.getbasetemp() / "explorer-cache"))


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _config(server: FakeOpenAIServer, **overrides) -> EndpointConfig:
    settings = dict(
        base_url=server.base_url,
        model="served",
        api_key_env=KEY_ENV,
        timeout_s=2.0,
        max_retries=2,
        max_concurrency=1,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
    )
    settings.update(overrides)
    return EndpointConfig(**settings)


def _prompt_of(body: dict) -> str:
    return "".join(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")


def _errors_by_prompt(store: Store) -> dict[str, str]:
    return {r["prompt_id"]: r["error"] for r in store.answers() if r["error"]}


def test_every_fault_is_retried_or_recorded_and_retry_errors_finishes_the_sweep(fake_openai, catalog, tmp_path):
    # One request at a time, so the scripted faults meet the items in plan order (12 prompts, 1 image).
    # A 1 s read timeout: the scripted 4 s delay times out, ordinary replies never come near it.
    backend = OpenAIBackend({MODEL: _config(fake_openai, timeout_s=1.0)})
    fake_openai.add_faults(
        Fault.http(429, retry_after="0.25"),
        PASS,  # abnormal: waits as told, then answers
        Fault.http(500),
        PASS,  # normal
        Fault.delay(4.0),
        PASS,  # evidence: a read timeout, then an answer
        Fault.drop(),
        PASS,  # guided: connection dropped without a response
        Fault.http(502),
        Fault.http(503),
        PASS,  # mc_pos_first: two retries
        Fault.truncated(),  # mc_neg_first: half a JSON body: unreadable, recorded, not retried
        Fault.empty(),  # abnormal_ow: no choices: recorded
        Fault.http(400, "bad request"),  # normal_ow: a client error is not retried
        Fault.http(503),
        Fault.http(503),
        Fault.http(503),  # evidence_ow: gives up after 3 attempts
        Fault.reply('{"answer": "Ye'),  # guided_ow: invalid JSON as the reply text is still an answer
    )
    plan = small_plan(catalog, n_cases=1)
    with Store(tmp_path / "faults.sqlite") as store:
        summary = run_sweep(plan, backend, store, batch_size=4)
        assert summary.status == "finished" and summary.failures == {}
        assert (summary.planned, summary.computed, summary.errors) == (12, 8, 4)
        errors = _errors_by_prompt(store)
        assert set(errors) == {"mc_neg_first", "abnormal_ow", "normal_ow", "evidence_ow"}
        assert "unreadable reply" in errors["mc_neg_first"]
        assert "no choices" in errors["abnormal_ow"]
        assert "HTTP 400" in errors["normal_ow"] and "gave up" not in errors["normal_ow"]
        assert "gave up after 3 attempts" in errors["evidence_ow"] and "HTTP 503" in errors["evidence_ow"]
        rows = {r["prompt_id"]: r for r in store.answers()}
        assert rows["guided_ow"]["answer"] == '{"answer": "Ye' and rows["guided_ow"]["verdict"] == "unclear"
        assert all(
            r["answer"].startswith("echo served:") for p, r in rows.items() if p not in errors and p != "guided_ow"
        )

        seen = fake_openai.requests
        assert len(seen) == 12 + 5 + 1 + 2  # items + retried faults + exhausted retries
        first_429, after_429 = seen[0], seen[1]
        assert after_429.arrived - first_429.arrived >= 0.25  # Retry-After was honoured

        # Only the four failed items are asked again, and now they succeed.
        again = retry_errors(plan, backend, store, batch_size=4)
        assert (again.planned, again.computed, again.errors, again.status) == (4, 4, 0, "finished")
        retried = [_prompt_of(r.body) for r in fake_openai.requests[len(seen) :]]
        failed_texts = {it.variant.text for it in plan if it.variant.prompt_id in errors}
        assert sorted(retried) == sorted(failed_texts)
        assert store.count() == 12 and store.count(include_errors=False) == 12
        assert store.integrity_ok()
        assert retry_errors(plan, backend, store).planned == 0  # nothing left to retry
    backend.close()


def test_concurrent_requests_ride_out_a_burst_of_faults(fake_openai, catalog, tmp_path):
    # Four requests in flight: which item meets which fault is up to the scheduler, but with more
    # retries allowed than faults queued, every item must end with an answer.
    backend = OpenAIBackend({MODEL: _config(fake_openai, timeout_s=1.0, max_concurrency=4, max_retries=8)})
    faults = [
        Fault.http(429, retry_after="0.05"),
        Fault.http(500),
        Fault.drop(),
        Fault.delay(4.0),
        Fault.http(503),
        Fault.http(408),
        Fault.drop(),
        Fault.http(502),
    ]
    fake_openai.add_faults(*faults)
    plan = small_plan(catalog, n_cases=2)
    with Store(tmp_path / "burst.sqlite") as store:
        summary = run_sweep(plan, backend, store, batch_size=8)
        assert (summary.computed, summary.errors) == (24, 0)
        assert len(fake_openai.requests) == 24 + len(faults)
        assert 1 < fake_openai.max_in_flight <= 4
        frame = store.answers_frame(run_id=summary.run_id)
        assert len(frame) == 24 and not frame.duplicated(["case_id", "prompt_id"]).any()
    backend.close()


def test_streamed_answers_survive_a_cut_stream(fake_openai, catalog, tmp_path):
    backend = OpenAIBackend({MODEL: _config(fake_openai)})
    fake_openai.add_faults(Fault.drop_mid_stream(), PASS, Fault.empty(), Fault.http(429, retry_after="0"), PASS)
    cases = make_cases("pneumonia", 1)
    variants = closed_variants(catalog, "pneumonia")[:3]
    plan = plan_sweep(catalog, [MODEL], ["pneumonia"], {"pneumonia": cases}, {"pneumonia": variants})
    streamed: list[str] = []
    with Store(tmp_path / "stream.sqlite") as store:
        summary = run_sweep(plan, backend, store, batch_size=3, on_text=lambda alias, text: streamed.append(text))
        assert (summary.computed, summary.errors, summary.status) == (2, 1, "finished")
        rows = {r["prompt_id"]: r for r in store.answers()}
        assert rows["abnormal"]["answer"] == f"echo served: {variants[0].text} [1 image(s)]"  # whole, not cut
        assert "stream carried no choices" in rows["normal"]["error"]
        assert rows["evidence"]["error"] is None
        assert "" in streamed  # the retried stream started its text over
        assert retry_errors(plan, backend, store).computed == 1
    backend.close()


def test_a_backend_that_cannot_start_fails_its_items_not_the_sweep(catalog, tmp_path, monkeypatch, fake_openai):
    monkeypatch.delenv(KEY_ENV)
    backend = OpenAIBackend({MODEL: _config(fake_openai)})
    plan = small_plan(catalog, n_cases=1)
    with Store(tmp_path / "nokey.sqlite") as store:
        summary = run_sweep(plan, backend, store, batch_size=6)
        assert summary.status == "finished" and summary.errors == 12
        assert KEY_ENV in summary.failures[MODEL] and "is not set" in summary.failures[MODEL]
        assert store.count() == 12 and store.count(include_errors=False) == 0
        assert not fake_openai.requests  # nothing was sent without a key

        monkeypatch.setenv(KEY_ENV, "sk-now-set")
        fixed = OpenAIBackend({MODEL: _config(fake_openai)})
        again = retry_errors(plan, fixed, store)
        assert (again.planned, again.computed, again.errors) == (12, 12, 0)
        assert store.count(include_errors=False) == 12 and store.integrity_ok()
        fixed.close()


def test_a_failing_judge_keeps_the_answers_and_rejudge_repairs_the_verdicts(fake_openai, catalog, tmp_path):
    answers = OpenAIBackend({MODEL: _config(fake_openai)})
    with FakeOpenAIServer() as judge_server:
        judge_backend = OpenAIBackend({"judge": _config(judge_server, max_retries=1)})
        tokens = {key: task.judge_tokens for key, task in catalog.tasks.items()}
        judge = LLMJudge(judge_backend, "judge", tokens)
        # The first batch of judgements: a server error twice, a dropped connection twice, then nonsense.
        judge_server.add_faults(
            Fault.http(500), Fault.http(500), Fault.drop(), Fault.drop(), Fault.reply("I'd rather not say")
        )
        plan = small_plan(catalog, n_cases=1)[:3]
        with Store(tmp_path / "judge.sqlite") as store:
            summary = run_sweep(plan, answers, store, batch_size=3, judge=judge)
            assert (summary.computed, summary.errors, summary.status) == (3, 0, "finished")
            rows = store.answers()
            assert all(r["answer"] for r in rows)  # every answer kept
            # A failed judgement is a judge error (no verdict, left out of the metrics), never a refusal.
            assert [r["verdict"] for r in rows] == [None] * 3
            assert all(r["verdict_detail"].startswith(JUDGE_ERROR) for r in rows)
            # The judge is back: re-judging replaces the failed verdicts, the raw answers stay.
            judge_server.add_faults(Fault.reply("POSITIVE"), Fault.reply("NEGATIVE"), Fault.reply("AMBIGUOUS"))
            assert rejudge(store, judge) == 3
            after = store.answers()
            assert [r["verdict"] for r in after] == ["positive", "negative", "hedge"]  # AMBIGUOUS: a hedge
            assert after[2]["verdict_detail"].startswith("AMBIGUOUS")
            assert [r["answer"] for r in after] == [r["answer"] for r in rows]
            assert all(
                r["verdict_method"].startswith("judge:judge") and not r["verdict_detail"].startswith(JUDGE_ERROR)
                for r in after
            )
        judge_backend.close()
    answers.close()


# ------------------------------------------------------------------ the command line
def _tree(root: Path) -> Path:
    for i, cls in enumerate(("negative", "positive")):
        img = Image.new("L", (48, 48), 30 + 60 * i)
        ImageDraw.Draw(img).rectangle((8, 8, 30 + i, 30), fill=220)
        (root / "pneumonia" / cls).mkdir(parents=True, exist_ok=True)
        img.save(root / "pneumonia" / cls / "a.png")
    return root


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_cli_retry_errors_reruns_only_the_failed_items(fake_openai, tmp_path):
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        yaml.safe_dump(
            {
                MODEL: {
                    "base_url": fake_openai.base_url,
                    "model": "served",
                    "api_key_env": KEY_ENV,
                    "timeout_s": 2.0,
                    "max_retries": 1,
                    "max_concurrency": 1,
                    "backoff_base_s": 0.01,
                    "backoff_max_s": 0.02,
                }
            }
        )
    )
    store = tmp_path / "cli.sqlite"
    args = [
        "sweep",
        "--preset",
        "demo",
        "--samples",
        str(_tree(tmp_path / "samples")),
        "--tasks",
        "pneumonia",
        "--models",
        MODEL,
        "--prompts",
        "abnormal,normal,evidence",
        "--per-class",
        "1",
        "--batch-size",
        "2",
        "--endpoints",
        str(endpoints),
        "--store",
        str(store),
    ]
    fake_openai.add_faults(Fault.http(500), Fault.http(500), PASS, Fault.http(401, "invalid key"), Fault.drop(), PASS)
    rc, out, err = _cli(args)
    # Failed items make the run exit non-zero, with the count (never exit 0 beside a partial result).
    assert rc == 1 and "Traceback" not in err and "2 of 6 items failed" in err
    assert "6 planned, 0 from the store, 4 generated, 2 errors" in out
    assert len(fake_openai.requests) == 6 + 2  # the retried 500 and the retried drop

    rc, out, err = _cli(args + ["--retry-errors"])
    assert rc == 0, err
    assert "2 planned, 0 from the store, 2 generated, 0 errors" in out
    assert len(fake_openai.requests) == 8 + 2

    rc, out, _ = _cli(args)
    assert "6 planned, 6 from the store, 0 generated, 0 errors" in out
    assert len(fake_openai.requests) == 10
    with Store(store) as s:
        assert s.count() == 6 and s.count(include_errors=False) == 6 and s.integrity_ok()


# ------------------------------------------------------------------ a local model out of memory
def test_out_of_memory_mid_batch_falls_back_to_smaller_batches(catalog, tmp_path, monkeypatch):
    backend = TransformersBackend(catalog, batch_size=8)
    lm = backend.load(MODEL)
    real_generate = lm.model.generate
    sizes: list[int] = []

    def tight_memory(**kwargs):
        sizes.append(int(kwargs["input_ids"].shape[0]))
        if sizes[-1] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_generate(**kwargs)

    cases = make_cases("pneumonia", 2, size=32)
    variants = closed_variants(catalog, "pneumonia")[:3]
    plan = plan_sweep(
        catalog,
        [MODEL],
        ["pneumonia"],
        {"pneumonia": cases},
        {"pneumonia": variants},
        generation_override={"max_new_tokens": 4},
    )
    with Store(tmp_path / "reference.sqlite") as reference:  # the same plan without memory trouble
        run_sweep(plan, backend, reference, batch_size=1)
        expected = {(r["case_id"], r["prompt_id"]): r["answer"] for r in reference.answers()}

    monkeypatch.setattr(lm.model, "generate", tight_memory)
    with Store(tmp_path / "oom.sqlite") as store:
        summary = run_sweep(plan, backend, store, batch_size=6)
        assert (summary.computed, summary.errors, summary.failures) == (6, 0, {})
        assert sizes[0] == 6 and sizes.count(1) == 6 and max(sizes[1:]) < 6  # halved down to single requests
        got = {(r["case_id"], r["prompt_id"]): r["answer"] for r in store.answers()}
        assert got == expected  # every answer arrived, and each is the one an unbatched run gives
    backend.close()
