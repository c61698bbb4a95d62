"""The engine facade that the app and the CLI both call.

It holds what is shared across users (the catalog, the results store, loaded models) and turns
single-case questions into tiny sweeps, so a live compare, a variant grid and a full study all
go through one code path: plan -> backend -> verdict -> store. Per-user state lives in the caller.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import pandas as pd

from explorer.cases import hub as datasets
from explorer.cases.folders import is_upload
from explorer.catalog.presets import Catalog, ModelSpec, PresetError, StudyPreset, load_catalog
from explorer.models.availability import Availability, model_availability
from explorer.models.backends.base import LOCAL_DEVICE
from explorer.models.backends.registry import BackendRegistry, load_endpoints
from explorer.models.gates import GenerationGates
from explorer.prompts import variants as prompts
from explorer.runs.bounded_read import ReadLimits, public_limits
from explorer.runs.running_sweeps import RunningSweeps, SweepHandle
from explorer.runs.store import Store, variant_from_row
from explorer.runs.sweep import (
    SweepSpec,
    SweepSummary,
    plan_from_spec,
    plan_sweep,
    run_sweep,
    shard_plan,
    short_classes,
)
from explorer.schema import Case, GenerationSettings, PromptVariant
from explorer.scoring.verdicts import is_rules_method, parse_verdict
from explorer.service.probes import ProbeActions
from explorer.service.public import PublicPolicy

DEFAULT_STORE = Path("runs") / "explorer.sqlite"
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_samples_dir() -> Optional[Path]:
    """The sample images beside a checkout (../shared/samples), when they are there."""
    candidate = REPO_ROOT.parent / "shared" / "samples"
    return candidate if candidate.is_dir() else None


@dataclass(frozen=True)
class AnswerView:
    """One model's answer to one prompt on one case, as a person reads it."""

    model: str
    title: str
    pair: str
    role: str
    prompt_id: str
    prompt_text: str
    answer: str
    verdict: str
    evidence: str
    span: Optional[tuple[int, int]]
    correct: Optional[bool]
    label: Optional[str]
    latency_s: Optional[float]
    cached: bool
    error: Optional[str]
    p_positive: Optional[float]
    random_weights: bool
    verdict_detail: str = ""
    task: str = ""
    case_id: str = ""
    image_hash: str = ""
    spans: tuple = ()  # every span behind the verdict: both sides of a hedge's conflict


def _conflict_spans(row: dict, verdict: str) -> tuple:
    """Both sides of a rule-read hedge (the store keeps one span; the reader finds both again)."""
    if verdict != "hedge" or not is_rules_method(row.get("verdict_method")) or not row.get("answer"):
        return ()
    return parse_verdict(row["answer"], variant_from_row(row)).spans


class Explorer(ProbeActions):
    def __init__(
        self,
        preset: str | StudyPreset = "demo",
        store_path: str | Path = DEFAULT_STORE,
        samples_dir: Optional[str | Path] = None,
        public: bool = False,
        catalog: Optional[Catalog] = None,
        endpoints: Optional[dict] = None,
        batch_size: int = 12,
        backend_options: Optional[dict] = None,
        gpu_concurrency: int = 1,
        model_concurrency: int = 1,
    ):
        """backend_options go to the local transformers backend: device, dtype, reuse, memory_budget,
        quantization (see TransformersBackend). gpu_concurrency: generate calls at once on the local
        device; model_concurrency: at once per model (endpoints use their own max_concurrency)."""
        self.catalog = catalog or load_catalog()
        self.preset = preset if isinstance(preset, StudyPreset) else self.catalog.study(preset)
        self.samples_dir = Path(samples_dir) if samples_dir else None
        self.public = public
        # The limits come from the environment; `public` (a --public flag) can switch them on too.
        self.policy = replace(PublicPolicy.from_env(self.preset), enabled=public)
        self.batch_size = batch_size
        self.store = Store(store_path)
        # Endpoints are the operator's configuration (a file or EXPLORER_ENDPOINTS), never a visitor's.
        self.registry = BackendRegistry(
            self.catalog, endpoints if endpoints is not None else load_endpoints(), **(backend_options or {})
        )
        # Models are shared by every session. There is no app-wide lock: stored answers never wait,
        # and generation is bounded per device and per model (memory), from the settings.
        self.gates = GenerationGates(gpu_concurrency, model_concurrency)
        # The probes (embeddings, a local diagnoser) hold one slot of the local device.
        self._generate_lock = self.gates.device(LOCAL_DEVICE)
        # App sweeps by visitor: a reload finds its sweep again; public mode runs one per visitor.
        self.app_sweeps = RunningSweeps(per_owner=1 if self.policy.enabled else None)
        self._examples: dict[str, list[Case]] = {}

    # ------------------------------------------------------------ models
    def model_specs(self) -> list[ModelSpec]:
        return [self.catalog.model(a) for a in self.policy.visible_models(self.preset.models)]

    def models_in_pairs(self) -> list[tuple[ModelSpec, ...]]:
        pairs: dict[str, list[ModelSpec]] = {}
        for spec in self.model_specs():
            pairs.setdefault(spec.pair, []).append(spec)
        return [tuple(sorted(p, key=lambda m: m.role != "base")) for p in pairs.values()]

    def model_status(self, aliases: Optional[Iterable[str]] = None) -> list[Availability]:
        """Per model: loaded (with its size, device and dtype), loadable, or unavailable and why."""
        in_memory = {row["alias"]: row for row in self.registry.memory()[0]}
        names = list(aliases) if aliases is not None else list(self.preset.models)
        out = []
        for a in names:
            status = model_availability(self.catalog.model(a), a in in_memory, self.registry.endpoint_label(a))
            if a in in_memory:
                row = in_memory[a]
                how = " ".join(x for x in (row["dtype"], row["quantization"]) if x)
                status = replace(
                    status, reason=f"in memory on {row['device']}, {how}", size_gb=round(row["size_bytes"] / 1e9, 3)
                )
            out.append(status)
        return out

    def memory_summary(self) -> str:
        """One line: what the loaded local models take, of what budget (least recently used goes first)."""
        from explorer.models.manager import human_bytes

        rows, budget = self.registry.memory()
        if budget is None:
            return "No local model loaded yet: models load on first use."
        used = sum(r["size_bytes"] for r in rows)
        names = ", ".join(r["alias"] for r in rows) or "none"
        return (
            f"Loaded: {names} ({human_bytes(used)} of a {human_bytes(budget)} budget); when a model "
            "would not fit, the least recently used is unloaded first."
        )

    def any_random_weights(self, aliases: Iterable[str]) -> bool:
        return any(self.catalog.model(a).is_demo for a in aliases)

    def load_model(self, alias: str) -> None:
        self.policy.check_models([alias])
        backend = self.registry.for_model(alias)
        with self.gates.for_model(alias, LOCAL_DEVICE):
            if hasattr(backend, "load"):
                backend.load(alias)

    def unload_model(self, alias: str) -> bool:
        """True when the model was in memory and is not now."""
        backend = self.registry.for_model(alias)
        return bool(backend.unload(alias)) if hasattr(backend, "unload") else False

    # ------------------------------------------------------------ cases and prompts
    def task_choices(self) -> list[tuple[str, str]]:
        return [(self.catalog.task(k).title, k) for k in self.preset.tasks]

    def variants(self, task: str) -> list[PromptVariant]:
        return prompts.all_variants(self.catalog, task, self.preset.prompts)

    def variant(self, task: str, prompt_id: str) -> PromptVariant:
        for v in self.variants(task):
            if v.prompt_id == prompt_id:
                return v
        raise PresetError(f"task {task!r} has no prompt {prompt_id!r}")

    def custom_variant(
        self, task: str, text: str, based_on_id: Optional[str] = None, yes_means: Optional[str] = None
    ) -> PromptVariant:
        """The preset's variant when the text is unchanged, else a user variant whose polarity comes from
        its own words; `yes_means` ("positive"/"negative") sets it for an edited yes/no wording instead."""
        based_on = self.variant(task, based_on_id) if based_on_id else None
        cleaned = prompts.validate_prompt_text(text)
        for v in self.variants(task):
            if v.text.strip() == cleaned:
                return v
        variant = prompts.custom_variant(cleaned, self.catalog.task(task), based_on)
        if yes_means in ("positive", "negative") and variant.kind == "closed" and not variant.is_multiple_choice:
            variant = dataclasses.replace(variant, yes_means=yes_means)
        return variant

    def case_from_upload(self, source, task: str, label: Optional[str] = None, name: Optional[str] = None) -> Case:
        """An uploaded image as a case, within the public limits (file size, then pixels before decoding)."""
        if isinstance(source, (bytes, bytearray, str, os.PathLike)):
            self.policy.check_upload(source)
        if self.policy.enabled:
            name = "upload"  # a file name can carry a patient's name; a public store keeps none
        limits = self.policy.image_limits()
        return datasets.upload_case(source, task, label=label, name=name, max_pixels=limits.get("max_pixels"))

    def example_cases(self, task: str) -> list[Case]:
        """The sample images for a task (a folder of class subfolders given at start-up)."""
        if self.samples_dir is None:
            return []
        if task not in self._examples:
            folder = self._task_folder(task)
            self._examples[task] = list(datasets.folder_cases(folder, task).cases) if folder else []
        return self._examples[task]

    def _task_folder(self, task: str) -> Optional[Path]:
        assert self.samples_dir is not None
        names = [task, *(alias for alias, key in datasets.TASK_ALIASES.items() if key == task)]
        for name in names:
            if (self.samples_dir / name).is_dir():
                return self.samples_dir / name
        # A folder given directly for one task has class subfolders itself.
        return self.samples_dir if any((self.samples_dir / c).is_dir() for c in ("positive", "negative")) else None

    # ------------------------------------------------------------ asking
    def generation_for(self, alias: str) -> GenerationSettings:
        return self.catalog.model(alias).generation.settings()

    def ask(
        self,
        case: Case,
        variant: PromptVariant,
        models: Sequence[str],
        prompt_style: Optional[str] = None,
        on_text: Optional[Callable[[str, str], None]] = None,
        generation: Optional[GenerationSettings] = None,
    ) -> list[AnswerView]:
        """Every chosen model's answer to one prompt on one case, cached answers first."""
        return self.grid(case, [variant], models, prompt_style, on_text=on_text, generation=generation)

    def grid(
        self,
        case: Case,
        variants: Sequence[PromptVariant],
        models: Sequence[str],
        prompt_style: Optional[str] = None,
        on_cell: Optional[Callable[[AnswerView], None]] = None,
        on_text: Optional[Callable[[str, str], None]] = None,
        generation: Optional[GenerationSettings] = None,
    ) -> list[AnswerView]:
        if not models:
            raise ValueError("Choose at least one model.")
        if not variants:
            raise ValueError("Choose at least one prompt.")
        self.policy.check_models(models)
        style = prompt_style or self.preset.prompt_format
        plan = plan_sweep(
            self.catalog,
            list(models),
            [case.task],
            {case.task: [case]},
            {case.task: list(variants)},
            style,
            generation_override=generation,
        )
        views: list[AnswerView] = []

        def finished(item, row) -> None:
            view = self._view(row)
            views.append(view)
            if on_cell:
                on_cell(view)

        run_sweep(
            plan,
            self.registry.for_model,
            self.store,
            batch_size=self.batch_size,
            on_item=finished,
            on_text=on_text,
            gates=self.gates,
        )
        order = {(v.prompt_id, m): i for i, (v, m) in enumerate((v, m) for v in variants for m in models)}
        return sorted(views, key=lambda v: order.get((v.prompt_id, v.model), 0))

    @staticmethod
    def flip_counts(views: Iterable[AnswerView]) -> dict[str, int]:
        """Per model: how many variants disagree with that model's most common reading of the case."""
        readings: dict[str, list[str]] = {}
        for v in views:
            if v.prompt_id.startswith("describe"):
                continue
            reading = v.verdict if v.verdict in ("positive", "negative") else "non-answer"
            readings.setdefault(v.model, []).append(reading)
        counts = {}
        for model, rs in readings.items():
            majority = max(set(rs), key=rs.count)
            counts[model] = sum(r != majority for r in rs)
        return counts

    def _view(self, row: dict) -> AnswerView:
        spec = self.catalog.models.get(row["model"])
        span = None
        if row.get("evidence_start") is not None and row.get("evidence_end") is not None:
            span = (int(row["evidence_start"]), int(row["evidence_end"]))
        label = row.get("label")
        verdict = row.get("verdict") or "unclear"
        correct = None
        if label in ("positive", "negative") and verdict in ("positive", "negative"):
            correct = verdict == label
        return AnswerView(
            model=row["model"],
            title=spec.title if spec else row["model"],
            pair=spec.pair if spec else "",
            role=spec.role if spec else "",
            prompt_id=row["prompt_id"],
            prompt_text=row["prompt_text"],
            answer=row.get("answer") or "",
            verdict=verdict,
            evidence=row.get("evidence") or "",
            span=span,
            correct=correct,
            label=label,
            latency_s=row.get("latency_s"),
            cached=bool(row.get("cached")),
            error=row.get("error"),
            p_positive=row.get("p_positive"),
            random_weights=bool(spec and spec.is_demo),
            verdict_detail=row.get("verdict_detail") or "",
            task=row.get("task") or "",
            case_id=row.get("case_id") or "",
            image_hash=row.get("image_hash") or "",
            spans=_conflict_spans(row, verdict),
        )

    # ------------------------------------------------------------ sweeps and results
    def sweep_spec(self, **overrides) -> SweepSpec:
        return SweepSpec.from_preset(self.preset, **overrides)

    def sweep(
        self, spec: SweepSpec, progress=None, cancel=None, retry_errors: bool = False, unload_after: bool = False
    ) -> SweepSummary:
        self.policy.check_models(spec.models)
        if self.policy.enabled and not self._cases_from_folder():
            # Refuse before downloading a dataset: per_class images of each class is what HF sampling gives.
            self.policy.check_sweep(
                sum(len(spec.models) * len(spec.variants(self.catalog, t)) * spec.per_class * 2 for t in spec.tasks)
            )
        whole = plan_from_spec(self.catalog, replace(spec, shard=(1, 1)), self._case_loader)
        plan = shard_plan(whole, *spec.shard)
        self.policy.check_sweep(plan)
        judge = self.make_judge() if spec.judge else None
        summary = run_sweep(
            plan,
            self.registry.for_model,
            self.store,
            batch_size=self.batch_size,
            progress=progress,
            cancel=cancel,
            judge=judge,
            only_errors=retry_errors,
            unload_after=unload_after,
            gates=self.gates,
        )
        summary.notes.extend(short_classes(whole, spec.per_class))  # the whole plan's images, not one shard's
        if spec.shard != (1, 1):
            summary.notes.append(f"shard {spec.shard[0]}/{spec.shard[1]}: {len(plan)} of the plan's {len(whole)} items")
        return summary

    # ------------------------------------------------------------ app sweeps, by visitor
    def start_sweep(
        self, owner: str, spec: SweepSpec, session: Optional[str] = None, cancel: Optional[threading.Event] = None
    ) -> SweepHandle:
        """Run `spec` in the background for `owner` (a visitor); follow it with handle.updates() and
        handle.result(). session: the page following it, whose end cancels it (see end_session)."""
        return self.app_sweeps.start(
            owner,
            lambda progress, stop: self.sweep(spec, progress=progress, cancel=stop),
            spec=spec,
            session=session,
            cancel=cancel,
        )

    def running_sweep(self, owner: str) -> Optional[SweepHandle]:
        """The owner's newest app sweep (handle.snapshot() says how far it is), or None."""
        return self.app_sweeps.running(owner)

    def attach_sweep(self, owner: str, session: Optional[str]) -> Optional[SweepHandle]:
        """A reloaded page follows its owner's sweep; the old page's end no longer cancels it."""
        return self.app_sweeps.attach(owner, session)

    def end_session(self, session: str, grace_s: Optional[float] = None) -> int:
        """A page closed: the sweeps it followed are cancelled after a grace period (a reload re-attaches
        first). Returns how many."""
        return self.app_sweeps.release(session, grace_s)

    def make_judge(self):
        """The preset's LLM judge: an endpoint named after the judge model, else OpenAI's API."""
        from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
        from explorer.scoring.judge import LLMJudge, judge_endpoint, judge_generation

        spec = self.preset.judge
        endpoint = self.registry.endpoints.get(spec.model) or EndpointConfig(
            base_url=os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"),
            model=spec.model,
            api_key_env="OPENAI_API_KEY",
            send_temperature=spec.send_temperature,
        )
        if endpoint.api_key_env and not os.environ.get(endpoint.api_key_env):
            raise ValueError(
                f"The LLM judge ({spec.model}) needs the environment variable {endpoint.api_key_env}; "
                "set it, or run with rule-based verdicts (--no-judge)."
            )
        # The server's own model name decides whether it reasons (budget, no temperature, effort).
        endpoint = judge_endpoint(endpoint, endpoint.model, spec.reasoning_effort)
        tokens = {key: task.judge_tokens for key, task in self.catalog.tasks.items()}
        judge = LLMJudge(
            OpenAIBackend({spec.model: endpoint}),
            spec.model,
            tokens,
            generation=judge_generation(endpoint.model, spec.max_output_tokens),
            prompts=spec.prompts,
            retries=spec.retries,
        )
        if spec.method == "rules+llm":
            from explorer.scoring.unsure_judge import UnsureOnlyJudge

            return UnsureOnlyJudge(judge)
        return judge

    def _cases_from_folder(self) -> bool:
        return self.preset.cases.source == "folder" or self.samples_dir is not None

    def _case_loader(self, task: str, per_class: int, seed: int) -> list[Case]:
        if self._cases_from_folder():
            folder = self._task_folder(task) if self.samples_dir else None
            if folder is None:
                raise ValueError(f"No sample folder for task {task!r}: start with --samples DIR.")
            return list(datasets.folder_cases(folder, task, per_class=per_class, seed=seed).cases)
        return list(datasets.hf_cases(task, per_class=per_class, seed=seed).cases)

    def answers_frame(self, **filters) -> pd.DataFrame:
        return self.store.answers_frame(catalog=self.catalog, **filters)

    def browsable_answers(self) -> pd.DataFrame:
        """The store as the Results tab shows it. In public mode, answers on uploaded images are left out:
        they are other visitors' images, not this visitor's to see."""
        frame = self.answers_frame()
        if self.policy.enabled and len(frame):
            frame = frame[~frame["case_id"].map(is_upload)].reset_index(drop=True)
        return frame

    def open_results(
        self, path: str | Path, uploaded: bool = False, cancel: Optional[threading.Event] = None
    ) -> pd.DataFrame:
        """A results store, an export or the study code's CSVs (a file or its folder) as an answers frame.

        In public mode only files the visitor uploaded (uploaded=True) can be opened, never server paths.
        """
        from explorer.runs import results_files

        if not uploaded:
            self.policy.check_server_path(path)
            return results_files.open_results(path, self.catalog)
        # An upload is read within limits (a public Space's are tight) and as an unchanging file; `cancel`
        # (set when the visitor's page closes) stops the read at its next batch or SQLite step.
        limits = (
            public_limits(self.policy.max_upload_bytes, cancel)
            if self.policy.enabled
            else replace(ReadLimits(), immutable=True, cancel=cancel)
        )
        try:
            return results_files.open_results(path, self.catalog, limits)
        except (ValueError, OSError) as exc:
            # An upload lives in a server temp folder: name the user's file, not where the server keeps it.
            text = str(exc).replace(str(Path(path).parent) + os.sep, "").replace(str(Path(path).parent), "")
            raise ValueError(text) from None

    @staticmethod
    def disagreements(frame: pd.DataFrame) -> pd.DataFrame:
        from explorer.runs import results_files

        return results_files.disagreements(frame)

    def case_image(self, task: str, image_hash: Optional[str]):
        """The image of a stored case when this app has it (an example of the sample folder), else None."""
        if not image_hash or task not in self.catalog.tasks:
            return None
        for case in self.example_cases(task):
            if case.image_hash == image_hash:
                return case.image
        return None

    def close(self) -> None:
        self.close_diagnosers()
        self.registry.close()
        self.store.close()
