"""Metrics over judged answers: per-prompt cells, prompt sensitivity, paired base-vs-medical tests.

Input: an answers DataFrame, one row per (model, task, prompt_id, case_id), with at least the columns
in ANSWER_COLUMNS, and optionally `p_positive` (float, NaN when absent), `pair` and `role`
("base" / "medical"). `verdict` is one of schema.VERDICT_LABELS; rows whose verdict is missing (not
judged yet) are left out of every metric. `label` is "positive", "negative" or missing; rows without
a label count toward refusal and positive rates but are left out of accuracy-type metrics.

Non-answers (schema.NON_ANSWERS: refusal, hedge, unclear) are what the study calls refusals
(the judge's AMBIGUOUS). Two conventions for them run side by side, as in the study:
  * "answered rows" metrics (accuracy, sensitivity, specificity, precision, f1_nr) leave them out;
  * "all rows" metrics (accuracy_all, f1_all) count them as errors: a refused positive case is a
    false negative and a refused negative case a false positive, so
    F1_all = 2TP / (2TP + FP + FN + R), R = refused labelled rows.
Undefined values (nothing to divide by, one class only) are NaN, never 0 as in the study's code.

Confidence intervals are 95% percentile bootstraps that resample cases with a fixed seed. Each
(model, task, prompt) cell gets its own generator seeded from (seed, cell key), so a cell's interval
does not change when other cells are added or removed.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable, Mapping, Optional, Union

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.multitest import multipletests

from explorer.schema import ANSWER_COLUMNS, NON_ANSWERS, VERDICT_LABELS

CELL_KEYS = ["model", "task", "prompt_id"]
MODEL_TASK_KEYS = ["model", "task"]
LABELS = ("negative", "positive")
NON_ANSWER = "non_answer"
# The three readings used for agreement: what the study's judge could conclude.
READINGS = ("positive", "negative", NON_ANSWER)

# Outcome codes of one labelled row; the order is the last axis of every count array below.
TP, FN, FP, TN, R_POS, R_NEG = range(6)
N_OUTCOMES = 6

DEFAULT_N_BOOT = 1000
DEFAULT_SEED = 0
DEFAULT_CI = 0.95
# McNemar: the exact binomial test when there are fewer discordant pairs than this.
EXACT_BELOW = 25

CELL_COLUMNS = [
    "model",
    "task",
    "prompt_id",
    "prompt_family",
    "pair",
    "role",
    "n",
    "n_labelled",
    "n_answered",
    "n_refused",
    "n_hedge",
    "tp",
    "fp",
    "tn",
    "fn",
    "refused_pos",
    "refused_neg",
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "accuracy_all",
    "sensitivity",
    "specificity",
    "precision",
    "f1_nr",
    "f1_all",
    "f1_all_lo",
    "f1_all_hi",
    "refusal_rate",
    "hedge_rate",
    "positive_rate",
    "auroc",
    "n_auroc",
    "non_answer_rate",
]
SUMMARY_COLUMNS = [
    "model",
    "task",
    "pair",
    "role",
    "n_prompts",
    "n_cases",
    "accuracy_mean",
    "accuracy_std",
    "accuracy_min",
    "accuracy_max",
    "accuracy_all_mean",
    "accuracy_all_std",
    "f1_nr_mean",
    "f1_all_mean",
    "f1_all_std",
    "f1_all_lo",
    "f1_all_hi",
    "refusal_rate_mean",
    "flip_rate",
    "n_flip_cases",
    "fleiss_kappa",
    "n_kappa_cases",
    "n_kappa_variants",
    "non_answer_rate_mean",
]
PAIRED_COLUMNS = [
    "pair",
    "task",
    "prompt_id",
    "level",
    "base_model",
    "medical_model",
    "n_pairs",
    "both_correct",
    "b",
    "c",
    "neither_correct",
    "base_accuracy_all",
    "medical_accuracy_all",
    "statistic",
    "p_value",
    "method",
    "p_holm",
    "reject_holm",
]
HEADLINE_COLUMNS = [
    "pair",
    "task",
    "role",
    "model",
    "f1_all_mean",
    "f1_all_lo",
    "f1_all_hi",
    "accuracy_mean",
    "refusal_rate_mean",
    "n_prompts",
    "n_cases",
]


# ---------------------------------------------------------------- preparing the frame
def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Checked copy of an answers frame with derived columns `reading`, `answered`, `outcome`, `correct`.

    Raises ValueError naming a missing column or an unknown verdict / label value.
    """
    missing = [c for c in ANSWER_COLUMNS if c not in df.columns]
    if missing and len(df) == 0:  # an empty frame may come without columns
        df = df.reindex(columns=[*df.columns, *missing])
        missing = []
    if missing:
        raise ValueError(f"answers frame lacks column(s) {', '.join(missing)}; needs {', '.join(ANSWER_COLUMNS)}")
    out = df.copy()
    for col in ("verdict", "label"):  # a blank cell (as CSV exports write None) means missing
        out[col] = out[col].astype(object).where(~out[col].astype(str).str.strip().isin(["", "None"]), None)
    out = out[out["verdict"].notna()].reset_index(drop=True)
    bad_verdicts = sorted(set(out["verdict"]) - set(VERDICT_LABELS))
    if bad_verdicts:
        raise ValueError(f"unknown verdict(s) {bad_verdicts}; known: {', '.join(VERDICT_LABELS)}")
    label = out["label"].astype(object).where(out["label"].notna(), None)
    bad_labels = sorted({str(v) for v in label if v is not None} - set(LABELS))
    if bad_labels:
        raise ValueError(f"unknown label(s) {bad_labels}; labels are 'positive', 'negative' or missing")
    out["label"] = label
    for col in ("p_positive",):
        if col in out.columns:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
    for col in ("pair", "role"):
        if col not in out.columns:
            out[col] = None
    out["answered"] = ~out["verdict"].isin(NON_ANSWERS)
    out["reading"] = out["verdict"].where(out["answered"], NON_ANSWER)
    out["outcome"] = _outcomes(out)
    # Correct under the "all rows" convention: a non-answer is wrong; NaN when the truth is unknown.
    correct = (out["reading"] == out["label"]).astype(float)
    out["correct"] = correct.where(out["label"].notna())
    return out


def _outcomes(frame: pd.DataFrame) -> pd.Series:
    """Outcome code of each labelled row (TP/FN/FP/TN/R_POS/R_NEG); -1 where the label is missing."""
    pos = frame["label"] == "positive"
    neg = frame["label"] == "negative"
    said_pos = frame["reading"] == "positive"
    said_neg = frame["reading"] == "negative"
    refused = frame["reading"] == NON_ANSWER
    code = np.full(len(frame), -1, dtype=np.int64)
    for mask, value in (
        (pos & said_pos, TP),
        (pos & said_neg, FN),
        (neg & said_pos, FP),
        (neg & said_neg, TN),
        (pos & refused, R_POS),
        (neg & refused, R_NEG),
    ):
        code[mask.to_numpy()] = value
    return pd.Series(code, index=frame.index)


def folded_prediction(label: pd.Series, verdict: pd.Series) -> pd.Series:
    """The prediction with each non-answer turned into the wrong class (how F1_all counts refusals)."""
    wrong = label.map({"positive": "negative", "negative": "positive"})
    return verdict.where(~verdict.isin(NON_ANSWERS), wrong)


# ---------------------------------------------------------------- closed formulas on counts
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def accuracy_from_counts(counts: np.ndarray) -> np.ndarray:
    """Accuracy on answered rows from outcome counts (last axis in TP, FN, FP, TN, R_POS, R_NEG order)."""
    c = np.asarray(counts, dtype=float)
    right = c[..., TP] + c[..., TN]
    return _ratio(right, right + c[..., FP] + c[..., FN])


def f1_all_from_counts(counts: np.ndarray) -> np.ndarray:
    """F1_all = 2TP / (2TP + FP + FN + R): refusals counted as errors."""
    c = np.asarray(counts, dtype=float)
    tp2 = 2 * c[..., TP]
    return _ratio(tp2, tp2 + c[..., FP] + c[..., FN] + c[..., R_POS] + c[..., R_NEG])


# ---------------------------------------------------------------- bootstrap
def _rng(seed: int, key: Iterable[Any]) -> np.random.Generator:
    tag = zlib.crc32("\x1f".join(str(k) for k in key).encode())
    return np.random.default_rng([int(seed), tag])


def _case_outcome_tensor(frame: pd.DataFrame, prompts: list[str]) -> np.ndarray:
    """(cases, prompts, outcomes) counts of the labelled rows: the unit a bootstrap resamples."""
    lab = frame[frame["outcome"] >= 0]
    if lab.empty:
        return np.zeros((0, len(prompts), N_OUTCOMES))
    case_idx, _ = pd.factorize(lab["case_id"], sort=True)
    prompt_idx = pd.Index(prompts).get_indexer(lab["prompt_id"])
    tensor = np.zeros((case_idx.max() + 1, len(prompts), N_OUTCOMES))
    np.add.at(tensor, (case_idx, prompt_idx, lab["outcome"].to_numpy()), 1)
    return tensor


def _bootstrap_counts(tensor: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, prompts, outcomes) counts, each draw resampling cases with replacement."""
    n_cases = tensor.shape[0]
    draws = rng.integers(0, n_cases, size=(n_boot, n_cases))
    # How often each case was drawn in each replicate: one flat bincount instead of a Python loop.
    flat = (draws + n_cases * np.arange(n_boot)[:, None]).ravel()
    weights = np.bincount(flat, minlength=n_boot * n_cases).reshape(n_boot, n_cases)
    return np.einsum("bc,cpk->bpk", weights, tensor)


def _percentile_ci(samples: np.ndarray, ci: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return (np.nan, np.nan)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


# ---------------------------------------------------------------- per cell
def _binary(labels: pd.Series) -> np.ndarray:
    """1 for "positive", 0 for "negative": integer arrays keep scikit-learn's input checks cheap."""
    return (labels.to_numpy(dtype=object) == "positive").astype(np.int8)


def _answered_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, precision and F1 of one set of rows (scikit-learn)."""
    if len(y_true) == 0:
        return dict(accuracy=np.nan, sensitivity=np.nan, specificity=np.nan, precision=np.nan, f1=np.nan)
    # Per class (0 negative, 1 positive): recall of class 0 is the specificity.
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], average=None, zero_division=np.nan
    )
    return dict(
        accuracy=float(accuracy_score(y_true, y_pred)),
        sensitivity=float(recall[1]),
        specificity=float(recall[0]),
        precision=float(precision[1]),
        f1=float(f1[1]),
    )


def _auroc(cell: pd.DataFrame) -> tuple[float, int]:
    if "p_positive" not in cell.columns:
        return np.nan, 0
    rows = cell[cell["label"].notna() & np.isfinite(cell["p_positive"])]
    if rows["label"].nunique() < 2:
        return np.nan, len(rows)
    return float(roc_auc_score(_binary(rows["label"]), rows["p_positive"].to_numpy())), len(rows)


def _one_cell(key: tuple, cell: pd.DataFrame, n_boot: int, seed: int, ci: float) -> dict[str, Any]:
    n = len(cell)
    lab = cell[cell["label"].notna()]
    ans = lab[lab["answered"]]
    counts = np.bincount(lab["outcome"].to_numpy(), minlength=N_OUTCOMES)
    answered = _answered_scores(_binary(ans["label"]), _binary(ans["verdict"]))
    folded = _answered_scores(_binary(lab["label"]), _binary(folded_prediction(lab["label"], lab["verdict"])))
    row: dict[str, Any] = dict(zip(CELL_KEYS, key))
    row.update(
        prompt_family=cell["prompt_family"].iloc[0],
        pair=cell["pair"].iloc[0],
        role=cell["role"].iloc[0],
        n=n,
        n_labelled=len(lab),
        n_answered=int(cell["answered"].sum()),
        n_refused=int((~cell["answered"]).sum()),
        n_hedge=int((cell["verdict"] == "hedge").sum()),
        tp=int(counts[TP]),
        fp=int(counts[FP]),
        tn=int(counts[TN]),
        fn=int(counts[FN]),
        refused_pos=int(counts[R_POS]),
        refused_neg=int(counts[R_NEG]),
        accuracy=answered["accuracy"],
        accuracy_all=folded["accuracy"],
        sensitivity=answered["sensitivity"],
        specificity=answered["specificity"],
        precision=answered["precision"],
        f1_nr=answered["f1"],
        f1_all=folded["f1"],
        refusal_rate=(~cell["answered"]).mean() if n else np.nan,
        hedge_rate=(cell["verdict"] == "hedge").mean() if n else np.nan,
        positive_rate=(cell["verdict"] == "positive").mean() if n else np.nan,
        # The same share under its own name: "refusal" on a card means declined, and this counts more.
        non_answer_rate=(~cell["answered"]).mean() if n else np.nan,
    )
    row["auroc"], row["n_auroc"] = _auroc(cell)
    row["accuracy_lo"] = row["accuracy_hi"] = row["f1_all_lo"] = row["f1_all_hi"] = np.nan
    if len(lab) and n_boot > 0:
        tensor = _case_outcome_tensor(lab, [key[2]])
        boot = _bootstrap_counts(tensor, n_boot, _rng(seed, key))[:, 0, :]
        row["accuracy_lo"], row["accuracy_hi"] = _percentile_ci(accuracy_from_counts(boot), ci)
        row["f1_all_lo"], row["f1_all_hi"] = _percentile_ci(f1_all_from_counts(boot), ci)
    return row


def cell_metrics(
    df: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED, ci: float = DEFAULT_CI
) -> pd.DataFrame:
    """Per (model, task, prompt_id) metrics, one row per cell (columns CELL_COLUMNS).

    Denominators:
      n            all judged rows of the cell (labelled or not)
      accuracy     correct / answered labelled rows (the study's accuracy: refusals left out)
      accuracy_all correct / all labelled rows (refusals count as wrong)
      sensitivity, specificity, precision, f1_nr   on answered labelled rows (scikit-learn)
      f1_all       scikit-learn F1 after folding each refusal into the wrong class
                   (= 2TP / (2TP + FP + FN + R))
      refusal_rate non-answers (refusal + hedge + unclear) / n, the study's "refusals" (kept for old readers)
      non_answer_rate  the same share under its own name (a "refusal" verdict alone is a declined answer)
      hedge_rate   hedge / n
      positive_rate  "positive" verdicts / n (the yes-rate: with the negative and refusal rates it sums to 1)
      auroc        from p_positive on labelled rows where it is finite; NaN with one class only
    accuracy_lo/hi and f1_all_lo/hi: percentile bootstrap (n_boot draws over the cell's labelled cases).
    """
    frame = prepare(df)
    if frame.empty:
        return pd.DataFrame(columns=CELL_COLUMNS)
    rows = [_one_cell(key, cell, n_boot, seed, ci) for key, cell in frame.groupby(CELL_KEYS, sort=True, dropna=False)]
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


# ---------------------------------------------------------------- prompt sensitivity
def _reading_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """cases x prompts table of readings (first row wins when a cell repeats a case)."""
    return frame.pivot_table(index="case_id", columns="prompt_id", values="reading", aggfunc="first")


def flip_rate(frame: pd.DataFrame) -> tuple[float, int]:
    """Share of cases whose reading (positive / negative / non-answer) differs across the prompts it was
    shown under, and how many cases that covers. Cases shown under fewer than 2 prompts are left out.
    `frame` is one (model, task) of a prepare()d frame."""
    if frame.empty:
        return np.nan, 0
    matrix = _reading_matrix(frame)
    seen = matrix.notna().sum(axis=1)
    matrix = matrix[seen >= 2]
    if matrix.empty:
        return np.nan, 0
    flips = matrix.nunique(axis=1, dropna=True) > 1
    return float(flips.mean()), int(len(matrix))


def variant_kappa(frame: pd.DataFrame) -> tuple[float, int, int]:
    """Fleiss' kappa of the prompt variants as raters of each case (categories: positive, negative,
    non-answer), on the cases seen under every prompt of this (model, task).

    Returns (kappa, cases used, variants). NaN with fewer than 2 cases or variants, or when every
    rating falls in one category (chance agreement is then 1 and kappa is undefined).
    """
    if frame.empty:
        return np.nan, 0, 0
    matrix = _reading_matrix(frame).dropna(axis=0, how="any")
    n_cases, n_variants = matrix.shape
    if n_cases < 2 or n_variants < 2:
        return np.nan, n_cases, n_variants
    codes = matrix.apply(lambda col: col.map({r: i for i, r in enumerate(READINGS)})).to_numpy(dtype=int)
    table, _ = aggregate_raters(codes, n_cat=len(READINGS))
    if (table.sum(axis=0) > 0).sum() < 2:
        return np.nan, n_cases, n_variants
    return float(fleiss_kappa(table, method="fleiss")), n_cases, n_variants


def _mean_f1_all_ci(frame: pd.DataFrame, key: tuple, n_boot: int, seed: int, ci: float) -> tuple[float, float]:
    """Bootstrap CI of f1_all averaged over prompts, each draw resampling cases across all prompts at once."""
    prompts = sorted(frame["prompt_id"].unique())
    tensor = _case_outcome_tensor(frame, prompts)
    if tensor.shape[0] == 0 or n_boot <= 0:
        return np.nan, np.nan
    per_prompt = f1_all_from_counts(_bootstrap_counts(tensor, n_boot, _rng(seed, key)))
    finite = np.isfinite(per_prompt)
    n_finite = finite.sum(axis=1)
    means = _ratio(np.where(finite, per_prompt, 0.0).sum(axis=1), n_finite)
    return _percentile_ci(means, ci)


def model_task_summary(
    df: pd.DataFrame,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    ci: float = DEFAULT_CI,
    cells: Optional[pd.DataFrame] = None,
) -> pd.DataFrame:
    """Per (model, task): how much the prompt wording matters (columns SUMMARY_COLUMNS).

    accuracy_std is the study's "prompt variance": the standard deviation of per-prompt accuracy
    (answered rows) across the prompts, with ddof=1 as pandas' default (NaN with a single prompt).
    *_mean are plain means over prompts (NaN cells skipped). flip_rate and fleiss_kappa: see
    flip_rate() and variant_kappa(). f1_all_lo/hi: percentile bootstrap of the mean over prompts of
    f1_all, resampling cases (the same draw for every prompt). `cells` may pass a cell_metrics() result
    of the same frame to skip recomputing it.
    """
    frame = prepare(df)
    if frame.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    if cells is None:
        cells = cell_metrics(df, n_boot=0)
    rows = []
    for key, group in frame.groupby(MODEL_TASK_KEYS, sort=True, dropna=False):
        c = cells[(cells["model"] == key[0]) & (cells["task"] == key[1])]
        flips, n_flip = flip_rate(group)
        kappa, n_kappa, n_var = variant_kappa(group)
        lo, hi = _mean_f1_all_ci(group, key, n_boot, seed, ci)
        rows.append(
            dict(
                model=key[0],
                task=key[1],
                pair=group["pair"].iloc[0],
                role=group["role"].iloc[0],
                n_prompts=int(group["prompt_id"].nunique()),
                n_cases=int(group["case_id"].nunique()),
                accuracy_mean=c["accuracy"].mean(),
                accuracy_std=c["accuracy"].std(),
                accuracy_min=c["accuracy"].min(),
                accuracy_max=c["accuracy"].max(),
                accuracy_all_mean=c["accuracy_all"].mean(),
                accuracy_all_std=c["accuracy_all"].std(),
                f1_nr_mean=c["f1_nr"].mean(),
                f1_all_mean=c["f1_all"].mean(),
                f1_all_std=c["f1_all"].std(),
                f1_all_lo=lo,
                f1_all_hi=hi,
                refusal_rate_mean=c["refusal_rate"].mean(),
                flip_rate=flips,
                n_flip_cases=n_flip,
                fleiss_kappa=kappa,
                n_kappa_cases=n_kappa,
                n_kappa_variants=n_var,
                non_answer_rate_mean=c["non_answer_rate"].mean(),
            )
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ---------------------------------------------------------------- base vs medical
PairsArg = Union[None, Mapping[str, tuple[str, str]], Iterable[tuple[str, str]]]


def attach_pairs(df: pd.DataFrame, catalog=None) -> pd.DataFrame:
    """Fill missing `pair` / `role` from the model catalog (presets/models.yaml) by model alias."""
    out = df.copy()
    for col in ("pair", "role"):
        if col not in out.columns:
            out[col] = None
    need = out["pair"].isna() | out["role"].isna()
    if need.any():
        if catalog is None:
            from explorer.catalog.presets import load_catalog

            catalog = load_catalog()
        specs = getattr(catalog, "models", {})
        out.loc[need, "pair"] = [getattr(specs.get(m), "pair", None) for m in out.loc[need, "model"]]
        out.loc[need, "role"] = [getattr(specs.get(m), "role", None) for m in out.loc[need, "model"]]
    return out


def resolve_pairs(df: pd.DataFrame, pairs: PairsArg = None) -> dict[str, tuple[str, str]]:
    """{pair name: (base model, medical model)} from an explicit argument or the frame's pair/role columns.

    `pairs` may be a mapping {name: (base, medical)} or an iterable of (base, medical) tuples (named
    "base vs medical"); None reads the frame's `pair` and `role` columns (filled from the catalog).
    """
    if pairs is not None:
        if isinstance(pairs, Mapping):
            return {str(k): (str(v[0]), str(v[1])) for k, v in pairs.items()}
        return {f"{b} vs {m}": (str(b), str(m)) for b, m in pairs}
    frame = attach_pairs(df)
    out: dict[str, tuple[str, str]] = {}
    for name, group in frame[frame["pair"].notna()].groupby("pair", sort=True):
        base = sorted(group.loc[group["role"] == "base", "model"].unique())
        medical = sorted(group.loc[group["role"] == "medical", "model"].unique())
        if len(base) > 1 or len(medical) > 1:
            raise ValueError(f"pair {name!r} has several base {base} or medical {medical} models; pass pairs=")
        if base and medical:
            out[str(name)] = (base[0], medical[0])
    return out


def _mcnemar_row(both: int, b: int, c: int, neither: int, exact_below: int) -> dict[str, Any]:
    exact = (b + c) < exact_below
    result = mcnemar([[both, b], [c, neither]], exact=exact, correction=True)
    return dict(
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
        method="exact binomial" if exact else "chi-square, continuity-corrected",
    )


def _paired_row(matched: pd.DataFrame, exact_below: int) -> dict[str, Any]:
    base_ok = matched["correct_base"].astype(bool)
    med_ok = matched["correct_medical"].astype(bool)
    both, neither = int((base_ok & med_ok).sum()), int((~base_ok & ~med_ok).sum())
    b, c = int((base_ok & ~med_ok).sum()), int((~base_ok & med_ok).sum())
    row = dict(
        n_pairs=len(matched),
        both_correct=both,
        b=b,
        c=c,
        neither_correct=neither,
        base_accuracy_all=float(base_ok.mean()),
        medical_accuracy_all=float(med_ok.mean()),
    )
    row.update(_mcnemar_row(both, b, c, neither, exact_below))
    return row


def _holm(frame: pd.DataFrame, mask: pd.Series, alpha: float) -> None:
    idx = frame.index[mask & frame["p_value"].notna()]
    if len(idx):
        reject, corrected, _, _ = multipletests(frame.loc[idx, "p_value"].to_numpy(), alpha=alpha, method="holm")
        frame.loc[idx, "p_holm"] = corrected
        frame.loc[idx, "reject_holm"] = reject


def paired_tests(
    df: pd.DataFrame, pairs: PairsArg = None, exact_below: int = EXACT_BELOW, alpha: float = 0.05
) -> pd.DataFrame:
    """McNemar's test of base vs medical correctness on the same cases and prompt (columns PAIRED_COLUMNS).

    Correctness counts non-answers as wrong; only labelled cases answered by both models are paired.
    b = base right and medical wrong, c = base wrong and medical right. The exact binomial test is used
    when b + c < exact_below, otherwise the continuity-corrected chi-square; `statistic` is then
    min(b, c) or the chi-square. level "prompt" rows are per (pair, task, prompt_id); level "pooled" rows
    pool all prompts of a (pair, task) (case x prompt pairs, treated as independent: read with care).
    p_holm: Holm's correction within each level (all per-prompt tests together; all pooled tests together).
    """
    frame = prepare(df)
    frame = frame[frame["label"].notna()]
    rows: list[dict[str, Any]] = []
    for name, (base, medical) in resolve_pairs(df, pairs).items():
        keys = ["task", "prompt_id", "case_id"]
        left = frame[frame["model"] == base].drop_duplicates(keys)[keys + ["correct"]]
        right = frame[frame["model"] == medical].drop_duplicates(keys)[keys + ["correct"]]
        matched = left.merge(right, on=keys, suffixes=("_base", "_medical"))
        for task, by_task in matched.groupby("task", sort=True):
            common = dict(pair=name, task=task, base_model=base, medical_model=medical)
            for prompt_id, cell in by_task.groupby("prompt_id", sort=True):
                rows.append({**common, "prompt_id": prompt_id, "level": "prompt", **_paired_row(cell, exact_below)})
            rows.append({**common, "prompt_id": None, "level": "pooled", **_paired_row(by_task, exact_below)})
    out = pd.DataFrame(rows, columns=PAIRED_COLUMNS)
    if out.empty:
        return out
    out["p_holm"] = np.nan
    out["reject_holm"] = pd.Series([pd.NA] * len(out), dtype="boolean")
    for level in ("prompt", "pooled"):
        _holm(out, out["level"] == level, alpha)
    return out


def headline(
    df: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED, ci: float = DEFAULT_CI
) -> pd.DataFrame:
    """The paper's headline figure as a table: F1_all per task for the base and the medical model of each
    pair, averaged over prompt variants, with its bootstrap CI (columns HEADLINE_COLUMNS, base first).

    Models without a pair/role (in the frame or the catalog) are left out.
    """
    frame = attach_pairs(df) if len(df) else df
    summary = model_task_summary(frame, n_boot=n_boot, seed=seed, ci=ci)
    summary = summary[summary["pair"].notna() & summary["role"].isin(["base", "medical"])]
    if summary.empty:
        return pd.DataFrame(columns=HEADLINE_COLUMNS)
    summary = summary.assign(_order=(summary["role"] != "base").astype(int))
    summary = summary.sort_values(["pair", "task", "_order"]).reset_index(drop=True)
    return summary[HEADLINE_COLUMNS]
