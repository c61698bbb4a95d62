"""Sweeps with a deterministic fake backend: planning, caching, progress, cancel and resume, errors."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from sweep_worker import FakeBackend, make_cases, request_key, small_plan

from explorer.catalog.presets import load_catalog
from explorer.prompts.variants import closed_variants, describe_variants
from explorer.runs.store import Store
from explorer.runs.sweep import SweepSpec, plan_from_spec, plan_sweep, rejudge, retry_errors, run_sweep
from explorer.schema import GenerationSettings, Response, Verdict
from explorer.scoring.verdicts import RULES_METHOD

MODELS = ("demo-gemma", "demo-medgemma")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "sweep.sqlite")
    yield s
    s.close()


def test_plan_is_the_cross_product_model_major_and_grouped_by_image(catalog):
    plan = small_plan(catalog, models=MODELS, n_cases=3)
    assert len(plan) == 2 * 3 * 12
    assert len({it.key for it in plan}) == len(plan)
    assert [it.model for it in plan] == ["demo-gemma"] * 36 + ["demo-medgemma"] * 36
    # Each image's 12 prompts are consecutive, so a backend can reuse the image's encoding.
    images = [it.case.image_hash for it in plan[:36]]
    assert [images[i] for i in range(0, 36, 12)] == list(dict.fromkeys(images))
    assert all(len(set(images[i : i + 12])) == 1 for i in range(0, 36, 12))
    assert plan[0].request.text() == plan[0].variant.text


def test_generation_override_patches_each_models_settings(catalog):
    cases = make_cases("pneumonia", 1)
    variants = {"pneumonia": closed_variants(catalog, "pneumonia")[:1]}
    plan = plan_sweep(
        catalog,
        ["demo-llava", "demo-gemma"],
        ["pneumonia"],
        {"pneumonia": cases},
        variants,
        generation_override={"max_new_tokens": 2},
    )
    by_model = {it.model: it.request.generation for it in plan}
    assert by_model["demo-llava"].max_new_tokens == 2 and by_model["demo-llava"].min_new_tokens == 2  # clamped
    assert by_model["demo-gemma"].max_new_tokens == 2 and by_model["demo-gemma"].min_new_tokens == 0
    whole = GenerationSettings(max_new_tokens=7, do_sample=True, temperature=0.5)
    plan = plan_sweep(catalog, ["demo-gemma"], ["pneumonia"], {"pneumonia": cases}, variants, generation_override=whole)
    assert plan[0].request.generation == whole


def test_plan_refuses_unknown_models_and_missing_cases(catalog):
    from explorer.catalog.presets import PresetError

    with pytest.raises(PresetError, match="unknown model"):
        small_plan(catalog, models=("no-such-model",))
    with pytest.raises(ValueError, match="no cases"):
        plan_sweep(catalog, ["demo-gemma"], ["pneumonia"], {}, {})


def test_sweep_answers_every_item_once_then_serves_all_from_cache(catalog, store):
    plan = small_plan(catalog, models=MODELS, n_cases=3)
    backend = FakeBackend()
    calls = []
    summary = run_sweep(
        plan, backend, store, batch_size=5, progress=lambda d, t, info: calls.append((d, t, dict(info)))
    )
    assert (summary.planned, summary.computed, summary.cached, summary.errors) == (72, 72, 0, 0)
    assert summary.status == "finished" and summary.elapsed_s > 0
    assert len(backend.asked) == 72 and len(set(backend.asked)) == 72
    assert max(backend.batches) <= 5
    assert [d for d, _, _ in calls] == list(range(1, 73)) and {t for _, t, _ in calls} == {72}
    assert calls[-1][2]["computed"] == 72 and calls[0][2]["model"] == "demo-gemma"
    frame = store.answers_frame(catalog=catalog)
    assert len(frame) == 72
    assert Counter(zip(frame.model, frame.case_id, frame.prompt_id)).most_common(1)[0][1] == 1
    assert frame["verdict"].notna().all() and set(frame["verdict_method"]) == {RULES_METHOD}
    run = store.run(summary.run_id)
    assert run["status"] == "finished" and run["plan"]["items"] == 72
    assert {c["case_id"] for c in run["manifest"]["cases"]["pneumonia"]} == set(frame.case_id)

    again = run_sweep(plan, backend, store, batch_size=5)
    assert (again.cached, again.computed) == (72, 0)
    assert len(backend.asked) == 72  # nothing generated again
    assert again.run_id != summary.run_id and store.count() == 72
    assert len(store.answers_frame(catalog=catalog, run_id=again.run_id)) == 72


def test_on_item_sees_rows_with_cached_flag_and_streamed_text(catalog, store):
    plan = small_plan(catalog, n_cases=1)[:3]
    seen, streamed = [], []
    run_sweep(
        plan,
        FakeBackend(),
        store,
        on_item=lambda item, row: seen.append((item.key, row)),
        on_text=lambda alias, text: streamed.append((alias, text)),
    )
    assert [k for k, _ in seen] == [it.key for it in plan]
    assert all(not row["cached"] and row["answer"] and row["prompt_text"] for _, row in seen)
    assert streamed and {a for a, _ in streamed} == {"demo-gemma"}
    seen.clear()
    run_sweep(plan, FakeBackend(), store, on_item=lambda item, row: seen.append((item.key, row)))
    assert all(row["cached"] for _, row in seen)


def test_cancel_midway_then_resume_without_recomputing(catalog, store):
    plan = small_plan(catalog, models=MODELS, n_cases=2)  # 48 items
    cancel = threading.Event()
    first = FakeBackend()

    def stop_after_ten(done, total, info):
        if done >= 10:
            cancel.set()

    summary = run_sweep(plan, first, store, batch_size=4, cancel=cancel, progress=stop_after_ten)
    assert summary.status == "cancelled" and summary.cancelled
    assert 10 <= summary.computed < 48 and store.count() == summary.computed
    assert store.run(summary.run_id)["status"] == "cancelled"

    second = FakeBackend()
    resumed = run_sweep(plan, second, store, batch_size=4)
    assert resumed.run_id == summary.run_id  # the same plan resumes its run
    assert resumed.status == "finished" and store.run(summary.run_id)["status"] == "finished"
    assert resumed.cached == summary.computed and resumed.computed == 48 - summary.computed
    assert not set(first.asked) & set(second.asked)  # nothing answered before was asked again
    assert set(first.asked) | set(second.asked) == {request_key(it.request) for it in plan}
    assert store.count() == 48
    assert len(store.answers_frame(catalog=catalog, run_id=summary.run_id)) == 48


def test_sampled_requests_are_generated_every_run(catalog, store):
    sampled = {"do_sample": True, "temperature": 0.7}
    plan = small_plan(catalog, n_cases=1, generation_override=sampled)[:4]
    backend = FakeBackend()
    assert run_sweep(plan, backend, store).computed == 4
    again = run_sweep(plan, backend, store)
    assert (again.computed, again.cached) == (4, 0) and len(backend.asked) == 8
    assert store.count() == 8


def test_errors_are_stored_shown_and_retried_alone(catalog, store):
    plan = small_plan(catalog, n_cases=2)  # 24 items, 4 of them "evidence" prompts
    failing = FakeBackend(fail_when="contain evidence")
    summary = run_sweep(plan, failing, store)
    n_err = sum("contain evidence" in it.variant.text for it in plan)
    assert n_err == 8 and summary.errors == n_err and summary.computed == 24 - n_err
    errors = store.answers_frame(catalog=catalog).dropna(subset=["error"])
    assert len(errors) == n_err and errors["verdict"].isna().all()

    # retry_errors asks only the failed items; here the guided ones fail again.
    flaky = FakeBackend(fail_when="Consider signs")
    retried = retry_errors(plan, flaky, store)
    assert retried.planned == n_err and len(flaky.asked) == n_err
    assert all("contain evidence" in k for k in flaky.asked)
    assert (retried.computed, retried.errors) == (4, 4)

    # A plain re-run serves the good answers from the store and tries the errors again.
    fixed = FakeBackend()
    rerun = run_sweep(plan, fixed, store)
    assert (rerun.cached, rerun.computed, rerun.errors) == (20, 4, 0)
    assert len(fixed.asked) == 4 and all("Consider signs" in k for k in fixed.asked)
    assert store.count() == 24 and store.count(include_errors=False) == 24


def test_a_backend_that_raises_fails_only_its_model(catalog, store):
    plan = small_plan(catalog, models=MODELS, n_cases=1)
    backend = FakeBackend(raise_for=["demo-gemma"])
    summary = run_sweep(plan, backend, store, batch_size=4)
    assert summary.status == "finished"
    assert summary.errors == 12 and summary.computed == 12
    assert "cannot load demo-gemma" in summary.failures["demo-gemma"]
    assert backend.batches.count(4) >= 3  # demo-medgemma ran; demo-gemma was tried once only
    frame = store.answers_frame(catalog=catalog)
    assert frame.loc[frame.model == "demo-gemma", "error"].str.contains("cannot load").all()


def test_an_unknown_backend_identity_is_reported_not_raised(catalog, store):
    class NoIdentity(FakeBackend):
        def identity(self, model_alias):
            raise RuntimeError("endpoint not configured")

    seen = []
    summary = run_sweep(small_plan(catalog, n_cases=1), NoIdentity(), store, on_item=lambda i, r: seen.append(r))
    assert summary.errors == 12 and "endpoint not configured" in summary.failures["demo-gemma"]
    assert len(seen) == 12 and all(r["error"] for r in seen)
    assert store.count() == 0  # nothing to cache without a fingerprint


def test_backend_per_model_is_resolved_once_per_model(catalog, store):
    backends = {m: FakeBackend() for m in MODELS}
    asked = []
    run_sweep(small_plan(catalog, models=MODELS, n_cases=1), lambda a: asked.append(a) or backends[a], store)
    assert asked == list(MODELS)
    assert all(len(b.asked) == 12 for b in backends.values())


class FakeJudge:
    """A deterministic judge double: reads 'yes' as the prompt's yes-meaning, anything else as unclear."""

    method = "judge:fake-judge"

    def __init__(self):
        self.calls = []

    def judge(self, answer, variant, task):
        self.calls.append((answer, variant.prompt_id, getattr(task, "key", task)))
        if variant.yes_means and answer.lower().startswith("yes"):
            return Verdict(variant.yes_means, evidence=answer[:3], span=(0, 3), method=self.method)
        return Verdict("unclear", method=self.method, detail="not a yes")


def test_judge_replaces_rules_and_rejudge_updates_verdicts(catalog, store):
    plan = small_plan(catalog, n_cases=2)
    judge = FakeJudge()
    run_sweep(plan, FakeBackend(), store, judge=judge)
    assert len(judge.calls) == 24 and {t for *_, t in judge.calls} == {"pneumonia"}
    frame = store.answers_frame(catalog=catalog)
    assert set(frame["verdict_method"]) == {"judge:fake-judge"}
    answers_before = list(frame["answer"])

    # Run again with the judge: all cached, nothing judged again (the verdicts are the judge's already).
    run_sweep(plan, FakeBackend(), store, judge=judge)
    assert len(judge.calls) == 24

    assert rejudge(store, None) == 24  # back to the rule-based parser
    frame = store.answers_frame(catalog=catalog)
    assert set(frame["verdict_method"]) == {RULES_METHOD} and list(frame["answer"]) == answers_before

    # A cached answer with a rules verdict gets the judge's verdict when a sweep runs with the judge.
    judge3 = FakeJudge()
    again = run_sweep(plan[:3], FakeBackend(), store, judge=judge3)
    assert again.cached == 3 and len(judge3.calls) == 3
    assert set(store.answers_frame(catalog=catalog, run_id=again.run_id)["verdict_method"]) == {"judge:fake-judge"}
    rejudge(store, None)

    judge2 = FakeJudge()
    assert rejudge(store, judge2, {"prompt_id": "abnormal"}) == 2
    frame = store.answers_frame(catalog=catalog)
    assert set(frame.loc[frame.prompt_id == "abnormal", "verdict_method"]) == {"judge:fake-judge"}
    assert set(frame.loc[frame.prompt_id != "abnormal", "verdict_method"]) == {RULES_METHOD}


def test_a_batch_judge_gets_each_batch_in_one_call(catalog, store):
    class BatchJudge(FakeJudge):
        def __init__(self):
            super().__init__()
            self.batches = []

        def judge_many(self, triples):
            self.batches.append(len(triples))
            return [self.judge(*t) for t in triples]

    judge = BatchJudge()
    run_sweep(small_plan(catalog, n_cases=1), FakeBackend(), store, judge=judge, batch_size=5)
    assert judge.batches == [5, 5, 2] and {t for *_, t in judge.calls} == {"pneumonia"}

    class BrokenBatch(FakeJudge):
        def judge_many(self, triples):
            raise ConnectionError("judge endpoint down")

    fallback = BrokenBatch()
    assert rejudge(store, fallback, batch_size=4) == 12
    assert len(fallback.calls) == 12  # one call each after the batch call failed


def test_a_failing_judge_is_a_judge_error_not_a_refusal_and_is_judged_again(catalog, store):
    def broken(answer, variant, task):
        raise TimeoutError("judge timed out")

    broken.method = "judge:gpt-5"
    plan = small_plan(catalog, n_cases=1)[:2]
    summary = run_sweep(plan, FakeBackend(), store, judge=broken)
    assert summary.computed == 2
    rows = store.answers()
    # No verdict (metrics leave it out), the reason kept, and not a refusal.
    assert [r["verdict"] for r in rows] == [None, None]
    assert all(r["verdict_detail"] == "judge error: TimeoutError: judge timed out" for r in rows)
    # The same sweep with a working judge (same method name) sends the failed judgements again.
    calls = []

    def working(answer, variant, task):
        calls.append(answer)
        return Verdict("positive", method="judge:gpt-5", detail="judge answered POSITIVE")

    working.method = "judge:gpt-5"  # the same judge as before: only the failure makes it ask again
    summary = run_sweep(plan, FakeBackend(), store, judge=working)
    assert summary.cached == 2 and len(calls) == 2
    assert [r["verdict"] for r in store.answers()] == ["positive", "positive"]


def test_description_prompts_are_answered_without_a_verdict(catalog, store):
    cases = make_cases("pneumonia", 1)
    variants = {"pneumonia": describe_variants(catalog.task("pneumonia"))}
    plan = plan_sweep(catalog, ["demo-gemma"], ["pneumonia"], {"pneumonia": cases}, variants)
    assert run_sweep(plan, FakeBackend(), store).computed == 2
    frame = store.answers_frame(catalog=catalog)
    assert set(frame["prompt_kind"]) == {"describe"} and frame["verdict"].isna().all()
    assert all(json.loads(p) == {"yes_means": None, "options": []} for p in frame["polarity"])


def test_spec_from_preset_builds_the_same_plan_for_cli_and_app(catalog):
    preset = catalog.study("demo")
    loaded = []

    def loader(task, per_class, seed):
        loaded.append((task, per_class, seed))
        return make_cases(task, 2 * per_class)

    spec = SweepSpec.from_preset(
        preset,
        models=["demo-gemma"],
        tasks=["pneumonia"],
        per_class=1,
        prompt_ids=["abnormal", "mc_neg_first_ow"],
        describe=True,
        max_new_tokens=3,
        judge=None,
    )
    assert spec.models == ("demo-gemma",) and spec.prompt_style == preset.prompt_format
    assert spec.judge is False and spec.case_source == "folder" and spec.seed == 42
    plan = plan_from_spec(catalog, spec, loader)
    assert loaded == [("pneumonia", 1, 42)]
    assert [it.variant.prompt_id for it in plan[:4]] == ["abnormal", "mc_neg_first_ow", "describe", "describe_dx"]
    assert len(plan) == 2 * 4 and {it.request.generation.max_new_tokens for it in plan} == {3}
    assert spec.as_dict()["selection"]["one_word"] == "both"

    full = plan_from_spec(catalog, SweepSpec.from_preset(preset, tasks=["pneumonia"], per_class=1), loader)
    assert len(full) == 4 * 2 * 12  # four demo models, two cases, twelve closed prompts
    with pytest.raises(Exception, match="no prompt"):
        plan_from_spec(catalog, SweepSpec.from_preset(preset, prompt_ids=["nope"]), loader)
    with pytest.raises(ValueError, match="unknown sweep setting"):
        SweepSpec.from_preset(preset, colour="red")


def test_a_cached_answer_is_read_with_the_askers_own_polarity(catalog, store):
    from dataclasses import replace as dc_replace

    from explorer.prompts.variants import custom_variant

    task = catalog.task("pneumonia")
    as_abnormal = custom_variant("Is anything wrong here?", task, closed_variants(catalog, "pneumonia")[0])
    as_normal = dc_replace(as_abnormal, yes_means="negative")  # same text, opposite meaning
    cases = make_cases("pneumonia", 1)

    class SaysYes(FakeBackend):
        def generate(self, requests, on_text=None):
            super().generate(requests)
            return [Response(text="Yes.") for _ in requests]

    seen = []
    for variant in (as_abnormal, as_normal):
        plan = plan_sweep(catalog, ["demo-gemma"], ["pneumonia"], {"pneumonia": cases}, {"pneumonia": [variant]})
        run_sweep(plan, SaysYes(), store, on_item=lambda item, row: seen.append((row["verdict"], row["cached"])))
    assert seen == [("positive", False), ("negative", True)]
    assert store.count() == 1
