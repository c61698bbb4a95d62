"""Models kept within a memory budget: which one is unloaded when the next would not fit, sizes
read from safetensors headers without loading, and the study's bf16 / 8-bit / 4-bit plan."""

from __future__ import annotations

import pytest
import torch

from explorer.catalog.presets import load_catalog
from explorer.models.backends.base import BackendError
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.models.manager import (
    MemoryBudgetError,
    ModelManager,
    ParamCounts,
    format_memory_plan,
    memory_plan,
    safetensors_params,
    weight_bytes,
)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def _manager(budget, unloaded=None):
    return ModelManager(
        budget_bytes=budget,
        clock=Clock(),
        on_unload=(lambda alias, value: unloaded.append(alias)) if unloaded is not None else None,
    )


def test_least_recently_used_is_unloaded_when_the_next_would_not_fit():
    unloaded: list[str] = []
    m = _manager(10, unloaded)
    m.acquire("a", lambda: "A", 4)
    m.acquire("b", lambda: "B", 4)
    assert m.get("a") == "A"  # a is now more recent than b
    m.acquire("c", lambda: "C", 4)  # 12 > 10: b goes, a stays
    assert unloaded == ["b"] and m.aliases() == ["a", "c"] and m.used_bytes == 8
    m.acquire("d", lambda: "D", 6)  # needs 6 of 10: a (now the older) goes, 4 + 6 fit
    assert unloaded == ["b", "a"] and m.aliases() == ["c", "d"]
    m.acquire("e", lambda: "E", 10)  # the whole budget: everything else goes
    assert unloaded == ["b", "a", "c", "d"] and m.aliases() == ["e"]


def test_a_loaded_model_is_served_without_loading_again():
    calls = []
    m = _manager(10)
    assert m.acquire("a", lambda: calls.append(1) or "A", 4) == "A"
    assert m.acquire("a", lambda: calls.append(1) or "A2", 4) == "A"
    assert calls == [1] and "a" in m and len(m) == 1


def test_measured_size_replaces_the_estimate():
    m = _manager(10)
    m.acquire("a", lambda: "A", 2, measure=lambda value: 7)
    assert m.used_bytes == 7
    assert m.plan_evictions(4) == ["a"]  # 7 + 4 > 10
    assert m.plan_evictions(3) == []


def test_too_big_for_the_budget_is_refused_before_anything_is_unloaded():
    unloaded: list[str] = []
    m = _manager(10, unloaded)
    m.acquire("a", lambda: "A", 4)
    with pytest.raises(MemoryBudgetError, match="needs about 11 bytes but the model budget is 10 bytes"):
        m.acquire("huge", lambda: "H", 11)
    assert unloaded == [] and m.aliases() == ["a"]


def test_kept_models_are_never_chosen():
    m = _manager(10)
    m.acquire("a", lambda: "A", 6)
    m.acquire("b", lambda: "B", 3)
    assert m.plan_evictions(1, keep=("a",)) == []
    assert m.plan_evictions(2, keep=("a",)) == ["b"]  # a is older but kept
    assert m.plan_evictions(2) == ["a"]
    with pytest.raises(MemoryBudgetError, match="held by models in use"):
        m.plan_evictions(5, keep=("a",))  # 6 kept + 5 > 10


def test_default_budget_follows_free_memory():
    free = {"bytes": 100}
    m = ModelManager(free_memory=lambda: free["bytes"], clock=Clock())
    assert m.budget_bytes == 90  # 90% of what is free
    m.acquire("a", lambda: "A", 50)
    free["bytes"] = 50  # loading took it; the model's own bytes still count toward the budget
    assert m.budget_bytes == 90
    m.budget_bytes = 20
    assert m.plan_evictions(10) == ["a"]


def test_table_lists_what_is_loaded_most_recent_first():
    m = _manager(10**9)
    m.acquire("a", lambda: "A", 3 * 10**9 // 100, device="cuda:0", dtype="bfloat16", quantization="4bit")
    m.acquire("b", lambda: "B", 5, dtype="float32")
    m.get("a")
    rows = m.table()
    assert [r["alias"] for r in rows] == ["a", "b"]
    assert rows[0]["device"] == "cuda:0" and rows[0]["quantization"] == "4bit" and rows[0]["size_gb"] == 0.03
    assert rows[0]["last_used"] > rows[1]["last_used"] and set(rows[1]) >= {
        "alias",
        "size_bytes",
        "device",
        "dtype",
        "last_used",
    }
    assert m.unload("a") and not m.unload("a") and m.aliases() == ["b"]


def test_sizes_from_safetensors_headers(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {
            "model.embed_tokens.weight": torch.zeros(10, 4),
            "model.layers.0.mlp.up_proj.weight": torch.zeros(8, 4),
            "model.layers.0.input_layernorm.weight": torch.zeros(4),
            "vision.patch_embedding.weight": torch.zeros(2, 3, 2, 2),
            "lm_head.weight": torch.zeros(10, 4),
        },
        str(tmp_path / "model.safetensors"),
    )
    counts = safetensors_params(tmp_path)
    assert counts == ParamCounts(total=40 + 32 + 4 + 24 + 40, unquantized=40 + 4 + 24 + 40)
    assert weight_bytes(counts, "float32") == 140 * 4
    assert weight_bytes(counts, "bfloat16", "8bit") == 32 * 1 + 108 * 2
    assert weight_bytes(counts, "bfloat16", "4bit") == int(32 * (0.5 + 4 / 64)) + 108 * 2
    assert safetensors_params(tmp_path / "missing") is None
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model-00002.safetensors"}}')
    assert safetensors_params(tmp_path) is None  # a shard is missing: no undercount


def test_study_models_fit_one_24_gb_gpu_only_in_4_bit():
    plan = memory_plan(load_catalog())
    by_alias = {row["alias"]: row for row in plan}
    assert list(by_alias) == ["llava", "llava-med", "gemma", "medgemma", "all 4"]
    assert by_alias["llava"]["bf16_gb"] == pytest.approx(15.1, abs=0.2)
    assert by_alias["gemma"]["bf16_gb"] == pytest.approx(8.6, abs=0.2)
    for alias in ("llava", "gemma"):
        row = by_alias[alias]
        assert row["bf16_gb"] > row["8bit_gb"] > row["4bit_gb"] > 0
    total = by_alias["all 4"]
    assert (total["fits_bf16"], total["fits_8bit"], total["fits_4bit"]) == (False, False, True)
    table = format_memory_plan(plan)
    assert table.startswith("| model |") and "(fits)" in table and "(does not fit)" in table
    assert memory_plan(load_catalog(), gpu_gb=80.0)[-1]["fits_bf16"] is True


# ------------------------------------------------------------------ wired into the backend
@pytest.fixture(scope="module")
def demo_sizes(tmp_path_factory):
    catalog = load_catalog()
    cache = tmp_path_factory.mktemp("demo-cache")
    probe = TransformersBackend(catalog, demo_cache_dir=cache)
    sizes = {}
    for alias in ("demo-llava-med", "demo-gemma"):
        probe.load(alias)
        sizes[alias] = next(r["size_bytes"] for r in probe.loaded_table() if r["alias"] == alias)
    probe.close()
    return catalog, cache, sizes


def test_backend_unloads_the_older_model_to_fit_the_next(demo_sizes):
    catalog, cache, sizes = demo_sizes
    budget = int(1.2 * max(sizes.values()) * 1.1)  # room for one model (with the 10% margin), not two
    b = TransformersBackend(catalog, demo_cache_dir=cache, memory_budget=budget)
    b.load("demo-llava-med")
    [row] = b.loaded_table()
    assert row["alias"] == "demo-llava-med" and row["device"] == "cpu" and row["size_bytes"] == sizes["demo-llava-med"]
    b.load("demo-gemma")
    assert b.loaded() == ["demo-gemma"]  # the least recently used one made room
    b.close()


def test_backend_refuses_a_model_bigger_than_the_budget(demo_sizes):
    catalog, cache, sizes = demo_sizes
    b = TransformersBackend(catalog, demo_cache_dir=cache, memory_budget=sizes["demo-gemma"] // 2)
    with pytest.raises(BackendError, match="not enough memory: needs about .* budget"):
        b.load("demo-gemma")
    assert b.loaded() == []


def test_quantized_loading_needs_cuda_and_changes_the_identity(demo_sizes, tmp_path):
    catalog, cache, _ = demo_sizes
    b = TransformersBackend(catalog, device="cpu", quantization={"demo-gemma": "4bit"}, demo_cache_dir=cache)
    assert b.identity("demo-gemma")["quantization"] == "bitsandbytes-4bit"
    assert "quantization" not in b.identity("demo-llava-med")
    assert "quantization" not in TransformersBackend(catalog, quantization="8bit").identity(
        "demo-gemma"
    )  # demos: exact
    assert TransformersBackend(catalog, quantization="8bit").identity("gemma")["quantization"] == "bitsandbytes-8bit"
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        b.load("demo-gemma")
    with pytest.raises(ValueError, match="quantization must be one of"):
        TransformersBackend(catalog, quantization="3bit")


def test_the_facade_shows_what_is_loaded_its_size_and_the_budget(tmp_path):
    from explorer.service.core import Explorer

    ex = Explorer("demo", store_path=tmp_path / "s.sqlite", backend_options={"memory_budget": 10**9})
    try:
        assert "No local model loaded yet" in ex.memory_summary()
        ex.load_model("demo-gemma")
        status = {s.alias: s for s in ex.model_status()}
        assert status["demo-gemma"].state == "loaded" and status["demo-gemma"].size_gb > 0
        assert status["demo-gemma"].reason.startswith("in memory on cpu")
        assert status["demo-llava"].state == "loadable"
        assert "Loaded: demo-gemma (" in ex.memory_summary() and "1.0 GB budget" in ex.memory_summary()
    finally:
        ex.close()
