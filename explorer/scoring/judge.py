"""The study's LLM judge, through any backend.

The study handed each closed-form answer to an LLM (gpt-5) with the task's rules, the original
prompt and the model's response, and took back one word: the task's positive token, its negative
token, or AMBIGUOUS. This module asks the same question of any backend
(`generate(requests) -> responses`, `identity(model_alias)`).

Prompt sets (`prompts=`), each stored with its id and version in every verdict's method
("judge:<model>|<id>@<version>", so answers judged under another set are judged again):
  study     the authors' own: the per-task JUDGE_SYSTEM_PROMPT as the system message and
            JUDGE_USER_TEMPLATE as the user message, verbatim from their first upload (de96238), kept
            in presets/judge_prompts/study.yaml. The `paper` preset's default.
  explorer  ours: one user message, the rules in task-neutral words, the response fenced off so its
            text cannot pose as instructions, and (polarity_hints) what "yes" / each letter means.

Outcomes, and how they meet the answer reader (explorer/scoring/verdicts.py) and explorer/analysis/metrics.py:
  positive token -> Verdict "positive";  negative token -> Verdict "negative".
  AMBIGUOUS      -> Verdict "hedge", detail starting "AMBIGUOUS". It stays its own outcome
                    (metrics' hedge_rate) and is a non-answer like every hedge, so the study's
                    refusal rate (= AMBIGUOUS / total) is metrics' refusal_rate.
  no judgement   -> JudgeError, NOT a verdict: backend error, HTTP failure, empty reply, a reply
                    naming no token or several. Each is retried (`retries` more times, the token
                    budget doubled after a reply cut off by it); what still fails is stored with
                    verdict NULL and detail "judge error: ..." so metrics leave it out (it is not
                    a refusal), the CLI counts it, and sweeps and `--rejudge` send it again.
  The judge itself never gives "refusal": that label belongs to the answer reader. Answers that are
  empty are not sent (the reader calls them "unclear": there is nothing to judge).

Budget: reasoning models (gpt-5 family, o-series) spend hidden reasoning tokens inside the output
limit, so a small cap returns empty replies. The authors set no limit. Here a reasoning judge gets
25,000 output tokens (OpenAI's advice for reasoning models: reserve at least that many), never a
temperature (gpt-5 rejects temperature=0: in the authors' code that made every call an ERROR),
and an explicit reasoning effort (default "medium", what gpt-5 uses when none is sent).
Other judges: greedy, 16 tokens, temperature 0. `judge_endpoint` applies this to an endpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import yaml

from explorer.catalog.presets import PRESETS_DIR
from explorer.schema import GenerationSettings, PromptVariant, Request, Response, Verdict

__all__ = [
    "AMBIGUOUS",
    "JUDGE_ERROR",
    "JUDGE_GENERATION",
    "JUDGE_PROMPT_SETS",
    "JudgeError",
    "JudgeTokens",
    "LLMJudge",
    "is_judge_failure",
    "is_reasoning_model",
    "judge_endpoint",
    "judge_generation",
    "judge_outcomes",
    "needs_rejudge",
    "stored_ambiguous",
    "stored_judge_failed",
    "read_judgement",
]

AMBIGUOUS = "AMBIGUOUS"
JUDGE_ERROR = "judge error: "
LEGACY_FAILED = "judge failed: "  # how stores written before judge errors existed mark a failed judgement
JUDGE_PROMPT_SETS = ("study", "explorer")
JUDGE_GENERATION = GenerationSettings(max_new_tokens=16, do_sample=False, temperature=0.0)
REASONING_BUDGET = 25_000
MAX_BUDGET = 128_000  # gpt-5's largest output; a doubled budget stops here
DEFAULT_REASONING_EFFORT = "medium"
_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:gpt-5|o[1-9])(?![0-9])", re.I)


# ---------------------------------------------------------------- budget and endpoint
def is_reasoning_model(model: str) -> bool:
    """gpt-5, gpt-5-mini, gpt-5.1, o1, o3-mini, o4-mini... (optionally "openai/..." as some servers name them)."""
    return bool(_REASONING_MODEL.match(model or ""))


def judge_generation(model: str, max_output_tokens: Optional[int] = None) -> GenerationSettings:
    """Greedy settings with a token budget that fits the model: room to reason for reasoning models."""
    if max_output_tokens is not None:
        return dataclasses.replace(JUDGE_GENERATION, max_new_tokens=max_output_tokens)
    if is_reasoning_model(model):
        return dataclasses.replace(JUDGE_GENERATION, max_new_tokens=REASONING_BUDGET)
    return JUDGE_GENERATION


def judge_endpoint(endpoint: Any, model: str, reasoning_effort: Optional[str] = None) -> Any:
    """The endpoint (an OpenAI EndpointConfig) as the judge must call it.

    Reasoning models: no temperature (send_temperature False) and the reasoning effort in the body
    (`reasoning_effort` for chat completions, `reasoning.effort` for the Responses API); an effort the
    endpoint's own `extra` already sets is kept. Every judge reply is read whole (no streaming).
    """
    changes: dict[str, Any] = {"stream": False}
    if is_reasoning_model(model):
        changes["send_temperature"] = False
        effort = reasoning_effort or DEFAULT_REASONING_EFFORT
        extra = dict(endpoint.extra or {})
        if endpoint.api == "responses":
            extra.setdefault("reasoning", {"effort": effort})
        else:
            extra.setdefault("reasoning_effort", effort)
        changes["extra"] = extra
    return dataclasses.replace(endpoint, **changes)


# ---------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class JudgeError:
    """A judgement that did not happen. Stored like a verdict whose label is None (verdict NULL):
    not a refusal, left out of metrics, judged again by the next sweep or `--rejudge`."""

    detail: str
    method: str
    label: None = None
    evidence: str = ""
    span: None = None

    def correct(self, truth: Any) -> None:
        return None


def is_judge_failure(verdict: Any) -> bool:
    """True for a judgement that failed: a JudgeError, or the same stored by an older version."""
    if isinstance(verdict, JudgeError):
        return True
    method = getattr(verdict, "method", "") or ""
    detail = getattr(verdict, "detail", "") or ""
    return method.startswith("judge:") and detail.startswith((JUDGE_ERROR, LEGACY_FAILED))


def _llm_judged(row: Mapping[str, Any]) -> bool:
    method = row.get("verdict_method") or ""
    return method.startswith("judge:") and method != "judge:study-import"  # imported: nothing to re-ask


def stored_judge_failed(row: Mapping[str, Any]) -> bool:
    """A stored answer (a store row) whose LLM judgement failed: to be judged again, never served."""
    detail = row.get("verdict_detail") or ""
    return _llm_judged(row) and (row.get("verdict") is None or detail.startswith((JUDGE_ERROR, LEGACY_FAILED)))


def stored_ambiguous(row: Mapping[str, Any]) -> bool:
    """A stored answer the LLM judge called AMBIGUOUS."""
    detail = row.get("verdict_detail") or ""
    return _llm_judged(row) and row.get("verdict") == "hedge" and detail.startswith(AMBIGUOUS)


def needs_rejudge(row: Mapping[str, Any]) -> bool:
    """A stored answer whose LLM judgement failed or came back AMBIGUOUS (what `--rejudge` re-runs)."""
    return stored_judge_failed(row) or stored_ambiguous(row)


# ---------------------------------------------------------------- tokens
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


# ---------------------------------------------------------------- prompt sets
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


@dataclass(frozen=True)
class StudyJudgePrompts:
    """The authors' judge prompts: a system prompt per task and one user template."""

    user_template: str
    system: Mapping[str, str]
    source: str = ""

    @property
    def version(self) -> str:
        blob = self.user_template + "".join(f"\0{k}\0{v}" for k, v in sorted(self.system.items()))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@lru_cache(maxsize=4)
def study_judge_prompts(path: Union[str, Path] = PRESETS_DIR / "judge_prompts" / "study.yaml") -> StudyJudgePrompts:
    """Load the study's judge prompts (a file of this project, kept byte for byte)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return StudyJudgePrompts(
            user_template=data["user_template"], system=dict(data["system"]), source=data.get("source", "")
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read the study's judge prompts ({type(exc).__name__}: {exc})") from None


class LLMJudge:
    """Judge VLM answers with a text-only model behind any backend.

    task_tokens: {task key: {"positive": "TUMOR", "negative": "NO_TUMOR"}} (optionally with
    "image_kind" and "condition" for the explorer prompts' wording), or one such mapping for every task.
    prompts: "study" (the authors' prompts, per task) or "explorer" (ours; see the module docstring).
    polarity_hints: explorer prompts only: also say what "yes"/each letter means for the prompt.
    generation: None picks judge_generation(model_alias). retries: extra attempts for failed judgements.
    """

    def __init__(
        self,
        backend: Any,
        model_alias: str,
        task_tokens: Mapping[str, Any],
        generation: Optional[GenerationSettings] = None,
        polarity_hints: bool = True,
        prompts: str = "explorer",
        retries: int = 2,
        study_prompts: Optional[StudyJudgePrompts] = None,
    ):
        if not model_alias:
            raise ValueError("the judge needs a model alias")
        if prompts not in JUDGE_PROMPT_SETS:
            raise ValueError(f"unknown judge prompt set {prompts!r}; known: {', '.join(JUDGE_PROMPT_SETS)}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"judge retries must be a whole number >= 0, got {retries!r}")
        self.backend = backend
        self.model_alias = model_alias
        self.generation = generation if generation is not None else judge_generation(model_alias)
        self.polarity_hints = polarity_hints
        self.prompts = prompts
        self.retries = retries
        self.study = (study_prompts or study_judge_prompts()) if prompts == "study" else None
        if (
            isinstance(task_tokens, Mapping)
            and {"positive", "negative"} <= set(task_tokens)
            and all(isinstance(task_tokens[k], str) for k in ("positive", "negative"))
        ):
            self._shared: Optional[JudgeTokens] = JudgeTokens.coerce(task_tokens)
            self._tokens: dict[str, JudgeTokens] = {}
        else:
            self._shared = None
            self._tokens = {task: JudgeTokens.coerce(v) for task, v in dict(task_tokens).items()}
            if not self._tokens:
                raise ValueError("the judge needs tokens for at least one task")

    @property
    def prompt_version(self) -> str:
        if self.study is not None:
            return self.study.version
        return TEMPLATE_VERSION + ("" if self.polarity_hints else "-nohints")

    @property
    def prompt_id(self) -> str:
        """The prompt set and its version, e.g. "study@1f2e3d4c5b6a" (stored with every verdict)."""
        return f"{self.prompts}@{self.prompt_version}"

    @property
    def method(self) -> str:
        return f"judge:{self.model_alias}|{self.prompt_id}"

    def tokens(self, task: str) -> JudgeTokens:
        if self._shared is not None:
            tokens = self._shared
        else:
            try:
                tokens = self._tokens[task]
            except KeyError:
                raise ValueError(
                    f"the judge has no tokens for task {task!r}; known: {', '.join(sorted(self._tokens))}"
                ) from None
        if self.study is not None and task not in self.study.system:
            raise ValueError(
                f"the study's judge has no prompt for task {task!r} (it has {', '.join(sorted(self.study.system))}); "
                "use the explorer judge prompts"
            )
        return tokens

    def identity(self) -> dict[str, Any]:
        """What determines a judgement: judge model (through its backend), prompts, settings."""
        return {
            "method": self.method,
            "backend": self.backend.identity(self.model_alias),
            "prompts": self.prompt_id,
            "polarity_hints": self.polarity_hints if self.study is None else False,
            "generation": self.generation.as_dict(),
            "retries": self.retries,
        }

    # ---------------------------------------------------------------- building the request
    def build_messages(self, answer: str, variant: PromptVariant, task: str) -> tuple[dict, ...]:
        tokens = self.tokens(task)
        if self.study is not None:
            # As the authors sent it: system = the task's rules, user = the template filled by str.format.
            user = self.study.user_template.format(prompt=variant.text, response=answer)
            return ({"role": "system", "content": (self.study.system[task],)}, {"role": "user", "content": (user,)})
        text = _TEMPLATE.format(
            image_kind=tokens.image_kind,
            condition=tokens.condition,
            positive=tokens.positive,
            negative=tokens.negative,
            ambiguous=AMBIGUOUS,
            polarity=_polarity_line(variant, tokens) if self.polarity_hints else "",
            prompt=variant.text,
            response=answer,
        )
        return ({"role": "user", "content": (text,)},)

    def build_prompt(self, answer: str, variant: PromptVariant, task: str) -> str:
        """All text the judge is sent, messages joined (for display and tests)."""
        return "\n\n".join(m["content"][0] for m in self.build_messages(answer, variant, task))

    def request(
        self, answer: str, variant: PromptVariant, task: str, generation: Optional[GenerationSettings] = None
    ) -> Request:
        return Request(
            model=self.model_alias,
            messages=self.build_messages(answer, variant, task),
            generation=generation or self.generation,
        )

    # ---------------------------------------------------------------- judging
    def judge(self, answer: str, prompt_variant: PromptVariant, task: str) -> Union[Verdict, JudgeError]:
        return self.judge_many([(answer, prompt_variant, task)])[0]

    def judge_many(self, items: Sequence[tuple[str, PromptVariant, str]]) -> list[Union[Verdict, JudgeError]]:
        """Judge (answer, prompt variant, task) triples in one backend batch per attempt, same order.

        Failed judgements are sent again (up to `retries` more times; a reply cut off by the token
        budget comes back with the budget doubled); what still fails is a JudgeError.
        """
        out: list[Union[Verdict, JudgeError, None]] = [None] * len(items)
        pending: list[int] = []
        for i, (answer, variant, task) in enumerate(items):
            self.tokens(task)  # an unknown task is a setup error: say so before any call
            if variant.kind == "describe":
                out[i] = self._verdict("unclear", "description prompts are not judged")
            elif not (answer or "").strip():
                out[i] = self._verdict("unclear", "empty answer: nothing to judge (judge not called)")
            else:
                pending.append(i)
        budgets = {i: self.generation for i in pending}
        attempts: dict[int, list[str]] = {i: [] for i in pending}
        for _ in range(self.retries + 1):
            if not pending:
                break
            requests = [self.request(items[i][0], items[i][1], items[i][2], budgets[i]) for i in pending]
            still: list[int] = []
            for i, (result, response) in zip(pending, self._run(requests, [items[i][2] for i in pending])):
                out[i] = result
                if isinstance(result, JudgeError):
                    attempts[i].append(result.detail.removeprefix(JUDGE_ERROR))
                    still.append(i)
                    if _cut_by_budget(response):
                        budgets[i] = dataclasses.replace(
                            budgets[i], max_new_tokens=min(MAX_BUDGET, 2 * budgets[i].max_new_tokens)
                        )
            pending = still
        for i in pending:
            tries = attempts[i]
            out[i] = self._failed(f"{tries[-1]} (after {len(tries)} attempts)" if len(tries) > 1 else tries[-1])
        return [v for v in out if v is not None]

    def _run(
        self, requests: list[Request], tasks: list[str]
    ) -> list[tuple[Union[Verdict, JudgeError], Optional[Response]]]:
        try:
            responses = list(self.backend.generate(requests))
        except Exception as exc:  # an unreachable judge: no judgement, to be retried
            reason = f"{type(exc).__name__}: {exc}"
            return [(self._failed(reason), None) for _ in requests]
        if len(responses) != len(requests):
            reason = f"backend returned {len(responses)} responses for {len(requests)} requests"
            return [(self._failed(reason), None) for _ in requests]
        return [(self.read(response, self.tokens(task)), response) for response, task in zip(responses, tasks)]

    def read(self, response: Response, tokens: JudgeTokens) -> Union[Verdict, JudgeError]:
        """Map the judge's reply to a verdict, or a JudgeError when it names no single token."""
        if getattr(response, "error", None):
            return self._failed(str(response.error))
        raw = (getattr(response, "text", "") or "").strip()
        word = read_judgement(raw, tokens)
        if word is None:
            if raw:
                shown = raw if len(raw) <= 80 else raw[:77] + "..."
                return self._failed(f"unreadable judge output {shown!r}")
            finish = (getattr(response, "extra", None) or {}).get("finish_reason")
            return self._failed("empty judge output" + (f" (finish_reason={finish})" if finish else ""))
        said = f"judge answered {word}" + ("" if raw.upper() == word else f" ({raw[:80]!r})")
        if word == AMBIGUOUS:
            return self._verdict("hedge", f"{AMBIGUOUS}: {said}")
        label = "positive" if word == tokens.positive.upper() else "negative"
        return self._verdict(label, said)

    def _verdict(self, label: str, detail: str) -> Verdict:
        # The judge reads the whole answer: no span of it is singled out as the evidence.
        return Verdict(label=label, evidence="", span=None, method=self.method, detail=detail)

    def _failed(self, reason: str) -> JudgeError:
        return JudgeError(detail=JUDGE_ERROR + reason, method=self.method)


def _cut_by_budget(response: Optional[Response]) -> bool:
    extra = getattr(response, "extra", None) or {}
    return extra.get("finish_reason") == "length" or extra.get("incomplete_reason") == "max_output_tokens"


def judge_outcomes(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of stored LLM judgements: judged (a verdict came back), AMBIGUOUS among them, failed."""
    counts = {"judged": 0, "ambiguous": 0, "failed": 0}
    for row in rows:
        if not _llm_judged(row):
            continue
        if stored_judge_failed(row):
            counts["failed"] += 1
        else:
            counts["judged"] += 1
            counts["ambiguous"] += int(stored_ambiguous(row))
    return counts


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
