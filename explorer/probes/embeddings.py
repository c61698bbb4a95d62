"""Vision-encoder embeddings: do the two classes separate before any text is generated?

The study's features (src/tsne_analysis.py), per architecture:
  * LLaVA (CLIP tower): the vision tower's last hidden state, mean-pooled over all tokens (CLS
    included). LLaVA-NeXT: the first crop only, i.e. the base-resolution view the AnyRes processor
    puts before the tiles.
  * Gemma 3 (SigLIP): model.get_image_features (after the multimodal projector), mean-pooled.
Features come from the model and processor the TransformersBackend already loaded (no second
loading path) and are cached by (model identity, image hash) in an SQLite file beside the store.

Then: PCA to 50 dimensions and t-SNE (scikit-learn, perplexity 30, init "pca", random_state 42), and
a linear probe (standardise + logistic regression, stratified 5-fold CV) whose accuracy sits next to
the model's own closed-form accuracy on the same images. Everything returns plain DataFrames a plot or
a CSV can take.

Precision (`precision=`), because t-SNE coordinates follow the last bits of its input:
  study    (default) as the authors computed: the mean over tokens in the model's own dtype (bf16 on
           a GPU), then float32; PCA and t-SNE on float32; their small-set caps (PCA only when the
           features are wider than 50, to min(50, n-1) dimensions; perplexity min(30, max(5, n // 3))).
  float64  the mean in float32, PCA and t-SNE in float64, caps min(50, n, d) and (n - 1) / 3.
Both give the same picture; only `study` gives the authors' coordinates (given their images in their
order: datasets.embedding_cases reads the main branch of each dataset as their script did).
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from explorer.runs.store import utc_now
from explorer.schema import Case

FEATURES_VERSION = 1  # bump when the pooling below changes
PRECISIONS = ("study", "float64")
FEATURE_METHODS = {
    "llava_next": "vision_tower.last_hidden_state[first crop].mean(tokens)",
    "llava": "vision_tower.last_hidden_state.mean(tokens)",
    "gemma3": "get_image_features(projected).mean(tokens)",
}
COORD_COLUMNS = ["model", "task", "case_id", "image_hash", "label", "x", "y", "verdict"]
PROBE_COLUMNS = [
    "model",
    "task",
    "n",
    "n_positive",
    "n_negative",
    "folds",
    "probe_accuracy",
    "probe_ci_lo",
    "probe_ci_hi",
    "chance",
    "closed_accuracy_mean",
    "closed_accuracy_best",
    "closed_best_prompt",
    "closed_prompts",
    "closed_cases",
]
ProgressFn = Callable[[int, int], None]


# ------------------------------------------------------------------ the cache
def features_path_for(store_path: str | Path) -> Path:
    """Where a store's feature cache lives: <store stem>.features.sqlite beside it."""
    p = Path(store_path)
    return p.with_name(p.stem + ".features.sqlite")


class FeatureCache:
    """Pooled feature vectors keyed by (model key, image hash) in a small SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS features (model_key TEXT NOT NULL, image_hash TEXT NOT NULL, "
                "model_identity TEXT NOT NULL, method TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL, "
                "created_at TEXT NOT NULL, PRIMARY KEY (model_key, image_hash))"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            self._local.conn = conn
        return conn

    def get(self, model_key: str, image_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        conn = self._conn()
        wanted = list(dict.fromkeys(image_hashes))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = conn.execute(
                f"SELECT image_hash, vector FROM features WHERE model_key = ? AND image_hash IN ({','.join('?' * len(chunk))})",
                [model_key, *chunk],
            )
            for image_hash, blob in rows:
                found[image_hash] = np.load(io.BytesIO(blob), allow_pickle=False)
        return found

    def put(self, model_key: str, identity: dict, method: str, vectors: dict[str, np.ndarray]) -> None:
        records = []
        for image_hash, vec in vectors.items():
            buf = io.BytesIO()
            np.save(buf, np.asarray(vec, dtype=np.float32), allow_pickle=False)
            records.append(
                (
                    model_key,
                    image_hash,
                    json.dumps(identity, sort_keys=True, default=str),
                    method,
                    int(np.asarray(vec).size),
                    buf.getvalue(),
                    utc_now(),
                )
            )
        with self._conn() as conn:  # one transaction, committed on exit
            conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?, ?, ?)", records)

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM features").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# ------------------------------------------------------------------ extraction
def _architecture(model: Any) -> str:
    kind = getattr(model.config, "model_type", "")
    if kind not in FEATURE_METHODS:
        raise ValueError(f"no vision-feature recipe for model type {kind!r}; known: {', '.join(FEATURE_METHODS)}")
    return kind


def _vision_tower(model: Any) -> Any:
    tower = getattr(model, "vision_tower", None)
    if tower is None and hasattr(model, "model"):
        tower = getattr(model.model, "vision_tower", None)
    if tower is None:
        raise ValueError(f"{type(model).__name__} has no vision_tower")
    return tower


def pooled_batch(model: Any, processor: Any, images: Sequence[Any], precision: str = "study") -> np.ndarray:
    """(len(images), dim) float32 pooled vision features of one loaded model, per the study's recipe.

    precision "study": averaged in the model's dtype, then cast (the authors' .mean().float());
    "float64": cast first, then averaged (the float32 mean; the t-SNE side goes to float64).
    """
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    kind = _architecture(model)
    image_processor = getattr(processor, "image_processor", processor)
    options = {"do_pan_and_scan": False} if kind == "gemma3" else {}  # one view per image, as the study ran it
    pixels = image_processor(images=list(images), return_tensors="pt", **options)["pixel_values"]
    with torch.inference_mode():
        if kind == "gemma3":
            param = next(model.parameters())
            out = model.get_image_features(pixel_values=pixels.to(param.device, dtype=param.dtype))
            # transformers 5 returns an output object (projected features in pooler_output); 4.x a tensor.
            feats = out if torch.is_tensor(out) else out.pooler_output
        else:
            tower = _vision_tower(model)
            param = next(tower.parameters())
            if pixels.ndim == 5:  # LLaVA-NeXT: (batch, views, C, H, W); view 0 is the base-resolution image
                pixels = pixels[:, 0]
            feats = tower(pixels.to(param.device, dtype=param.dtype)).last_hidden_state
        pooled = feats.mean(dim=1).float() if precision == "study" else feats.float().mean(dim=1)
    return pooled.cpu().numpy().astype(np.float32)


def feature_identity(backend: Any, alias: str, kind: str, precision: str = "study") -> dict[str, Any]:
    ident = {"model": backend.identity(alias), "method": FEATURE_METHODS[kind], "version": FEATURES_VERSION}
    if precision != "float64":  # the float64 variant keeps the keys its vectors were cached under before
        ident["pooling"] = "mean in the model dtype, then float32"
    return ident


def vision_features(
    backend: Any,
    alias: str,
    cases: Sequence[Case],
    *,
    cache: Optional[FeatureCache] = None,
    batch_size: int = 8,
    progress: Optional[ProgressFn] = None,
    precision: str = "study",
) -> np.ndarray:
    """Pooled features of each case's image (rows in the cases' order), through the backend's loaded model.

    backend: a TransformersBackend (its load(alias) gives the model and processor). Cached vectors are
    served by (model identity, image hash); only the missing images are run through the model.
    """
    lm = backend.load(alias)
    kind = _architecture(lm.model)
    identity = feature_identity(backend, alias, kind, precision)
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    hashes = [c.image_hash for c in cases]
    have = cache.get(key, hashes) if cache is not None else {}
    missing: dict[str, Any] = {}
    for case in cases:
        if case.image_hash not in have and case.image_hash not in missing:
            missing[case.image_hash] = case.image
    todo = list(missing.items())
    done = len(set(hashes)) - len(todo)
    for start in range(0, len(todo), max(1, batch_size)):
        chunk = todo[start : start + batch_size]
        vectors = pooled_batch(lm.model, lm.processor, [img for _, img in chunk], precision)
        new = {h: v for (h, _), v in zip(chunk, vectors)}
        if cache is not None:
            cache.put(key, identity, FEATURE_METHODS[kind], new)  # committed per batch: an interrupted run keeps them
        have.update(new)
        done += len(chunk)
        if progress is not None:
            progress(done, len(set(hashes)))
    return np.stack([have[h] for h in hashes]) if hashes else np.zeros((0, 0), dtype=np.float32)


# ------------------------------------------------------------------ t-SNE
def tsne_coordinates(
    features: np.ndarray,
    pca_dims: int = 50,
    perplexity: float = 30.0,
    seed: int = 42,
    precision: str = "study",
) -> tuple[np.ndarray, list[str]]:
    """(n, 2) t-SNE coordinates after PCA, and notices about settings lowered for a small set."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {' or '.join(PRECISIONS)}")
    X = np.asarray(features, dtype=np.float32 if precision == "study" else np.float64)
    n, d = X.shape if X.ndim == 2 else (len(X), 0)
    notices: list[str] = []
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 images, got {n}")
    if precision == "study":
        # src/tsne_analysis.py: PCA only when wider than pca_dims, to min(pca_dims, n - 1) dimensions.
        k = min(pca_dims, n - 1) if d > pca_dims else d
        used = float(min(perplexity, max(5, n // 3)))
    else:
        k = min(pca_dims, n, d)
        used = float(perplexity)
    if k < d:
        if k < pca_dims:
            notices.append(f"PCA to {k} dimensions instead of {pca_dims} ({n} points, {d} dimensions)")
        X = PCA(n_components=k, random_state=seed).fit_transform(X)
    limit = (n - 1) / 3
    if used > limit and (precision == "float64" or used >= n):
        # The study's floor of 5 is kept while scikit-learn accepts it (perplexity < n).
        used = limit
    if used != float(perplexity):
        notices.append(f"t-SNE perplexity lowered from {perplexity:g} to {used:.2f} for {n} points")
    coords = TSNE(n_components=2, perplexity=used, init="pca", learning_rate="auto", random_state=seed).fit_transform(X)
    return coords, notices


# ------------------------------------------------------------------ linear probe
@dataclass
class ProbeResult:
    accuracy: float
    ci_lo: float
    ci_hi: float
    folds: int
    fold_accuracies: list[float]
    n: int
    n_positive: int
    n_negative: int
    chance: float  # the majority-class rate: what always guessing one class scores
    notices: list[str] = field(default_factory=list)


def linear_probe(features: np.ndarray, labels: Sequence[Any], folds: int = 5, seed: int = 42) -> ProbeResult:
    """Stratified k-fold CV accuracy of standardise + logistic regression; mean and a 95% t-interval over folds.

    labels: "positive"/"negative" (or any two values). Fewer folds (with a notice) when a class has
    fewer members than folds; NaN with a notice when a class has fewer than 2.
    """
    from scipy import stats
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray([str(v) for v in labels])
    values, counts = np.unique(y, return_counts=True)
    n_pos = int((y == "positive").sum())
    result = ProbeResult(
        np.nan, np.nan, np.nan, 0, [], len(y), n_pos, len(y) - n_pos, float(counts.max() / len(y)) if len(y) else np.nan
    )
    if len(values) != 2 or counts.min() < 2:
        result.notices.append(
            f"linear probe needs two classes with at least 2 images each; got {dict(zip(values, counts))}"
        )
        return result
    k = int(min(folds, counts.min()))
    if k < folds:
        result.notices.append(
            f"linear probe: {k}-fold CV instead of {folds} (smallest class has {counts.min()} images)"
        )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    scores = cross_val_score(
        model, X, y, cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed), scoring="accuracy"
    )
    mean = float(scores.mean())
    half = float(stats.t.ppf(0.975, k - 1) * scores.std(ddof=1) / np.sqrt(k)) if k > 1 else np.nan
    result.accuracy, result.folds, result.fold_accuracies = mean, k, [float(s) for s in scores]
    result.ci_lo, result.ci_hi = max(0.0, mean - half), min(1.0, mean + half)
    return result


# ------------------------------------------------------------------ the model's own answers
def closed_form_accuracy(
    answers: Optional[pd.DataFrame], model: str, task: str, image_hashes: Sequence[str]
) -> pd.DataFrame:
    """Per closed-form prompt: the model's accuracy (answered rows) and F1_all on these images.

    answers: Store.answers_frame rows; cases are matched by image hash. Empty when none match.
    """
    from explorer.analysis.metrics import cell_metrics

    cols = ["prompt_id", "accuracy", "accuracy_all", "f1_all", "n"]
    if answers is None or answers.empty:
        return pd.DataFrame(columns=cols)
    rows = answers[
        (answers["model"] == model)
        & (answers["task"] == task)
        & answers["image_hash"].isin(set(image_hashes))
        & answers["verdict"].notna()
        & answers["label"].notna()
    ]
    if "prompt_kind" in rows.columns:
        rows = rows[rows["prompt_kind"].fillna("closed") == "closed"]
    if "custom" in rows.columns:  # the study's wordings only: one a user typed in Compare is not the model's accuracy
        rows = rows[~rows["custom"].fillna(0).astype(bool)]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows = rows.drop_duplicates(["prompt_id", "image_hash"], keep="last").assign(case_id=lambda f: f["image_hash"])
    return cell_metrics(rows, n_boot=0)[cols].reset_index(drop=True)


def _verdicts(answers: Optional[pd.DataFrame], model: str, task: str, prompt_id: Optional[str]) -> dict[str, str]:
    if answers is None or answers.empty or not prompt_id:
        return {}
    rows = answers[
        (answers["model"] == model)
        & (answers["task"] == task)
        & (answers["prompt_id"] == prompt_id)
        & answers["verdict"].notna()
    ]
    return dict(zip(rows["image_hash"], rows["verdict"]))


# ------------------------------------------------------------------ the whole analysis
@dataclass
class EmbeddingAnalysis:
    coords: pd.DataFrame  # COORD_COLUMNS: one row per (model, case)
    probes: pd.DataFrame  # PROBE_COLUMNS: one row per model
    notices: list[str] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)  # model -> (n, dim)


def analyse(
    backend: Any,  # a TransformersBackend, or a function alias -> backend (e.g. BackendRegistry.for_model)
    models: Sequence[str],
    task: str,
    cases: Sequence[Case],
    *,
    answers: Optional[pd.DataFrame] = None,
    verdict_prompt: Optional[str] = None,
    cache: Optional[FeatureCache] = None,
    pca_dims: int = 50,
    perplexity: float = 30.0,
    seed: int = 42,
    folds: int = 5,
    batch_size: int = 8,
    progress: Optional[Callable[[str, int, int], None]] = None,
    precision: str = "study",
) -> EmbeddingAnalysis:
    """Features, t-SNE and a linear probe for each model on one task's cases.

    answers: a Store.answers_frame for the closed-form accuracy beside the probe and the `verdict`
    column (the verdict of verdict_prompt on each image). A model that cannot be loaded or run gets a
    notice and no rows; the others go on.
    """
    cases = list(cases)
    resolve = backend if callable(backend) and not hasattr(backend, "load") else (lambda _alias: backend)
    coords, probes, notices, feats = [], [], [], {}
    for alias in models:
        try:
            model_backend = resolve(alias)
            if not hasattr(model_backend, "load"):
                raise ValueError(
                    "vision features need a locally loaded model (transformers backend), "
                    f"not the {getattr(model_backend, 'name', 'remote')} backend"
                )
            X = vision_features(
                model_backend,
                alias,
                cases,
                cache=cache,
                batch_size=batch_size,
                progress=(lambda d, t, a=alias: progress(a, d, t)) if progress else None,
                precision=precision,
            )
            xy, tsne_notes = tsne_coordinates(X, pca_dims, perplexity, seed, precision)
        except Exception as exc:  # noqa: BLE001 - one model's failure is reported, the rest still run
            notices.append(f"{alias}: {type(exc).__name__}: {exc}")
            continue
        feats[alias] = X
        notices += [f"{alias}: {n}" for n in tsne_notes]
        verdicts = _verdicts(answers, alias, task, verdict_prompt)
        for case, (x, y) in zip(cases, xy):
            coords.append(
                dict(
                    model=alias,
                    task=task,
                    case_id=case.case_id,
                    image_hash=case.image_hash,
                    label=case.label,
                    x=float(x),
                    y=float(y),
                    verdict=verdicts.get(case.image_hash),
                )
            )
        labelled = [i for i, c in enumerate(cases) if c.label in ("positive", "negative")]
        probe = linear_probe(X[labelled], [cases[i].label for i in labelled], folds, seed)
        notices += [f"{alias}: {n}" for n in probe.notices]
        closed = closed_form_accuracy(answers, alias, task, [cases[i].image_hash for i in labelled])
        best = closed.loc[closed["accuracy"].idxmax()] if closed["accuracy"].notna().any() else None
        probes.append(
            dict(
                model=alias,
                task=task,
                n=probe.n,
                n_positive=probe.n_positive,
                n_negative=probe.n_negative,
                folds=probe.folds,
                probe_accuracy=probe.accuracy,
                probe_ci_lo=probe.ci_lo,
                probe_ci_hi=probe.ci_hi,
                chance=probe.chance,
                closed_accuracy_mean=float(closed["accuracy"].mean()) if len(closed) else np.nan,
                closed_accuracy_best=float(best["accuracy"]) if best is not None else np.nan,
                closed_best_prompt=best["prompt_id"] if best is not None else None,
                closed_prompts=len(closed),
                closed_cases=int(closed["n"].max()) if len(closed) else 0,
            )
        )
    return EmbeddingAnalysis(
        pd.DataFrame(coords, columns=COORD_COLUMNS), pd.DataFrame(probes, columns=PROBE_COLUMNS), notices, feats
    )


def format_probes(probes: pd.DataFrame) -> str:
    if probes.empty:
        return "(no models could be analysed)"
    shown = probes[
        [
            "model",
            "task",
            "n",
            "folds",
            "probe_accuracy",
            "probe_ci_lo",
            "probe_ci_hi",
            "chance",
            "closed_accuracy_mean",
            "closed_accuracy_best",
            "closed_best_prompt",
            "closed_cases",
        ]
    ]
    return shown.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
