"""Facade methods for the probes of knowledge the closed-form answers miss (mixed into service.Explorer).

Describe -> diagnose (explorer/probes/describe.py) for one case or for a sweep's stored descriptions, and
vision-encoder embeddings -> t-SNE + linear probe (explorer/probes/embeddings.py) for a task's cases. Each
method returns plain data (DataFrames, dataclasses, plotly figures) the app and tests can read.
The host class provides catalog, preset, store, registry, policy, variants, example_cases, sweep_spec,
sweep and _generate_lock (one generation at a time across the whole app).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from html import escape
from typing import Any, Callable, Iterable, Optional, Sequence

import pandas as pd

from explorer.cases import hub as datasets
from explorer.probes import describe as D
from explorer.probes import diagnosers as DX
from explorer.probes import embeddings as E
from explorer.schema import Case
from explorer.service.public import PolicyError

StageProgress = Callable[[str, int, int], None]  # (stage, done, total)
CASE_SOURCES = ("samples", "answered", "huggingface")


@dataclass
class CaseDiagnosis:
    """One case: each model's descriptions and the text model's diagnosis of each, per template."""

    case: Case
    descriptions: pd.DataFrame  # model, prompt_id, prompt_text, description, error, cached
    diagnoses: pd.DataFrame  # describe.DIAGNOSIS_COLUMNS + correct (True/False/None)
    diagnoser: str
    summary: D.DiagnoseSummary
    random_weights: bool


@dataclass
class SweepDiagnosis:
    """A sweep's descriptions diagnosed: the metrics table and its per model x task summary."""

    run_id: Optional[str]
    diagnoses: pd.DataFrame
    metrics: pd.DataFrame  # describe.METRIC_COLUMNS
    recovered: pd.DataFrame  # describe.recovered_summary
    summary: D.DiagnoseSummary
    diagnoser: str
    random_weights: bool
    sweep: Any = None  # the SweepSummary when descriptions were generated first
    notices: list[str] = field(default_factory=list)


@dataclass
class EmbeddingView:
    task: str
    models: list[str]
    points: pd.DataFrame  # embeddings.COORD_COLUMNS + hover_html (the model's answers on that image)
    probes: pd.DataFrame  # embeddings.PROBE_COLUMNS
    figure: Any  # plotly Figure
    notices: list[str]
    n_cases: int
    random_weights: bool
    perplexity_lowered: bool


def _correct(parsed: Any, label: Any) -> Optional[bool]:
    if parsed not in ("yes", "no") or label not in ("positive", "negative"):
        return None
    return (parsed == "yes") == (label == "positive")


def _with_correct(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["correct"] = [_correct(p, lab) for p, lab in zip(frame["parsed"], frame["label"])]
    return frame


class ProbeActions:
    """Mixin for service.Explorer: describe-and-diagnose and embedding probes."""

    # ------------------------------------------------------------ the diagnoser
    def diagnoser_options(self) -> list[tuple[str, str]]:
        """(label, choice) pairs: the study's gpt-5.1 (Responses API) when OPENAI_API_KEY is set, and the
        offline random-weight text model, whose Yes/No is noise."""
        run = self.preset.describe
        remote = f"openai:{run.model}" if run.api != "transformers" else "openai:gpt-5.1"
        options = [("offline text model with random weights: its diagnoses are noise", "demo")]
        if os.environ.get("OPENAI_API_KEY"):
            option = (
                f"{remote[len('openai:') :]} via the OpenAI {'Responses' if run.api != 'chat' else 'Chat'} API "
                "(the study's diagnoser)",
                remote,
            )
            # The preset's own diagnoser first: the study's gpt-5.1 for "paper", the offline model for "demo".
            options = [option, *options] if run.api != "transformers" else [*options, option]
        return options

    @staticmethod
    def diagnoser_is_noise(choice: str) -> bool:
        return choice == "demo"

    def diagnoser(self, choice: str):
        """A diagnoser, built once per choice and kept (the local one holds a loaded model)."""
        cache = self.__dict__.setdefault("_diagnosers", {})
        allowed = {c for _, c in self.diagnoser_options()}
        if choice not in allowed:
            raise ValueError(f"Unknown diagnoser {choice!r}; choose one of: {', '.join(sorted(allowed))}.")
        with self.__dict__.setdefault("_diagnosers_lock", threading.Lock()):  # sessions share one per choice
            if choice not in cache:
                run = self.preset.describe
                options = {}
                if choice.startswith("openai:") and run.api != "transformers":
                    options = {
                        "api": run.api,
                        "reasoning_effort": run.reasoning_effort,
                        "max_output_tokens": run.max_output_tokens,
                    }
                cache[choice] = DX.diagnoser_from_arg(choice, self.catalog, run, **options)
            return cache[choice]

    def close_diagnosers(self) -> None:
        for d in self.__dict__.pop("_diagnosers", {}).values():
            d.close()

    def _diagnose(self, answers: Sequence[dict], choice: str, templates, progress, cancel) -> tuple:
        diagnoser = self.diagnoser(choice)
        names = list(templates) if templates else D.template_names(self.catalog)
        if not names:
            raise ValueError("Choose at least one diagnosis template.")
        described = [a for a in answers if (a.get("prompt_kind") or "closed") == "describe" and a.get("error") is None]
        self.policy.check_sweep(len(described) * len(names))  # a public demo bounds paid API calls too
        tick = (lambda d, t, _info: progress("diagnoses", d, t)) if progress else None
        with self._generate_lock:  # a local diagnoser shares the machine with the VLMs
            summary = D.diagnose_descriptions(
                self.store,
                diagnoser,
                self.catalog,
                answers,
                names,
                progress=tick,
                cancel=cancel,
                prompt_set=self.preset.prompts.prompt_set,
            )
        return diagnoser, summary, D.diagnoses_frame(self.store, answers, summary.diagnoser_key)

    # ------------------------------------------------------------ describe -> diagnose
    def describe_case(
        self,
        case: Case,
        models: Sequence[str],
        diagnoser: str = "demo",
        templates: Optional[Sequence[str]] = None,
        prompt_style: Optional[str] = None,
        progress: Optional[StageProgress] = None,
    ) -> CaseDiagnosis:
        """Each model describes the case (both description prompts; stored, cached), then the text model
        diagnoses each description with each template."""
        from explorer.runs.sweep import plan_sweep, run_sweep

        models = list(models or [])
        if not models:
            raise ValueError("Choose at least one model.")
        self.policy.check_models(models)
        variants = [v for v in self.variants(case.task) if v.kind == "describe"]
        plan = plan_sweep(
            self.catalog,
            models,
            [case.task],
            {case.task: [case]},
            {case.task: variants},
            prompt_style or self.preset.prompt_format,
        )
        rows: list[dict] = []
        with self._generate_lock:
            sweep = run_sweep(
                plan,
                self.registry.for_model,
                self.store,
                batch_size=self.batch_size,
                on_item=lambda item, row: rows.append(dict(row, case_id=case.case_id, label=case.label)),
                progress=(lambda d, t, _i: progress("descriptions", d, t)) if progress else None,
            )
        described = pd.DataFrame(
            [
                {
                    "model": r["model"],
                    "prompt_id": r["prompt_id"],
                    "prompt_text": r["prompt_text"],
                    "description": r.get("answer") or "",
                    "error": r.get("error"),
                    "cached": bool(r.get("cached")),
                }
                for r in rows
            ],
            columns=["model", "prompt_id", "prompt_text", "description", "error", "cached"],
        )
        d, summary, frame = self._diagnose(rows, diagnoser, templates, progress, None)
        summary.notices += [f"{alias} could not describe it: {why}" for alias, why in sweep.failures.items()]
        return CaseDiagnosis(
            case,
            described,
            _with_correct(frame),
            d.label,
            summary,
            self.any_random_weights(models) or self.diagnoser_is_noise(diagnoser),
        )

    def description_runs(self, own_runs: Optional[Iterable[str]] = None) -> pd.DataFrame:
        """Runs that hold description answers, newest first: run_id, created_at, models, tasks, cases, n.

        In public mode only own_runs (the runs this visitor started) are listed: the others are other
        visitors' (their descriptions may be of images they uploaded)."""
        rows = self.store.fetch_all(
            "SELECT ri.run_id AS run_id, r.created_at AS created_at, GROUP_CONCAT(DISTINCT ri.model) AS models, "
            "GROUP_CONCAT(DISTINCT ri.task) AS tasks, COUNT(DISTINCT ri.case_id) AS cases, COUNT(*) AS n "
            "FROM run_items ri JOIN answers a ON a.id = ri.answer_id JOIN runs r ON r.run_id = ri.run_id "
            "WHERE a.prompt_kind = 'describe' GROUP BY ri.run_id ORDER BY r.created_at DESC"
        )
        frame = pd.DataFrame(rows, columns=["run_id", "created_at", "models", "tasks", "cases", "n"])
        if self.policy.enabled:
            frame = frame[frame["run_id"].isin(list(own_runs or ()))].reset_index(drop=True)
        return frame

    def _check_own_run(self, run_id: Optional[str], own_runs: Optional[Iterable[str]]) -> None:
        """Public mode: only a run this visitor started may be diagnosed and measured."""
        if self.policy.enabled and (run_id is None or run_id not in set(own_runs or ())):
            raise PolicyError(
                "This public demo diagnoses only the describe runs you started in this session: "
                "run a describe sweep first."
            )

    def diagnose_run(
        self,
        run_id: Optional[str] = None,
        diagnoser: str = "demo",
        templates: Optional[Sequence[str]] = None,
        progress: Optional[StageProgress] = None,
        cancel: Optional[threading.Event] = None,
        sweep_summary: Any = None,
        own_runs: Optional[Iterable[str]] = None,
    ) -> SweepDiagnosis:
        """Diagnose a run's stored descriptions (run_id None: every stored description) and measure them
        against the same models' closed-form F1_all on the same images. In public mode run_id must be
        one of own_runs (see description_runs)."""
        self._check_own_run(run_id, own_runs)
        answers = D.description_answers(self.store, run_id=run_id)
        if not answers:
            raise ValueError(
                "No stored descriptions" + (f" in run {run_id}" if run_id else "") + ": run a describe sweep first."
            )
        d, summary, frame = self._diagnose(answers, diagnoser, templates, progress, cancel)
        models = sorted({a["model"] for a in answers})
        tasks = sorted({a["task"] for a in answers})
        filters = dict(model=models, task=tasks, prompt_kind="closed", include_errors=False)
        closed = self.store.answers_frame(catalog=self.catalog, run_id=run_id, **filters) if run_id else None
        if closed is None or closed.empty:  # a descriptions-only run: closed answers from the whole store
            closed = self.store.answers_frame(catalog=self.catalog, **filters)
        table = D.describe_metrics(frame, closed)
        notices = list(summary.notices)
        if summary.cancelled:
            notices.append("Cancelled: the diagnoses made so far are stored and counted; run it again to finish.")
        if table["closed_f1_all"].isna().all() and len(table):
            notices.append(
                "No closed-form answers on these images: signal recovered needs them (describe with "
                "the closed-form prompts too)."
            )
        return SweepDiagnosis(
            run_id,
            _with_correct(frame),
            table,
            D.recovered_summary(table),
            summary,
            d.label,
            self.any_random_weights(models) or self.diagnoser_is_noise(diagnoser),
            sweep_summary,
            notices,
        )

    def describe_sweep(
        self,
        models: Sequence[str],
        tasks: Sequence[str],
        per_class: Optional[int] = None,
        with_closed: bool = True,
        diagnoser: str = "demo",
        templates: Optional[Sequence[str]] = None,
        prompt_style: Optional[str] = None,
        progress: Optional[StageProgress] = None,
        cancel: Optional[threading.Event] = None,
    ) -> SweepDiagnosis:
        """A sweep of the description prompts (and the closed-form ones, for signal recovered), then its
        descriptions diagnosed. Resumable like every sweep: answers already stored are not redone."""
        prompt_ids = None if with_closed else ("describe", "describe_dx")
        spec = self.sweep_spec(
            models=list(models or []),
            tasks=list(tasks or []),
            describe=True,
            prompt_ids=prompt_ids,
            per_class=per_class,
            prompt_style=prompt_style,
        )
        if not spec.models or not spec.tasks:
            raise ValueError("Choose at least one model and one task.")
        summary = self.sweep(
            spec, progress=(lambda d, t, _i: progress("answers", d, t)) if progress else None, cancel=cancel
        )
        if summary.cancelled:
            raise ValueError("Cancelled: the answers so far are stored; run it again to resume.")
        return self.diagnose_run(
            summary.run_id, diagnoser, templates, progress, cancel, sweep_summary=summary, own_runs=[summary.run_id]
        )

    # ------------------------------------------------------------ embeddings
    def embedding_cases(self, task: str, source: str = "samples") -> list[Case]:
        """The task's sample images ("samples"), those the store holds closed-form answers for
        ("answered": probe and model compared on exactly the cases the model answered), or the study's
        embedding sample from its Hugging Face dataset ("huggingface")."""
        self.catalog.task(task)
        if source not in CASE_SOURCES:
            raise ValueError(f"Unknown case source {source!r}; choose one of {', '.join(CASE_SOURCES)}.")
        if source == "huggingface":  # the study's own embedding sample (300 per class; downloads the dataset)
            settings = self.preset.embeddings
            report = datasets.embedding_cases(
                task, per_class=settings.per_class, seed=settings.seed, frontal_only=settings.frontal_only
            )
            return list(report.cases)
        cases = list(self.example_cases(task))
        if not cases:
            raise ValueError(
                f"No sample images for task {task!r}: start the app with --samples DIR "
                "(a folder with class subfolders per task), or use the study's Hugging Face sample."
            )
        if source == "answered":
            rows = self.store.fetch_all(
                "SELECT DISTINCT image_hash FROM answers WHERE task = ? AND prompt_kind = 'closed' AND error IS NULL",
                (task,),
            )
            answered = {r["image_hash"] for r in rows}
            cases = [c for c in cases if c.image_hash in answered]
            if not cases:
                raise ValueError(
                    f"The store has no closed-form answers on the {task} sample images yet: "
                    "run a sweep, or use the sample images."
                )
        return cases

    def _ask_verdicts(
        self, task: str, models: Sequence[str], cases: Sequence[Case], prompt_id: str, progress: Optional[StageProgress]
    ) -> None:
        """The verdict prompt on every case (stored answers come back at once), so each point has a verdict
        and the probe has the model's own accuracy beside it."""
        from explorer.runs.sweep import plan_sweep, run_sweep

        variant = self.variant(task, prompt_id)
        plan = plan_sweep(
            self.catalog, list(models), [task], {task: list(cases)}, {task: [variant]}, self.preset.prompt_format
        )
        self.policy.check_sweep(plan)
        with self._generate_lock:
            run_sweep(
                plan,
                self.registry.for_model,
                self.store,
                batch_size=self.batch_size,
                progress=(lambda d, t, _i: progress("answers", d, t)) if progress else None,
            )

    def embedding_probe(
        self,
        task: str,
        models: Sequence[str],
        source: str = "samples",
        cases: Optional[Sequence[Case]] = None,
        verdict_prompt: str = "evidence",
        ask_verdicts: bool = True,
        progress: Optional[StageProgress] = None,
    ) -> EmbeddingView:
        """Pooled vision features -> PCA -> t-SNE and a CV linear probe per model, beside the model's own
        closed-form accuracy on the same cases; the scatter is coloured by class, marked by verdict."""
        from explorer.analysis import plots

        models = list(models or [])
        if not models:
            raise ValueError("Choose at least one model.")
        self.policy.check_models(models)
        cases = list(cases) if cases is not None else self.embedding_cases(task, source)
        self.policy.check_sweep(len(cases) * len(models))  # one forward pass per image and model
        if len(cases) < 3:
            raise ValueError(f"t-SNE needs at least 3 images; {task} has {len(cases)}.")
        if ask_verdicts and verdict_prompt:
            self._ask_verdicts(task, models, cases, verdict_prompt, progress)
        answers = self.store.answers_frame(catalog=self.catalog, task=task, include_errors=False)
        settings = self.preset.embeddings
        cache = E.FeatureCache(E.features_path_for(self.store.path))
        try:
            with self._generate_lock:
                result = E.analyse(
                    self.registry.for_model,
                    models,
                    task,
                    cases,
                    answers=answers,
                    verdict_prompt=verdict_prompt,
                    cache=cache,
                    pca_dims=settings.pca_dims,
                    perplexity=settings.perplexity,
                    seed=settings.seed,
                    precision=settings.precision,
                    progress=(lambda a, d, t: progress(f"features {a}", d, t)) if progress else None,
                )
        finally:
            cache.close()
        points = result.coords.assign(
            hover_html=[
                _answers_text(answers, m, h) for m, h in zip(result.coords["model"], result.coords["image_hash"])
            ]
        )
        figure = plots.tsne_scatter(points, self.catalog)
        return EmbeddingView(
            task,
            models,
            points,
            result.probes,
            figure,
            result.notices,
            len(cases),
            self.any_random_weights(models),
            any("perplexity lowered" in n for n in result.notices),
        )


def _answers_text(answers: pd.DataFrame, model: str, image_hash: str, width: int = 70) -> str:
    """The model's stored closed-form answers on one image, one "prompt: verdict, answer" line each (HTML)."""
    if answers is None or answers.empty:
        return "no answers stored"
    rows = answers[
        (answers["model"] == model)
        & (answers["image_hash"] == image_hash)
        & (answers["prompt_kind"].fillna("closed") == "closed")
    ].drop_duplicates("prompt_id", keep="last")
    lines = []
    for r in rows.sort_values("prompt_id").itertuples():
        text = " ".join(str(r.answer or "").split())
        text = text if len(text) <= width else text[: width - 1] + "…"
        lines.append(f"{escape(str(r.prompt_id))}: <b>{escape(str(r.verdict or '?'))}</b> · {escape(text)}")
    return "<br>".join(lines) or "no answers stored"
