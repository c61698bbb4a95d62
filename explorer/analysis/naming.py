"""The study's names and orders as every view shows them: task titles and class names from the
presets, tasks in the paper's order of difficulty, prompts in the study's order, and short readable
names of prompt variants (the six families, their one-word versions, generated wordings)."""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

from explorer.prompts.variants import CLOSED_FAMILIES

TASK_ORDER = ("brain_tumor", "pneumonia", "skin_cancer", "histo_idc")  # easiest to hardest in the paper
PROMPT_LABELS = {
    "abnormal": "Is it abnormal?",
    "normal": "Is it normal?",
    "evidence": "Evidence of the finding?",
    "guided": "Evidence + signs to check",
    "mc_pos_first": "A/B, finding first",
    "mc_neg_first": "A/B, no finding first",
}
ONE_WORD = "_ow"
_GENERATED_ID = re.compile(r"([a-z][a-z_]*)_([0-9a-f]{8})")  # perturb.variant_id: family + parameter hash


def catalog_or_presets(catalog: Any) -> Any:
    """The given catalog, else the project's presets; None when they cannot be read (keys are shown)."""
    if catalog is not None:
        return catalog
    try:
        from explorer.catalog.presets import load_catalog

        return load_catalog()
    except Exception:  # a figure must not fail because the presets folder is unreadable
        return None


def task_title(task: str, catalog: Any = None) -> str:
    spec = getattr(catalog_or_presets(catalog), "tasks", {}).get(task)
    return spec.title if spec is not None else str(task).replace("_", " ")


def class_name(task: Optional[str], label: Optional[str], catalog: Any = None) -> str:
    """'tumor' / 'no tumor' for a task's positive / negative class; the bare label without a task."""
    if label not in ("positive", "negative"):
        return "unknown class"
    spec = getattr(catalog_or_presets(catalog), "tasks", {}).get(task) if task is not None else None
    return getattr(spec.class_names, label).replace("_", " ") if spec is not None else label


def task_order(tasks: Sequence[Any]) -> list[str]:
    """The study's tasks in its order of difficulty, then any others alphabetically."""
    present = list(dict.fromkeys(str(t) for t in tasks if t is not None and not _isnan(t)))
    known = [t for t in TASK_ORDER if t in present]
    return known + sorted(t for t in present if t not in TASK_ORDER)


def prompt_order(prompt_ids: Sequence[Any]) -> list[str]:
    """The study's order: the six families, then their one-word (_ow) versions, then anything else."""
    present = list(dict.fromkeys(str(p) for p in prompt_ids if p is not None and not _isnan(p)))

    def key(pid: str) -> tuple:
        one_word = pid.endswith(ONE_WORD)
        family = pid[: -len(ONE_WORD)] if one_word else pid
        if family in CLOSED_FAMILIES:
            return (0, one_word, CLOSED_FAMILIES.index(family), pid)
        return (1, False, 0, pid)

    return sorted(present, key=key)


def prompt_label(prompt_id: str) -> str:
    """A short readable name of a prompt variant ('Is it normal? (one word)'); a generated wording by its
    family and the start of its hash ('typos 9e7d'); unknown ids as they are."""
    one_word = prompt_id.endswith(ONE_WORD)
    family = prompt_id[: -len(ONE_WORD)] if one_word else prompt_id
    generated = _GENERATED_ID.fullmatch(prompt_id)
    if generated and generated.group(1) != "custom":
        return f"{generated.group(1).replace('_', ' ')} {generated.group(2)[:4]}"
    if family not in PROMPT_LABELS:
        return prompt_id
    return PROMPT_LABELS[family] + (" (one word)" if one_word else "")


def _isnan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
