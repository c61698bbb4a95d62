"""--exact: the study's own execution (one request per call, no reuse, the authors' dtype), stored under
its own cache key so exact and batched answers never stand in for each other."""

from __future__ import annotations

import pytest
from PIL import Image

from explorer.cases.images import content_hash
from explorer.catalog.presets import load_catalog
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.prompts.variants import closed_variants
from explorer.runs.store import Store
from explorer.runs.sweep import plan_sweep, run_sweep
from explorer.schema import Case, request_fingerprint

MODEL = "demo-gemma"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _plan(catalog, n_prompts: int = 3):
    img = Image.new("RGB", (24, 24), (90, 140, 40))
    case = Case(case_id="pneumonia:t:0", task="pneumonia", image=img, image_hash=content_hash(img), label="negative")
    variants = closed_variants(catalog, "pneumonia")[:n_prompts]
    return plan_sweep(
        catalog,
        [MODEL],
        ["pneumonia"],
        {"pneumonia": [case]},
        {"pneumonia": variants},
        "paper",
        generation_override={"max_new_tokens": 4},
    )


class Recording(TransformersBackend):
    """Records the size of every batch that reaches the model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self.ways: list[str] = []

    def _run_batch(self, lm, items, on_text):
        self.batches.append(len(items))
        responses = super()._run_batch(lm, items, on_text)
        self.ways += [r.extra.get("reuse", "") for r in responses]
        return responses


def test_exact_never_batches_and_reuses_nothing(catalog, tmp_path):
    backend = Recording(catalog, exact=True, batch_size=12)
    store = Store(tmp_path / "exact.sqlite")
    summary = run_sweep(_plan(catalog), backend, store, batch_size=12)
    assert (summary.computed, summary.errors) == (3, 0)
    assert backend.batches == [1, 1, 1] and set(backend.ways) == {"none"}
    assert backend.scheduling(MODEL, 12)["batch"] == 1
    store.close()


def test_exact_uses_the_authors_dtype(catalog):
    # The preset says bf16 for Gemma 3; the authors' pipeline() ran fp32 on CPU and bf16 on a GPU.
    assert catalog.model("gemma").dtype == "bfloat16"
    exact = TransformersBackend(catalog, exact=True, device="cpu")
    assert exact.identity("gemma")["dtype"] == "float32"
    assert TransformersBackend(catalog, device="cpu").identity("gemma")["dtype"] == "bfloat16"
    assert (
        TransformersBackend(catalog, exact=True, device="cpu", dtype="bfloat16").identity("gemma")["dtype"]
        == "bfloat16"
    )


def test_fast_and_exact_answers_carry_different_cache_keys(catalog, tmp_path):
    plan = _plan(catalog, n_prompts=2)
    fast, exact = TransformersBackend(catalog), TransformersBackend(catalog, exact=True)
    for item in plan:
        assert request_fingerprint(item.request, fast.identity(MODEL)) != request_fingerprint(
            item.request, exact.identity(MODEL)
        )
    # The batched fingerprint is what it was before exact mode existed (no new key in its identity).
    assert "execution" not in fast.identity(MODEL)

    store = Store(tmp_path / "both.sqlite")
    first = run_sweep(plan, fast, store, batch_size=12)
    assert first.computed == 2
    exact_run = run_sweep(plan, exact, store, batch_size=12)
    assert (exact_run.computed, exact_run.cached) == (2, 0)  # not served from the batched answers
    assert run_sweep(plan, fast, store, batch_size=12).cached == 2
    assert run_sweep(plan, exact, store, batch_size=12).cached == 2
    assert store.count() == 4
    store.close()
