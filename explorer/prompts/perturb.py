"""Wording families: new prompt variants made from one, each keeping or deliberately flipping its meaning.

A family is declared in presets/families.yaml: a generator (the kind of edit, below) with its
parameters, so a user adds a family by writing YAML. Each generator is a pure function of a prompt
variant, the task's words and a seeded random source; what it returns carries its polarity
(`yes_means` for yes/no questions, each option's reading for multiple choice) computed from the edit
itself, never guessed afterwards:
  surface        casing, punctuation, whitespace, typos (seeded), the answer-format instruction
  rewording      question templates, synonyms of the finding, paraphrases by a text model (a callable)
  polarity_flip  the question asked the other way round, its reading flipped with it
  options        option order and option labels (A/B, 1/2, (a)/(b), none) for multiple choice
  framing        a role, a leading cue, a patient context, a request for confidence
  study          the study's own 12 wordings, so a sweep can mix them in
A variant's id is derived from its family, its parent and the edit's parameters (the seed among them
where the edit is random), so the same request makes the same ids on any machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Sequence

import yaml

from explorer.catalog.presets import PRESETS_DIR, Catalog, PresetError, PromptSelection
from explorer.prompts.variants import CLOSED_FAMILIES, closed_variants
from explorer.schema import PromptVariant, Reading

FAMILIES_FILE = PRESETS_DIR / "families.yaml"
GENERATORS = (
    "casing",
    "punctuation",
    "whitespace",
    "typos",
    "answer_format",
    "option_order",
    "option_labels",
    "templates",
    "synonyms",
    "polarity_flip",
    "framing",
    "study",
    "paraphrase",
)
LABEL_STYLES = ("A)", "1)", "(a)", "none")
STUDY_GROUP = "study"
# A paraphraser: (instruction with the question filled in, how many, seed) -> new question texts.
Paraphraser = Callable[[str, int, int], Sequence[str]]
_OPPOSITE: dict[str, Reading] = {"positive": "negative", "negative": "positive"}


# ---------------------------------------------------------------- declared families
@dataclass(frozen=True)
class FamilySpec:
    name: str
    title: str
    generator: str
    meaning: Literal["kept", "flipped"] = "kept"
    tier: int = 0  # how big an edit it is (the flip search tries small tiers first)
    count: int = 3
    params: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class FamilyCatalog:
    families: Mapping[str, FamilySpec]
    findings: Mapping[str, tuple[str, ...]]  # task -> synonyms of its finding

    def family(self, name: str) -> FamilySpec:
        try:
            return self.families[name]
        except KeyError:
            raise PresetError(f"unknown wording family {name!r}; known: {', '.join(self.families)}") from None

    def names(self) -> list[str]:
        return list(self.families)


def load_families(path: Path | str = FAMILIES_FILE) -> FamilyCatalog:
    """The wording families of a YAML file, checked, with a one-line error naming the bad key."""
    return _load_families(str(path))


@lru_cache(maxsize=4)
def _load_families(path: str) -> FamilyCatalog:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PresetError(f"{path}: cannot read wording families ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("families"), dict) or not data["families"]:
        raise PresetError(f"{path}: needs a 'families' mapping of family names to specs")
    families = {}
    for name, raw in data["families"].items():
        where = f"{path}: families.{name}"
        if not isinstance(raw, dict):
            raise PresetError(f"{where}: must be a mapping")
        unknown = set(raw) - {"title", "generator", "meaning", "tier", "count", "params"}
        if unknown:
            raise PresetError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if raw.get("generator") not in GENERATORS:
            raise PresetError(f"{where}.generator: {raw.get('generator')!r} is not one of {', '.join(GENERATORS)}")
        if raw.get("meaning", "kept") not in ("kept", "flipped"):
            raise PresetError(f"{where}.meaning: must be 'kept' or 'flipped'")
        count, tier = raw.get("count", 3), raw.get("tier", 0)
        if not isinstance(count, int) or count < 1 or not isinstance(tier, int):
            raise PresetError(f"{where}: count must be a positive whole number and tier a whole number")
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise PresetError(f"{where}.params: must be a mapping")
        families[str(name)] = FamilySpec(
            name=str(name),
            title=str(raw.get("title") or name),
            generator=raw["generator"],
            meaning=raw.get("meaning", "kept"),
            tier=tier,
            count=count,
            params=params,
        )
    findings = {}
    for task, raw in (data.get("tasks") or {}).items():
        words = (raw or {}).get("findings") if isinstance(raw, dict) else None
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise PresetError(f"{path}: tasks.{task}.findings must be a list of words")
        findings[str(task)] = tuple(words)
    return FamilyCatalog(families, findings)


# ---------------------------------------------------------------- what a family knows about the task
@dataclass(frozen=True)
class TaskWords:
    task: str
    findings: tuple[str, ...]  # the finding first, then its synonyms
    positive: str  # option names
    negative: str
    modality: str
    role: str
    one_word_suffix: str = "\nAnswer in one word."

    @property
    def finding(self) -> str:
        return self.findings[0]

    def fill(self, template: str, finding: Optional[str] = None) -> str:
        return template.format(
            finding=finding or self.finding,
            positive=self.positive,
            negative=self.negative,
            modality=self.modality,
            role=self.role,
            labels="{labels}",
        )


_EVIDENCE_OF = re.compile(r"evidence of (.+?)\?", re.I)


def task_words(catalog: Catalog, task: str, families: Optional[FamilyCatalog] = None) -> TaskWords:
    spec = catalog.task(task)
    declared = (families or load_families()).findings.get(task, ())
    named = _EVIDENCE_OF.search(spec.prompts.evidence)
    first = named.group(1) if named else spec.class_names.positive.replace("_", " ")
    findings = (first,) + tuple(w for w in declared if w != first)
    return TaskWords(
        task=task,
        findings=findings,
        positive=spec.prompts.options.positive,
        negative=spec.prompts.options.negative,
        modality=spec.modality,
        role=spec.diagnosis.role,
        one_word_suffix=catalog.one_word_suffix,
    )


# ---------------------------------------------------------------- a wording taken apart and put back
@dataclass(frozen=True)
class Parts:
    """A closed-form prompt as its pieces: composing them gives the text, and the options' letters are
    the labels the text shows (what the answer reader matches)."""

    stem: str  # the question
    options: tuple[tuple[Reading, str], ...] = ()  # (reading, option text), in order
    label_style: str = "A)"
    instruction: str = ""  # answer-format line ("Answer in one word."), "" for none
    before: str = ""  # framing before the question (role, context, cue)
    after: str = ""  # framing after everything (a request for confidence)
    lead: str = ""  # whitespace before it all
    trail: str = ""  # whitespace after it all
    sep: str = "\n"  # between the question, the options and the instruction

    def letters(self) -> list[str]:
        n = len(self.options)
        if self.label_style == "1)":
            return [str(i + 1) for i in range(n)]
        if self.label_style == "(a)":
            return [chr(ord("a") + i) for i in range(n)]
        if self.label_style == "none":
            return [text for _, text in self.options]  # the option's own name is what an answer says
        return [chr(ord("A") + i) for i in range(n)]

    def option_lines(self) -> list[str]:
        if self.label_style == "none":
            return [text for _, text in self.options]
        if self.label_style == "(a)":
            return [f"({letter}) {text}" for letter, (_, text) in zip(self.letters(), self.options)]
        return [f"{letter}) {text}" for letter, (_, text) in zip(self.letters(), self.options)]

    def text(self) -> str:
        head = f"{self.before} {self.stem}" if self.before else self.stem
        blocks = [
            head,
            *self.option_lines(),
            *([self.instruction] if self.instruction else []),
            *([self.after] if self.after else []),
        ]
        return self.lead + self.sep.join(blocks) + self.trail

    def labels_phrase(self) -> str:
        letters = self.letters()
        return ", ".join(letters[:-1]) + f" or {letters[-1]}" if len(letters) > 1 else "".join(letters)

    def variant(self, base: PromptVariant, yes_means: Optional[Reading] = None) -> PromptVariant:
        options = tuple((letter, reading, text) for letter, (reading, text) in zip(self.letters(), self.options))
        one_word = bool(re.search(r"\b(?:one|single)[ -]word\b", self.instruction, re.I))
        return replace(
            base,
            text=self.text(),
            options=options,
            one_word=one_word,
            yes_means=None if options else (yes_means or base.yes_means),
            custom=False,
        )


_LABEL_LINE = r"^[ \t]*\(?{label}[).:][ \t]*{text}[ \t]*$"


def decompose(variant: PromptVariant, one_word_suffix: str = "\nAnswer in one word.") -> Optional[Parts]:
    """The parts of a closed-form variant, or None when its text cannot be taken apart safely
    (a description prompt, options that are not lines of the text)."""
    if variant.kind != "closed":
        return None
    text = variant.text.strip()
    instruction = ""
    suffix = one_word_suffix.strip()
    if suffix and text.endswith(suffix) and text[: -len(suffix)].strip():
        instruction, text = suffix, text[: -len(suffix)].rstrip()
    if not variant.options:
        return Parts(stem=text, instruction=instruction) if variant.yes_means else None
    first_line, last_end = None, 0
    for letter, _reading, option in variant.options:
        m = re.search(_LABEL_LINE.format(label=re.escape(letter), text=re.escape(option)), text, re.M | re.I)
        if m is None:
            return None
        first_line = m.start() if first_line is None else min(first_line, m.start())
        last_end = max(last_end, m.end())
    stem = text[:first_line].strip()
    style = "A)" if variant.options[0][0].isupper() else "(a)" if variant.options[0][0].islower() else "1)"
    # Text after the options stays with every edit (the study's fused prompt 6 carries a description request).
    return Parts(
        stem=stem,
        options=tuple((r, t) for _, r, t in variant.options),
        label_style=style,
        instruction=instruction,
        after=" ".join(text[last_end:].split()),
    )


# ---------------------------------------------------------------- generators
@dataclass(frozen=True)
class Edit:
    """One generated wording before it has an id: what the edit was and the resulting parts."""

    label: str  # human readable ("upper case", "2 typos")
    params: Mapping[str, Any]
    parts: Parts
    yes_means: Optional[Reading] = None  # for yes/no questions: the new polarity when it changes


def _case(style: str, s: str) -> str:
    if style == "lower":
        return s.lower()
    if style == "upper":
        return s.upper()
    if style == "title":
        return re.sub(r"[A-Za-z]+", lambda m: m.group()[0].upper() + m.group()[1:].lower(), s)
    raise PresetError(f"casing: unknown style {style!r} (lower, upper, title)")


def gen_casing(parts: Parts, words: TaskWords, params, rng) -> list[Edit]:
    out = []
    for style in params.get("styles", ("lower", "upper", "title")):
        new = replace(
            parts,
            stem=_case(style, parts.stem),
            instruction=_case(style, parts.instruction),
            options=tuple((r, _case(style, t)) for r, t in parts.options),
        )
        out.append(Edit(f"{style} case", {"style": style}, new))
    return out


_PUNCTUATION = {
    "no_question_mark": lambda s: s.replace("?", ""),
    "double_question_mark": lambda s: s.replace("?", "??"),
    "space_before_question_mark": lambda s: s.replace("?", " ?"),
    "full_stop": lambda s: s.replace("?", "."),
}


def gen_punctuation(parts: Parts, words, params, rng) -> list[Edit]:
    out = []
    for style in params.get("styles", list(_PUNCTUATION)):
        if style not in _PUNCTUATION:
            raise PresetError(f"punctuation: unknown style {style!r} ({', '.join(_PUNCTUATION)})")
        if "?" in parts.stem:
            out.append(
                Edit(style.replace("_", " "), {"style": style}, replace(parts, stem=_PUNCTUATION[style](parts.stem)))
            )
    return out


def gen_whitespace(parts: Parts, words, params, rng) -> list[Edit]:
    styles = {
        "leading_newline": lambda p: replace(p, lead="\n"),
        "trailing_newline": lambda p: replace(p, trail="\n"),
        "double_spaces": lambda p: replace(p, stem=p.stem.replace(" ", "  ")),
        "blank_lines": lambda p: replace(p, sep="\n\n"),
        "one_line": lambda p: replace(p, sep=" "),
    }
    out = []
    for style in params.get("styles", list(styles)):
        if style not in styles:
            raise PresetError(f"whitespace: unknown style {style!r} ({', '.join(styles)})")
        if style == "blank_lines" and parts.sep == "\n" and not (parts.options or parts.instruction):
            continue  # nothing to separate
        if style == "one_line" and not (parts.options or parts.instruction):
            continue
        out.append(Edit(style.replace("_", " "), {"style": style}, styles[style](parts)))
    return out


# Words that carry the question's polarity are never misspelt: "nromal" could be read as either.
_PROTECTED = {"normal", "abnormal", "not", "no", "absent", "present", "free", "without"}


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def gen_typos(parts: Parts, words, params, rng) -> list[Edit]:
    out = []
    for n in params.get("typos", (1, 2, 3)):
        draw_seed = rng.randrange(2**31)
        draw = random.Random(draw_seed)
        tokens = re.split(r"(\W+)", parts.stem)
        places = [i for i, t in enumerate(tokens) if len(t) >= 4 and t.isalpha() and t.lower() not in _PROTECTED]
        if not places:
            continue
        for i in draw.sample(places, min(int(n), len(places))):
            tokens[i] = _typo(tokens[i], draw)
        out.append(
            Edit(
                f"{n} typo{'s' if n != 1 else ''}",
                {"typos": n, "seed": draw_seed},
                replace(parts, stem="".join(tokens)),
            )
        )
    return out


def gen_answer_format(parts: Parts, words, params, rng) -> list[Edit]:
    key = "choice" if parts.options else "yes_no"
    out = []
    for template in params.get(key, ()):
        if "{labels}" in template and parts.label_style == "none":
            continue
        labels = parts.labels_phrase()
        if "JSON" in template and "{labels}" in template:
            labels = " or ".join(json.dumps(x) for x in parts.letters())
        instruction = template.replace("{labels}", labels)
        if instruction == parts.instruction:
            continue
        out.append(
            Edit(
                f"instruction: {instruction}" if instruction else "no instruction",
                {"instruction": template},
                replace(parts, instruction=instruction),
            )
        )
    return out


def gen_option_order(parts: Parts, words, params, rng) -> list[Edit]:
    if len(parts.options) < 2:
        return []
    return [Edit("options reversed", {"order": "reversed"}, replace(parts, options=parts.options[::-1]))]


def gen_option_labels(parts: Parts, words, params, rng) -> list[Edit]:
    if not parts.options:
        return []
    out = []
    for style in params.get("styles", LABEL_STYLES):
        if style not in LABEL_STYLES:
            raise PresetError(f"option_labels: unknown style {style!r} ({', '.join(LABEL_STYLES)})")
        if style != parts.label_style:
            shown = "no labels" if style == "none" else f"labels {style}"
            out.append(Edit(shown, {"style": style}, replace(parts, label_style=style)))
    return out


def gen_templates(parts: Parts, words: TaskWords, params, rng) -> list[Edit]:
    """Questions from templates: for yes/no, templates that ask whether the finding is there (a yes means
    the positive reading); for multiple choice, new stems over the same options."""
    key = "choice" if parts.options else "yes_no"
    out = []
    for k, template in enumerate(params.get(key, ()), 1):
        stem = words.fill(template)
        if stem != parts.stem:
            out.append(Edit(f"question {k}", {"template": template}, replace(parts, stem=stem), "positive"))
    return out


def gen_synonyms(parts: Parts, words: TaskWords, params, rng) -> list[Edit]:
    if parts.options:
        return []
    out = []
    named = re.search(re.escape(words.finding), parts.stem, re.I)
    for synonym in words.findings[1:]:
        if named:
            stem = parts.stem[: named.start()] + synonym + parts.stem[named.end() :]
            yes_means = None  # the same question about the same finding: polarity unchanged
        else:
            stem = words.fill(params.get("template", "Does this image contain evidence of {finding}?"), synonym)
            yes_means = "positive"
        out.append(Edit(f"finding called {synonym}", {"synonym": synonym}, replace(parts, stem=stem), yes_means))
    return out


_NORMAL_WORD = re.compile(r"\b(ab)?normal\b", re.I)


def gen_polarity_flip(parts: Parts, words: TaskWords, params, rng, yes_means: Optional[Reading] = None) -> list[Edit]:
    """The question asked the other way round. For yes/no the new polarity is the opposite of the old;
    for multiple choice ("which does it not show?") every option's reading is flipped."""
    if parts.options:
        return [
            Edit(
                f"which it does not show ({k})",
                {"template": t},
                replace(parts, stem=words.fill(t), options=tuple((_OPPOSITE[r], text) for r, text in parts.options)),
            )
            for k, t in enumerate(params.get("choice", ()), 1)
        ]
    if yes_means not in _OPPOSITE:
        return []
    flipped = _OPPOSITE[yes_means]
    out = []
    m = _NORMAL_WORD.search(parts.stem)
    if m:
        word = m.group()
        swapped = word[2:] if m.group(1) else ("Ab" + word if word[0].isupper() else "ab" + word)
        swapped = swapped[0].upper() + swapped[1:] if word[0].isupper() else swapped.lower()
        out.append(
            Edit(
                f"{word} -> {swapped}",
                {"swap": f"{word}->{swapped}"},
                replace(parts, stem=parts.stem[: m.start()] + swapped + parts.stem[m.end() :]),
                flipped,
            )
        )
    key = "absent" if yes_means == "positive" else "present"
    for k, template in enumerate(params.get(key, ()), 1):
        out.append(
            Edit(
                f"asked about {'absence' if key == 'absent' else 'presence'} ({k})",
                {"template": template},
                replace(parts, stem=words.fill(template)),
                flipped,
            )
        )
    return out


_FRAMING_KINDS = ("role", "leading_cue", "patient_context", "confidence")


def gen_framing(parts: Parts, words: TaskWords, params, rng) -> list[Edit]:
    out = []
    for kind in _FRAMING_KINDS:
        for k, template in enumerate(params.get(kind, ()), 1):
            line = words.fill(template)
            new = (
                replace(parts, after=f"{parts.after} {line}".strip())
                if kind == "confidence"
                else replace(parts, before=f"{parts.before} {line}".strip())
            )
            out.append(Edit(f"{kind.replace('_', ' ')} ({k})", {"kind": kind, "template": template}, new))
    return out


_SIMPLE = {
    "casing": gen_casing,
    "punctuation": gen_punctuation,
    "whitespace": gen_whitespace,
    "typos": gen_typos,
    "answer_format": gen_answer_format,
    "option_order": gen_option_order,
    "option_labels": gen_option_labels,
    "templates": gen_templates,
    "synonyms": gen_synonyms,
    "framing": gen_framing,
}


# ---------------------------------------------------------------- generated variants
@dataclass(frozen=True)
class Perturbed:
    """A generated variant with what made it: its family, the edit (label and parameters), its parent."""

    variant: PromptVariant
    family: str
    label: str
    params: Mapping[str, Any] = field(compare=False)
    meaning: str = "kept"
    parent: str = ""


def variant_id(family: str, parent: PromptVariant, params: Mapping[str, Any]) -> str:
    """The id of a generated variant: its family and a hash of its parent and the edit's parameters
    (the seed is among them where the edit is random), so the same edit gets the same id anywhere."""
    blob = json.dumps(
        {"family": family, "parent": parent.prompt_id, "parent_text": parent.text, "params": params},
        sort_keys=True,
        default=str,
    )
    return f"{family}_{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def family_group(family: str) -> str:
    """The group a stored prompt family belongs to: the study's wordings are one group ("study"), edited
    ones "custom", generated ones their family."""
    if family in CLOSED_FAMILIES:
        return STUDY_GROUP
    if family.startswith("custom"):
        return "custom"
    return family or "unknown"


def perturb(
    parent: PromptVariant,
    family: FamilySpec,
    words: TaskWords,
    seed: int = 0,
    count: Optional[int] = None,
    catalog: Optional[Catalog] = None,
    selection: PromptSelection = PromptSelection(),
    paraphraser: Optional[Paraphraser] = None,
) -> list[Perturbed]:
    """Up to `count` (the family's own count when None; 0 for all) new variants of `parent` by one family.

    Deterministic: the same parent, family, count and seed give the same variants with the same ids.
    The seed also picks which candidates are kept when the family has more than `count`.
    """
    limit = family.count if count is None else count
    rng = random.Random(f"{seed}|{family.name}|{parent.prompt_id}")
    if family.generator == "study":
        if catalog is None:
            raise ValueError("the study family needs the catalog")
        return [
            Perturbed(v, family.name, v.prompt_id, {}, family.meaning, "")
            for v in _pick(closed_variants(catalog, words.task, selection), limit, rng)
        ]
    parts = decompose(parent, words.one_word_suffix)
    if parts is None:
        return []
    if family.generator == "polarity_flip":
        edits = gen_polarity_flip(parts, words, family.params, rng, parent.yes_means)
    elif family.generator == "paraphrase":
        edits = _paraphrases(parts, parent, words, family, limit, seed, paraphraser)
    else:
        edits = _SIMPLE[family.generator](parts, words, family.params, rng)
    seen = {parent.text}
    out = []
    for edit in edits:
        variant = edit.parts.variant(parent, edit.yes_means)
        if variant.text in seen or not variant.text.strip():
            continue
        seen.add(variant.text)
        pid = variant_id(family.name, parent, edit.params)
        out.append(
            Perturbed(
                replace(variant, prompt_id=pid, family=family.name, parent=parent.prompt_id),
                family.name,
                edit.label,
                dict(edit.params),
                family.meaning,
                parent.prompt_id,
            )
        )
    return _pick(out, limit, rng)


def _pick(items: list, limit: int, rng: random.Random) -> list:
    """`limit` of the items chosen by the seeded source, in their original order (all when limit is 0)."""
    if not limit or limit >= len(items):
        return list(items)
    keep = sorted(rng.sample(range(len(items)), limit))
    return [items[i] for i in keep]


def _paraphrases(
    parts: Parts,
    parent: PromptVariant,
    words: TaskWords,
    family: FamilySpec,
    limit: int,
    seed: int,
    paraphraser: Optional[Paraphraser],
) -> list[Edit]:
    """Paraphrases of the question by a text model. A yes/no paraphrase keeps the parent's polarity only
    when the question still reads that way (question_polarity); one that reads the other way is dropped,
    since nothing says the model meant to flip it."""
    if paraphraser is None:
        raise ValueError(f"The {family.title!r} family needs a text model: configure a paraphraser, or leave it out.")
    from explorer.scoring.question_focus import question_polarity

    instruction = family.params.get("instruction", "Rewrite this question in other words:\n{question}")
    texts = paraphraser(instruction.replace("{question}", parts.stem), max(limit, 1), seed)
    edits = []
    for i, text in enumerate(texts):
        stem = " ".join(str(text).split())
        if not stem:
            continue
        if not parts.options and question_polarity(stem) not in (None, parent.yes_means):
            continue
        edits.append(Edit(f"paraphrase {i + 1}", {"paraphrase": stem}, replace(parts, stem=stem)))
    return edits


def reader_agrees(
    parent: PromptVariant, variant: PromptVariant, words: TaskWords, finding: Optional[str] = None
) -> bool:
    """Whether the answer reader reads plain statements about the finding under `variant` as it does under
    `parent` (`finding`: what the variant calls it, when a synonym). The rule reader takes its target from
    the question's words, so some edits (a typo in the finding, a cue that names the finding, a "which does
    it not show" question) leave it unable to read an answer it read before: a flip measured there would
    be the reader's, not the model's."""
    from explorer.scoring.verdicts import parse_verdict

    said = ("There are signs of {} in this image.", "No {} is seen in this image.")
    for template in said:
        before = parse_verdict(template.format(words.finding), parent).label
        now = parse_verdict(template.format(finding or words.finding), variant).label
        if before in ("positive", "negative") and now != before:
            return False
    return True


def generate(
    parents: Iterable[PromptVariant],
    families: Sequence[str],
    words: TaskWords,
    seed: int = 0,
    count: Optional[int] = None,
    family_catalog: Optional[FamilyCatalog] = None,
    catalog: Optional[Catalog] = None,
    selection: PromptSelection = PromptSelection(),
    paraphraser: Optional[Paraphraser] = None,
    reader_check: bool = True,
) -> list[Perturbed]:
    """Every family's variants of every parent, without repeats (the first id of a text wins).

    reader_check: leave out a wording the answer reader cannot read as it reads its parent (reader_agrees).

    With a catalog, an edit that lands on one of the study's own wordings ("Is this image normal?" from
    "...abnormal?") is left out unless the study family brings it: the store files an answer under the
    wording that asked first, so the same text under two families would blur the families' numbers.
    """
    fc = family_catalog or load_families()
    specs = [fc.family(name) for name in families]
    parents = list(parents)
    out: list[Perturbed] = []
    study_texts = {v.text for v in closed_variants(catalog, words.task, selection)} if catalog is not None else set()
    seen_ids, seen_texts = set(), {p.text for p in parents}
    for spec in specs:
        sources = parents[:1] if spec.generator == "study" else parents
        limit = spec.count if count is None else count
        for parent in sources:
            # Every candidate first, then the seed picks `limit` of those that pass, so a left-out
            # candidate does not leave the family short.
            everything = perturb(
                parent,
                spec,
                words,
                seed,
                limit if spec.generator == "paraphrase" else 0,
                catalog,
                selection,
                paraphraser,
            )
            usable = []
            for item in everything:
                if item.variant.prompt_id in seen_ids or item.variant.text in seen_texts:
                    continue
                if spec.generator != "study" and item.variant.text in study_texts:
                    continue
                if (
                    reader_check
                    and spec.generator != "study"
                    and not reader_agrees(parent, item.variant, words, item.params.get("synonym"))
                ):
                    continue
                usable.append(item)
            for item in _pick(usable, limit, random.Random(f"{seed}|{spec.name}|{parent.prompt_id}|pick")):
                seen_ids.add(item.variant.prompt_id)
                seen_texts.add(item.variant.text)
                out.append(item)
    return out


def family_variants(
    catalog: Catalog,
    task: str,
    parents: Sequence[PromptVariant],
    families: Sequence[str],
    seed: int = 0,
    count: Optional[int] = None,
    selection: PromptSelection = PromptSelection(),
) -> list[PromptVariant]:
    """The variants a sweep adds for `families` (by name; "all" for every family but paraphrases)."""
    fc = load_families()
    names = [n for n in fc.names() if fc.family(n).generator != "paraphrase"] if list(families) == ["all"] else families
    words = task_words(catalog, task, fc)
    return [
        p.variant
        for p in generate(
            parents, names, words, seed=seed, count=count, family_catalog=fc, catalog=catalog, selection=selection
        )
    ]
