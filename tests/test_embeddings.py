"""Vision embeddings on the three offline demo architectures, t-SNE, and the linear probe."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from explorer.cases.hub import upload_case
from explorer.catalog.presets import load_catalog
from explorer.cli import probes as cli_probes
from explorer.models.backends.transformers_backend import TransformersBackend
from explorer.probes import embeddings as E

ARCHITECTURES = {"demo-llava": "llava_next", "demo-llava-med": "llava", "demo-gemma": "gemma3"}


@pytest.fixture(autouse=True)
def one_thread():
    # t-SNE's OpenMP threads spin against the other test processes on a 2-core box; one thread is faster here.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-models")


@pytest.fixture(scope="module")
def backend(demo_cache):
    b = TransformersBackend(load_catalog(), demo_cache_dir=demo_cache)
    yield b
    b.close()


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy())


# Mixed aspect ratios: LLaVA-NeXT gives these different numbers of AnyRes views, padded in a batch.
SIZES = [(90, 60), (56, 56), (40, 120), (120, 40), (64, 64), (100, 70)] * 2
CASES = [
    upload_case(_image(w, h, i), "pneumonia", label="positive" if i % 2 else "negative", name=f"img{i}.png")
    for i, (w, h) in enumerate(SIZES)
]


def _answers_frame(cases, model: str) -> pd.DataFrame:
    """Closed-form answers as the store would give them: "evidence" always right, "normal" always wrong."""
    rows = []
    for c in cases:
        wrong = "negative" if c.label == "positive" else "positive"
        for prompt, verdict in (("evidence", c.label), ("normal", wrong)):
            rows.append(
                dict(
                    model=model,
                    task="pneumonia",
                    prompt_id=prompt,
                    prompt_family=prompt,
                    prompt_kind="closed",
                    case_id=c.case_id,
                    image_hash=c.image_hash,
                    label=c.label,
                    verdict=verdict,
                )
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("alias", list(ARCHITECTURES))
def test_features_tsne_and_probe_on_each_architecture(backend, tmp_path, alias, monkeypatch):
    lm = backend.load(alias)
    assert lm.model.config.model_type == ARCHITECTURES[alias]
    cache = E.FeatureCache(E.features_path_for(tmp_path / "store.sqlite"))
    X = E.vision_features(backend, alias, CASES, cache=cache, batch_size=8)
    # LLaVA pools the CLIP tower's hidden states; Gemma 3 pools features after the projector (text width).
    width = (
        lm.model.config.vision_config.hidden_size if alias != "demo-gemma" else lm.model.config.text_config.hidden_size
    )
    assert X.shape == (len(CASES), width) and np.isfinite(X).all()
    assert len({tuple(np.round(r, 5)) for r in X}) == len(CASES)  # different images, different features
    assert cache.count() == len(CASES)

    # Batch composition must not change a vector (LLaVA-NeXT pads its view axis across a batch).
    alone = E.vision_features(backend, alias, CASES[:3], batch_size=1)
    np.testing.assert_allclose(alone, X[:3], rtol=1e-4, atol=1e-5)

    # Served from the cache: the model is not run again.
    monkeypatch.setattr(E, "pooled_batch", lambda *a, **k: pytest.fail("cached features were recomputed"))
    np.testing.assert_array_equal(E.vision_features(backend, alias, CASES, cache=cache), X)

    result = E.analyse(
        backend,
        [alias],
        "pneumonia",
        CASES,
        answers=_answers_frame(CASES, alias),
        verdict_prompt="evidence",
        cache=cache,
    )
    coords = result.coords
    assert list(coords.columns) == E.COORD_COLUMNS and len(coords) == len(CASES)
    assert np.isfinite(coords[["x", "y"]].to_numpy()).all()
    assert (coords["verdict"] == coords["label"]).all()  # the chosen prompt's verdicts, joined by image
    assert any("perplexity lowered" in n for n in result.notices)
    [probe] = result.probes.to_dict("records")
    assert probe["n"] == len(CASES) and probe["folds"] == 5 and 0.0 <= probe["probe_accuracy"] <= 1.0
    assert probe["closed_accuracy_mean"] == pytest.approx(0.5) and probe["closed_accuracy_best"] == 1.0
    assert probe["closed_best_prompt"] == "evidence" and probe["closed_cases"] == len(CASES)
    cache.close()


def test_probe_separates_a_separable_set_and_not_shuffled_labels():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(-2, 1, (100, 20)), rng.normal(2, 1, (100, 20))])
    y = ["negative"] * 100 + ["positive"] * 100
    good = E.linear_probe(X, y)
    assert good.folds == 5 and good.accuracy > 0.97 and good.ci_lo <= good.accuracy <= good.ci_hi <= 1.0
    assert good.chance == 0.5 and not good.notices
    shuffled = E.linear_probe(X, list(rng.permutation(y)))
    assert 0.3 < shuffled.accuracy < 0.7


def test_probe_on_tiny_sets_lowers_folds_or_says_why():
    rng = np.random.default_rng(1)
    few = E.linear_probe(rng.normal(size=(6, 4)), ["positive", "negative"] * 3)
    assert few.folds == 3 and any("3-fold" in n for n in few.notices)
    one = E.linear_probe(rng.normal(size=(4, 4)), ["positive", "negative", "negative", "negative"])
    assert np.isnan(one.accuracy) and one.folds == 0 and "at least 2" in one.notices[0]


def test_tsne_is_deterministic_and_adapts_to_small_sets():
    X = np.random.default_rng(2).normal(size=(40, 80))
    a, notes = E.tsne_coordinates(X, precision="float64")
    b, _ = E.tsne_coordinates(X, precision="float64")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (40, 2)
    assert any("PCA to 40" in n for n in notes) and any("perplexity lowered" in n for n in notes)
    # The study's caps: PCA to n - 1, perplexity max(5, n // 3) = 13.
    _, study = E.tsne_coordinates(X)
    assert any("PCA to 39" in n for n in study) and any("to 13.00" in n for n in study)
    _, wide = E.tsne_coordinates(np.random.default_rng(3).normal(size=(100, 60)), perplexity=30)
    assert not wide  # 100 points, 60 dims: PCA to 50 and perplexity 30 as the study set them
    with pytest.raises(ValueError, match="at least 3"):
        E.tsne_coordinates(X[:2])
    # Tiny sets: the study's floor of 5 would be refused by scikit-learn (perplexity must be < n).
    tiny, tiny_notes = E.tsne_coordinates(X[:5])
    assert tiny.shape == (5, 2) and any("to 1.33" in n for n in tiny_notes)


def test_study_precision_is_the_authors_path_and_float64_differs():
    """The authors' float32 t-SNE input gives their coordinates; the float64 variant other ones
    (the same layout, not the same numbers), and equal ones once both get the same input."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    X = np.random.default_rng(4).normal(size=(60, 80)).astype(np.float32)
    ours, _ = E.tsne_coordinates(X)
    # src/tsne_analysis.py's compute_tsne, as written there, on the same float32 features.
    reduced = PCA(n_components=min(50, X.shape[0] - 1), random_state=42).fit_transform(X)
    theirs = TSNE(
        n_components=2, perplexity=min(30, max(5, X.shape[0] // 3)), random_state=42, init="pca", learning_rate="auto"
    ).fit_transform(reduced)
    np.testing.assert_array_equal(ours, theirs)
    wide, _ = E.tsne_coordinates(X, precision="float64")
    assert not np.allclose(wide, ours)


def test_study_pooling_averages_in_the_model_dtype():
    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, dtype=torch.bfloat16))

        def forward(self, pixels):
            from types import SimpleNamespace

            return SimpleNamespace(last_hidden_state=pixels.flatten(2) * self.w)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = Tower()
            self.config = type("C", (), {"model_type": "llava"})()

    pixels = torch.linspace(1.0, 1.01, 3 * 4 * 4).reshape(1, 3, 4, 4) + torch.rand(1, 3, 4, 4) * 1e-3
    processor = lambda images, return_tensors: {"pixel_values": pixels}  # noqa: E731
    study = E.pooled_batch(Model(), processor, [None])
    wide = E.pooled_batch(Model(), processor, [None], precision="float64")
    bf16 = pixels.to(torch.bfloat16).flatten(2)
    np.testing.assert_array_equal(study, bf16.mean(dim=1).float().numpy())
    np.testing.assert_array_equal(wide, bf16.float().mean(dim=1).numpy())
    assert study.dtype == wide.dtype == np.float32 and not np.array_equal(study, wide)


def test_embed_cli_on_samples(samples_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    for register in cli_probes.REGISTER:
        register(sub)
    out = tmp_path / "tsne.csv"
    args = parser.parse_args(
        [
            "embed",
            "--models",
            "demo-llava-med",
            "--task",
            "pneumonia",
            "--samples",
            str(samples_dir),
            "--store",
            str(tmp_path / "s.sqlite"),
            "--out",
            str(out),
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "probe_accuracy" in printed and "demo-llava-med" in printed
    coords = pd.read_csv(out)
    assert len(coords) == 8 and set(coords["label"]) == {"negative", "positive"}
    assert E.features_path_for(tmp_path / "s.sqlite").exists()


def test_the_models_own_accuracy_counts_the_studys_wordings_not_ones_a_user_typed():
    import pandas as pd

    from explorer.probes.embeddings import closed_form_accuracy

    rows = [
        dict(
            model="m",
            task="pneumonia",
            image_hash=f"h{i}",
            case_id=f"c{i}",
            label="positive",
            prompt_id=pid,
            prompt_family=pid,
            verdict=verdict,
            prompt_kind="closed",
            custom=custom,
        )
        for i in range(4)
        for pid, verdict, custom in (("abnormal", "positive", 0), ("custom_1", "negative", 1))
    ]
    out = closed_form_accuracy(pd.DataFrame(rows), "m", "pneumonia", [f"h{i}" for i in range(4)])
    assert list(out["prompt_id"]) == ["abnormal"] and out["accuracy"].iloc[0] == 1.0


def test_a_missing_study_checkpoint_falls_back_to_its_alt_id_loudly(tmp_path, monkeypatch, caplog):
    """llava-med: wnkh/... is the study's; with only chaoyinshe/... in the cache, the switch is logged,
    shown in the availability line and recorded in the answers' model identity."""
    import logging

    from huggingface_hub import constants

    from explorer.models import availability

    spec = load_catalog().model("llava-med")
    alt = spec.alt_ids[0]
    repo = tmp_path / ("models--" + alt.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(availability, "_ANNOUNCED", set())

    backend = TransformersBackend(load_catalog())
    with caplog.at_level(logging.WARNING, logger="explorer.models.availability"):
        source = backend._resolve_hub(spec)
    assert source.path == alt
    [record] = [r for r in caplog.records if r.name == "explorer.models.availability"]
    assert spec.hf_id in record.getMessage() and f"so {alt} is used" in record.getMessage()
    assert backend.identity("llava-med")["model"] == alt
    line = availability.model_availability(spec)
    assert line.source == alt and f"another conversion than the study's {spec.hf_id}" in line.reason
    backend.close()


def test_embedding_sample_reads_the_main_branch_as_the_study_did(monkeypatch):
    """src/tsne_analysis.py loaded every dataset from its main branch; the VQA scripts read brain MRI and
    skin lesions from the parquet conversion (tasks.yaml's revision). The embedding sample follows the former."""
    import datasets as hf

    from explorer.cases.hub import embedding_cases

    calls = []
    features = hf.Features({"image": hf.Image(), "label": hf.Value("int64")})
    images = [_image(16, 16, i) for i in range(8)]

    def load_dataset(repo_id, revision=None, split=None, **_):
        calls.append((repo_id, revision, split))
        return hf.Dataset.from_dict({"image": images, "label": [0, 1] * 4}, features=features)

    monkeypatch.setattr(hf, "load_dataset", load_dataset)
    report = embedding_cases("brain_tumor", per_class=3)
    assert calls == [("tanzuhuggingface/brainmri", None, "train")] and len(report.cases) == 6
    embedding_cases("brain_tumor", per_class=3, main_branch=False)
    assert calls[-1] == ("tanzuhuggingface/brainmri", "refs/convert/parquet", "train")
