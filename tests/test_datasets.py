"""Case sources: the study's Hugging Face sampling, class folders, CSV manifests, uploads."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
datasets = pytest.importorskip("datasets")

from explorer.cases.hub import (
    CaseLoadReport,
    CaseSourceError,
    embedding_cases,
    folder_cases,
    hf_cases,
    manifest_cases,
    parse_label,
    study_sample,
    upload_case,
)
from explorer.catalog.presets import load_catalog

CHEXPERT_CODES = ["unlabeled", "uncertain", "absent", "present"]


def task(key):
    return load_catalog().task(key)


# ---------------------------------------------------------------- synthetic data
def png(i: int, size=(6, 6)) -> bytes:
    """A PNG whose colour encodes i, so a case's pixels say which row it came from."""
    buf = io.BytesIO()
    Image.new("RGB", size, (i % 256, i // 256, 200)).save(buf, "PNG")
    return buf.getvalue()


def row_of(case) -> int:
    r, g, _ = case.image.getpixel((0, 0))
    return r + 256 * g


def brain_like(n=120, seed=0, image=png):
    labels = np.random.RandomState(seed).randint(0, 2, n).tolist()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["no", "yes"]), "note": datasets.Value("string")}
    )
    return datasets.Dataset.from_dict(
        {
            "image": [{"bytes": image(i), "path": None} for i in range(n)],
            "label": labels,
            "note": [f"r{i}" for i in range(n)],
        },
        features=features,
    )


def chexpert_like(n=240, seed=1):
    rs = np.random.RandomState(seed)
    no_finding = np.where(rs.rand(n) < 0.3, 3, 0)
    # CheXpert's labeler never marks a finding present when "No Finding" is present.
    pneumonia = np.where(no_finding == 3, rs.choice([0, 2], n), rs.randint(0, 4, n))
    view = (rs.rand(n) < 0.25).astype(int)
    code = datasets.ClassLabel(names=CHEXPERT_CODES)
    features = datasets.Features(
        {
            "Path": datasets.Value("string"),
            "Frontal/Lateral": datasets.ClassLabel(names=["Frontal", "Lateral"]),
            "No Finding": code,
            "Pneumonia": code,
            "image": datasets.Image(),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "Path": [f"patient{i:05d}/view1.jpg" for i in range(n)],
            "Frontal/Lateral": view.tolist(),
            "No Finding": no_finding.tolist(),
            "Pneumonia": pneumonia.tolist(),
            "image": [{"bytes": png(i), "path": None} for i in range(n)],
        },
        features=features,
    )


def study_reference(ds, spec, k, seed=42):
    """The study's VQA sampling (create_dataset.build_sample) on its frame of whole, decoded rows."""
    df = pd.DataFrame(ds)  # what the study built: every image decoded
    s = spec.labels
    if s.scheme == "single_column":
        neg = df[df[s.column] == s.negative].sample(k, random_state=seed)
        pos = df[df[s.column] == s.positive].sample(k, random_state=seed)
    else:
        neg = df[df[s.negative_column] == s.present].sample(k, random_state=seed)
        pos = df[df[s.positive_column] == s.present].sample(k, random_state=seed)
    sample = pd.concat([neg, pos]).reset_index(drop=False).rename(columns={"index": "row_id"})
    return sample["row_id"].tolist()


def study_embedding_reference(ds, max_per_class=300, seed=42, frontal_only=True):
    """The study's embedding sampling for chest X-rays (tsne_analysis: load_chexpert_df + balanced_subsample)."""
    rows = []
    for position, ex in enumerate(ds):
        if ex["Pneumonia"] not in [2, 3]:
            continue
        if frontal_only and ex.get("Frontal/Lateral") is not None and ex["Frontal/Lateral"] != 0:
            continue
        rows.append({"position": position, "diagnosis": "pneumonia" if ex["Pneumonia"] == 3 else "no_pneumonia"})
    df = pd.DataFrame(rows)
    parts = []
    for _, group in df.groupby("diagnosis"):
        parts.append(group.sample(n=min(max_per_class, len(group)), random_state=seed))
    return pd.concat(parts).sample(frac=1, random_state=seed)["position"].tolist()


def ids(report: CaseLoadReport) -> list[int]:
    return [c.row_id for c in report.cases]


# ---------------------------------------------------------------- the study's sampling
def test_pandas_sampling_is_the_legacy_numpy_permutation():
    # The study's sample depends on this pandas behaviour; if a pandas release changed it, every
    # "paper" sample would silently differ from the study's.
    frame = pd.DataFrame(index=range(500))
    chosen = frame.sample(50, random_state=42).index.tolist()
    assert chosen == np.random.RandomState(42).permutation(500)[:50].tolist()


def test_brain_sample_matches_the_study_on_the_full_frame():
    ds, spec = brain_like(), task("brain_tumor")
    report = hf_cases(spec, per_class=20, source=ds)
    assert ids(report) == study_reference(ds, spec, 20)
    assert [c.label for c in report.cases] == ["negative"] * 20 + ["positive"] * 20
    assert all(row_of(c) == c.row_id for c in report.cases)
    assert all(ds[c.row_id]["label"] == (c.label == "positive") for c in report.cases)
    first = report.cases[0]
    assert first.case_id == f"brain_tumor:hf:{first.row_id}" and first.task == "brain_tumor"
    assert first.image.mode == "RGB" and len(first.image_hash) == 64
    assert first.meta["labels"] == {"label": 0} and first.meta["class_name"] == "no_tumor"
    assert not report.skipped and not report.notices


@pytest.mark.parametrize("seed", [42, 7])
def test_chexpert_two_column_sample_matches_the_study(seed):
    ds, spec = chexpert_like(), task("pneumonia")
    report = hf_cases(spec, per_class=15, seed=seed, source=ds)
    assert ids(report) == study_reference(ds, spec, 15, seed=seed)
    for case in report.cases:
        column = "No Finding" if case.label == "negative" else "Pneumonia"
        assert ds[case.row_id][column] == 3
        assert case.meta["labels"][column] == 3
    # The VQA sample keeps lateral views, as the study did.
    views = {ds[c.row_id]["Frontal/Lateral"] for c in report.cases}
    assert views == {0, 1}


def test_sampling_never_decodes_the_rows_it_does_not_choose():
    spec = task("brain_tumor")
    wanted = set(study_reference(brain_like(), spec, 10))
    broken = brain_like(image=lambda i: png(i) if i in wanted else b"not an image at all")
    with pytest.raises(Exception):
        pd.DataFrame(broken)  # the study's whole-row frame decodes every image, broken ones included
    report = hf_cases(spec, per_class=10, source=broken)
    assert set(ids(report)) == wanted and not report.skipped


def _save(ds, kind: str, root: Path):
    if kind == "save_to_disk":
        ds.save_to_disk(str(root / "ds"))
        return root / "ds"
    if kind == "save_to_disk_dict":
        datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(root / "dd"))
        return root / "dd"
    if kind == "parquet_file":
        ds.to_parquet(str(root / "train.parquet"), batch_size=32)
        return root / "train.parquet"
    if kind == "parquet_folder":
        # The Hub's layout (data/train-0000N-of-0000M.parquet), several row groups a file, and a test
        # split beside it that must not be read as part of train.
        (root / "pq" / "data").mkdir(parents=True)
        for i in range(3):
            part = ds.shard(num_shards=3, index=i, contiguous=True)
            part.to_parquet(str(root / "pq" / "data" / f"train-{i:05d}-of-00003.parquet"), batch_size=16)
        ds.select(range(7)).to_parquet(str(root / "pq" / "data" / "test-00000-of-00001.parquet"))
        return root / "pq"
    if kind == "parquet_convert_layout":
        # The Hub's refs/convert/parquet layout: <config>/<split>/0000.parquet, 0001.parquet, ...
        for i in range(2):
            (root / "cv" / "default" / "train").mkdir(parents=True, exist_ok=True)
            part = ds.shard(num_shards=2, index=i, contiguous=True)
            part.to_parquet(str(root / "cv" / "default" / "train" / f"{i:04d}.parquet"), batch_size=20)
        (root / "cv" / "default" / "test").mkdir()
        ds.select(range(9)).to_parquet(str(root / "cv" / "default" / "test" / "0000.parquet"))
        return root / "cv"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["save_to_disk", "save_to_disk_dict", "parquet_file", "parquet_folder", "parquet_convert_layout"]
)
@pytest.mark.parametrize("key", ["brain_tumor", "pneumonia"])
def test_local_copies_give_the_same_sample(tmp_path, kind, key):
    ds = brain_like() if key == "brain_tumor" else chexpert_like()
    spec = task(key)
    path = _save(ds, kind, tmp_path)
    report = hf_cases(spec, per_class=12, source=str(path))
    assert ids(report) == study_reference(ds, spec, 12)
    assert all(row_of(c) == c.row_id for c in report.cases)
    assert not report.skipped


def test_a_small_class_gives_all_its_rows_and_a_notice():
    ds, spec = brain_like(n=30), task("brain_tumor")
    n_neg = ds["label"].count(0)
    report = hf_cases(spec, per_class=n_neg + 5, source=ds)
    negatives = [c for c in report.cases if c.label == "negative"]
    assert len(negatives) == n_neg
    assert any(f"only {n_neg} negative rows (label == 0)" in n for n in report.notices)


def test_a_label_scheme_that_matches_nothing_says_which_values_exist():
    ds = datasets.Dataset.from_dict({"image": [png(i) for i in range(6)], "label": ["yes", "no"] * 3})
    report = hf_cases(task("brain_tumor"), per_class=2, source=ds)
    assert report.cases == []
    assert any("values of 'label' found: no, yes" in n for n in report.notices)


def test_a_row_that_fails_to_decode_is_skipped_with_its_reason():
    spec = task("brain_tumor")
    wanted = study_reference(brain_like(), spec, 5)
    bad = wanted[2]
    ds = brain_like(image=lambda i: b"broken" if i == bad else png(i))
    report = hf_cases(spec, per_class=5, source=ds)
    assert bad not in ids(report) and len(report.cases) == 9
    assert len(report.skipped) == 1 and f"row {bad}" in report.skipped[0][0]


def test_missing_columns_and_splits_are_named(tmp_path):
    spec = task("pneumonia")
    with pytest.raises(CaseSourceError, match="no column 'No Finding'"):
        hf_cases(spec, source=brain_like())
    with pytest.raises(CaseSourceError, match="no split 'train'"):
        hf_cases(spec, source=datasets.DatasetDict({"validation": chexpert_like(20)}))
    (tmp_path / "x.parquet").mkdir()
    with pytest.raises(CaseSourceError, match="no such file"):
        hf_cases(spec, source=tmp_path / "absent")
    with pytest.raises(CaseSourceError, match="neither a save_to_disk folder nor"):
        hf_cases(spec, source=tmp_path / "x.parquet")


def test_the_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    spec = task("pneumonia")
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"id": "explorer-tests/not-cached"})})
    with pytest.raises(
        CaseSourceError,
        match=r"explorer-tests/not-cached is not in the local Hugging Face cache "
        r"and the Hub is unreachable \(offline",
    ):
        hf_cases(spec)


def test_a_gated_dataset_asks_for_a_token(monkeypatch):
    from datasets.exceptions import DatasetNotFoundError

    def gated(*args, **kwargs):
        raise DatasetNotFoundError(
            "Dataset 'Falah/skin-cancer' is a gated dataset on the Hub. You must be authenticated."
        )

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(CaseSourceError, match="gated.*HF_TOKEN"):
        hf_cases(task("skin_cancer"))


def test_study_sample_notes_rows_in_both_classes():
    frame = pd.DataFrame({"No Finding": [3, 3, 0, 0], "Pneumonia": [3, 0, 3, 2]})
    sample, notices = study_sample(frame, task("pneumonia"), per_class=2)
    assert sorted(sample["row_id"]) == [0, 0, 1, 2]
    assert any("rows [0] satisfy both" in n for n in notices)


def test_embedding_sample_matches_the_study_frontal_absent_vs_present():
    ds, spec = chexpert_like(n=300), task("pneumonia")
    report = embedding_cases(spec, per_class=20, source=ds)
    assert ids(report) == study_embedding_reference(ds, 20)
    assert all(ds[c.row_id]["Frontal/Lateral"] == 0 for c in report.cases)
    assert {ds[c.row_id]["Pneumonia"] for c in report.cases if c.label == "negative"} == {2}
    with_laterals = embedding_cases(spec, per_class=20, frontal_only=False, source=ds)
    assert ids(with_laterals) == study_embedding_reference(ds, 20, frontal_only=False)


# ---------------------------------------------------------------- folders
def write_png(path: Path, i: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(i))
    return path


def test_folder_of_class_subfolders(tmp_path):
    write_png(tmp_path / "Tumor" / "b.png", 1)
    write_png(tmp_path / "Tumor" / "a.png", 2)
    (tmp_path / "Tumor" / "c.jpg").write_bytes(b"truncated")
    (tmp_path / "Tumor" / ".DS_Store").write_bytes(b"\0\0")
    write_png(tmp_path / "no_tumor" / "x.png", 3)
    write_png(tmp_path / "no_tumor" / "deeper" / "y.png", 4)
    write_png(tmp_path / "glioma" / "z.png", 5)
    (tmp_path / "README.txt").write_text("hi")

    report = folder_cases(tmp_path, task("brain_tumor"))
    assert [c.case_id for c in report.cases] == [
        "brain_tumor:file:no_tumor/deeper/y.png",
        "brain_tumor:file:no_tumor/x.png",
        "brain_tumor:file:Tumor/a.png",
        "brain_tumor:file:Tumor/b.png",
    ]
    assert [c.label for c in report.cases] == ["negative", "negative", "positive", "positive"]
    assert [p for p, _ in report.skipped] == [str(tmp_path / "Tumor" / "c.jpg")]
    assert any("'glioma'" in n and "ignored" in n for n in report.notices)
    assert any("no class subfolder" in n for n in report.notices)
    assert report.summary().startswith("4 cases (2 negative, 2 positive); 1 skipped")


def test_folder_sampling_is_seeded_and_duplicates_are_noted(tmp_path):
    for i in range(10):
        write_png(tmp_path / "positive" / f"p{i}.png", i)
        write_png(tmp_path / "0" / f"n{i}.png", 100 + i)
    write_png(tmp_path / "normal" / "same_as_p3.png", 3)
    spec = task("pneumonia")
    a = folder_cases(tmp_path, spec, per_class=3, seed=1)
    b = folder_cases(tmp_path, spec, per_class=3, seed=1)
    assert [c.case_id for c in a.cases] == [c.case_id for c in b.cases]
    assert a.counts() == {"negative": 3, "positive": 3, "unlabeled": 0}
    everything = folder_cases(tmp_path, spec)
    assert len(everything.cases) == 21
    assert any("'0', 'normal' all mean negative" in n for n in everything.notices)
    assert any("same image" in n and "different label" in n for n in everything.notices)


@pytest.mark.parametrize(
    "text, key, expected",
    [
        ("NORMAL", "pneumonia", "negative"),
        ("PNEUMONIA", "pneumonia", "positive"),
        ("notumor", "brain_tumor", "negative"),
        ("No tumor", "brain_tumor", "negative"),
        ("yes", "brain_tumor", "positive"),
        ("1", "skin_cancer", "positive"),
        ("benign", "skin_cancer", "negative"),
        ("idc", "histo_idc", "positive"),
        ("No carcinoma", "histo_idc", "negative"),
        ("abnormal", "histo_idc", "positive"),
        ("No Finding", "pneumonia", "negative"),
        ("pneumonia", "brain_tumor", None),
        ("maybe", "pneumonia", None),
    ],
)
def test_class_names(text, key, expected):
    assert parse_label(text, key) == expected


# ---------------------------------------------------------------- manifests
def test_manifest_rows_good_and_bad(tmp_path):
    write_png(tmp_path / "imgs" / "a.png", 1)
    write_png(tmp_path / "imgs" / "copy_of_a.png", 1)
    write_png(tmp_path / "b.png", 2)
    write_png(tmp_path / "c.png", 3)
    (tmp_path / "bad.png").write_bytes(b"nope")
    (tmp_path / "m.csv").write_text(
        "path,label\n"
        "imgs/a.png,tumor\n"  # line 2
        "b.png,0\n"  # line 3
        "missing.png,positive\n"  # line 4
        "c.png,maybe\n"  # line 5
        "./imgs/a.png,positive\n"  # line 6: same file again
        "imgs/copy_of_a.png,no_tumor\n"  # line 7: same pixels as line 2
        "c.png,\n"  # line 8: unlabeled
        ",positive\n"  # line 9
        "bad.png,negative\n"  # line 10
    )
    report = manifest_cases(tmp_path / "m.csv", "brain_tumor")
    assert [(c.case_id, c.label) for c in report.cases] == [
        ("brain_tumor:file:imgs/a.png", "positive"),
        ("brain_tumor:file:b.png", "negative"),
        ("brain_tumor:file:imgs/copy_of_a.png", "negative"),
        ("brain_tumor:file:c.png", None),
    ]
    skipped = dict(report.skipped)
    assert "file not found" in skipped["m.csv line 4 (missing.png)"]
    assert "unknown label 'maybe'" in skipped["m.csv line 5 (c.png)"]
    assert "same file as line 2" in skipped["m.csv line 6 (./imgs/a.png)"]
    assert "path cell is empty" in skipped["m.csv line 9"]
    assert "m.csv line 10 (bad.png)" in skipped
    assert any("line 7 (imgs/copy_of_a.png): same image as line 2, with a different label" in n for n in report.notices)
    assert any("1 rows have no label" in n for n in report.notices)


def test_manifest_columns_and_tasks(tmp_path):
    write_png(tmp_path / "a.png", 1)
    write_png(tmp_path / "b.png", 2)
    (tmp_path / "wrong.csv").write_text("file_path,label\na.png,1\n")
    with pytest.raises(CaseSourceError, match="no 'path' column.*file_path, label"):
        manifest_cases(tmp_path / "wrong.csv", "pneumonia")
    (tmp_path / "nolabel.csv").write_text("path\na.png\n")
    with pytest.raises(CaseSourceError, match="no 'label' column"):
        manifest_cases(tmp_path / "nolabel.csv", "pneumonia")
    (tmp_path / "tasks.csv").write_text(
        "Path,Label,Task\na.png,pneumonia,pneumonia\nb.png,malignant,skin_cancer\nb.png,1,mri\n"
    )
    (tmp_path / "untasked.csv").write_text("path,label\na.png,1\n")
    with pytest.raises(CaseSourceError, match="no 'task' column"):
        manifest_cases(tmp_path / "untasked.csv")
    both = manifest_cases(tmp_path / "tasks.csv")
    assert [(c.task, c.label) for c in both.cases] == [("pneumonia", "positive"), ("skin_cancer", "positive")]
    assert dict(both.skipped) == {"tasks.csv line 4": "unknown task 'mri'"}
    only = manifest_cases(tmp_path / "tasks.csv", "skin_cancer")
    assert [c.task for c in only.cases] == ["skin_cancer"]
    assert any("task 'pneumonia' left out" in n for n in only.notices)


# ---------------------------------------------------------------- uploads
def test_upload_from_bytes_and_path(tmp_path):
    data = png(9)
    case = upload_case(data, "pneumonia", label="PNEUMONIA", name="scan.png")
    assert case.case_id == f"pneumonia:upload:{case.image_hash[:16]}"
    assert case.label == "positive" and case.source == "upload: scan.png" and case.row_id is None
    path = write_png(tmp_path / "scan.png", 9)
    again = upload_case(path, task("pneumonia"))
    assert again.case_id == case.case_id and again.label is None and again.meta["name"] == "scan.png"
    with pytest.raises(CaseSourceError, match="unknown label"):
        upload_case(data, "pneumonia", label="tumor")
    with pytest.raises(ValueError):
        upload_case(b"not an image", "pneumonia")


# ---------------------------------------------------------------- the shared sample images
SAMPLE_FOLDERS = {
    "brain_tumor": "brain_tumor",
    "pneumonia": "pneumonia",
    "skin_cancer": "skin_cancer",
    "histopathology": "histo_idc",
}


@pytest.mark.parametrize("folder", sorted(SAMPLE_FOLDERS))
def test_real_sample_folders(samples_dir, folder):
    report = folder_cases(samples_dir / folder, SAMPLE_FOLDERS[folder])
    assert not report.skipped and not report.notices
    assert report.counts() == {"negative": 4, "positive": 4, "unlabeled": 0}
    assert all(c.image.mode == "RGB" and c.task == SAMPLE_FOLDERS[folder] for c in report.cases)
    assert len({c.image_hash for c in report.cases}) == 8


def test_pointing_at_the_samples_root_says_to_pick_a_task_folder(samples_dir):
    report = folder_cases(samples_dir, "brain_tumor")
    assert report.cases == []
    assert any("'histopathology' is a task, not a class" in n for n in report.notices)


def test_real_samples_manifest(samples_dir):
    report = manifest_cases(samples_dir / "SOURCES.csv")
    tasks = pd.Series([c.task for c in report.cases]).value_counts().to_dict()
    assert tasks == {key: 8 for key in SAMPLE_FOLDERS.values()}
    assert all(reason == "unknown task 'formats'" for _, reason in report.skipped)
    by_folder = {c.meta["path"]: c.label for c in report.cases}
    for path, label in by_folder.items():
        assert Path(path).parent.name == label
