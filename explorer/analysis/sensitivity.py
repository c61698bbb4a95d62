"""How much an answer depends on the wording: per image and model, per wording family, per model pair.

Input: an answers frame as metrics.prepare() takes it (one row per model, task, prompt, case), where
`prompt_family` says which wording family each prompt came from (the study's own six families count as
one group, "study"; see perturb.family_group). A row's reading is positive, negative or non-answer
(refusal, hedge and unclear together); rows without a verdict (failed requests) are left out.

Per (model, task, image) over all its wordings:
  majority       the most common reading (ties go to positive, then negative, then non-answer)
  flip_share     the share of wordings whose reading differs from the majority
  entropy_bits   Shannon entropy of the readings (0: every wording agrees; log2(3) at most)
  flipped_by     the families with at least one wording that differs from the majority
Per family (model, task, family): the mean over images of that family's flip share (its wordings
measured against the image's majority over all wordings), with a 95% percentile bootstrap CI that
resamples images. Per pair (base vs medical, task, family): both models' mean flip shares on the images
both answered, and medical minus base with a paired bootstrap CI.
"""

from __future__ import annotations

import zlib
from typing import Any, Optional

import numpy as np
import pandas as pd

from explorer.analysis.metrics import NON_ANSWER, prepare, resolve_pairs
from explorer.prompts.perturb import family_group

READING_ORDER = ("positive", "negative", NON_ANSWER)
ALL_FAMILIES = "all"
IMAGE_KEYS = ["model", "task", "case_id"]
IMAGE_COLUMNS = [
    "model",
    "task",
    "case_id",
    "label",
    "n_variants",
    "majority",
    "n_flipped",
    "flip_share",
    "entropy_bits",
    "flipped_by",
    "n_positive",
    "n_negative",
    "n_non_answer",
]
FAMILY_COLUMNS = [
    "model",
    "task",
    "family",
    "n_images",
    "n_variants",
    "flip_share",
    "flip_share_lo",
    "flip_share_hi",
    "images_flipped",
    "entropy_bits",
]
PAIR_COLUMNS = [
    "pair",
    "task",
    "family",
    "base_model",
    "medical_model",
    "n_images",
    "base_flip_share",
    "medical_flip_share",
    "difference",
    "difference_lo",
    "difference_hi",
]
DEFAULT_N_BOOT = 1000
SENSITIVITY_TABLES = ("metrics_sensitivity_images", "metrics_sensitivity_families", "metrics_sensitivity_pairs")


def readings(frame: pd.DataFrame) -> pd.DataFrame:
    """The closed-form rows with a verdict, each with its `reading` and its family `group`."""
    if "prompt_kind" in frame.columns and len(frame):
        frame = frame[frame["prompt_kind"].fillna("closed") == "closed"]
    out = prepare(frame)
    out["group"] = [family_group(str(f or "")) for f in out["prompt_family"]]
    return out


def _majority(values: list[str]) -> str:
    counts = {r: values.count(r) for r in READING_ORDER}
    return max(READING_ORDER, key=lambda r: (counts[r], -READING_ORDER.index(r)))


def _entropy(values: list[str]) -> float:
    counts = np.array([values.count(r) for r in READING_ORDER], dtype=float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no "-0.0" for a unanimous image


def _with_majority(rows: pd.DataFrame) -> pd.DataFrame:
    """rows with each image's `majority` reading and whether each row `differs` from it."""
    rows = rows.drop(columns=[c for c in ("majority", "differs") if c in rows.columns])
    majority = rows.groupby(IMAGE_KEYS, sort=False)["reading"].agg(lambda s: _majority(list(s))).rename("majority")
    out = rows.join(majority, on=IMAGE_KEYS)
    out["differs"] = out["reading"] != out["majority"]
    return out


def image_sensitivity(frame: pd.DataFrame, prepared: bool = False) -> pd.DataFrame:
    """One row per (model, task, image): how its reading moves across the wordings it was asked in."""
    rows = frame if prepared else readings(frame)
    if rows.empty:
        return pd.DataFrame(columns=IMAGE_COLUMNS)
    rows = _with_majority(rows)
    out = []
    for key, group in rows.groupby(IMAGE_KEYS, sort=True):
        values = list(group["reading"])
        flipped = sorted(set(group.loc[group["differs"], "group"]))
        out.append(
            dict(
                zip(IMAGE_KEYS, key),
                label=group["label"].iloc[0],
                n_variants=len(values),
                majority=group["majority"].iloc[0],
                n_flipped=int(group["differs"].sum()),
                flip_share=float(group["differs"].mean()),
                entropy_bits=_entropy(values),
                flipped_by=", ".join(flipped),
                n_positive=values.count("positive"),
                n_negative=values.count("negative"),
                n_non_answer=values.count(NON_ANSWER),
            )
        )
    return pd.DataFrame(out, columns=IMAGE_COLUMNS)


def _rng(seed: int, key: tuple) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32("|".join(map(str, key)).encode())])


def _bootstrap_mean(values: np.ndarray, n_boot: int, rng: np.random.Generator, ci: float) -> tuple[float, float]:
    """Percentile CI of the mean of `values`, resampling them (images); NaN for fewer than 2."""
    if len(values) < 2 or n_boot < 1:
        return np.nan, np.nan
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1 - ci) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _per_image_family_share(rows: pd.DataFrame) -> pd.DataFrame:
    """(model, task, case_id, family) -> the share of that family's wordings on the image that differ from
    the image's majority; family "all" is every wording."""
    by_family = rows.groupby([*IMAGE_KEYS, "group"], sort=True)["differs"].agg(["mean", "size"]).reset_index()
    by_family = by_family.rename(columns={"group": "family", "mean": "share", "size": "n"})
    overall = rows.groupby(IMAGE_KEYS, sort=True)["differs"].agg(["mean", "size"]).reset_index()
    overall = overall.rename(columns={"mean": "share", "size": "n"})
    overall["family"] = ALL_FAMILIES
    return pd.concat([overall, by_family], ignore_index=True)


def family_sensitivity(
    frame: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, ci: float = 0.95, prepared: bool = False
) -> pd.DataFrame:
    """One row per (model, task, family) plus family "all": the mean flip share over images with its CI."""
    rows = frame if prepared else readings(frame)
    if rows.empty:
        return pd.DataFrame(columns=FAMILY_COLUMNS)
    rows = _with_majority(rows)
    shares = _per_image_family_share(rows)
    entropy = image_sensitivity(rows, prepared=True).set_index(IMAGE_KEYS)["entropy_bits"]
    out = []
    for (model, task, family), group in shares.groupby(["model", "task", "family"], sort=True):
        values = group["share"].to_numpy(dtype=float)
        lo, hi = _bootstrap_mean(values, n_boot, _rng(seed, (model, task, family)), ci)
        images = [tuple(k) for k in group[IMAGE_KEYS].itertuples(index=False)]
        out.append(
            dict(
                model=model,
                task=task,
                family=family,
                n_images=len(values),
                n_variants=int(group["n"].sum()),
                flip_share=float(values.mean()),
                flip_share_lo=lo,
                flip_share_hi=hi,
                images_flipped=float((values > 0).mean()),
                entropy_bits=float(entropy.loc[images].mean()) if family == ALL_FAMILIES else np.nan,
            )
        )
    result = pd.DataFrame(out, columns=FAMILY_COLUMNS)
    # "all" first within each (model, task), then the families by name.
    result["_order"] = result["family"] != ALL_FAMILIES
    return result.sort_values(["model", "task", "_order", "family"]).drop(columns="_order").reset_index(drop=True)


def pair_sensitivity(
    frame: pd.DataFrame,
    pairs: Any = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    ci: float = 0.95,
    prepared: bool = False,
) -> pd.DataFrame:
    """One row per (pair, task, family): base and medical mean flip shares on the images both answered
    with that family, and medical - base with a paired bootstrap CI (positive: medical is more sensitive)."""
    rows = frame if prepared else readings(frame)
    if rows.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    try:
        resolved = resolve_pairs(rows, pairs)
    except ValueError:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    shares = _per_image_family_share(_with_majority(rows))
    out = []
    for name, (base, medical) in sorted(resolved.items()):
        b = shares[shares["model"] == base].set_index(["task", "case_id", "family"])["share"]
        m = shares[shares["model"] == medical].set_index(["task", "case_id", "family"])["share"]
        both = pd.concat([b.rename("base"), m.rename("medical")], axis=1, join="inner").reset_index()
        for (task, family), group in both.groupby(["task", "family"], sort=True):
            diff = (group["medical"] - group["base"]).to_numpy(dtype=float)
            lo, hi = _bootstrap_mean(diff, n_boot, _rng(seed, (name, task, family)), ci)
            out.append(
                dict(
                    pair=name,
                    task=task,
                    family=family,
                    base_model=base,
                    medical_model=medical,
                    n_images=len(group),
                    base_flip_share=float(group["base"].mean()),
                    medical_flip_share=float(group["medical"].mean()),
                    difference=float(diff.mean()),
                    difference_lo=lo,
                    difference_hi=hi,
                )
            )
    return pd.DataFrame(out, columns=PAIR_COLUMNS)


def sensitivity_tables(
    frame: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, pairs: Optional[Any] = None
) -> dict[str, pd.DataFrame]:
    """The three tables as the metrics output and the exports name them."""
    images, families, pairs_name = SENSITIVITY_TABLES
    rows = readings(frame) if len(frame) else pd.DataFrame()
    if rows.empty:
        return {
            images: pd.DataFrame(columns=IMAGE_COLUMNS),
            families: pd.DataFrame(columns=FAMILY_COLUMNS),
            pairs_name: pd.DataFrame(columns=PAIR_COLUMNS),
        }
    return {
        images: image_sensitivity(rows, prepared=True),
        families: family_sensitivity(rows, n_boot, seed, prepared=True),
        pairs_name: pair_sensitivity(rows, pairs, n_boot, seed, prepared=True),
    }
