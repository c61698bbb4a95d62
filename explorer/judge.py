"""The study's LLM judge, through any backend.

The study handed each closed-form answer to an LLM (gpt-5, temperature 0) with the task's rules,
the original prompt and the model's response, and took back one word: the task's positive token,
its negative token, or AMBIGUOUS. This module asks the same question of any backend
(`generate(requests) -> responses`, `identity(model_alias)`), in its own wording of the rules.

Mapping (the study's meaning): positive token -> "positive", negative token -> "negative",
AMBIGUOUS -> "refusal". A judgement that fails (backend error, empty or unreadable output) is also
a "refusal", as in the study, with a detail starting "judge failed: " so it can be told apart
(and not cached as if it were a real judgement).

Generation: greedy, 16 new tokens, temperature 0. Some models reject parameters: gpt-5 refuses
temperature=0 (the original code recorded ERROR, i.e. a refusal, for those calls). The judge
does not special-case models; the backend's endpoint config decides what is sent
(OpenAI endpoint `send_temperature: false`). Reasoning models also spend hidden tokens inside
max_new_tokens: give such a judge a larger `generation` (or a low reasoning effort in the
endpoint's `extra`), or its replies come back empty and count as failed judgements.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .requests import text_request
from .schema import GenerationSettings, PromptVariant, Request, Response, Verdict

__all__ = [
    "AMBIGUOUS", "JUDGE_FAILED", "JUDGE_GENERATION", "JudgeTokens", "LLMJudge", "is_judge_failure",
]

AMBIGUOUS = "AMBIGUOUS"
JUDGE_FAILED = "judge failed: "
JUDGE_GENERATION = GenerationSettings(max_new_tokens=16, do_sample=False, temperature=0.0)


@dataclass(frozen=True)
class JudgeTokens:
    """The words the judge answers with for one task, plus optional wording for its rules."""

    positive: str
    negative: str
    image_kind: str = "medical image"  # e.g. "brain MRI image"
    condition: str = "the condition the prompt asks about"  # e.g. "a brain tumor"

    def __post_init__(self) -> None:
        words = [self.positive, self.negative]
        if any(not isinstance(w, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", w) for w in words):
            raise ValueError(f"judge tokens must be single words (letters, digits, _): {words!r}")
        upper = {w.upper() for w in words}
        if len(upper) != 2 or AMBIGUOUS in upper:
            raise ValueError(f"judge tokens must differ from each other and from {AMBIGUOUS}: {words!r}")

    @classmethod
    def coerce(cls, value: Any) -> "JudgeTokens":
        """From a mapping {"positive": ..., "negative": ...[, "image_kind", "condition"]} or an object
        with those attributes (the presets' Readings)."""
        if isinstance(value, cls):
            return value
        get = value.get if isinstance(value, Mapping) else (lambda k, d=None: getattr(value, k, d))
        kwargs = {k: get(k) for k in ("positive", "negative", "image_kind", "condition") if get(k)}
        if "positive" not in kwargs or "negative" not in kwargs:
            raise ValueError(f"judge tokens need 'positive' and 'negative', got {value!r}")
        return cls(**kwargs)


def is_judge_failure(verdict: Verdict) -> bool:
    """True for a refusal that the judge did not give (error, junk output): worth retrying, not caching."""
    return verdict.method.startswith("judge:") and verdict.detail.startswith(JUDGE_FAILED)


# The rules, in our words: what each token means, then the prompt and the response, then the demand
# for one word. The response sits between markers so its own text cannot pose as instructions.
_TEMPLATE = """\
You are grading one answer that a vision-language model gave about a {image_kind}.
Decide what the answer claims about the image. Rules:
- {positive}: the answer says the image is abnormal, that {condition} is present, or it picks the option that names it.
- {negative}: the answer says the image is normal or healthy, that {condition} is absent, or it picks the option that says so.
- {ambiguous}: the answer is truly ambiguous, hedges equally between the two, refuses to answer, or does not answer the question.
{polarity}Judge only what the answer says, not whether it is medically right.

Original prompt given to the model:
<<<
{prompt}
>>>

Model's response:
<<<
{response}
>>>

Reply with exactly one word: {positive}, {negative}, or {ambiguous}."""
TEMPLATE_VERSION = hashlib.sha256(_TEMPLATE.encode()).hexdigest()[:12]


def _polarity_line(variant: PromptVariant, tokens: JudgeTokens) -> str:
    """Spell out what "yes" or each letter means for this prompt (the study's polarity column)."""
    token = {"positive": tokens.positive, "negative": tokens.negative}
    if variant.is_multiple_choice:
        parts = [f'option {letter} ("{text}") means {token[reading]}' for letter, reading, text in variant.options]
        return "For this prompt " + " and ".join(parts) + ".\n"
    if variant.yes_means in token:
        no_means = "negative" if variant.yes_means == "positive" else "positive"
        return f'For this prompt a "yes" means {token[variant.yes_means]} and a "no" means {token[no_means]}.\n'
    return ""


class LLMJudge:
    """Judge VLM answers with a text-only model behind any backend.

    task_tokens: {task key: {"positive": "TUMOR", "negative": "NO_TUMOR"}} (optionally with
    "image_kind" and "condition" for the rules' wording), or one such mapping for every task.
    polarity_hints: also tell the judge what "yes"/each letter means for the prompt (the study's
    judge had to infer it from the prompt; set False to stay closer to it).
    """

    def __init__(
        self,
        backend: Any,
        model_alias: str,
        task_tokens: Mapping[str, Any],
        generation: GenerationSettings = JUDGE_GENERATION,
        polarity_hints: bool = True,
    ):
        if not model_alias:
            raise ValueError("the judge needs a model alias")
        self.backend = backend
        self.model_alias = model_alias
        self.generation = generation
        self.polarity_hints = polarity_hints
        if isinstance(task_tokens, Mapping) and {"positive", "negative"} <= set(task_tokens) and all(
            isinstance(task_tokens[k], str) for k in ("positive", "negative")
        ):
            self._shared: Optional[JudgeTokens] = JudgeTokens.coerce(task_tokens)
            self._tokens: dict[str, JudgeTokens] = {}
        else:
            self._shared = None
            self._tokens = {task: JudgeTokens.coerce(v) for task, v in dict(task_tokens).items()}
            if not self._tokens:
                raise ValueError("the judge needs tokens for at least one task")

    @property
    def method(self) -> str:
        return f"judge:{self.model_alias}"

    def tokens(self, task: str) -> JudgeTokens:
        if self._shared is not None:
            return self._shared
        try:
            return self._tokens[task]
        except KeyError:
            raise ValueError(f"the judge has no tokens for task {task!r}; known: {', '.join(sorted(self._tokens))}") from None

    def identity(self) -> dict[str, Any]:
        """What determines a judgement: judge model (through its backend), template, settings."""
        return {
            "method": self.method,
            "backend": self.backend.identity(self.model_alias),
            "template": TEMPLATE_VERSION,
            "polarity_hints": self.polarity_hints,
            "generation": self.generation.as_dict(),
        }

    # ---------------------------------------------------------------- building the request
    def build_prompt(self, answer: str, variant: PromptVariant, task: str) -> str:
        tokens = self.tokens(task)
        return _TEMPLATE.format(
            image_kind=tokens.image_kind,
            condition=tokens.condition,
            positive=tokens.positive,
            negative=tokens.negative,
            ambiguous=AMBIGUOUS,
            polarity=_polarity_line(variant, tokens) if self.polarity_hints else "",
            prompt=variant.text,
            response=answer,
        )

    def request(self, answer: str, variant: PromptVariant, task: str) -> Request:
        return text_request(self.model_alias, self.build_prompt(answer, variant, task), self.generation)

    # ---------------------------------------------------------------- judging
    def judge(self, answer: str, prompt_variant: PromptVariant, task: str) -> Verdict:
        return self.judge_many([(answer, prompt_variant, task)])[0]

    def judge_many(self, items: Sequence[tuple[str, PromptVariant, str]]) -> list[Verdict]:
        """Judge (answer, prompt variant, task) triples in one backend batch, same order."""
        verdicts: list[Optional[Verdict]] = [None] * len(items)
        pending: list[int] = []
        requests: list[Request] = []
        for i, (answer, variant, task) in enumerate(items):
            self.tokens(task)  # an unknown task is a setup error: say so before any call
            if variant.kind == "describe":
                verdicts[i] = self._verdict("unclear", "description prompts are not judged")
            elif not (answer or "").strip():
                # The study's judge saw empty output too and could only say AMBIGUOUS.
                verdicts[i] = self._verdict("refusal", "empty answer: nothing to judge (judge not called)")
            else:
                pending.append(i)
                requests.append(self.request(answer, variant, task))
        if requests:
            for i, verdict in zip(pending, self._run(requests, [items[i][2] for i in pending])):
                verdicts[i] = verdict
        return [v for v in verdicts if v is not None]

    def _run(self, requests: list[Request], tasks: list[str]) -> list[Verdict]:
        try:
            responses = list(self.backend.generate(requests))
        except Exception as exc:  # a judge that cannot be reached counts as a refusal, as in the study
            reason = f"{type(exc).__name__}: {exc}"
            return [self._failed(reason) for _ in requests]
        if len(responses) != len(requests):
            reason = f"backend returned {len(responses)} responses for {len(requests)} requests"
            return [self._failed(reason) for _ in requests]
        return [self.read(response, self.tokens(task)) for response, task in zip(responses, tasks)]

    def read(self, response: Response, tokens: JudgeTokens) -> Verdict:
        """Map the judge's reply to a verdict."""
        if getattr(response, "error", None):
            return self._failed(str(response.error))
        raw = (getattr(response, "text", "") or "").strip()
        word = read_judgement(raw, tokens)
        if word is None:
            shown = raw if len(raw) <= 80 else raw[:77] + "..."
            return self._failed(f"unreadable judge output {shown!r}" if raw else "empty judge output")
        label = {tokens.positive.upper(): "positive", tokens.negative.upper(): "negative"}.get(word, "refusal")
        return self._verdict(label, f"judge answered {word}" + ("" if raw.upper() == word else f" ({raw[:80]!r})"))

    def _verdict(self, label: str, detail: str) -> Verdict:
        # The judge reads the whole answer: no span of it is singled out as the evidence.
        return Verdict(label=label, evidence="", span=None, method=self.method, detail=detail)

    def _failed(self, reason: str) -> Verdict:
        return self._verdict("refusal", JUDGE_FAILED + reason)


def _token_pattern(token: str) -> re.Pattern:
    # NO_TUMOR may come back as "NO TUMOR" or "NO-TUMOR"; letters and digits must not touch it.
    body = r"[\s_-]*".join(re.escape(part) for part in token.upper().split("_"))
    return re.compile(r"(?<![A-Z0-9_])" + body + r"(?![A-Z0-9_])")


def read_judgement(raw: str, tokens: JudgeTokens) -> Optional[str]:
    """The one token the judge named (upper case), or None when it named none, several, or negated one.

    The reply should be exactly one word; a short wrapper ("Classification: TUMOR", "**BENIGN**.")
    is tolerated. "TUMOR" inside "NO_TUMOR" does not count as a second token.
    """
    text = re.sub(r"[*`\"'.!:]", " ", raw.upper())
    found: list[tuple[int, int, str]] = []
    for token in (tokens.positive.upper(), tokens.negative.upper(), AMBIGUOUS):
        found += [(m.start(), m.end(), token) for m in _token_pattern(token).finditer(text)]
    found = [a for a in found if not any(b[2] != a[2] and b[0] <= a[0] and a[1] <= b[1] for b in found)]
    named = {token for _, _, token in found}
    if len(named) != 1:
        return None
    if re.search(r"(?<![A-Z0-9_])NOT(?![A-Z0-9_])", text):  # "NOT MALIGNANT": do not guess
        return None
    return named.pop()
