"""Prompt variant families of the study, their polarity, and user-edited variants.

Polarity matters: a "yes" to "Is this image normal?" is a NEGATIVE reading, and the letter "A"
means opposite things in the two multiple-choice orderings. Every variant carries that meaning
so the verdict parser never has to guess it from the wording.

Two prompt sets (PromptSelection.prompt_set), with the same prompt ids so runs compare cell by cell:
  paper-clean   built from tasks.yaml: the authors' later refactor (1e9dde1), tidy strings.
  paper-as-run  presets/prompt_sets/paper-as-run.yaml: the strings their first upload (de96238) sent,
                which produced the paper's numbers, byte for byte (whitespace, capitals, the missing
                comma's fused prompt, per-task diagnosis templates). Only their meaning (family,
                polarity, which line is option A) is derived here.
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

from explorer.catalog.presets import PRESETS_DIR, Catalog, PresetError, PromptSelection, TaskSpec
from explorer.schema import PromptVariant
from explorer.scoring.question_focus import question_polarity

CLOSED_FAMILIES = ("abnormal", "normal", "evidence", "guided", "mc_pos_first", "mc_neg_first")
DESCRIBE_FAMILIES = ("describe", "describe_dx")
MC_STEM = "Which does this image show? Choose one answer."
MAX_PROMPT_CHARS = 20_000


def _mc(task: TaskSpec, family: str, suffix: str) -> PromptVariant:
    pos, neg = task.prompts.options.positive, task.prompts.options.negative
    if family == "mc_pos_first":
        options = (("A", "positive", pos), ("B", "negative", neg))
    else:
        options = (("A", "negative", neg), ("B", "positive", pos))
    text = f"{MC_STEM}\nA) {options[0][2]}\nB) {options[1][2]}{suffix}"
    return PromptVariant(
        prompt_id=family + ("_ow" if suffix else ""),
        family=family,
        text=text,
        options=options,
        one_word=bool(suffix),
    )


def _yes_no(task: TaskSpec, family: str, suffix: str) -> PromptVariant:
    p = task.prompts
    stems = {
        "abnormal": (p.abnormal, "positive"),
        "normal": (p.normal, "negative"),
        "evidence": (p.evidence, "positive"),
        "guided": (f"{p.evidence} Consider signs of {p.guided_signs}", "positive"),
    }
    stem, yes_means = stems[family]
    return PromptVariant(
        prompt_id=family + ("_ow" if suffix else ""),
        family=family,
        text=stem + suffix,
        yes_means=yes_means,
        one_word=bool(suffix),
    )


def closed_variant(task: TaskSpec, family: str, one_word: bool, suffix: str) -> PromptVariant:
    if family not in CLOSED_FAMILIES:
        raise PresetError(f"unknown prompt family {family!r}; known: {', '.join(CLOSED_FAMILIES)}")
    s = suffix if one_word else ""
    return _mc(task, family, s) if family.startswith("mc_") else _yes_no(task, family, s)


def describe_variants(task: TaskSpec) -> list[PromptVariant]:
    subj = task.describe.subject
    base = (
        f"Describe this image in great detail and pay attention to any relevant {subj.features}. "
        f"Imagine a {subj.reader} will use your description"
    )
    return [
        PromptVariant(prompt_id="describe", family="describe", text=base + ".", kind="describe"),
        PromptVariant(
            prompt_id="describe_dx",
            family="describe_dx",
            kind="describe",
            text=f"{base} to diagnose {subj.diagnose}.",
        ),
    ]


def closed_variants(
    catalog: Catalog, task_key: str, selection: PromptSelection = PromptSelection()
) -> list[PromptVariant]:
    """The study's closed-form prompts for a task, in the study's order (6 plain, then 6 one-word)."""
    task = catalog.task(task_key)
    families = CLOSED_FAMILIES if selection.families == "all" else selection.families
    word_options = {"both": (False, True), "only": (True,), "none": (False,)}[selection.one_word]
    if selection.prompt_set == "paper-as-run":
        as_run = [v for v in prompt_set_variants(selection.prompt_set, task_key) if v.kind == "closed"]
        return [v for ow in word_options for v in as_run if v.one_word == ow and v.family in families]
    variants = [closed_variant(task, fam, ow, catalog.one_word_suffix) for ow in word_options for fam in families]
    if selection.original_code_defects:
        variants = _with_original_defects(task, variants)
    return variants


def _with_original_defects(task: TaskSpec, variants: list[PromptVariant]) -> list[PromptVariant]:
    """Reproduce the original code's missing comma (brain and IDC scripts only).

    There, Python's implicit string concatenation fused prompt 6 with the first description prompt,
    so the model saw both as one prompt, and that fused prompt had no one-word twin.
    """
    if task.key not in ("brain_tumor", "histo_idc"):
        return variants
    describe_text = describe_variants(task)[0].text
    fixed: list[PromptVariant] = []
    for v in variants:
        if v.prompt_id == "mc_neg_first_ow":
            continue
        if v.prompt_id == "mc_neg_first":
            v = PromptVariant(
                prompt_id="mc_neg_first",
                family=v.family,
                text=v.text + describe_text,
                options=v.options,
                one_word=False,
            )
        fixed.append(v)
    return fixed


def all_variants(
    catalog: Catalog, task_key: str, selection: PromptSelection = PromptSelection()
) -> list[PromptVariant]:
    if selection.prompt_set == "paper-as-run":
        described = [v for v in prompt_set_variants(selection.prompt_set, task_key) if v.kind == "describe"]
    else:
        described = describe_variants(catalog.task(task_key))
    return closed_variants(catalog, task_key, selection) + described


# ---------------------------------------------------------------- prompt sets kept as files
PROMPT_SETS_DIR = PRESETS_DIR / "prompt_sets"
_YES_MEANS = {"abnormal": "positive", "normal": "negative", "evidence": "positive", "guided": "positive"}
_MC_LINE = re.compile(r"^\s*([AB])\)\s*(.*?)\s*$", re.M)


@lru_cache(maxsize=8)
def _prompt_set_file(name: str, folder: str) -> dict[str, Any]:
    path = Path(folder) / f"{name}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PresetError(f"{path}: cannot read prompt set {name!r} ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise PresetError(f"{path}: a prompt set needs a 'tasks' mapping")
    return data


def prompt_set_info(name: str, folder: Path = PROMPT_SETS_DIR) -> dict[str, str]:
    """Where a file-kept prompt set comes from and why it exists (its `source` and `why`)."""
    data = _prompt_set_file(name, str(folder))
    return {"name": data.get("name", name), "source": data.get("source", ""), "why": data.get("why", "")}


def prompt_set_variants(name: str, task_key: str, folder: Path = PROMPT_SETS_DIR) -> list[PromptVariant]:
    """Every prompt of a file-kept set for one task, in the order the study sent them."""
    data = _prompt_set_file(name, str(folder))
    where = f"{Path(folder) / name}.yaml: tasks.{task_key}"
    spec = data["tasks"].get(task_key)
    if not isinstance(spec, dict):
        raise PresetError(f"prompt set {name!r} has no task {task_key!r}; it has {', '.join(data['tasks'])}")
    names = spec.get("options") or {}
    out = []
    for i, entry in enumerate(spec.get("prompts") or ()):
        family, text = entry.get("family"), entry.get("text")
        if not isinstance(text, str) or not text.strip():
            raise PresetError(f"{where}.prompts.{i}: needs a text")
        kind = entry.get("kind", "closed")
        common = dict(
            prompt_id=entry.get("id") or family,
            family=family,
            text=text,
            kind=kind,
            one_word=bool(entry.get("one_word")),
        )
        if kind == "describe":
            out.append(PromptVariant(**common))
        elif family in _YES_MEANS:
            out.append(PromptVariant(**common, yes_means=_YES_MEANS[family]))
        elif family in ("mc_pos_first", "mc_neg_first"):
            out.append(PromptVariant(**common, options=_options_of(text, names, f"{where}.prompts.{i}")))
        else:
            raise PresetError(f"{where}.prompts.{i}: unknown family {family!r}")
    return out


def _options_of(text: str, names: dict, where: str) -> tuple:
    """(letter, reading, option text) for the A/B lines of a prompt, as written (spaces trimmed)."""
    reading_of = {str(names.get("positive", "")): "positive", str(names.get("negative", "")): "negative"}
    options = tuple((letter, reading_of.get(option), option) for letter, option in _MC_LINE.findall(text))
    if [o[0] for o in options] != ["A", "B"] or {o[1] for o in options} != {"positive", "negative"}:
        raise PresetError(f"{where}: the A) and B) lines must name the task's two options {sorted(reading_of)}")
    return options


def diagnosis_templates(name: str, task_key: str, folder: Path = PROMPT_SETS_DIR) -> dict[str, str]:
    """A file-kept set's diagnosis templates for one task ({desc} is their only placeholder)."""
    spec = _prompt_set_file(name, str(folder))["tasks"].get(task_key) or {}
    return dict(spec.get("diagnosis_templates") or {})


def find_variant(catalog: Catalog, task_key: str, prompt_id: str) -> PromptVariant:
    for v in all_variants(catalog, task_key):
        if v.prompt_id == prompt_id:
            return v
    raise PresetError(f"task {task_key!r} has no prompt {prompt_id!r}")


# ---------------------------------------------------------------- user-edited prompts
_OPTION_LINE = re.compile(r"^\s*\(?([A-D])[).:]\s*(.+?)\s*$", re.M)


def validate_prompt_text(text: str) -> str:
    """Clean a prompt typed by a user, or say clearly why it cannot be used."""
    # Clean first: text made only of invisible or control characters is empty too.
    cleaned = "" if text is None else "".join(ch for ch in str(text) if ch in "\n\t" or ch.isprintable())
    if not cleaned.strip():
        raise ValueError("The prompt is empty: type a question about the image.")
    if len(cleaned) > MAX_PROMPT_CHARS:
        raise ValueError(f"The prompt is {len(cleaned):,} characters long; the limit is {MAX_PROMPT_CHARS:,}.")
    return cleaned.strip()


def custom_variant(text: str, task: TaskSpec, based_on: Optional[PromptVariant] = None) -> PromptVariant:
    """A user-written prompt with the polarity it most plausibly has.

    Multiple-choice options are read from "A) ..." lines and matched to the task's class names;
    otherwise the variant it was edited from keeps its polarity, and failing that a question about
    "normal" (not "abnormal") means yes = negative.
    """
    text = validate_prompt_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    one_word = bool(re.search(r"one word|single word", text, re.I))
    options = _options_from_text(text, task)
    if options:
        return PromptVariant(
            prompt_id=f"custom_{digest}",
            family="custom_mc",
            text=text,
            options=options,
            one_word=one_word,
            custom=True,
        )
    if based_on is not None and based_on.kind == "describe":
        return PromptVariant(
            prompt_id=f"custom_{digest}", family="custom_describe", text=text, kind="describe", custom=True
        )
    # The wording's own polarity ("Is this chest X-ray normal?" -> yes means negative, "not normal"
    # -> positive), never the variant it was edited from; a question about a finding means positive.
    yes_means = question_polarity(text) or "positive"
    return PromptVariant(
        prompt_id=f"custom_{digest}",
        family="custom",
        text=text,
        yes_means=yes_means,
        one_word=one_word,
        custom=True,
    )


def _options_from_text(text: str, task: TaskSpec) -> tuple:
    found = _OPTION_LINE.findall(text)
    if len(found) < 2:
        return ()
    pos = task.prompts.options.positive.lower()
    neg = task.prompts.options.negative.lower()
    options = []
    for letter, option_text in found:
        t = option_text.strip().lower().rstrip(".")
        if t == neg or t.startswith(("no ", "not ", "normal", "benign", "healthy")):
            reading = "negative"
        elif t == pos or pos in t:
            reading = "positive"
        else:
            return ()  # options we cannot map to the task's classes: treat as yes/no text
        options.append((letter, reading, option_text.strip()))
    readings = {r for _, r, _ in options}
    return tuple(options) if readings == {"positive", "negative"} else ()
