"""Metrics against hand-computed values, scikit-learn and statsmodels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from explorer.analysis import metrics
from explorer.analysis.metrics import (
    cell_metrics,
    f1_all_from_counts,
    flip_rate,
    folded_prediction,
    headline,
    model_task_summary,
    paired_tests,
    prepare,
    variant_kappa,
)


def answers(rows, model="m", task="t", **extra) -> pd.DataFrame:
    """rows: (prompt_id, case_id, label, verdict[, p_positive])."""
    records = []
    for r in rows:
        prompt_id, case_id, label, verdict = r[:4]
        records.append(
            dict(
                model=model,
                task=task,
                prompt_id=prompt_id,
                prompt_family=prompt_id.split("_")[0],
                case_id=case_id,
                label=label,
                verdict=verdict,
                p_positive=r[4] if len(r) > 4 else np.nan,
                **extra,
            )
        )
    return pd.DataFrame(records)


# ---------------------------------------------------------------- one cell by hand
HAND = [
    # positives: TP, TP, FN, refused, hedged
    ("evidence", "c1", "positive", "positive", 0.9),
    ("evidence", "c2", "positive", "positive", 0.8),
    ("evidence", "c3", "positive", "negative", 0.4),
    ("evidence", "c4", "positive", "refusal", 0.6),
    ("evidence", "c5", "positive", "hedge", 0.7),
    # negatives: TN, TN, TN, FP, unclear
    ("evidence", "c6", "negative", "negative", 0.1),
    ("evidence", "c7", "negative", "negative", 0.2),
    ("evidence", "c8", "negative", "negative", 0.3),
    ("evidence", "c9", "negative", "positive", 0.5),
    ("evidence", "c10", "negative", "unclear", np.nan),
    # no label: counts toward rates only
    ("evidence", "u1", None, "positive", 0.99),
]


def test_cell_metrics_match_hand_computed_values():
    row = cell_metrics(answers(HAND), n_boot=200).iloc[0]
    assert (row.n, row.n_labelled, row.n_answered, row.n_refused, row.n_hedge) == (11, 10, 8, 3, 1)
    assert (row.tp, row.fn, row.fp, row.tn, row.refused_pos, row.refused_neg) == (2, 1, 1, 3, 2, 1)
    assert row.accuracy == pytest.approx(5 / 7)  # answered labelled rows
    assert row.accuracy_all == pytest.approx(5 / 10)  # refusals count as wrong
    assert row.sensitivity == pytest.approx(2 / 3)
    assert row.specificity == pytest.approx(3 / 4)
    assert row.precision == pytest.approx(2 / 3)
    assert row.f1_nr == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # F1_all = 2TP / (2TP + FP + FN + R) = 4 / (4 + 1 + 1 + 3)
    assert row.f1_all == pytest.approx(4 / 9)
    assert row.refusal_rate == pytest.approx(3 / 11)
    assert row.hedge_rate == pytest.approx(1 / 11)
    assert row.positive_rate == pytest.approx(4 / 11)
    # AUROC over the 9 labelled rows with a probability: 19 of 20 (pos, neg) pairs ranked right.
    assert row.n_auroc == 9
    assert row.auroc == pytest.approx(19 / 20)
    assert row.prompt_family == "evidence"


def test_f1_all_via_sklearn_equals_closed_formula_on_random_data():
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        label = pd.Series(rng.choice(["positive", "negative"], n))
        verdict = pd.Series(rng.choice(["positive", "negative", "refusal", "hedge", "unclear"], n))
        folded = folded_prediction(label, verdict)
        sk = f1_score(label, folded, pos_label="positive", zero_division=np.nan)
        tp = int(((label == "positive") & (verdict == "positive")).sum())
        fp = int(((label == "negative") & (verdict == "positive")).sum())
        fn = int(((label == "positive") & (verdict == "negative")).sum())
        refused = int(verdict.isin(["refusal", "hedge", "unclear"]).sum())
        closed = 2 * tp / (2 * tp + fp + fn + refused) if (2 * tp + fp + fn + refused) else math.nan
        assert sk == pytest.approx(closed, nan_ok=True)
        row = cell_metrics(
            answers([("p", f"c{i}", truth, v) for i, (truth, v) in enumerate(zip(label, verdict))]), n_boot=0
        ).iloc[0]
        assert row.f1_all == pytest.approx(closed, nan_ok=True)
        counts = np.array([row.tp, row.fn, row.fp, row.tn, row.refused_pos, row.refused_neg])
        assert f1_all_from_counts(counts) == pytest.approx(closed, nan_ok=True)


def test_answered_row_metrics_agree_with_sklearn_on_random_data():
    rng = np.random.default_rng(3)
    rows = []
    for prompt in ("a", "b", "c"):
        for i in range(80):
            rows.append(
                (
                    prompt,
                    f"c{i}",
                    rng.choice(["positive", "negative"]),
                    rng.choice(["positive", "negative", "refusal", "hedge"], p=[0.4, 0.4, 0.1, 0.1]),
                )
            )
    df = answers(rows)
    cells = cell_metrics(df, n_boot=0).set_index("prompt_id")
    for prompt, group in df.groupby("prompt_id"):
        ans = group[~group["verdict"].isin(["refusal", "hedge", "unclear"])]
        y, p = ans["label"], ans["verdict"]
        row = cells.loc[prompt]
        assert row.accuracy == pytest.approx(accuracy_score(y, p))
        assert row.precision == pytest.approx(precision_score(y, p, pos_label="positive"))
        assert row.sensitivity == pytest.approx(recall_score(y, p, pos_label="positive"))
        assert row.specificity == pytest.approx(recall_score(y, p, pos_label="negative"))
        assert row.f1_nr == pytest.approx(f1_score(y, p, pos_label="positive"))
        assert row.accuracy_all == pytest.approx((group["label"] == group["verdict"]).mean())


@pytest.mark.filterwarnings("error")
def test_degenerate_cells_give_nan_without_warnings():
    df = pd.concat(
        [
            answers([("only_pos", f"c{i}", "positive", "positive") for i in range(4)]),
            answers([("only_neg_right", f"c{i}", "negative", "negative") for i in range(4)]),
            answers([("all_refused", f"c{i}", "positive", "refusal") for i in range(4)]),
            answers([("no_labels", f"c{i}", None, "positive") for i in range(4)]),
        ]
    )
    cells = cell_metrics(df, n_boot=50).set_index("prompt_id")
    assert math.isnan(cells.loc["only_pos", "specificity"]) and cells.loc["only_pos", "f1_all"] == 1.0
    assert math.isnan(cells.loc["only_pos", "auroc"])
    assert math.isnan(cells.loc["only_neg_right", "f1_all"])  # no positives anywhere: undefined, not 0
    assert cells.loc["only_neg_right", "accuracy"] == 1.0
    assert math.isnan(cells.loc["all_refused", "accuracy"])
    assert cells.loc["all_refused", "accuracy_all"] == 0.0 and cells.loc["all_refused", "f1_all"] == 0.0
    assert cells.loc["all_refused", "refusal_rate"] == 1.0
    assert math.isnan(cells.loc["no_labels", "accuracy"]) and math.isnan(cells.loc["no_labels", "f1_all_lo"])
    assert cells.loc["no_labels", "positive_rate"] == 1.0
    summary = model_task_summary(df, n_boot=50)
    assert len(summary) == 1


@pytest.mark.filterwarnings("error")
def test_empty_frames():
    assert cell_metrics(pd.DataFrame()).empty
    assert model_task_summary(pd.DataFrame()).empty
    assert paired_tests(pd.DataFrame()).empty
    assert headline(pd.DataFrame()).empty
    empty = answers([])
    assert list(cell_metrics(empty).columns) == metrics.CELL_COLUMNS


def test_unknown_verdicts_and_missing_columns_are_refused():
    with pytest.raises(ValueError, match="maybe"):
        cell_metrics(answers([("p", "c", "positive", "maybe")]))
    with pytest.raises(ValueError, match="verdict"):
        cell_metrics(answers([("p", "c", "positive", "positive")]).drop(columns="verdict"))
    # an unjudged row (no verdict yet) is left out, not an error
    df = answers([("p", "c1", "positive", "positive"), ("p", "c2", "positive", None)])
    assert cell_metrics(df, n_boot=0).iloc[0].n == 1


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(11)
    rows = [
        (
            p,
            f"c{i}",
            "positive" if i < 40 else "negative",
            rng.choice(["positive", "negative", "refusal"], p=[0.5, 0.4, 0.1]),
        )
        for p in ("a", "b")
        for i in range(80)
    ]
    df = answers(rows)
    cells = cell_metrics(df, n_boot=300, seed=5)
    for _, row in cells.iterrows():
        assert row.accuracy_lo <= row.accuracy <= row.accuracy_hi
        assert row.f1_all_lo <= row.f1_all <= row.f1_all_hi
        assert row.accuracy_hi - row.accuracy_lo < 0.5
    again = cell_metrics(df, n_boot=300, seed=5)
    pd.testing.assert_frame_equal(cells, again)
    other_seed = cell_metrics(df, n_boot=300, seed=6)
    assert not np.allclose(cells["f1_all_lo"], other_seed["f1_all_lo"])
    # A cell's interval does not depend on which other cells are in the frame.
    alone = cell_metrics(df[df["prompt_id"] == "b"], n_boot=300, seed=5).iloc[0]
    assert alone.f1_all_lo == cells.iloc[1].f1_all_lo
    summary = model_task_summary(df, n_boot=300).iloc[0]
    assert summary.f1_all_lo <= summary.f1_all_mean <= summary.f1_all_hi


# ---------------------------------------------------------------- prompt sensitivity
def test_all_variants_agree_gives_no_flips_and_kappa_one():
    rows = [
        (p, c, lab, lab)
        for p in ("a", "b", "c")
        for c, lab in (("x1", "positive"), ("x2", "positive"), ("x3", "negative"), ("x4", "negative"))
    ]
    frame = prepare(answers(rows))
    assert flip_rate(frame) == (0.0, 4)
    assert variant_kappa(frame) == (pytest.approx(1.0), 4, 3)
    summary = model_task_summary(answers(rows), n_boot=0).iloc[0]
    assert summary.flip_rate == 0.0 and summary.fleiss_kappa == pytest.approx(1.0)


def test_flip_rate_on_known_cases():
    rows = [
        ("a", "A", "positive", "positive"),
        ("b", "A", "positive", "positive"),
        ("c", "A", "positive", "negative"),
        ("a", "B", "negative", "negative"),
        ("b", "B", "negative", "negative"),
        ("c", "B", "negative", "negative"),
        # refusal, hedge and unclear are one reading (non-answer): no flip
        ("a", "C", "negative", "refusal"),
        ("b", "C", "negative", "hedge"),
        ("c", "C", "negative", "unclear"),
        # an answer vs a non-answer is a flip
        ("a", "D", "positive", "positive"),
        ("b", "D", "positive", "refusal"),
        ("c", "D", "positive", "positive"),
        # seen under one prompt only: left out
        ("a", "E", "positive", "negative"),
    ]
    rate, n = flip_rate(prepare(answers(rows)))
    assert (rate, n) == (0.5, 4)


def test_fleiss_kappa_matches_the_textbook_formula():
    readings = {  # case -> reading under prompts a, b, c
        "A": ["positive", "positive", "negative"],
        "B": ["negative", "negative", "negative"],
        "C": ["refusal", "negative", "positive"],
        "D": ["positive", "positive", "positive"],
        "E": ["refusal", "refusal", "negative"],
    }
    rows = [(p, case, None, v) for case, vs in readings.items() for p, v in zip("abc", vs)]
    rows.append(("a", "F", None, "positive"))  # not under every prompt: not rated by all variants
    kappa, n_cases, n_variants = variant_kappa(prepare(answers(rows)))
    assert (n_cases, n_variants) == (5, 3)
    # Fleiss (1971): P_i = (sum_j n_ij^2 - n) / (n (n - 1)); P_e = sum_j p_j^2.
    cats = ("positive", "negative", "refusal")
    counts = np.array([[vs.count(c) for c in cats] for vs in readings.values()], dtype=float)
    n = 3
    p_i = ((counts**2).sum(axis=1) - n) / (n * (n - 1))
    p_j = counts.sum(axis=0) / counts.sum()
    expected = (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())
    assert kappa == pytest.approx(expected)


def test_fleiss_kappa_of_systematic_disagreement_is_minus_one():
    rows = [
        ("a", "x1", None, "positive"),
        ("b", "x1", None, "negative"),
        ("a", "x2", None, "negative"),
        ("b", "x2", None, "positive"),
    ]
    assert variant_kappa(prepare(answers(rows)))[0] == pytest.approx(-1.0)
    assert flip_rate(prepare(answers(rows))) == (1.0, 2)


def test_summary_prompt_variance_is_std_with_ddof_1():
    rng = np.random.default_rng(2)
    rows = [
        (p, f"c{i}", rng.choice(["positive", "negative"]), rng.choice(["positive", "negative", "refusal"]))
        for p in ("a", "b", "c", "d")
        for i in range(30)
    ]
    df = answers(rows)
    cells = cell_metrics(df, n_boot=0)
    summary = model_task_summary(df, n_boot=0).iloc[0]
    assert summary.accuracy_std == pytest.approx(np.std(cells["accuracy"], ddof=1))
    assert summary.accuracy_mean == pytest.approx(cells["accuracy"].mean())
    assert summary.f1_all_mean == pytest.approx(cells["f1_all"].mean())
    assert summary.refusal_rate_mean == pytest.approx(cells["refusal_rate"].mean())
    assert summary.n_prompts == 4 and summary.n_cases == 30
    single = model_task_summary(df[df["prompt_id"] == "a"], n_boot=0).iloc[0]
    assert math.isnan(single.accuracy_std) and math.isnan(single.flip_rate)


# ---------------------------------------------------------------- base vs medical
def paired_frame(both, b, c, neither, prompt="p", task="t", refuse_medical=0):
    """Cases with a given McNemar table; `refuse_medical` of the b cases are medical refusals (wrong)."""
    rows_base, rows_med = [], []
    kinds = ["both"] * both + ["b"] * b + ["c"] * c + ["neither"] * neither
    for i, kind in enumerate(kinds):
        label = "positive" if i % 2 else "negative"
        wrong = "negative" if label == "positive" else "positive"
        base_ok = kind in ("both", "b")
        med_ok = kind in ("both", "c")
        rows_base.append((prompt, f"{task}{i}", label, label if base_ok else wrong))
        med_verdict = label if med_ok else wrong
        if kind == "b" and refuse_medical:
            med_verdict, refuse_medical = "refusal", refuse_medical - 1
        rows_med.append((prompt, f"{task}{i}", label, med_verdict))
    return pd.concat(
        [
            answers(rows_base, model="base-m", task=task, pair="P", role="base"),
            answers(rows_med, model="med-m", task=task, pair="P", role="medical"),
        ]
    )


def test_mcnemar_matches_statsmodels_and_holm_is_applied():
    df = pd.concat(
        [
            paired_frame(15, 8, 2, 5, prompt="small", refuse_medical=3),  # 10 discordant: exact
            paired_frame(40, 30, 12, 10, prompt="large"),  # 42 discordant: chi-square
            answers([("small", "lonely", "positive", "positive")], model="base-m", pair="P", role="base"),
        ]
    )
    out = paired_tests(df)
    small = out[(out.level == "prompt") & (out.prompt_id == "small")].iloc[0]
    assert (small.both_correct, small.b, small.c, small.neither_correct, small.n_pairs) == (15, 8, 2, 5, 30)
    ref = mcnemar([[15, 8], [2, 5]], exact=True)
    assert small.p_value == pytest.approx(ref.pvalue) and small.statistic == ref.statistic
    assert small.method == "exact binomial"
    large = out[(out.level == "prompt") & (out.prompt_id == "large")].iloc[0]
    ref = mcnemar([[40, 30], [12, 10]], exact=False, correction=True)
    assert large.p_value == pytest.approx(ref.pvalue) and large.statistic == pytest.approx(ref.statistic)
    assert large.method.startswith("chi-square")
    prompt_level = out[out.level == "prompt"].sort_values("prompt_id")
    holm = multipletests(prompt_level["p_value"], method="holm")[1]
    assert np.allclose(prompt_level["p_holm"], holm)
    pooled = out[out.level == "pooled"].iloc[0]
    assert (pooled.b, pooled.c, pooled.n_pairs) == (38, 14, 122)
    assert pooled.p_value == pytest.approx(mcnemar([[55, 38], [14, 15]], exact=False).pvalue)
    assert pooled.p_holm == pytest.approx(pooled.p_value)  # alone in its family
    assert small.base_accuracy_all == pytest.approx(23 / 30)


def test_paired_tests_with_explicit_pairs():
    df = paired_frame(5, 3, 1, 2).drop(columns=["pair", "role"])
    out = paired_tests(df, pairs=[("base-m", "med-m")])
    assert set(out["pair"]) == {"base-m vs med-m"} and len(out) == 2
    out = paired_tests(df, pairs={"mine": ("base-m", "med-m")})
    assert set(out["pair"]) == {"mine"}


def test_headline_averages_f1_all_over_prompts_base_first():
    df = pd.concat([paired_frame(10, 6, 2, 4, prompt=p, task=t) for p in ("a", "b") for t in ("t1", "t2")])
    head = headline(df, n_boot=100)
    assert list(head["role"]) == ["base", "medical"] * 2
    cells = cell_metrics(df, n_boot=0)
    for _, row in head.iterrows():
        expected = cells[(cells.model == row.model) & (cells.task == row.task)]["f1_all"].mean()
        assert row.f1_all_mean == pytest.approx(expected)
        assert row.f1_all_lo <= row.f1_all_mean <= row.f1_all_hi
        assert row.n_prompts == 2


def test_headline_fills_pairs_from_the_catalog():
    rows = [("a", f"c{i}", "positive" if i % 2 else "negative", "positive") for i in range(6)]
    df = pd.concat([answers(rows, model="gemma"), answers(rows, model="medgemma"), answers(rows, model="unknown")])
    head = headline(df, n_boot=0)
    assert list(head["model"]) == ["gemma", "medgemma"] and set(head["pair"]) == {"gemma"}
