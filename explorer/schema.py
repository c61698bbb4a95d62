"""The plain data that flows through the engine, one direction:

case -> prompt variant -> request -> backend -> response -> verdict -> store.

Everything here is a dataclass with no behaviour beyond small derived views, so any
module (and any test) can build these without importing a model library.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

from PIL import Image

# What a closed-form answer means once the prompt's polarity is applied.
Reading = Literal["positive", "negative"]
# What the verdict parser / judge can conclude from free text.
VerdictLabel = Literal["positive", "negative", "refusal", "hedge", "unclear"]
VERDICT_LABELS: tuple[str, ...] = ("positive", "negative", "refusal", "hedge", "unclear")
# Verdicts that count as "no answer" (the study: a refusal is any AMBIGUOUS judgement).
NON_ANSWERS: frozenset[str] = frozenset({"refusal", "hedge", "unclear"})
# The columns every answers frame has (the store's, an import's), as the metrics read them.
ANSWER_COLUMNS = ("model", "task", "prompt_id", "prompt_family", "case_id", "label", "verdict")


@dataclass(frozen=True)
class Case:
    """One image with its task and (when known) its ground-truth class."""

    case_id: str  # stable id, e.g. "pneumonia:hf:123" or "pneumonia:file:positive/x.jpg"
    task: str  # task key from presets/tasks.yaml, e.g. "pneumonia"
    image: Image.Image = field(repr=False, compare=False)  # always RGB
    image_hash: str  # sha256 of the decoded RGB pixels (see images.content_hash)
    label: Optional[Reading] = None  # None when unknown (an upload)
    source: str = ""  # where it came from, human readable
    row_id: Optional[int] = None  # position in the dataset split (HF sources)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PromptVariant:
    """One prompt wording and how to read its answer.

    Closed-form yes/no prompts carry `yes_means`; multiple-choice prompts carry `options`
    (letter -> (reading, option text)). Description prompts carry neither.
    """

    prompt_id: str  # unique within a task, e.g. "evidence_ow"
    family: str  # e.g. "abnormal", "normal", "evidence", "guided", "mc_pos_first", "mc_neg_first", "describe"
    text: str
    kind: Literal["closed", "describe"] = "closed"
    yes_means: Optional[Reading] = None
    options: tuple[tuple[str, Reading, str], ...] = ()  # (letter, reading, option text)
    one_word: bool = False
    custom: bool = False  # edited or added by a user, not from a preset
    parent: str = ""  # the prompt_id a generated variant was made from (explorer/prompts/perturb.py); "" for others

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)

    def option_map(self) -> dict[str, tuple[Reading, str]]:
        return {letter: (reading, text) for letter, reading, text in self.options}


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 2048
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def deterministic(self) -> bool:
        return not self.do_sample

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImagePart:
    """An image inside a message: the decoded RGB image plus its content hash.

    Local backends use the PIL image directly; HTTP backends encode it as a data URL.
    """

    image: Image.Image = field(repr=False, compare=False)
    image_hash: str = ""


# A message is {"role": "user"|"assistant"|"system", "content": [str | ImagePart, ...]}:
# the OpenAI chat format with image parts kept decoded until a backend needs bytes.
Message = dict[str, Any]


@dataclass(frozen=True)
class Request:
    """Everything that determines one model output."""

    model: str  # model alias from presets/models.yaml
    messages: tuple[Message, ...]
    generation: GenerationSettings
    prompt_format: str = "chat_template"  # or "raw:<template>" as a preset says
    # Closed-form readout of the first answer token is asked for when the prompt is closed-form.
    readout: Optional[PromptVariant] = field(default=None, compare=False)

    def text(self) -> str:
        """The user-visible prompt text (all text parts joined)."""
        parts: list[str] = []
        for message in self.messages:
            for part in message["content"]:
                if isinstance(part, str):
                    parts.append(part)
        return "\n".join(parts)

    def image_hashes(self) -> list[str]:
        return [
            part.image_hash for message in self.messages for part in message["content"] if isinstance(part, ImagePart)
        ]

    def images(self) -> list[Image.Image]:
        return [part.image for message in self.messages for part in message["content"] if isinstance(part, ImagePart)]


def request_fingerprint(request: Request, model_identity: dict[str, Any]) -> str:
    """Cache key: a hash of exactly what determines the output.

    model_identity comes from the backend (model id, revision, dtype, backend kind...).
    """
    messages = [
        {
            "role": m["role"],
            "content": [p if isinstance(p, str) else {"image": p.image_hash} for p in m["content"]],
        }
        for m in request.messages
    ]
    payload = {
        "alias": request.model,  # two aliases may share weights but not answers' meaning
        "model": model_identity,
        "messages": messages,
        "generation": request.generation.as_dict(),
        "prompt_format": request.prompt_format,
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Response:
    text: str = ""
    error: Optional[str] = None  # set when no answer was produced; text is then ""
    latency_s: float = 0.0
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    # Probability of the positive reading from the first answer token's logits, when asked for.
    p_positive: Optional[float] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Verdict:
    label: VerdictLabel
    evidence: str = ""  # the span of the answer that decided it
    span: Optional[tuple[int, int]] = None  # character offsets of `evidence` in the answer
    method: str = "rules"  # "rules" or "judge:<model>"
    detail: str = ""  # short human-readable reason
    confident: bool = True  # False where the reader rests on weak ground (an LLM judge may settle it)
    spans: tuple[tuple[int, int], ...] = ()  # every span behind it (both sides of a hedge's conflict)

    def correct(self, truth: Optional[Reading]) -> Optional[bool]:
        """True/False when the truth is known and the verdict is an answer; None otherwise."""
        if truth is None or self.label in NON_ANSWERS:
            return None
        return self.label == truth
