"""Load presets/*.yaml into typed, validated specs.

Validation is pydantic's; every error is re-raised as PresetError naming the file, the key path
and the problem, because a researcher editing YAML needs to know exactly where to look.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from explorer.catalog.yaml_files import YamlFileError, load_yaml
from explorer.schema import GenerationSettings

# A checkout reads the repository's presets/; an installed package (pip install .) carries a copy.
_CHECKOUT_PRESETS = Path(__file__).resolve().parents[2] / "presets"
PRESETS_DIR = (
    _CHECKOUT_PRESETS if _CHECKOUT_PRESETS.is_dir() else Path(__file__).resolve().parents[1] / "bundled_presets"
)
Architecture = Literal["llava_next", "llava", "gemma3"]


class PresetError(ValueError):
    """A preset file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- models
class GenerationSpec(_Strict):
    max_new_tokens: int = Field(2048, ge=1, le=32768)
    min_new_tokens: int = Field(0, ge=0)
    do_sample: bool = False
    temperature: float = Field(0.0, ge=0.0)

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=min(self.min_new_tokens, self.max_new_tokens),
            do_sample=self.do_sample,
            temperature=self.temperature,
        )


class ModelSpec(_Strict):
    alias: str
    title: str
    architecture: Architecture
    pair: str
    role: Literal["base", "medical"]
    hf_id: Optional[str] = None
    revision: str = "main"
    alt_ids: tuple[str, ...] = ()
    gated: bool = False
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    fix_patch_size: bool = False
    prompt_formats: dict[Literal["paper", "official"], str]
    generation: GenerationSpec = GenerationSpec()
    image_tokens: str = ""
    note: str = ""
    demo_of: Optional[str] = None  # set for offline random-weight stand-ins
    demo_seed: int = 0

    @property
    def is_demo(self) -> bool:
        return self.demo_of is not None

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if not self.is_demo and not self.hf_id:
            raise ValueError("a model needs hf_id (or demo_of for an offline demo stand-in)")
        for name, fmt in self.prompt_formats.items():
            if fmt != "chat_template" and "{prompt}" not in fmt:
                raise ValueError(f"prompt_formats.{name} must be 'chat_template' or contain {{prompt}}")
        return self

    def prompt_format(self, style: str) -> str:
        if style not in self.prompt_formats:
            raise PresetError(f"model {self.alias!r} has no prompt format {style!r}")
        return self.prompt_formats[style]


# ---------------------------------------------------------------- tasks
class DatasetSpec(_Strict):
    id: str
    revision: Optional[str] = None
    split: str = "train"
    image_column: str = "image"
    gated: bool = False


class LabelScheme(_Strict):
    """single_column: one integer column; two_columns: CheXpert-style presence codes."""

    scheme: Literal["single_column", "two_columns"]
    column: Optional[str] = None
    negative: Optional[int] = None
    positive: Optional[int] = None
    negative_column: Optional[str] = None
    positive_column: Optional[str] = None
    present: Optional[int] = None

    @model_validator(mode="after")
    def _check(self) -> "LabelScheme":
        need = (
            ("column", "negative", "positive")
            if self.scheme == "single_column"
            else ("negative_column", "positive_column", "present")
        )
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"label scheme {self.scheme!r} needs {', '.join(missing)}")
        return self


class Readings(_Strict):
    positive: str
    negative: str


class TaskPrompts(_Strict):
    abnormal: str
    normal: str
    evidence: str
    guided_signs: str
    options: Readings

    @field_validator("abnormal", "normal", "evidence", "guided_signs")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v


class DescribeSubject(_Strict):
    features: str
    reader: str
    diagnose: str


class DescribeSpec(_Strict):
    subject: DescribeSubject


class DiagnosisSpec(_Strict):
    role: str
    image_kind: str
    condition: str


class TaskSpec(_Strict):
    key: str
    title: str
    modality: str
    dataset: DatasetSpec
    labels: LabelScheme
    class_names: Readings
    judge_tokens: Readings
    prompts: TaskPrompts
    describe: DescribeSpec
    diagnosis: DiagnosisSpec


class TaskFile(_Strict):
    one_word_suffix: str
    tasks: dict[str, dict[str, Any]]
    diagnosis_templates: dict[str, str]

    @field_validator("diagnosis_templates")
    @classmethod
    def _has_desc(cls, v: dict[str, str]) -> dict[str, str]:
        for name, text in v.items():
            if "{desc}" not in text:
                raise ValueError(f"template {name!r} must contain {{desc}}")
        return v


# ---------------------------------------------------------------- study presets
class CasesSpec(_Strict):
    source: Literal["huggingface", "folder", "manifest"] = "huggingface"
    per_class: int = Field(50, ge=1)
    seed: int = 42


class PromptSelection(_Strict):
    families: Literal["all"] | tuple[str, ...] = "all"
    one_word: Literal["both", "only", "none"] = "both"
    original_code_defects: bool = False  # paper-clean only: the missing comma of brain and IDC prompt 6
    # paper-clean: the strings of tasks.yaml (the authors' refactor, 1e9dde1); paper-as-run: the first
    # upload's strings byte for byte (presets/prompt_sets/paper-as-run.yaml, explorer/prompts/variants.py).
    prompt_set: Literal["paper-clean", "paper-as-run"] = "paper-clean"


class JudgeSpec(_Strict):
    """The LLM judge (explorer/scoring/judge.py says how its budget, outcomes and prompt sets work)."""

    # rules: the answer reader; llm: the judge reads every answer; rules+llm: the judge settles only
    # the answers the reader is unsure of (explorer/scoring/unsure_judge.py).
    method: Literal["rules", "llm", "rules+llm"] = "rules"
    backend: str = "openai"
    model: str = "gpt-5"
    send_temperature: bool = False  # reasoning models (gpt-5...) never get one, whatever this says
    prompts: Literal["study", "explorer"] = "explorer"  # study: the authors' judge prompts, verbatim
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None  # None: "medium"
    max_output_tokens: Optional[int] = Field(None, ge=1, le=128_000)  # None: 25,000 for reasoning models, else 16
    retries: int = Field(2, ge=0, le=10)  # extra attempts for a failed judgement


class DescribeRunSpec(_Strict):
    model: str = "gpt-5.1"
    api: Literal["responses", "chat", "transformers"] = "responses"
    reasoning_effort: Optional[str] = None
    max_output_tokens: int = 64


class EmbeddingSpec(_Strict):
    per_class: int = 300
    seed: int = 42
    pca_dims: int = 50
    perplexity: float = 30.0
    frontal_only: bool = True
    precision: Literal["study", "float64"] = (
        "study"  # explorer/probes/embeddings.py: the authors' bf16->fp32 path, or float64
    )


class StudyPreset(_Strict):
    name: str
    description: str = ""
    models: tuple[str, ...]
    prompt_format: Literal["paper", "official"] = "paper"
    tasks: tuple[str, ...]
    cases: CasesSpec = CasesSpec()
    prompts: PromptSelection = PromptSelection()
    judge: JudgeSpec = JudgeSpec()
    describe: DescribeRunSpec = DescribeRunSpec()
    embeddings: EmbeddingSpec = EmbeddingSpec()


# ---------------------------------------------------------------- loading
def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"{path}: cannot read preset file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise PresetError(f"{path}: not a UTF-8 text file (byte {exc.start}), so not a YAML preset") from None
    try:
        data = load_yaml(text)  # strict: a repeated key or an alias bomb is refused, with its line
    except YamlFileError as exc:
        raise PresetError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _validate(cls: type[BaseModel], data: Any, path: Path, prefix: str = "") -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{path}: key '{key or '(top)'}': {msg}")
        raise PresetError("\n".join(problems)) from None


class Catalog:
    """All models, tasks and study presets of one presets folder."""

    def __init__(self, presets_dir: Path | str = PRESETS_DIR):
        self.dir = Path(presets_dir)
        models_path = self.dir / "models.yaml"
        raw_models = _read_yaml(models_path).get("models")
        if not isinstance(raw_models, dict) or not raw_models:
            raise PresetError(f"{models_path}: key 'models' must map model aliases to specs")
        self.models: dict[str, ModelSpec] = {
            alias: _validate(ModelSpec, {"alias": alias, **(spec or {})}, models_path, f"models.{alias}")
            for alias, spec in raw_models.items()
        }
        tasks_path = self.dir / "tasks.yaml"
        task_file: TaskFile = _validate(TaskFile, _read_yaml(tasks_path), tasks_path)
        self.one_word_suffix = task_file.one_word_suffix
        self.diagnosis_templates = dict(task_file.diagnosis_templates)
        self.tasks: dict[str, TaskSpec] = {
            key: _validate(TaskSpec, {"key": key, **(spec or {})}, tasks_path, f"tasks.{key}")
            for key, spec in task_file.tasks.items()
        }
        for alias, spec in self.models.items():
            if spec.demo_of and spec.demo_of not in self.models:
                raise PresetError(f"{models_path}: key 'models.{alias}.demo_of': unknown model {spec.demo_of!r}")

    def model(self, alias: str) -> ModelSpec:
        try:
            return self.models[alias]
        except KeyError:
            raise PresetError(f"unknown model {alias!r}; known: {', '.join(self.models)}") from None

    def task(self, key: str) -> TaskSpec:
        try:
            return self.tasks[key]
        except KeyError:
            raise PresetError(f"unknown task {key!r}; known: {', '.join(self.tasks)}") from None

    def study_names(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.yaml") if p.stem not in ("models", "tasks", "families"))

    def study(self, name_or_path: str | Path) -> StudyPreset:
        path = Path(name_or_path)
        if not path.suffix:
            path = self.dir / f"{name_or_path}.yaml"
        if not path.exists():
            raise PresetError(f"no study preset {str(name_or_path)!r}; known: {', '.join(self.study_names())}")
        preset: StudyPreset = _validate(StudyPreset, _read_yaml(path), path)
        for i, alias in enumerate(preset.models):
            if alias not in self.models:
                raise PresetError(f"{path}: key 'models.{i}': unknown model {alias!r}")
        for i, key in enumerate(preset.tasks):
            if key not in self.tasks:
                raise PresetError(f"{path}: key 'tasks.{i}': unknown task {key!r}")
        return preset

    def pair_of(self, alias: str) -> list[ModelSpec]:
        """The base/medical pair a model belongs to, base first."""
        pair = self.model(alias).pair
        members = [m for m in self.models.values() if m.pair == pair]
        return sorted(members, key=lambda m: m.role != "base")


@lru_cache(maxsize=4)
def load_catalog(presets_dir: str = str(PRESETS_DIR)) -> Catalog:
    return Catalog(presets_dir)
