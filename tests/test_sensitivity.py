"""Sensitivity readout on a hand-made store: numbers worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from PIL import Image

from explorer.analysis.sensitivity import (
    family_sensitivity,
    image_sensitivity,
    pair_sensitivity,
    sensitivity_tables,
)
from explorer.cases.images import content_hash
from explorer.runs.store import Store, answer_row
from explorer.schema import Case, GenerationSettings, PromptVariant, Request, Response, Verdict


def rows_for(model, case_id, label, answers):
    """answers: [(prompt_id, family, verdict)]"""
    return [
        dict(
            model=model,
            task="pneumonia",
            prompt_id=pid,
            prompt_family=fam,
            case_id=case_id,
            label=label,
            verdict=verdict,
            prompt_kind="closed",
        )
        for pid, fam, verdict in answers
    ]


# Image c1: 3 study wordings say positive, casing says positive once and negative once, framing hedges.
C1 = [
    ("abnormal", "abnormal", "positive"),
    ("evidence", "evidence", "positive"),
    ("mc_pos_first", "mc_pos_first", "positive"),
    ("casing_1", "casing", "positive"),
    ("casing_2", "casing", "negative"),
    ("framing_1", "framing", "hedge"),
]
# Image c2: every wording says negative.
C2 = [
    ("abnormal", "abnormal", "negative"),
    ("evidence", "evidence", "negative"),
    ("casing_1", "casing", "negative"),
    ("framing_1", "framing", "negative"),
]
# Image c3: a tie, two positive and two negative (the tie goes to positive); one failed request (no verdict).
C3 = [
    ("abnormal", "abnormal", "negative"),
    ("evidence", "evidence", "negative"),
    ("casing_1", "casing", "positive"),
    ("casing_2", "casing", "positive"),
    ("framing_1", "framing", None),
]


def hand_made() -> pd.DataFrame:
    return pd.DataFrame(
        rows_for("base", "c1", "positive", C1)
        + rows_for("base", "c2", "negative", C2)
        + rows_for("base", "c3", "positive", C3)
    )


def entropy(*counts):
    total = sum(counts)
    return -sum(c / total * math.log2(c / total) for c in counts if c)


def test_per_image_majority_share_entropy_and_families():
    table = image_sensitivity(hand_made()).set_index("case_id")
    c1, c2, c3 = table.loc["c1"], table.loc["c2"], table.loc["c3"]
    assert (c1.majority, c1.n_variants, c1.n_flipped) == ("positive", 6, 2)
    assert c1.flip_share == pytest.approx(2 / 6)
    assert c1.entropy_bits == pytest.approx(entropy(4, 1, 1))
    assert c1.flipped_by == "casing, framing"
    assert (c1.n_positive, c1.n_negative, c1.n_non_answer) == (4, 1, 1)
    assert (c2.majority, c2.flip_share, c2.entropy_bits, c2.flipped_by) == ("negative", 0.0, 0.0, "")
    # The failed request is left out: 4 wordings, a 2-2 tie that goes to positive, so study flips it.
    assert (c3.n_variants, c3.majority, c3.flip_share, c3.flipped_by) == (4, "positive", 0.5, "study")
    assert c3.entropy_bits == pytest.approx(1.0)


def test_per_family_means_over_images_with_bootstrap_ci():
    table = family_sensitivity(hand_made(), n_boot=500, seed=1).set_index("family")
    assert list(table.index[:1]) == ["all"]
    # all: mean of 2/6, 0, 2/4 over the three images
    assert table.loc["all", "flip_share"] == pytest.approx((2 / 6 + 0 + 0.5) / 3)
    assert table.loc["all", "n_images"] == 3 and table.loc["all", "n_variants"] == 14
    assert table.loc["all", "entropy_bits"] == pytest.approx((entropy(4, 1, 1) + 0 + 1) / 3)
    # casing: c1 1/2, c2 0, c3 0 (both casing wordings say positive = the majority)
    assert table.loc["casing", "flip_share"] == pytest.approx(1 / 6)
    assert table.loc["casing", "images_flipped"] == pytest.approx(1 / 3)
    # framing: c1 1/1 (hedge), c2 0; on c3 framing has no verdict, so that image does not count
    assert table.loc["framing", "n_images"] == 2 and table.loc["framing", "flip_share"] == pytest.approx(0.5)
    # study: c1 0, c2 0, c3 1 (both study wordings say negative against a positive majority)
    assert table.loc["study", "flip_share"] == pytest.approx(1 / 3)
    for family in table.index:
        lo, mid, hi = table.loc[family, ["flip_share_lo", "flip_share", "flip_share_hi"]]
        assert lo <= mid + 1e-12 and mid <= hi + 1e-12
    again = family_sensitivity(hand_made(), n_boot=500, seed=1)
    pd.testing.assert_frame_equal(again.set_index("family"), table)


def test_ci_is_nan_for_one_image_and_collapses_when_every_image_agrees():
    one = family_sensitivity(pd.DataFrame(rows_for("base", "c1", "positive", C1)), n_boot=200)
    assert one["flip_share_lo"].isna().all()
    same = pd.DataFrame(rows_for("base", "x1", "positive", C1) + rows_for("base", "x2", "positive", C1))
    row = family_sensitivity(same, n_boot=200).set_index("family").loc["all"]
    assert row.flip_share_lo == pytest.approx(2 / 6) and row.flip_share_hi == pytest.approx(2 / 6)


def test_pairs_compare_base_and_medical_on_the_same_images():
    base = hand_made()
    # The medical model agrees with itself everywhere on c1 and c2, and is absent on c3.
    medical = pd.DataFrame(
        rows_for("med", "c1", "positive", [(p, f, "positive") for p, f, _ in C1])
        + rows_for("med", "c2", "negative", C2)
    )
    table = pair_sensitivity(pd.concat([base, medical]), pairs={"P": ("base", "med")}, n_boot=300, seed=0)
    row = table.set_index("family").loc["all"]
    assert row.n_images == 2  # c3 is only the base model's
    assert row.base_flip_share == pytest.approx((2 / 6 + 0) / 2)
    assert row.medical_flip_share == 0.0
    assert row.difference == pytest.approx(-(2 / 6) / 2)
    assert row.difference_lo <= row.difference <= row.difference_hi
    casing = table.set_index("family").loc["casing"]
    assert casing.difference == pytest.approx(-(1 / 2) / 2)


def test_tables_from_a_real_store_carry_the_generated_families(tmp_path):
    """Rows written through the store (family and parent kept) come back into the readout."""
    store = Store(tmp_path / "s.sqlite")
    image = Image.new("RGB", (8, 8), "white")
    case = Case("pneumonia:file:x.png", "pneumonia", image, content_hash(image), label="positive")
    base = PromptVariant("evidence", "evidence", "Does this image contain evidence of pneumonia?", yes_means="positive")
    flipped = PromptVariant(
        "polarity_flip_1", "polarity_flip", "Is this image free of pneumonia?", yes_means="negative", parent="evidence"
    )
    for i, (variant, verdict) in enumerate(((base, "positive"), (flipped, "negative"))):
        request = Request("demo", ({"role": "user", "content": [variant.text]},), GenerationSettings())
        store.record_answer(
            answer_row(
                fingerprint=f"f{i}",
                request=request,
                case=case,
                variant=variant,
                model_identity={"m": 1},
                backend="fake",
                response=Response(text="x"),
                verdict=Verdict(verdict),
                run_id=None,
            )
        )
    frame = store.answers_frame()
    assert frame.loc[frame["prompt_id"] == "polarity_flip_1", "prompt_family"].item() == "polarity_flip"
    tables = sensitivity_tables(frame, n_boot=50)
    image = tables["metrics_sensitivity_images"].iloc[0]
    assert (image.n_variants, image.flip_share, image.flipped_by) == (2, 0.5, "polarity_flip")
    assert set(tables["metrics_sensitivity_families"]["family"]) == {"all", "study", "polarity_flip"}
    empty = sensitivity_tables(frame.iloc[0:0])
    assert all(t.empty for t in empty.values())


def test_family_columns_in_the_sweep_charts():
    from explorer.analysis import plots

    frame = hand_made()
    fig = plots.family_flips(family_sensitivity(frame, n_boot=100))
    assert [t.name for t in fig.data] and list(fig.data[0].x) == [
        "All wordings",
        "The study's<br>wordings",
        "Letter case",
        "Framing",
    ]
    assert fig.data[0].y[0] == pytest.approx((2 / 6 + 0 + 0.5) / 3)
    assert fig.data[0].error_y.array is not None
    charts = plots.study_figures(frame, n_boot=50)
    assert "wording families" in charts[4].layout.title.text
    study_only = frame[frame["prompt_family"].isin(["abnormal", "evidence", "mc_pos_first"])]
    assert "wording flips" in plots.study_figures(study_only, n_boot=50)[4].layout.title.text
    assert (
        plots.prompt_label("typos_9e7d568b") == "typos 9e7d"
        and plots.prompt_label("custom_fb8bf17a") == "custom_fb8bf17a"
    )
    assert plots.prompt_label("evidence_ow") == "Evidence of the finding? (one word)"
