"""The words the app shows for the engine's ids: one name per model, per wording, per verdict, per metric.

Ids (demo-llava-med, mc_neg_first_ow, custom_fb8bf17a, f1_all) stay in data and downloads; a person
reads these names instead, the same on checkboxes, cards, tables and plots.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from explorer.analysis.naming import prompt_label

# What each verdict class means, in one line (the legend under the answer cards and the badges' tooltips).
VERDICT_HELP = {
    "positive": "the answer says the finding is there",
    "negative": "the answer says the finding is not there",
    "refusal": "the model declined to answer (e.g. \u201cI cannot give a diagnosis, see a doctor\u201d)",
    "hedge": "the answer says both, or contradicts itself, and commits to neither",
    "unclear": "no yes/no, option or finding could be read from the answer",
    "not scored": "a refusal, hedge or unclear answer, or the truth is unknown: neither right nor wrong",
}
# The three ways not to answer; their share is the non-answer rate (refusal alone is the refusal rate).
NON_ANSWER_CLASSES = ("refusal", "hedge", "unclear")

DESCRIBE_NAMES = {"describe": "Describe the image", "describe_dx": "Describe for a diagnosis"}

# Metric columns as a person reads them, with one line each (table headers and the legend under them).
METRIC_NAMES = {
    "model": ("model", ""),
    "task": ("task", ""),
    "prompt_id": ("wording", ""),
    "n": ("answers", "how many answers the row counts"),
    "accuracy": ("accuracy (answered)", "right answers / answers that said yes or no; non-answers left out"),
    "accuracy_all": ("accuracy (all)", "right answers / all answers; a non-answer counts as wrong"),
    "f1_all": ("F1, non-answers wrong", "the study's F1: each non-answer counted as the wrong class"),
    "refusal_rate": ("refusal rate", "answers where the model declined / all answers"),
    "non_answer_rate": ("non-answer rate", "refusals + hedges + unclear answers / all answers"),
    "hedge_rate": ("hedge rate", "answers that commit to neither reading / all answers"),
    "sensitivity": ("sensitivity", "findings present that the model called present"),
    "specificity": ("specificity", "findings absent that the model called absent"),
    "p_positive": ("p(yes)", "probability of the positive reading from the first answer token"),
    # Describe & diagnose
    "template": ("diagnosis template", ""),
    "n_unparsed": ("no yes/no", "diagnoses that gave neither yes nor no"),
    "yes_rate": ("yes rate", "diagnoses that said yes / all diagnoses"),
    "f1": ("F1", "F1 of the diagnoses that said yes or no"),
    "closed_f1_all": ("closed-form F1", "the model's own yes/no answers on the same images, non-answers wrong"),
    "signal_recovered": ("signal recovered", "F1 via the description minus the closed-form F1"),
}


def model_name(spec: Any, alias: str = "") -> str:
    """A model's short title ("Demo LlavaNext", "MedGemma 4B it"): the preset's title without its note in
    brackets, the same rule plots.py uses for legends."""
    title = getattr(spec, "title", None) or alias
    return title.split(" (")[0].strip() or alias


def model_label(spec: Any) -> str:
    """The checkbox label: name and role ("Demo Llava · medical")."""
    return f"{model_name(spec)} \u00b7 {spec.role}"


def prompt_name(prompt_id: str, custom_numbers: Optional[Mapping[str, int]] = None) -> str:
    """A wording's name: the study's family names, "your wording N" for an edited one (numbered in the
    order this visitor wrote them), the id itself when nothing better is known."""
    if prompt_id in DESCRIBE_NAMES:
        return DESCRIBE_NAMES[prompt_id]
    if prompt_id.startswith("custom_"):
        n = (custom_numbers or {}).get(prompt_id)
        return f"your wording {n}" if n else "your wording"
    return prompt_label(prompt_id)


def metric_header(column: str) -> str:
    return METRIC_NAMES.get(column, (column.replace("_", " "), ""))[0]


def metric_legend(columns) -> str:
    """One line per explained column, for a caption under a metrics table (markdown)."""
    lines = [
        f"**{METRIC_NAMES[c][0]}**: {METRIC_NAMES[c][1]}" for c in columns if c in METRIC_NAMES and METRIC_NAMES[c][1]
    ]
    return " · ".join(lines)
