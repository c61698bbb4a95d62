"""Plan the cross product (models x tasks x cases x prompts) and run it into the results store.

The plan is ordered model-major, then by image, so a backend can reuse an image's encoding across its
prompts. Stored answers are served first; the rest go to one work queue (scheduler.py) that every
backend pulls from at once (a local model its batches, an endpoint up to its max_concurrency), and
the judge runs as its own stage. Each answer is committed as soon as it is judged, so a cancelled or
killed sweep loses at most the units in flight and resumes where it stopped: a deterministic request
already answered is served from the store, never generated again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from explorer.catalog.presets import Catalog, PresetError, PromptSelection, StudyPreset
from explorer.models.gates import GenerationGates
from explorer.prompts import variants as prompt_lib
from explorer.prompts.messages import build_request
from explorer.prompts.perturb import family_variants
from explorer.runs.scheduler import Unit, lane_shape, run_units
from explorer.runs.store import Store, answer_row, polarity_of, variant_from_row, verdict_columns
from explorer.schema import (
    Case,
    GenerationSettings,
    PromptVariant,
    Request,
    Response,
    Verdict,
    request_fingerprint,
)
from explorer.scoring.judge import JUDGE_ERROR, JudgeError, needs_rejudge, stored_judge_failed
from explorer.scoring.verdicts import parse_verdict

ProgressFn = Callable[[int, int, dict], None]  # (done, total, info)
ItemFn = Callable[["SweepItem", dict], None]  # (item, stored row + "cached")
CaseLoader = Callable[[str, int, int], Iterable[Case]]  # (task, per_class, seed) -> cases


@dataclass(frozen=True)
class SweepItem:
    """One planned answer: a model's answer to one prompt about one case."""

    model: str
    task: str
    case: Case
    variant: PromptVariant
    request: Request

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.task, self.case.case_id, self.variant.prompt_id)


@dataclass
class SweepSummary:
    run_id: str
    planned: int
    cached: int = 0  # served from the store (or already done by this run before a resume)
    computed: int = 0  # generated now without error
    errors: int = 0  # generated now with an error (stored, shown, retried next time)
    elapsed_s: float = 0.0
    status: str = "running"  # finished | cancelled
    failures: dict[str, str] = field(default_factory=dict)  # model alias -> why all its items failed
    notes: list[str] = field(default_factory=list)  # what the user should know, e.g. fewer images than asked

    @property
    def done(self) -> int:
        return self.cached + self.computed + self.errors

    @property
    def elapsed(self) -> float:
        return self.elapsed_s

    @property
    def cancelled(self) -> bool:
        return self.status == "cancelled"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "done": self.done}


# ------------------------------------------------------------------ planning
def _generation_for(
    catalog: Catalog, alias: str, override: Union[GenerationSettings, Mapping, None]
) -> GenerationSettings:
    """The model's own settings, replaced by a GenerationSettings or patched by a dict of fields."""
    own = catalog.model(alias).generation.settings()
    if override is None:
        return own
    if isinstance(override, GenerationSettings):
        return override
    fields = dict(override)
    if "max_new_tokens" in fields:  # a cap (--max-new-tokens): never above the model's own limit
        fields["max_new_tokens"] = min(int(fields["max_new_tokens"]), own.max_new_tokens)
    patched = replace(own, **fields)
    # A shorter limit must not leave a longer minimum behind (LLaVA's min_new_tokens=32).
    return replace(patched, min_new_tokens=min(patched.min_new_tokens, patched.max_new_tokens))


def plan_sweep(
    catalog: Catalog,
    models: Sequence[str],
    tasks: Sequence[str],
    cases_by_task: Mapping[str, Sequence[Case]],
    variants_by_task: Mapping[str, Sequence[PromptVariant]],
    prompt_style: str = "paper",
    generation_override: Union[GenerationSettings, Mapping, None] = None,
) -> list[SweepItem]:
    """The cross product, model-major, then task, then image, then prompt.

    Description prompts are planned like any other when variants_by_task holds them.
    generation_override: a GenerationSettings replacing every model's own, or a dict of fields
    (e.g. {"max_new_tokens": 64}, which caps each model's own limit) patched into each model's own settings.
    """
    if not models:
        raise ValueError("Choose at least one model.")
    if not tasks:
        raise ValueError("Choose at least one task.")
    specs = [catalog.model(alias) for alias in models]  # unknown aliases fail here, listing known ones
    items: list[SweepItem] = []
    for spec in specs:
        spec.prompt_format(prompt_style)  # a missing format fails before anything runs
        generation = _generation_for(catalog, spec.alias, generation_override)
        for task in tasks:
            catalog.task(task)  # unknown task keys fail here, listing known ones
            if task not in cases_by_task:
                raise ValueError(f"no cases given for task {task!r}")
            for case in cases_by_task[task]:
                for variant in variants_by_task.get(task, ()):
                    request = build_request(spec, variant, case, prompt_style, generation)
                    items.append(SweepItem(spec.alias, task, case, variant, request))
    return items


def _model_major(items: Sequence[SweepItem]) -> list[SweepItem]:
    """Drop repeated items, then order by model, then image (both by first appearance), keeping
    the given order inside each group; a plan from plan_sweep is already in this order."""
    seen: set = set()
    unique = []
    for item in items:
        if item.key not in seen:
            seen.add(item.key)
            unique.append(item)
    model_rank: dict[str, int] = {}
    image_rank: dict[tuple, int] = {}
    for item in unique:
        model_rank.setdefault(item.model, len(model_rank))
        image_rank.setdefault((item.model, item.task, item.case.image_hash), len(image_rank))
    return sorted(
        unique,
        key=lambda it: (model_rank[it.model], image_rank[(it.model, it.task, it.case.image_hash)]),
    )


# ------------------------------------------------------------------ the spec the CLI and the app share
@dataclass(frozen=True)
class SweepSpec:
    """What a sweep covers; built from a study preset plus the user's choices (CLI flags or app widgets)."""

    models: tuple[str, ...]
    tasks: tuple[str, ...]
    prompt_ids: tuple[str, ...] = ()  # empty: every closed prompt of the selection
    selection: PromptSelection = PromptSelection()
    describe: bool = False  # also the description prompts
    per_class: int = 50
    seed: int = 42
    prompt_style: str = "paper"
    max_new_tokens: Optional[int] = None  # caps each model's own limit
    generation: Optional[GenerationSettings] = None  # replaces every model's settings
    judge: bool = False  # LLM judge instead of the rule-based parser
    case_source: str = "huggingface"
    shard: tuple[int, int] = (1, 1)  # (i, n): only the i-th of n deterministic parts of the plan
    families: tuple[str, ...] = ()  # wording families (presets/families.yaml) adding edits of the closed prompts
    family_count: Optional[int] = None  # edits per family and prompt (None: each family's own count)

    @classmethod
    def from_preset(cls, preset: StudyPreset, **overrides: Any) -> "SweepSpec":
        """The preset's sweep; overrides that are None keep the preset's value."""
        spec = cls(
            models=tuple(preset.models),
            tasks=tuple(preset.tasks),
            selection=preset.prompts,
            per_class=preset.cases.per_class,
            seed=preset.cases.seed,
            prompt_style=preset.prompt_format,
            judge=preset.judge.method in ("llm", "rules+llm"),
            case_source=preset.cases.source,
        )
        clean = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in ("models", "tasks", "prompt_ids", "families"):
                value = (value,) if isinstance(value, str) else tuple(value)
            clean[key] = value
        try:
            return replace(spec, **clean)
        except TypeError as exc:
            raise ValueError(f"unknown sweep setting: {exc}") from None

    def generation_override(self) -> Union[GenerationSettings, dict, None]:
        if self.generation is not None:
            return self.generation
        if self.max_new_tokens:
            return {"max_new_tokens": int(self.max_new_tokens)}
        return None

    def variants(self, catalog: Catalog, task: str) -> list[PromptVariant]:
        chosen = self._chosen_variants(catalog, task)
        if not self.families:
            return chosen
        closed = [v for v in chosen if v.kind == "closed"]
        return chosen + family_variants(
            catalog, task, closed, self.families, self.seed, self.family_count, self.selection
        )

    def _chosen_variants(self, catalog: Catalog, task: str) -> list[PromptVariant]:
        closed = prompt_lib.closed_variants(catalog, task, self.selection)
        described = [v for v in prompt_lib.all_variants(catalog, task, self.selection) if v.kind == "describe"]
        if not self.prompt_ids:
            return closed + (described if self.describe else [])
        by_id = {v.prompt_id: v for v in closed + described}
        unknown = [p for p in self.prompt_ids if p not in by_id]
        if unknown:
            raise PresetError(f"task {task!r} has no prompt {', '.join(unknown)}; known: {', '.join(by_id)}")
        chosen = [by_id[p] for p in self.prompt_ids]
        if self.describe:
            chosen += [v for v in described if v.prompt_id not in self.prompt_ids]
        return chosen

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["selection"] = self.selection.model_dump(mode="json")
        return d


def plan_from_spec(catalog: Catalog, spec: SweepSpec, case_loader: CaseLoader) -> list[SweepItem]:
    """The plan of a SweepSpec; case_loader(task, per_class, seed) gives each task's cases."""
    for alias in spec.models:
        catalog.model(alias)
    variants = {task: spec.variants(catalog, task) for task in spec.tasks}
    cases = {task: list(case_loader(task, spec.per_class, spec.seed)) for task in spec.tasks}
    plan = plan_sweep(catalog, spec.models, spec.tasks, cases, variants, spec.prompt_style, spec.generation_override())
    return shard_plan(plan, *spec.shard)


def parse_shard(text: str) -> tuple[int, int]:
    """ "i/n" (1 <= i <= n) -> (i, n), with a one-line error for anything else."""
    try:
        i, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n, e.g. 1/4 (got {text!r})") from None
    if not 1 <= i <= n:
        raise ValueError(f"--shard i/n needs 1 <= i <= n (got {text!r})")
    return i, n


def shard_plan(items: Sequence[SweepItem], index: int, count: int) -> list[SweepItem]:
    """The index-th (1-based) of count parts of a plan; the parts partition it exactly.

    A part is a set of whole (model, task, image) groups, so each machine still reuses an image's
    prefix across its prompts. Groups are dealt round-robin in the order of their hashes, so every
    machine computes the same split from the same spec whatever order it planned in, and the parts
    differ in size by at most one group.
    """
    if not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: need 1 <= i <= n")
    if count == 1:
        return list(items)

    def group(item: SweepItem) -> str:
        ident = f"{item.model}|{item.task}|{item.case.image_hash or item.case.case_id}"
        return hashlib.sha256(ident.encode()).hexdigest()

    order = {g: k for k, g in enumerate(sorted({group(it) for it in items}))}
    return [it for it in items if order[group(it)] % count == index - 1]


# ------------------------------------------------------------------ running
def plan_hash(items: Sequence[SweepItem]) -> str:
    """Identifies a plan independently of the backend, so a re-run of the same plan resumes its run."""
    keys = [
        [
            it.model,
            it.task,
            it.case.case_id,
            it.case.image_hash,
            it.variant.prompt_id,
            it.variant.text,
            it.request.prompt_format,
            it.request.generation.as_dict(),
        ]
        for it in items
    ]
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()


def short_classes(plan, per_class: int) -> list[str]:
    """One line per task whose classes had fewer images than asked for (a small sample folder)."""
    found: dict[str, dict[str, set]] = {}
    for item in plan:
        found.setdefault(item.task, {}).setdefault(item.case.label or "unlabelled", set()).add(item.case.case_id)
    notes = []
    for task, classes in found.items():
        counts = {label: len(ids) for label, ids in sorted(classes.items())}
        if any(n < per_class for n in counts.values()):
            have = ", ".join(f"{n} {label}" for label, n in counts.items())
            notes.append(f"{task}: only {have} images, fewer than the {per_class} per class asked for")
    return notes


def describe_plan(items: Sequence[SweepItem]) -> tuple[dict, dict]:
    """(plan, manifest) as stored with the run: what was asked, and exactly which cases."""
    models = list(dict.fromkeys(it.model for it in items))
    tasks = list(dict.fromkeys(it.task for it in items))
    prompts_by_task: dict[str, list[str]] = {}
    cases_by_task: dict[str, dict[str, dict]] = {}
    generation: dict[str, dict] = {}
    formats: dict[str, str] = {}
    for it in items:
        ids = prompts_by_task.setdefault(it.task, [])
        if it.variant.prompt_id not in ids:
            ids.append(it.variant.prompt_id)
        cases_by_task.setdefault(it.task, {})[it.case.case_id] = {
            "case_id": it.case.case_id,
            "image_hash": it.case.image_hash,
            "label": it.case.label,
            "source": it.case.source,
            "row_id": it.case.row_id,
        }
        generation[it.model] = it.request.generation.as_dict()
        formats[it.model] = it.request.prompt_format
    plan = {
        "models": models,
        "tasks": tasks,
        "prompts": prompts_by_task,
        "cases": {t: len(c) for t, c in cases_by_task.items()},
        "items": len(items),
        "settings": {"generation": generation, "prompt_formats": formats},
    }
    manifest = {"cases": {t: list(c.values()) for t, c in cases_by_task.items()}}
    return plan, manifest


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def _judge_name(judge: Any) -> str:
    for attr in ("method", "name", "model"):
        value = getattr(judge, attr, None)
        if isinstance(value, str) and value:
            return value if value.startswith("judge:") else f"judge:{value}"
    return "judge"


def verdicts_for(triples: Sequence[tuple[str, PromptVariant, str]], judge: Any = None) -> list[Optional[Verdict]]:
    """Verdicts of (answer, variant, task key) triples: rules, or the judge when given; None for
    description prompts.

    A judge with judge_many gets the whole batch in one call. A judge that fails gives a JudgeError
    (stored as verdict NULL with the reason, never a refusal); the answers are kept, and the next
    sweep or `rejudge(only_failed=True)` judges them again.
    """
    out: list[Optional[Verdict]] = [None] * len(triples)
    closed = [i for i, (_, variant, _) in enumerate(triples) if variant.kind == "closed"]
    if judge is None:
        for i in closed:
            out[i] = parse_verdict(triples[i][0], triples[i][1])
        return out
    many = getattr(judge, "judge_many", None)
    if many is not None and closed:
        try:
            for i, verdict in zip(closed, many([triples[i] for i in closed]), strict=True):
                out[i] = verdict
            return out
        except Exception:  # noqa: BLE001 - fall back to one call each, so one bad item fails alone
            pass
    one = judge.judge if hasattr(judge, "judge") else judge
    for i in closed:
        try:
            out[i] = one(*triples[i])
        except Exception as exc:  # noqa: BLE001 - any judge failure is recorded, never fatal
            out[i] = JudgeError(method=_judge_name(judge), detail=f"{JUDGE_ERROR}{type(exc).__name__}: {exc}")
    return out


def _with_item_polarity(row: dict, item: SweepItem) -> dict:
    """A cached answer read with the item's own polarity when the stored one differs.

    The cache key covers the prompt text, not its meaning: the same custom text can carry another
    polarity (inferred from the prompt it was edited from). The stored verdict stays as it was; the
    caller sees the rule-based reading under this item's polarity.
    """
    if item.variant.kind != "closed" or row.get("verdict") is None:
        return row
    if json.loads(row.get("polarity") or "{}") == json.loads(json.dumps(polarity_of(item.variant))):
        return row
    verdict = parse_verdict(row.get("answer") or "", item.variant)
    return {**row, **verdict_columns(verdict), "polarity": json.dumps(polarity_of(item.variant), sort_keys=True)}


def _resolver(backends: Any) -> Callable[[str], Any]:
    if callable(backends) and not hasattr(backends, "generate"):
        return backends
    return lambda alias: backends


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class _Runner:
    """The state of one run_sweep call (counts, the run id, callbacks)."""

    def __init__(self, store: Store, summary: SweepSummary, total: int, judge, progress, on_item, on_text):
        self.store, self.summary, self.total = store, summary, total
        self.judge, self.progress, self.on_item, self.on_text = judge, progress, on_item, on_text

    def run_item(self, item: SweepItem) -> dict:
        return {
            "run_id": self.summary.run_id,
            "model": item.model,
            "task": item.task,
            "case_id": item.case.case_id,
            "prompt_id": item.variant.prompt_id,
            "label": item.case.label,
        }

    def report(self, item: SweepItem, row: dict, cached: bool) -> None:
        if self.on_item is not None:
            # The item's own case and prompt names win: a cached answer may come from another case id.
            view = {
                **row,
                "task": item.task,
                "case_id": item.case.case_id,
                "label": item.case.label,
                "prompt_id": item.variant.prompt_id,
                "source": item.case.source,
                "cached": cached,
            }
            self.on_item(item, view)
        if self.progress is not None:
            s = self.summary
            self.progress(
                s.done,
                self.total,
                {
                    "cached": s.cached,
                    "computed": s.computed,
                    "new": s.computed,
                    "errors": s.errors,
                    "model": item.model,
                    "task": item.task,
                    "run_id": s.run_id,
                },
            )

    def serve_cached(self, item: SweepItem, row: dict) -> None:
        self.store.link_run_item(self.run_item(item), row["id"], cached=True)
        self.summary.cached += 1
        if (
            self.judge is not None
            and item.variant.kind == "closed"
            and (row.get("verdict_method") != _judge_name(self.judge) or stored_judge_failed(row))
        ):
            # A sweep run with a judge reports that judge's verdicts, also for answers made earlier;
            # a judgement that failed before is tried again, never served as if it were one.
            verdict = verdicts_for([(row.get("answer") or "", variant_from_row(row), row["task"])], self.judge)[0]
            self.store.update_verdict(row["id"], verdict)
            row = self.store.get(row["id"])
        self.report(item, _with_item_polarity(row, item), cached=True)

    def store_result(
        self,
        item: SweepItem,
        fingerprint: str,
        identity: dict,
        backend_name: str,
        response: Response,
        verdict: Optional[Verdict] = None,
    ) -> None:
        row = answer_row(
            fingerprint=fingerprint,
            request=item.request,
            case=item.case,
            variant=item.variant,
            model_identity=identity,
            backend=backend_name,
            response=response,
            verdict=verdict,
            run_id=self.summary.run_id,
        )
        stored, written = self.store.record_answer(row, self.run_item(item))
        if not written:
            self.summary.cached += 1  # another writer (or an earlier duplicate) answered it first
        elif response.ok:
            self.summary.computed += 1
        else:
            self.summary.errors += 1
        self.report(item, stored, cached=not written)

    def fail_unstored(self, item: SweepItem, error: str) -> None:
        """An item that cannot even be fingerprinted (its backend is unusable): reported, not stored."""
        self.summary.errors += 1
        row = {
            "id": None,
            "model": item.model,
            "prompt_text": item.variant.text,
            "answer": "",
            "error": error,
            "verdict": None,
            "prompt_family": item.variant.family,
        }
        self.report(item, row, cached=False)


def run_sweep(
    plan: Sequence[SweepItem],
    backends: Any,
    store: Store,
    *,
    batch_size: int = 8,
    judge: Any = None,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
    run_id: Optional[str] = None,
    on_item: Optional[ItemFn] = None,
    on_text: Optional[Callable[[str, str], None]] = None,
    only_errors: bool = False,
    unload_after: bool = False,
    gates: Optional[GenerationGates] = None,
) -> SweepSummary:
    """Answer every planned item once, into the store; resumable.

    backends: one Backend, or a function alias -> Backend. judge: an object with
    .judge(answer, variant, task) (or such a callable); without one, closed-form answers are parsed
    by the rules. Stored answers are served first, without passing any gate; the rest go to one work
    queue (see scheduler.py) that every backend pulls from at once, and the judge runs as its own
    stage over finished answers. cancel is checked before each unit of work; a cancelled run is
    marked "cancelled", and the same plan run again (without run_id) resumes that run: only missing
    items are generated.
    only_errors: run only the items whose stored answer is an error (see retry_errors).
    unload_after: unload each model when its items are done (when the backend can).
    gates: the per-device / per-model generation limits shared with other sweeps (default: one
    generation per device and per model, for this sweep alone).
    on_item(item, row) sees every finished item with its stored row and row["cached"].
    on_text(model_alias, text_so_far) receives streamed text when the backend streams.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    started = time.perf_counter()
    items = _model_major(plan)
    resolve = _resolver(backends)

    # Fingerprints up front: one identity per model (cheap, nothing is loaded for it).
    backend_of: dict[str, Any] = {}
    identity_of: dict[str, dict] = {}
    failures: dict[str, str] = {}
    for alias in dict.fromkeys(it.model for it in items):
        try:
            backend_of[alias] = resolve(alias)
            identity_of[alias] = dict(backend_of[alias].identity(alias))
        except Exception as exc:  # noqa: BLE001 - an unusable model fails its items, not the sweep
            failures[alias] = _error_text(exc)
    fingerprints = {
        it.key: request_fingerprint(it.request, identity_of[it.model]) for it in items if it.model in identity_of
    }
    if only_errors:
        items = [it for it in items if it.key in fingerprints and store.has_error(fingerprints[it.key])]

    p_hash = plan_hash(items)
    run_id = run_id or store.resumable_run(p_hash) or new_run_id()
    plan_info, manifest = describe_plan(items)
    plan_info["settings"].update(
        {"batch_size": batch_size, "judge": _judge_name(judge) if judge else "rules", "only_errors": only_errors}
    )
    store.start_run(run_id, plan_info, manifest, p_hash)
    summary = SweepSummary(run_id=run_id, planned=len(items), failures=dict(failures))
    runner = _Runner(store, summary, len(items), judge, progress, on_item, on_text)

    status = "failed"
    try:
        work = _serve_stored(items, failures, fingerprints, runner)
        skipped = _generate_rest(
            work,
            backend_of,
            identity_of,
            fingerprints,
            runner,
            batch_size,
            cancel,
            failures,
            gates or GenerationGates(),
            unload_after,
        )
        status = "cancelled" if skipped else "finished"
    except BaseException:
        status = "interrupted"
        raise
    finally:
        summary.status = status
        summary.failures = failures
        summary.elapsed_s = time.perf_counter() - started
        store.finish_run(run_id, status, summary.as_dict())
    return summary


def _serve_stored(items, failures, fingerprints, runner: _Runner) -> dict[str, list[list[SweepItem]]]:
    """Serve every item the store already answers; returns the rest by model as groups of twins (the
    same deterministic request twice, e.g. a duplicate image, is generated once for the group)."""
    store = runner.store
    work: dict[str, list[list[SweepItem]]] = {}
    twins_of: dict[str, list[SweepItem]] = {}
    for item in items:
        if item.key not in fingerprints:  # its backend gave no identity
            runner.fail_unstored(item, failures[item.model])
            continue
        fp = fingerprints[item.key]
        deterministic = item.request.generation.deterministic
        hit = store.lookup(fp) if deterministic else store.lookup_in_run(runner.summary.run_id, fp)
        if hit is not None:
            runner.serve_cached(item, hit)
            continue
        if deterministic and fp in twins_of:
            twins_of[fp].append(item)
            continue
        group = [item]
        if deterministic:
            twins_of[fp] = group
        work.setdefault(item.model, []).append(group)
    return work


def _generate_rest(
    work,
    backend_of,
    identity_of,
    fingerprints,
    runner: _Runner,
    batch_size,
    cancel,
    failures,
    gates: GenerationGates,
    unload_after: bool,
) -> list:
    """Everything not in the store, through the scheduler; returns the units a cancel left undone."""
    shapes = {alias: lane_shape(backend_of[alias], alias, batch_size) for alias in work}
    units = []
    for alias, groups in work.items():
        size = shapes[alias].unit_size
        units += [Unit(alias, groups[s : s + size]) for s in range(0, len(groups), size)]
    left = {alias: sum(1 for u in units if u.alias == alias) for alias in work}

    def generate(unit: Unit) -> list:
        alias, backend = unit.alias, backend_of[unit.alias]
        requests = [group[0].request for group in unit.items]
        if alias in failures:
            return [Response(error=failures[alias]) for _ in requests]
        try:
            responses = backend.generate(requests, on_text=_text_callback(runner.on_text, alias))
            if len(responses) != len(requests):
                raise RuntimeError(f"backend returned {len(responses)} answers for {len(requests)} requests")
            return responses
        except Exception as exc:  # noqa: BLE001 - a backend that raises fails this model's items, stored as errors
            failures[alias] = _error_text(exc)
            return [Response(error=failures[alias]) for _ in requests]

    def judge_unit(unit: Unit) -> list[Optional[Verdict]]:
        return _verdicts_of(unit, runner.judge)

    def handle(unit: Unit, judged: Any) -> None:
        verdicts = (
            judged
            if isinstance(judged, list)
            else _verdicts_of(unit, None if judged is None else _FailedJudge(judged, runner.judge))
        )
        backend_name = str(getattr(backend_of[unit.alias], "name", type(backend_of[unit.alias]).__name__))
        identity = identity_of[unit.alias]
        # Committed one by one, in order: a kill from here on loses only the items not yet written.
        for group, response, verdict in zip(unit.items, unit.responses, verdicts):
            first = group[0]
            runner.store_result(first, fingerprints[first.key], identity, backend_name, response, verdict)
            for twin in group[1:]:
                hit = runner.store.lookup(fingerprints[twin.key])
                if hit is not None:
                    runner.serve_cached(twin, hit)
                else:  # the request failed: its error stands for the twin too
                    runner.store_result(
                        twin,
                        fingerprints[twin.key],
                        identity,
                        backend_name,
                        Response(error="the same request failed earlier in this batch"),
                    )
        left[unit.alias] -= 1
        backend = backend_of[unit.alias]
        if unload_after and not left[unit.alias] and hasattr(backend, "unload"):
            backend.unload(unit.alias)

    if not units:
        return []
    return run_units(
        units, shapes, generate, handle, gates, cancel, judge=judge_unit if runner.judge is not None else None
    )


class _FailedJudge:
    """Stands in for a judge whose whole group failed, so each item records why."""

    def __init__(self, exc: BaseException, judge: Any):
        self.exc, self.name = exc, _judge_name(judge)

    def judge(self, *_args: Any) -> Verdict:
        raise self.exc


def _verdicts_of(unit: Unit, judge: Any) -> list[Optional[Verdict]]:
    """Verdicts for a unit's answers (None for errors and description prompts), in the unit's order."""
    ok = [i for i, r in enumerate(unit.responses) if r.ok]
    judged = verdicts_for(
        [(unit.responses[i].text, unit.items[i][0].variant, unit.items[i][0].task) for i in ok], judge
    )
    verdicts: list[Optional[Verdict]] = [None] * len(unit.responses)
    for i, verdict in zip(ok, judged):
        verdicts[i] = verdict
    return verdicts


def _text_callback(on_text: Optional[Callable[[str, str], None]], alias: str):
    """Adapt the caller's on_text(model_alias, text) to the backend's callback (whose last argument
    is the text so far)."""
    if on_text is None:
        return None
    return lambda *args: on_text(alias, args[-1])


def retry_errors(plan: Sequence[SweepItem], backends: Any, store: Store, **kwargs: Any) -> SweepSummary:
    """Generate again only the planned items whose stored answer is an error."""
    return run_sweep(plan, backends, store, only_errors=True, **kwargs)


# ------------------------------------------------------------------ re-judging
def rejudge(
    store: Store,
    judge_fn: Any = None,
    filters: Optional[dict[str, Any]] = None,
    *,
    only_failed: bool = False,
    batch_size: int = 16,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
) -> int:
    """Judge stored closed-form answers again, keeping the raw answers; returns how many were updated.

    judge_fn: an LLM judge (.judge(answer, variant, task) and optionally .judge_many) or such a
    callable; None re-applies the rule-based parser (e.g. after improving it). filters: as
    Store.answers_frame (run_id included). Judged batch_size at a time; each verdict is committed
    as soon as its batch is judged, so an interrupted re-judge keeps its progress. only_failed: just
    the LLM judgements that failed or came back AMBIGUOUS (judge.needs_rejudge).
    """
    todo, seen = [], set()
    for row in store.answers(include_errors=False, **(filters or {})):
        # With run_id, one answer can serve several items; it is judged once.
        if only_failed and not needs_rejudge(row):
            continue
        if row["id"] not in seen and (row.get("prompt_kind") or "closed") == "closed":
            seen.add(row["id"])
            todo.append(row)
    done = 0
    for start in range(0, len(todo), max(1, batch_size)):
        if cancel is not None and cancel.is_set():
            break
        chunk = todo[start : start + batch_size]
        triples = [(row.get("answer") or "", variant_from_row(row), row["task"]) for row in chunk]
        for row, verdict in zip(chunk, verdicts_for(triples, judge_fn)):
            store.update_verdict(row["id"], verdict)
            done += 1
            if progress is not None:
                progress(done, len(todo), {"model": row["model"], "task": row["task"]})
    return done
