"""Diagnosers: text-only models that read a description and answer Yes or No.

A diagnoser takes filled diagnosis prompts (explorer/probes/describe.py builds them) and returns one raw reply
per prompt; describe.parse_yes_no reads each. It runs through the OpenAI Responses API or any
OpenAI-compatible chat endpoint (StructuredDiagnoser with a strict JSON schema, or TextDiagnoser as
plain text), or on a local transformers text model (TextDiagnoser, a first-token Yes/No choice; the
offline random-weight demo for tests). Failures come back in DiagnosisReply.error, never raised.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence
from urllib.parse import urlsplit

from explorer.catalog.presets import Catalog, DescribeRunSpec
from explorer.models.backends.base import BackendError
from explorer.prompts.messages import text_request
from explorer.schema import GenerationSettings, PromptVariant

# The study's schema and its name (desc_eval/gpt5_desc_to_*_eval.py).
YES_NO_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["Yes", "No"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
SCHEMA_NAME = "yes_no_answer"
STUDY_MAX_OUTPUT_TOKENS = 64
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_HOST = "api.openai.com"
DEMO_TEXT_ALIAS = "demo-text"


@dataclass
class DiagnosisReply:
    raw: str = ""
    error: Optional[str] = None  # no output at all (HTTP error, timeout, model failure)
    latency_s: float = 0.0
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    mode: str = ""  # "json_schema" or "plain"


class Diagnoser(Protocol):
    label: str  # short name for tables, e.g. "openai:gpt-5.1"

    def identity(self) -> dict[str, Any]:
        """What determines the outputs (goes into every cache key)."""
        ...

    def diagnose(self, prompts: Sequence[str]) -> list[DiagnosisReply]:
        """One reply per prompt, same order; failures in DiagnosisReply.error, never raised."""
        ...

    def close(self) -> None: ...


# What the first-token choice reads: "Yes" means the finding is present.
_YES_NO_CHOICE = PromptVariant(prompt_id="diagnosis", family="diagnosis", text="Yes or No", yes_means="positive")


class TextDiagnoser:
    """Text generation through any backend (transformers or OpenAI-compatible), greedy.

    choice=True (local transformers models) is the local counterpart of the study's strict JSON schema
    {"answer": "Yes"|"No"}: the reply is whichever of Yes / No the model's first answer token makes
    more likely, so it is never unparsed; the raw reply records that probability.
    """

    def __init__(
        self,
        backend: Any,
        model_alias: str,
        max_output_tokens: int = STUDY_MAX_OUTPUT_TOKENS,
        label: Optional[str] = None,
        owns_backend: bool = False,
        choice: bool = False,
    ):
        self.backend = backend
        self.model_alias = model_alias
        self.choice = choice
        tokens = 1 if choice else int(max_output_tokens)
        self.generation = GenerationSettings(max_new_tokens=tokens, do_sample=False, temperature=0.0)
        self.label = label or f"{getattr(backend, 'name', 'backend')}:{model_alias}"
        self._owns_backend = owns_backend

    def identity(self) -> dict[str, Any]:
        ident = {
            "kind": "text",
            "backend": self.backend.identity(self.model_alias),
            "generation": self.generation.as_dict(),
        }
        if self.choice:
            ident["choice"] = "first-token yes/no"
        return ident

    def _reply(self, r) -> DiagnosisReply:
        common = dict(error=r.error, latency_s=r.latency_s, input_tokens=r.input_tokens, output_tokens=r.output_tokens)
        if not self.choice or r.error:
            return DiagnosisReply(raw=r.text or "", mode="plain", **common)
        if r.p_positive is None:
            return DiagnosisReply(
                raw=r.text or "",
                mode="first-token choice",
                **{**common, "error": "the model's vocabulary has no Yes/No tokens to choose between"},
            )
        answer = "Yes" if r.p_positive >= 0.5 else "No"
        raw = json.dumps({"answer": answer, "p_yes": round(float(r.p_positive), 4)})
        return DiagnosisReply(raw=raw, mode="first-token choice", **common)

    def diagnose(self, prompts: Sequence[str]) -> list[DiagnosisReply]:
        requests = [text_request(self.model_alias, p, self.generation) for p in prompts]
        if self.choice:
            requests = [dataclasses.replace(r, readout=_YES_NO_CHOICE) for r in requests]
        try:
            responses = list(self.backend.generate(requests))
        except Exception as exc:  # noqa: BLE001 - a backend that cannot run fails these prompts, not the run
            return [DiagnosisReply(error=f"{type(exc).__name__}: {exc}", mode="plain") for _ in prompts]
        if len(responses) != len(prompts):
            return [
                DiagnosisReply(error=f"backend returned {len(responses)} replies for {len(prompts)} prompts")
                for _ in prompts
            ]
        return [self._reply(r) for r in responses]

    def close(self) -> None:
        if self._owns_backend:
            self.backend.close()


# A server that cannot do structured output says so with a 400/422 naming the feature.
_SCHEMA_REJECTED = re.compile(r"HTTP (400|422).*(response_format|json_schema|structured|text\.format)", re.I | re.S)


class StructuredDiagnoser:
    """Yes/No through an OpenAIBackend's complete_json (Responses API text.format or chat response_format).

    The endpoint config decides the API and what else is sent (e.g. extra={"reasoning": {"effort":
    "none"}}, send_temperature). On a chat endpoint that rejects json_schema, the prompts are sent as
    plain chat once that is known (fallback_plain), and the reply parsed the same way.
    """

    def __init__(
        self,
        backend: Any,
        model_alias: str,
        max_output_tokens: int = STUDY_MAX_OUTPUT_TOKENS,
        temperature: float = 0.0,
        fallback_plain: bool = True,
        label: Optional[str] = None,
        owns_backend: bool = False,
    ):
        self.backend = backend
        self.model_alias = model_alias
        self.max_output_tokens = int(max_output_tokens)
        self.temperature = float(temperature)
        self.fallback_plain = fallback_plain
        cfg = backend.endpoint(model_alias)
        self.label = label or f"openai:{cfg.model}"
        self._plain_only = False
        self._owns_backend = owns_backend
        self._lock = threading.Lock()
        self._workers = max(1, int(getattr(cfg, "max_concurrency", 4)))

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "json_schema",
            "backend": self.backend.identity(self.model_alias),
            "schema": SCHEMA_NAME,
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
        }

    def _plain(self, prompt: str) -> DiagnosisReply:
        generation = GenerationSettings(
            max_new_tokens=self.max_output_tokens, do_sample=self.temperature > 0, temperature=self.temperature
        )
        [r] = self.backend.generate([text_request(self.model_alias, prompt, generation)])
        return DiagnosisReply(
            raw=r.text or "",
            error=r.error,
            latency_s=r.latency_s,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            mode="plain",
        )

    def _one(self, prompt: str) -> DiagnosisReply:
        try:
            if self._plain_only:
                return self._plain(prompt)
            out = self.backend.complete_json(
                [{"role": "user", "content": prompt}],
                YES_NO_SCHEMA,
                model=self.model_alias,
                name=SCHEMA_NAME,
                strict=True,
                max_output_tokens=self.max_output_tokens,
                temperature=self.temperature,
            )
            if (
                out.error
                and self.fallback_plain
                and self.backend.endpoint(self.model_alias).api == "chat"
                and _SCHEMA_REJECTED.search(out.error)
            ):
                with self._lock:
                    self._plain_only = True
                return self._plain(prompt)
            # A parse_error is not an error here: the raw text is kept and read by parse_yes_no.
            return DiagnosisReply(
                raw=out.text or "",
                error=out.error,
                latency_s=out.latency_s,
                input_tokens=out.input_tokens,
                output_tokens=out.output_tokens,
                mode="json_schema",
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a missing API key: recorded per prompt
            return DiagnosisReply(error=f"{type(exc).__name__}: {exc}")

    def diagnose(self, prompts: Sequence[str]) -> list[DiagnosisReply]:
        if len(prompts) <= 1:
            return [self._one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self._workers, len(prompts)), thread_name_prefix="diagnose") as pool:
            return list(pool.map(self._one, prompts))

    def close(self) -> None:
        if self._owns_backend:
            self.backend.close()


def is_openai_host(base_url: str) -> bool:
    """True only for https://api.openai.com (any path, default port)."""
    parts = urlsplit(str(base_url or ""))
    try:
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme == "https"
        and (parts.hostname or "").lower() == OPENAI_HOST
        and port in (None, 443)
        and not parts.username
        and not parts.password
    )


def openai_diagnoser(
    model: str,
    *,
    api: str = "responses",
    base_url: str = OPENAI_BASE_URL,
    api_key_env: Optional[str] = "auto",
    reasoning_effort: Optional[str] = "none",
    max_output_tokens: int = STUDY_MAX_OUTPUT_TOKENS,
    structured: bool = True,
    send_temperature: bool = True,
    timeout_s: float = 60.0,
) -> "StructuredDiagnoser | TextDiagnoser":
    """A diagnoser on an OpenAI-compatible server; the defaults are the study's (gpt-5.1 on the Responses API).

    api_key_env="auto": OPENAI_API_KEY for api.openai.com, no key for other servers (vLLM, llama.cpp).
    """
    from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend

    if api_key_env == "auto":
        # The key goes to OpenAI's own host only: an exact https host match, never a substring (a
        # path, a query or another host's subdomain can contain "api.openai.com").
        api_key_env = "OPENAI_API_KEY" if is_openai_host(base_url) else None
    if api_key_env and not os.environ.get(api_key_env):
        # A setup problem: say so before any description is generated, not once per prompt afterwards.
        raise BackendError(f"the diagnoser {model} at {base_url} needs an API key in ${api_key_env}, which is not set")
    extra = {"reasoning": {"effort": reasoning_effort}} if reasoning_effort else {}
    cfg = EndpointConfig(
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        api=api,
        extra=extra,
        send_temperature=send_temperature,
        stream=False,
        timeout_s=timeout_s,
    )
    backend = OpenAIBackend({"diagnoser": cfg})
    if structured:
        return StructuredDiagnoser(backend, "diagnoser", max_output_tokens, label=f"openai:{model}", owns_backend=True)
    return TextDiagnoser(backend, "diagnoser", max_output_tokens, label=f"openai:{model}", owns_backend=True)


def local_diagnoser(
    catalog: Catalog,
    path: str | Path,
    alias: str = "diagnoser",
    max_output_tokens: int = STUDY_MAX_OUTPUT_TOKENS,
    choice: bool = True,
    **backend_options: Any,
) -> TextDiagnoser:
    """A local transformers text model folder as the diagnoser (a first-token Yes/No choice unless
    choice=False, which generates free text and parses it)."""
    from explorer.models.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(catalog, local_paths={alias: path}, **backend_options)
    return TextDiagnoser(
        backend, alias, max_output_tokens, label=f"transformers:{alias}", owns_backend=True, choice=choice
    )


def demo_diagnoser(
    catalog: Catalog, max_output_tokens: int = 8, cache_dir: Optional[str | Path] = None, **backend_options: Any
) -> TextDiagnoser:
    """The offline random-weight text model (its Yes/No is noise): the pipeline without any network."""
    from explorer.models.demo import ensure_demo_text_model

    path = ensure_demo_text_model(cache_dir=Path(cache_dir) if cache_dir else None)
    return local_diagnoser(catalog, path, DEMO_TEXT_ALIAS, max_output_tokens, **backend_options)


def diagnoser_from_arg(arg: str, catalog: Catalog, run: Optional[DescribeRunSpec] = None, **options: Any):
    """ "demo" | "openai:<model>" | "local:<folder>" | "preset" (the study preset's describe settings).

    options go to openai_diagnoser (api, base_url, api_key_env, reasoning_effort, structured...; a
    reasoning_effort of None sends none, leaving it out sends the study's "none"), or set
    max_output_tokens / cache_dir (the demo model's build folder).
    """
    run = run or DescribeRunSpec()
    arg = (arg or "").strip()
    max_tokens = options.pop("max_output_tokens", None)
    cache_dir = options.pop("cache_dir", None)
    if arg == "preset":
        if run.api == "transformers":
            arg = "demo" if run.model == DEMO_TEXT_ALIAS else f"local:{run.model}"
        else:
            options.setdefault("api", run.api)
            options.setdefault("reasoning_effort", run.reasoning_effort)
            arg = f"openai:{run.model}"
        max_tokens = max_tokens or run.max_output_tokens
    if arg == "demo":
        return demo_diagnoser(catalog, max_tokens or 8, cache_dir=cache_dir)
    if arg.startswith("openai:") and arg[len("openai:") :]:
        kept = {k: v for k, v in options.items() if v is not None or k == "reasoning_effort"}
        return openai_diagnoser(arg[len("openai:") :], max_output_tokens=max_tokens or STUDY_MAX_OUTPUT_TOKENS, **kept)
    if arg.startswith("local:") and arg[len("local:") :]:
        return local_diagnoser(catalog, arg[len("local:") :], max_output_tokens=max_tokens or STUDY_MAX_OUTPUT_TOKENS)
    raise ValueError(
        f"unknown diagnoser {arg!r}: use demo, openai:<model> (e.g. openai:gpt-5.1), local:<folder> or preset"
    )
