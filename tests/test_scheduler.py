"""The sweep's work queue: endpoints and models run side by side, generation is bounded per device by
shared gates, the judge is a stage of its own, and --shard parts partition a plan exactly."""

from __future__ import annotations

import threading
import time

import pytest
from fake_openai_server import FakeOpenAIServer
from sweep_worker import FakeBackend, small_plan

from explorer.catalog.presets import load_catalog
from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
from explorer.models.gates import GenerationGates
from explorer.runs.store import Store
from explorer.runs.sweep import parse_shard, run_sweep, shard_plan

MODELS = ("demo-gemma", "demo-medgemma")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "sched.sqlite")
    yield s
    s.close()


class CountingBackend(FakeBackend):
    """FakeBackend that records how many generate() calls are inside at once."""

    def __init__(self, delay_s: float):
        super().__init__(delay_s=delay_s)
        self._lock = threading.Lock()
        self.now = self.peak = 0

    def generate(self, requests, on_text=None):
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return super().generate(requests, on_text)
        finally:
            with self._lock:
                self.now -= 1


def test_requests_to_two_endpoints_overlap(catalog, store, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "k")
    plan = small_plan(catalog, models=MODELS, n_cases=1)[:8] + small_plan(catalog, models=MODELS, n_cases=1)[12:20]
    assert {it.model for it in plan} == set(MODELS) and len(plan) == 16
    with FakeOpenAIServer(delay_s=0.2) as one, FakeOpenAIServer(delay_s=0.2) as two:
        common = {"api_key_env": "FAKE_KEY", "max_concurrency": 4, "timeout_s": 10.0, "max_retries": 0}
        backend = OpenAIBackend(
            {
                "demo-gemma": EndpointConfig(base_url=one.base_url, model="g", **common),
                "demo-medgemma": EndpointConfig(base_url=two.base_url, model="m", **common),
            }
        )
        started = time.perf_counter()
        summary = run_sweep(plan, backend, store, batch_size=12)
        wall = time.perf_counter() - started
        assert (summary.computed, summary.errors) == (16, 0)
        first, second = one.requests, two.requests
        assert len(first) == len(second) == 8
        # Side by side: the second server got its first request long before the first server's last.
        assert min(r.arrived for r in second) < max(r.arrived for r in first)
        assert one.max_in_flight == 4 and two.max_in_flight == 4
    # 8 requests per server, 4 at a time, 0.2 s each: about 0.4 s; one server after the other, 0.8 s.
    assert wall < 0.75, f"{wall:.2f} s: the endpoints did not run side by side"


def test_the_device_gate_bounds_generation_across_sweeps(catalog, tmp_path):
    """Two sweeps of different models at once: with 2 device slots their generate() calls overlap,
    with 1 they never do (gpu_concurrency takes effect)."""
    for slots in (1, 2):
        backend = CountingBackend(delay_s=0.02)
        gates = GenerationGates(per_device=slots)
        stores = [Store(tmp_path / f"s{slots}_{m}.sqlite") for m in MODELS]
        threads = [
            threading.Thread(
                target=run_sweep,
                args=(small_plan(catalog, models=(m,), n_cases=1), backend, st),
                kwargs={"batch_size": 3, "gates": gates},
            )
            for m, st in zip(MODELS, stores)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        for st in stores:
            assert st.count() == 12
            st.close()
        assert backend.peak == slots, f"{backend.peak} generate() calls at once with {slots} device slot(s)"


def test_one_model_never_runs_twice_at_once_even_with_free_device_slots(catalog, tmp_path):
    backend = CountingBackend(delay_s=0.02)
    gates = GenerationGates(per_device=4, per_model=1)
    stores = [Store(tmp_path / f"same{i}.sqlite") for i in range(2)]
    plan = small_plan(catalog, models=("demo-gemma",), n_cases=1)
    threads = [
        threading.Thread(target=run_sweep, args=(plan, backend, st), kwargs={"batch_size": 3, "gates": gates})
        for st in stores
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert backend.peak == 1
    for st in stores:
        st.close()


def test_the_judge_is_a_stage_of_its_own(catalog, store):
    """Generation goes on while the judge works: the second batch is generated before the first is judged."""
    events: list[str] = []
    lock = threading.Lock()

    class SlowJudge:
        method = "slow"

        def judge(self, answer, variant, task):
            from explorer.scoring.verdicts import parse_verdict

            time.sleep(0.05)
            with lock:
                events.append("judged")
            return parse_verdict(answer, variant)

    class LoggingBackend(FakeBackend):
        def generate(self, requests, on_text=None):
            with lock:
                events.append("generated")
            return super().generate(requests, on_text)

    summary = run_sweep(small_plan(catalog, n_cases=1), LoggingBackend(), store, batch_size=4, judge=SlowJudge())
    assert summary.computed == 12 and store.count() == 12
    assert events.index("generated", 1) < events.index("judged"), events
    assert set(store.answers_frame(catalog=catalog)["verdict_method"]) != {"rules"}


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shard_parts_partition_the_plan_exactly(catalog, n):
    plan = small_plan(catalog, models=MODELS, n_cases=5)  # 2 models x 5 images x 12 prompts
    parts = [shard_plan(plan, i, n) for i in range(1, n + 1)]
    keys = [it.key for part in parts for it in part]
    assert sorted(keys) == sorted(it.key for it in plan) and len(keys) == len(set(keys))
    # whole (model, image) groups, sizes within one group of each other
    for part in parts:
        for it in part:
            assert all(o in part for o in plan if (o.model, o.case.image_hash) == (it.model, it.case.image_hash))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 12
    # the same split whatever order the plan came in
    assert [it.key for it in shard_plan(list(reversed(plan)), 1, n)] == [it.key for it in reversed(parts[0])]


def test_shard_text_is_checked():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "a/b", "3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_shard_stores_merged_serve_the_whole_plan_from_cache(catalog, tmp_path):
    from explorer.runs.shard_merge import is_results_store, merge_store

    plan = small_plan(catalog, models=MODELS, n_cases=3)
    parts = []
    for i in (1, 2):
        part = Store(tmp_path / f"part{i}.sqlite")
        run_sweep(shard_plan(plan, i, 2), FakeBackend(), part, batch_size=5)
        part.close()
        parts.append(tmp_path / f"part{i}.sqlite")
    merged = Store(tmp_path / "merged.sqlite")
    assert all(is_results_store(p) for p in parts)
    counts = [merge_store(merged, p) for p in parts]
    assert sum(added for added, _ in counts) == len(plan)
    assert merge_store(merged, parts[0]) == (0, counts[0][0])  # merged twice: nothing new
    backend = FakeBackend()
    whole = run_sweep(plan, backend, merged, batch_size=5)
    assert (whole.cached, whole.computed) == (len(plan), 0) and backend.asked == []
    merged.close()
