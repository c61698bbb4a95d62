"""Any OpenAI-compatible server (OpenAI itself, vLLM, llama.cpp, ...) as a backend.

One EndpointConfig per model alias (e.g. one vLLM server per model), or one config for every alias.
Requests keep the schema's message format until here: text parts become {"type": "text"} (chat) or
{"type": "input_text"} (Responses API), images become PNG data URLs.

Retries are our own loop; the client's own retry is switched off (max_retries=0). Why: the policy is
then explicit and testable in one place: which failures are retried (429, 408, 409, 5xx, timeouts,
dropped connections), how long to wait (the server's Retry-After / retry-after-ms when it sends one,
else exponential backoff with jitter), that a retried stream restarts its text, and that close()
interrupts a wait. Anything else (other 4xx, an empty or unreadable reply) is recorded in
Response.error at once, never raised.

API keys are read from the environment variable an endpoint names (api_key_env), handed to the
client, and scrubbed from every error text; they never appear in identity(), repr or logs.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import openai

from explorer.models.backends.base import BackendError, OnText
from explorer.models.backends.http_deadline import deadline, http_client, is_deadline_error
from explorer.models.backends.logprob_readout import (
    TOP_LOGPROBS,
    first_top_logprobs,
    readout_from_top,
    wants_logprobs,
)
from explorer.models.backends.openai_wire import (
    BadReply,
    DataUrls,
    Reply,
    StreamCut,
    chat_payload,
    parse_json_object,
    read_chat,
    read_responses,
    responses_payload,
    stream_chat,
)
from explorer.schema import GenerationSettings, Message, Request, Response

log = logging.getLogger(__name__)

# Besides every 5xx: the statuses OpenAI's own client retries.
RETRYABLE_STATUS = frozenset({408, 409, 429})
# A local server (vLLM, llama.cpp) accepts any key; the client insists on one.
NO_KEY = "EMPTY"
ERROR_CHARS = 500

_SECRET_LOOKING = re.compile(r"(sk-[A-Za-z0-9_\-*.]{4,}|Bearer\s+\S+)")
_SECRET_FIELD = re.compile(r"(api[_-]?key|secret|password|authorization|bearer|access[_-]?token)", re.I)


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to reach one OpenAI-compatible model. Holds the NAME of the key's variable only."""

    base_url: str  # e.g. "http://gpu-box:8000/v1" or "https://api.openai.com/v1"
    model: str  # the model's name on that server
    api_key_env: Optional[str] = None  # environment variable holding the key; None: no key needed
    timeout_s: float = 120.0  # per HTTP read (a stream may run longer as long as tokens keep coming)
    deadline_s: float = 600.0  # wall-clock limit for one request: every attempt, wait and streamed byte
    max_retries: int = 4  # retries after the first attempt, for retryable failures only
    max_concurrency: int = 4  # requests in flight to this server at once
    api: Literal["chat", "responses"] = "chat"
    extra: dict[str, Any] = field(default_factory=dict)  # merged into the body, e.g. {"reasoning": {"effort": "none"}}
    send_temperature: bool = True  # False omits temperature/top_p/seed (gpt-5 rejects temperature=0)
    stream: bool = True  # stream chat replies into on_text (the Responses API path reports the whole text once)
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    min_tokens_param: Optional[str] = None  # e.g. "min_tokens" for vLLM; None: min_new_tokens is not sent
    revision: Optional[str] = None  # what the server loaded, when known (provenance)
    dtype: Optional[str] = None
    logprobs: bool = False  # ask for the first token's top logprobs (vLLM, OpenAI chat): the first-token readout
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0  # a longer Retry-After is cut to this

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"endpoint base_url must be an http(s) URL, got {self.base_url!r}")
        try:
            port = parts.port
        except ValueError:
            port = 0
        if port == 0:
            raise BackendError(f"endpoint base_url {self.base_url!r}: the port must be between 1 and 65535")
        if parts.username or parts.password:
            raise BackendError("endpoint base_url must not carry credentials; name the key's variable in api_key_env")
        if not isinstance(self.model, str) or not self.model:
            raise BackendError(f"endpoint {self.host}: 'model' (the model's name on the server) is required")
        if self.api not in ("chat", "responses"):
            raise BackendError(f"endpoint {self.host}: api must be 'chat' or 'responses', got {self.api!r}")
        if self.max_tokens_param not in ("max_completion_tokens", "max_tokens"):
            raise BackendError(f"endpoint {self.host}: max_tokens_param must be max_completion_tokens or max_tokens")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(self.api_key_env)):
            # Never echo the value: it may be a pasted key.
            raise BackendError(f"endpoint {self.host}: api_key_env must be the NAME of an environment variable")
        if not isinstance(self.extra, dict):
            raise BackendError(f"endpoint {self.host}: extra must be a mapping")
        secret_fields = [k for k in self.extra if _SECRET_FIELD.search(str(k))]
        if secret_fields:
            raise BackendError(
                f"endpoint {self.host}: extra.{secret_fields[0]}: put keys in the environment and name the "
                "variable with api_key_env"
            )
        # Types before comparisons: "fast" <= 0 would raise a bare TypeError, NaN would pass silently.
        for name in ("timeout_s", "deadline_s", "backoff_base_s", "backoff_max_s", "retry_after_max_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BackendError(f"endpoint {self.host}: {name} must be a finite number of seconds, got {value!r}")
            if value < 0:
                raise BackendError(f"endpoint {self.host}: {name} must be >= 0, got {value!r}")
        for name in ("max_retries", "max_concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise BackendError(f"endpoint {self.host}: {name} must be a whole number, got {value!r}")
        if self.timeout_s <= 0 or self.deadline_s <= 0 or self.max_retries < 0 or self.max_concurrency < 1:
            raise BackendError(
                f"endpoint {self.host}: need timeout_s > 0, deadline_s > 0, max_retries >= 0, max_concurrency >= 1"
            )

    def __repr__(self) -> str:
        # extra is shown redacted: a value pasted there by mistake must not reach a log.
        shown = ", ".join(
            f"{f}={_redacted(getattr(self, f)) if f == 'extra' else getattr(self, f)!r}"
            for f in self.__dataclass_fields__
        )
        return f"EndpointConfig({shown})"

    @property
    def host(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)

    @property
    def url_key(self) -> str:
        return self.base_url.rstrip("/")


@dataclass
class JsonCompletion:
    """A structured reply: the raw text, and the parsed object or why it could not be parsed."""

    text: str = ""
    data: Optional[dict[str, Any]] = None
    error: Optional[str] = None  # no reply at all (HTTP error, timeout, empty payload)
    parse_error: Optional[str] = None  # a reply came, but it is not the JSON object the schema asks for
    latency_s: float = 0.0
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.parse_error is None


@dataclass
class _Outcome:
    reply: Optional[Reply]
    error: Optional[str]
    attempts: int
    latency_s: float  # the last attempt
    total_s: float  # all attempts and waits


class OpenAIBackend:
    """Generates through OpenAI-compatible HTTP endpoints, routed by Request.model."""

    name = "openai"

    def __init__(self, endpoints: Mapping[str, EndpointConfig | dict] | EndpointConfig):
        if isinstance(endpoints, EndpointConfig):
            self._default: Optional[EndpointConfig] = endpoints
            self._endpoints: dict[str, EndpointConfig] = {}
        else:
            self._default = None
            self._endpoints = {
                alias: cfg if isinstance(cfg, EndpointConfig) else EndpointConfig(**cfg)
                for alias, cfg in dict(endpoints or {}).items()
            }
            if not self._endpoints:
                raise BackendError("no OpenAI-compatible endpoints are configured")
        configs = list(self._endpoints.values()) + ([self._default] if self._default else [])
        # One semaphore per server; aliases sharing a server share its smallest limit.
        limits: dict[str, int] = {}
        for cfg in configs:
            limits[cfg.url_key] = min(limits.get(cfg.url_key, cfg.max_concurrency), cfg.max_concurrency)
        self._limits = limits
        self._semaphores = {url: threading.BoundedSemaphore(n) for url, n in limits.items()}
        self._clients: dict[tuple, openai.OpenAI] = {}
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def __repr__(self) -> str:
        aliases = sorted(self._endpoints) or ["*"]
        return f"OpenAIBackend(aliases={aliases})"

    # --- configuration -------------------------------------------------------------------------

    def endpoint(self, alias: str) -> EndpointConfig:
        cfg = self._endpoints.get(alias, self._default)
        if cfg is None:
            known = ", ".join(sorted(self._endpoints))
            raise BackendError(f"model '{alias}' has no OpenAI-compatible endpoint (configured: {known})")
        return cfg

    def identity(self, model_alias: str) -> dict[str, Any]:
        cfg = self.endpoint(model_alias)
        ident: dict[str, Any] = {
            "backend": self.name,
            "api": cfg.api,
            "model": cfg.model,
            "endpoint": cfg.host,
            "send_temperature": cfg.send_temperature,
        }
        if cfg.revision:
            ident["revision"] = cfg.revision
        if cfg.dtype:
            ident["dtype"] = cfg.dtype
        if cfg.min_tokens_param:
            ident["min_tokens_param"] = cfg.min_tokens_param
        if cfg.extra:
            ident["extra"] = _redacted(cfg.extra)
        return ident

    def _client(self, cfg: EndpointConfig) -> openai.OpenAI:
        key = (cfg.url_key, cfg.api_key_env, cfg.timeout_s)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                api_key = NO_KEY
                if cfg.api_key_env:
                    api_key = os.environ.get(cfg.api_key_env, "")
                    if not api_key:
                        raise BackendError(
                            f"endpoint {cfg.host}: the environment variable {cfg.api_key_env} "
                            "(which should hold the API key) is not set"
                        )
                    self._secrets.add(api_key)
                client = openai.OpenAI(
                    api_key=api_key,
                    base_url=cfg.base_url,
                    timeout=cfg.timeout_s,
                    max_retries=0,
                    http_client=http_client(cfg.timeout_s),  # honours each request's deadline
                )
                self._clients[key] = client
            return client

    # --- the Backend protocol ------------------------------------------------------------------

    def scheduling(self, alias: str, batch_size: int) -> dict[str, Any]:
        """For the sweep scheduler: one request per unit, as many in flight as the server allows, so no
        request waits for a slower one and two servers are busy side by side."""
        cfg = self.endpoint(alias)
        return {"device": None, "batch": 1, "workers": self._limits[cfg.url_key]}

    def generate(self, requests: Sequence[Request], on_text: Optional[OnText] = None) -> list[Response]:
        """One Response per request, in order. on_text is called from worker threads."""
        requests = list(requests)
        if self._closed.is_set():
            raise BackendError("the OpenAI backend was closed")
        # Setup problems (unknown alias, missing key) stop the batch before anything is sent.
        configs = [self.endpoint(r.model) for r in requests]
        for cfg in configs:
            self._client(cfg)
        groups: dict[str, list[int]] = {}
        for i, cfg in enumerate(configs):
            groups.setdefault(cfg.url_key, []).append(i)

        images = DataUrls()
        responses: list[Optional[Response]] = [None] * len(requests)
        pools: list[ThreadPoolExecutor] = []
        try:
            futures = []
            for url, indices in groups.items():
                pool = ThreadPoolExecutor(
                    max_workers=min(len(indices), self._limits[url]), thread_name_prefix="openai-backend"
                )
                pools.append(pool)
                for i in indices:
                    futures.append((i, pool.submit(self._generate_one, i, requests[i], configs[i], images, on_text)))
            for i, future in futures:
                responses[i] = future.result()
        finally:
            for pool in pools:
                pool.shutdown(wait=True)
        return [r if r is not None else Response(error="internal error: no response") for r in responses]

    def close(self) -> None:
        """Stop: waits between retries end at once, later attempts are not made, clients close."""
        self._closed.set()
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort
                pass

    # --- structured output -----------------------------------------------------------------------

    def complete_json(
        self,
        messages: Sequence[Message],
        schema: dict[str, Any],
        *,
        model: Optional[str] = None,
        name: str = "answer",
        strict: bool = True,
        max_output_tokens: int = 256,
        temperature: float = 0.0,
    ) -> JsonCompletion:
        """Ask for a JSON object that follows `schema` (response_format / text.format json_schema).

        Message content may be a string or a list of str / ImagePart. Never raises for a failed call:
        `error` says why nothing came back, `parse_error` why the text is not the object asked for.
        """
        if model is None and self._default is None:
            raise BackendError("complete_json needs model= (an alias with an endpoint)")
        cfg = self.endpoint(model) if model is not None else self._default
        assert cfg is not None
        client = self._client(cfg)
        generation = GenerationSettings(
            max_new_tokens=max_output_tokens, do_sample=temperature > 0, temperature=temperature
        )
        try:
            if cfg.api == "chat":
                payload = chat_payload(cfg, messages, generation, DataUrls())
                payload["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": schema, "strict": strict},
                }
            else:
                payload = responses_payload(cfg, messages, generation, DataUrls())
                payload["text"] = {"format": {"type": "json_schema", "name": name, "schema": schema, "strict": strict}}
        except (TypeError, ValueError, OSError) as exc:
            return JsonCompletion(error=self._scrub(f"cannot encode the messages: {exc}"))

        def attempt() -> Reply:
            if cfg.api == "chat":
                return read_chat(client.chat.completions.create(**payload))
            return read_responses(client.responses.create(**payload))

        outcome = self._with_retries(cfg, attempt)
        result = JsonCompletion(latency_s=outcome.latency_s)
        result.extra = {"attempts": outcome.attempts, "total_s": round(outcome.total_s, 4), "endpoint": cfg.host}
        if outcome.reply is None:
            result.error = outcome.error
            return result
        reply = outcome.reply
        result.text, result.input_tokens, result.output_tokens = reply.text, reply.input_tokens, reply.output_tokens
        result.extra.update(reply.extra)
        result.data, result.parse_error = parse_json_object(reply.text, schema)
        return result

    # --- one request -----------------------------------------------------------------------------

    def _generate_one(
        self, index: int, request: Request, cfg: EndpointConfig, images: "DataUrls", on_text: Optional[OnText]
    ) -> Response:
        try:
            if request.prompt_format != "chat_template":
                return Response(
                    error=(
                        "this prompt format is a raw template, but an OpenAI-compatible server applies its own "
                        "chat template; use the 'official' prompt style or run this model locally"
                    ),
                    extra={"endpoint": cfg.host},
                )
            try:
                if cfg.api == "chat":
                    payload = chat_payload(cfg, request.messages, request.generation, images)
                else:
                    payload = responses_payload(cfg, request.messages, request.generation, images)
            except (TypeError, ValueError, OSError) as exc:
                return Response(error=self._scrub(f"cannot encode the request: {exc}"))

            def emit(text: str) -> None:
                if on_text is None:
                    return
                try:
                    on_text(index, text)
                except Exception:  # a failing display callback must not lose the answer
                    log.exception("on_text callback failed")

            if self._closed.is_set():
                return Response(error="cancelled: the backend was closed", extra={"endpoint": cfg.host})
            client = self._client(cfg)
            readout = cfg.logprobs and cfg.api == "chat" and wants_logprobs(request.readout)
            if readout:
                payload.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
            stream = on_text is not None and cfg.stream and cfg.api == "chat" and not readout
            first_top: list = []

            def attempt() -> Reply:
                if stream:
                    return stream_chat(client, payload, emit)
                if cfg.api == "chat":
                    completion = client.chat.completions.create(**payload)
                    reply = read_chat(completion)
                    first_top[:] = (first_top_logprobs(completion) or []) if readout else []
                else:
                    reply = read_responses(client.responses.create(**payload))
                emit(reply.text)
                return reply

            outcome = self._with_retries(cfg, attempt)
            extra: dict[str, Any] = {
                "endpoint": cfg.host,
                "attempts": outcome.attempts,
                "total_s": round(outcome.total_s, 4),
            }
            if request.generation.min_new_tokens and not cfg.min_tokens_param:
                extra["not_sent"] = ["min_new_tokens"]
            if outcome.reply is None:
                return Response(error=outcome.error, latency_s=outcome.latency_s, extra=extra)
            reply = outcome.reply
            extra.update(reply.extra)
            p_positive = None
            if first_top and request.readout is not None:
                p_positive, raw = readout_from_top(first_top, request.readout)
                if raw:
                    extra["readout"] = raw
            return Response(
                text=reply.text,
                latency_s=outcome.latency_s,
                input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens,
                p_positive=p_positive,
                extra=extra,
            )
        except Exception as exc:  # the protocol: a per-request failure never escapes generate()
            log.exception("unexpected failure in request %d", index)
            return Response(error=self._scrub(f"internal error: {type(exc).__name__}: {exc}"))

    def _with_retries(self, cfg: EndpointConfig, call: Callable[[], Reply]) -> _Outcome:
        semaphore = self._semaphores[cfg.url_key]
        started = time.perf_counter()
        # One wall-clock deadline for the whole request (attempts, waits, a trickling stream).
        due = time.monotonic() + cfg.deadline_s
        late = f"{cfg.host}: no complete reply within the {cfg.deadline_s:g} s deadline (deadline_s)"
        attempts, latency, last_error = 0, 0.0, ""
        for attempt in range(cfg.max_retries + 1):
            if self._closed.is_set():
                return _Outcome(
                    None, "cancelled: the backend was closed", attempts, latency, time.perf_counter() - started
                )
            attempts += 1
            failure: Optional[BaseException] = None
            with semaphore:
                t0 = time.perf_counter()
                try:
                    with deadline(due):
                        reply = call()
                except Exception as exc:
                    failure = exc
                latency = time.perf_counter() - t0
            if failure is None:
                return _Outcome(reply, None, attempts, latency, time.perf_counter() - started)
            if self._closed.is_set():
                return _Outcome(
                    None, "cancelled: the backend was closed", attempts, latency, time.perf_counter() - started
                )
            if time.monotonic() >= due or is_deadline_error(failure):
                return _Outcome(None, late, attempts, latency, time.perf_counter() - started)
            retryable, wait_hint, message = _classify(failure, cfg)
            last_error = self._scrub(f"{cfg.host}: {message}")
            if not retryable:
                return _Outcome(None, last_error, attempts, latency, time.perf_counter() - started)
            if attempt == cfg.max_retries:
                break
            if wait_hint is not None:
                delay = min(wait_hint, cfg.retry_after_max_s) * (1 + 0.1 * random.random())
            else:
                delay = min(cfg.backoff_base_s * 2**attempt, cfg.backoff_max_s) * random.uniform(0.5, 1.0)
            if time.monotonic() + delay >= due:  # the retry could not finish in time
                return _Outcome(
                    None,
                    f"{last_error}; no time left to retry within the {cfg.deadline_s:g} s deadline",
                    attempts,
                    latency,
                    time.perf_counter() - started,
                )
            log.warning("%s (attempt %d of %d); retrying in %.2f s", last_error, attempts, cfg.max_retries + 1, delay)
            if self._closed.wait(delay):
                return _Outcome(
                    None, "cancelled: the backend was closed", attempts, latency, time.perf_counter() - started
                )
        error = f"gave up after {attempts} attempts: {last_error}"
        return _Outcome(None, error, attempts, latency, time.perf_counter() - started)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        text = _SECRET_LOOKING.sub("[redacted]", text)
        return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 3] + "..."


# --- failures ------------------------------------------------------------------------------------


def _classify(exc: BaseException, cfg: EndpointConfig) -> tuple[bool, Optional[float], str]:
    """(retry?, seconds the server asked us to wait, message for the user)."""
    if isinstance(exc, BadReply):
        return False, None, str(exc)
    if isinstance(exc, StreamCut):
        return True, None, str(exc)
    if isinstance(exc, openai.APITimeoutError):
        return True, None, f"timed out after {cfg.timeout_s:g} s"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        return True, None, f"connection failed ({_describe(cause) if cause else exc.message})"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = status in RETRYABLE_STATUS or status >= 500
        wait = _retry_after(exc.response.headers) if retryable else None
        return retryable, wait, f"HTTP {status}: {_status_detail(exc)}"
    if _is_transport_error(exc):  # older openai clients let stream errors through unwrapped
        return True, None, f"connection failed ({_describe(exc)})"
    if isinstance(exc, ValueError):  # json.JSONDecodeError included: a truncated or garbled body
        return False, None, f"unreadable reply ({_describe(exc)})"
    return False, None, f"unexpected failure ({_describe(exc)})"


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_transport_error(exc: BaseException) -> bool:
    return any(cls.__name__ == "TransportError" and cls.__module__.startswith("httpx") for cls in type(exc).__mro__)


def _status_detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return exc.message


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    """Seconds from retry-after-ms or Retry-After (seconds or an HTTP date); None if absent or bad."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _redacted(value: Any) -> Any:
    """A copy of a config mapping with secret-looking fields blanked (for identity and logs)."""
    if isinstance(value, dict):
        return {k: "[redacted]" if _SECRET_FIELD.search(str(k)) else _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    if isinstance(value, str) and _SECRET_LOOKING.search(value):
        return "[redacted]"
    return value
