"""The command line on images the test makes: ask, sweep, metrics, export, import, models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageDraw

from explorer.analysis.exports import export_results, import_answers
from explorer.cli.main import main
from explorer.runs.store import Store
from explorer.runs.study_import import read_answers_file


def _image(path: Path, seed: int) -> None:
    img = Image.new("L", (64, 64), color=20 + seed * 30)
    ImageDraw.Draw(img).ellipse((10 + seed, 10, 40, 40 + seed), fill=200)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@pytest.fixture()
def sample_tree(tmp_path: Path) -> Path:
    root = tmp_path / "samples"
    for i, cls in enumerate(("negative", "positive")):
        for j in range(2):
            _image(root / "pneumonia" / cls / f"img{j}.png", i * 2 + j)
    return root


@pytest.fixture(autouse=True)
def _demo_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path_factory.getbasetemp() / "explorer-cache"))


def test_ask_prints_every_answer_and_verdict(sample_tree, tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    rc = main(
        [
            "ask",
            "--task",
            "pneumonia",
            "--images",
            str(sample_tree / "pneumonia"),
            "--models",
            "demo-llava-med,demo-gemma",
            "--prompts",
            "abnormal,mc_neg_first",
            "--max-new-tokens",
            "6",
            "--store",
            str(store),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "RANDOM WEIGHTS" in out
    rows = [line for line in out.splitlines() if line.startswith(("abnormal ", "mc_neg_first "))]
    assert len(rows) == 2 * 2 * 4  # prompts x models x images
    verdicts = {line.split()[2] for line in rows}
    assert verdicts <= {"positive", "negative", "refusal", "hedge", "unclear"}
    assert "16 answers from 2 models x 2 prompts x 4 images" in out

    # The same question again comes from the store.
    main(
        [
            "ask",
            "--task",
            "pneumonia",
            "--images",
            str(sample_tree / "pneumonia"),
            "--models",
            "demo-llava-med,demo-gemma",
            "--prompts",
            "abnormal,mc_neg_first",
            "--max-new-tokens",
            "6",
            "--store",
            str(store),
        ]
    )
    again = capsys.readouterr().out
    assert again.count("(cached)") == 16


def test_ask_on_a_plain_folder_of_images_answers_each_with_the_truth_unknown(tmp_path, capsys):
    folder = tmp_path / "loose"
    folder.mkdir()
    for i in range(2):
        Image.new("L", (48, 48), 90 * i).save(folder / f"scan_{i}.png")
    (folder / "readme.png").write_text("not an image")
    rc = main(
        [
            "ask",
            "--task",
            "pneumonia",
            "--images",
            str(folder),
            "--models",
            "demo-gemma",
            "--prompts",
            "abnormal",
            "--max-new-tokens",
            "4",
            "--store",
            str(tmp_path / "s.sqlite"),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "skipped readme.png: This file is not an image" in captured.err
    assert "2 images with the truth unknown" in captured.err
    assert "(upload: scan_0.png)  label=unknown" in captured.out and "(upload: scan_1.png)" in captured.out
    assert "2 answers from 1 models x 1 prompts x 2 images" in captured.out


def test_ask_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["ask", "--task", "pneumonia", "--images", str(tmp_path / "nope")]) == 2
    assert "neither an image file nor a folder" in capsys.readouterr().err
    assert main(["ask", "--task", "pneumonia", "--images", str(tmp_path), "--models", "gpt-9"]) == 2
    assert "unknown model 'gpt-9'" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["ask", "--task", "pneumonia", "--images", str(bad)]) == 2
    assert "error:" in capsys.readouterr().err


def test_sweep_metrics_export_import_round_trip(sample_tree, tmp_path, capsys):
    store_path = tmp_path / "sweep.sqlite"
    args = [
        "sweep",
        "--preset",
        "demo",
        "--samples",
        str(sample_tree),
        "--tasks",
        "pneumonia",
        "--models",
        "demo-llava,demo-llava-med",
        "--prompts",
        "abnormal,normal,mc_pos_first",
        "--per-class",
        "2",
        "--max-new-tokens",
        "5",
        "--store",
        str(store_path),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "24 planned, 0 from the store, 24 generated, 0 errors" in out
    assert "Per model and task" in out and "demo-llava-med" in out

    assert main(args) == 0
    assert "24 planned, 24 from the store, 0 generated" in capsys.readouterr().out

    # Asking for more images than the folder has says so, and runs what there is.
    more = list(args)
    more[more.index("--per-class") + 1] = "5"
    assert main(more) == 0
    captured = capsys.readouterr()
    assert "24 planned, 24 from the store" in captured.out
    assert "note: pneumonia: only 2 negative, 2 positive images, fewer than the 5 per class asked for" in captured.err

    assert main(["metrics", "--store", str(store_path), "--cells"]) == 0
    assert "Per prompt:" in capsys.readouterr().out

    out_dir = tmp_path / "export"
    assert main(["export", "--store", str(store_path), "--out", str(out_dir), "--formats", "csv,parquet,json"]) == 0
    names = {p.name for p in out_dir.iterdir()}
    assert {"answers.csv", "answers.parquet", "answers.json", "metrics_summary.csv", "manifest.json"} <= names
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["run"]["plan"]["models"] == ["demo-llava", "demo-llava-med"]
    assert "torch" in manifest["versions"] and "models.yaml" in manifest["presets"]

    exported = read_answers_file(out_dir / "answers.parquet")
    assert len(exported) == 24
    other = tmp_path / "other.sqlite"
    assert main(["import", str(out_dir / "answers.csv"), "--store", str(other)]) == 0
    assert "24 answers added" in capsys.readouterr().out
    assert main(["import", str(out_dir / "answers.csv"), "--store", str(other)]) == 0
    assert "0 answers added, 24 already" in capsys.readouterr().out

    key = ["model", "task", "case_id", "prompt_id", "verdict", "answer", "label"]
    original = Store(store_path).answers_frame()[key].sort_values(key[:4]).reset_index(drop=True)
    imported = Store(other).answers_frame()[key].sort_values(key[:4]).reset_index(drop=True)
    pd.testing.assert_frame_equal(original, imported)


def test_a_cached_sweep_imports_neither_torch_nor_transformers(sample_tree, tmp_path, capsys):
    """A sweep whose answers are all stored, run as a user runs it (a fresh process): served from the
    store with the summary line only (--quiet), and torch and transformers never imported."""
    store_path = tmp_path / "sweep.sqlite"
    args = ["sweep", "--preset", "demo", "--samples", str(sample_tree), "--tasks", "pneumonia"]
    args += ["--models", "demo-llava-med,demo-gemma", "--prompts", "abnormal,normal", "--per-class", "2"]
    args += ["--max-new-tokens", "3", "--store", str(store_path)]
    assert main(args) == 0
    assert "16 planned, 0 from the store, 16 generated, 0 errors" in capsys.readouterr().out
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "explorer", *args, "--quiet"],
        cwd=Path(__file__).resolve().parents[1],
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "16 planned, 16 from the store, 0 generated" in done.stdout
    assert "Per model and task" not in done.stdout  # --quiet: no tables
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "explorer.runs.sweep" in imported  # the timing lines were read
    assert not {name for name in imported if name.split(".")[0] in ("torch", "transformers")}


def test_models_lists_reasons(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "demo-llava" in out and "random weights" in out
    assert "offline" in out  # the study models cannot be had here


def test_import_rejects_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "llava_pneumonia_vqa_results.csv"
    bad.write_text("task,model,row_id\npneumonia,x,1\n")
    assert main(["import", str(bad), "--store", str(tmp_path / "s.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "llava_pneumonia_vqa_results.csv" in err and "label" in err


def test_export_is_atomic_and_rejects_unknown_formats(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with pytest.raises(ValueError, match="xlsx"):
        export_results(store, tmp_path / "out", formats=["xlsx"])
    (tmp_path / "out").mkdir()
    stale = tmp_path / "out" / ".answers.csv.k1ll3d.tmp"  # what an export killed mid-write leaves
    stale.write_text("half a fi")
    mine = tmp_path / "out" / ".notes.tmp"  # not ours: the folder is replaced whole, so it is refused
    mine.write_text("keep")
    with pytest.raises(ValueError, match=r"holds other files \(\.notes\.tmp\)"):
        export_results(store, tmp_path / "out", formats=["csv"])
    assert mine.read_text() == "keep"
    mine.unlink()
    files = export_results(store, tmp_path / "out", formats=["csv"])
    assert all(p.exists() for p in files)
    assert list((tmp_path / "out").glob(".*tmp")) == []
    assert import_answers(store, pd.DataFrame(columns=["model", "task", "prompt_id"]), "empty") == (0, 0)


def test_models_plan_shows_sizes_under_each_quantization(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["models", "--preset", "paper", "--plan", "--gpu-gb", "24"]) == 0
    out = capsys.readouterr().out
    assert "| llava | llava-hf/llava-v1.6-mistral-7b-hf | 15.1 | 7.8 | 4.6 |" in out
    assert "| all 4 | fit in 24 GB? | 47.5 (does not fit) | 25.6 (does not fit) | 16.0 (fits) |" in out
