"""The OpenAI wire format: what is sent (chat and Responses API payloads) and how replies are read.

Module-level helpers for OpenAIBackend (openai_backend.py), which owns concurrency, retries and failures.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import openai
from PIL import Image

from explorer.schema import GenerationSettings, ImagePart, Message

if TYPE_CHECKING:
    from explorer.models.backends.openai_backend import EndpointConfig

# The longest reply kept: 200,000 characters (~50,000 tokens, above the 32,768-token limit presets
# allow). A server that ignores max_tokens is cut here, and the reply says so (extra["truncated"]).
MAX_REPLY_CHARS = 200_000


@dataclass
class Reply:
    text: str
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)


class BadReply(Exception):
    """The server answered, but with nothing usable (no choices, no content): not retried."""


class StreamCut(Exception):
    """A stream that ended without a finish_reason: the connection was cut (retried)."""


def _capped(text: str, extra: dict[str, Any]) -> str:
    if len(text) > MAX_REPLY_CHARS:
        extra["truncated"] = f"the reply was cut at {MAX_REPLY_CHARS:,} of {len(text):,}+ characters"
        return text[:MAX_REPLY_CHARS]
    return text


# --- reading replies -----------------------------------------------------------------------------


def read_chat(completion: Any) -> Reply:
    choices = getattr(completion, "choices", None)
    if choices is None:
        raise BadReply(f"not a chat completion: {str(completion)[:200]!r}")
    if not choices:
        raise BadReply("the server returned no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    finish = getattr(choice, "finish_reason", None)
    extra: dict[str, Any] = {
        "finish_reason": finish,
        "response_id": getattr(completion, "id", None),
        "server_model": getattr(completion, "model", None),
    }
    content = getattr(message, "content", None) if message is not None else None
    refusal = getattr(message, "refusal", None) if message is not None else None
    if content is None and refusal:
        content, extra["refusal"] = refusal, True
    if not isinstance(content, str):
        raise BadReply(f"the reply has no text content (finish_reason={finish})")
    reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
    if isinstance(reasoning, str) and reasoning:
        extra["reasoning"] = reasoning
    usage = getattr(completion, "usage", None)
    return Reply(
        text=_capped(content, extra),
        input_tokens=getattr(usage, "prompt_tokens", None),
        output_tokens=getattr(usage, "completion_tokens", None),
        extra=extra,
    )


def stream_chat(client: openai.OpenAI, payload: dict[str, Any], emit: Callable[[str], None]) -> Reply:
    emit("")  # a retried stream starts its text over
    text, saw_choice, finish, usage, response_id, server_model = "", False, None, None, None, None
    # Like the non-streaming path: a reply whose content is null throughout (no text, no refusal) is
    # not an empty answer but no answer, and must not be stored (and cached) as a success.
    saw_content, refusal, truncated = False, "", None
    stream = client.chat.completions.create(**payload, stream=True, stream_options={"include_usage": True})
    with stream:
        for chunk in stream:
            response_id = response_id or getattr(chunk, "id", None)
            server_model = server_model or getattr(chunk, "model", None)
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            for choice in getattr(chunk, "choices", None) or []:
                if getattr(choice, "index", 0) != 0:
                    continue
                saw_choice = True
                delta = choice.delta
                piece = getattr(delta, "content", None) if delta is not None else None
                if isinstance(piece, str):
                    saw_content = True
                    text += piece
                    if piece:
                        emit(text)
                refused = getattr(delta, "refusal", None) if delta is not None else None
                if isinstance(refused, str):
                    refusal += refused
                finish = choice.finish_reason or finish
            if len(text) > MAX_REPLY_CHARS:  # a server that ignores max_tokens: stop reading
                truncated = f"the reply was cut at {MAX_REPLY_CHARS:,} characters"
                text, finish = text[:MAX_REPLY_CHARS], finish or "length"
                break
    if not saw_choice:
        raise BadReply("the stream carried no choices")
    if finish is None:  # a close-delimited stream cut short ends without an error; this shows it
        raise StreamCut(f"the stream ended early, after {len(text)} characters")
    extra = {"finish_reason": finish, "response_id": response_id, "server_model": server_model, "streamed": True}
    if truncated:
        extra["truncated"] = truncated
    if not text and refusal:
        text, extra["refusal"] = _capped(refusal, extra), True
    elif not saw_content:
        raise BadReply(f"the reply has no text content (finish_reason={finish})")
    return Reply(
        text=text,
        input_tokens=getattr(usage, "prompt_tokens", None),
        output_tokens=getattr(usage, "completion_tokens", None),
        extra=extra,
    )


def read_responses(response: Any) -> Reply:
    output = getattr(response, "output", None)
    if output is None:
        raise BadReply(f"not a Responses API object: {str(response)[:200]!r}")
    error = getattr(response, "error", None)
    if error:
        raise BadReply(f"the server reported an error: {getattr(error, 'message', error)}")
    status = getattr(response, "status", None)
    extra: dict[str, Any] = {
        "status": status,
        "response_id": getattr(response, "id", None),
        "server_model": getattr(response, "model", None),
    }
    incomplete = getattr(response, "incomplete_details", None)
    if incomplete is not None and getattr(incomplete, "reason", None):
        extra["incomplete_reason"] = incomplete.reason
    texts, refusals, saw_message = [], [], False
    for item in output:
        if getattr(item, "type", None) != "message":
            continue
        saw_message = True
        for part in getattr(item, "content", None) or []:
            kind = getattr(part, "type", None)
            if kind == "output_text":
                texts.append(getattr(part, "text", "") or "")
            elif kind == "refusal":
                refusals.append(getattr(part, "refusal", "") or "")
    if not saw_message:
        why = f" (status {status}, {extra.get('incomplete_reason')})" if status and status != "completed" else ""
        raise BadReply(f"the reply has no message{why}")
    text = _capped("".join(texts), extra)
    if not text and refusals:
        text, extra["refusal"] = _capped("".join(refusals), extra), True
    usage = getattr(response, "usage", None)
    details = getattr(usage, "output_tokens_details", None)
    if getattr(details, "reasoning_tokens", None):
        extra["reasoning_tokens"] = details.reasoning_tokens
    return Reply(
        text=text,
        input_tokens=getattr(usage, "input_tokens", None),
        output_tokens=getattr(usage, "output_tokens", None),
        extra=extra,
    )


def parse_json_object(text: str, schema: dict[str, Any]) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """The reply as a dict, or why not: not JSON, not an object, a required key missing, a value
    outside a top-level enum. (A light check; strict servers enforce the full schema.)"""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"expected a JSON object, got {type(data).__name__}"
    missing = [key for key in schema.get("required", []) if key not in data]
    if missing:
        return None, f"missing required keys: {', '.join(missing)}"
    for key, spec in (schema.get("properties") or {}).items():
        if isinstance(spec, dict) and "enum" in spec and key in data and data[key] not in spec["enum"]:
            return None, f"{key}={data[key]!r} is not one of {spec['enum']}"
    return data, None


# --- building requests ---------------------------------------------------------------------------


def _sampling(cfg: EndpointConfig, generation: GenerationSettings, seed: bool) -> dict[str, Any]:
    if not cfg.send_temperature:
        return {}
    if not generation.do_sample:
        return {"temperature": 0.0}
    params: dict[str, Any] = {"temperature": generation.temperature, "top_p": generation.top_p}
    if seed:
        params["seed"] = generation.seed
    return params


def _extra_body(cfg: EndpointConfig, generation: GenerationSettings) -> dict[str, Any]:
    body = dict(cfg.extra)
    if cfg.min_tokens_param and generation.min_new_tokens:
        body[cfg.min_tokens_param] = generation.min_new_tokens
    return body


def chat_payload(
    cfg: EndpointConfig, messages: Sequence[Message], generation: GenerationSettings, images: "DataUrls"
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": cfg.model,
        "messages": [_chat_message(m, images) for m in messages],
        cfg.max_tokens_param: generation.max_new_tokens,
        **_sampling(cfg, generation, seed=True),
    }
    extra = _extra_body(cfg, generation)
    if extra:
        payload["extra_body"] = extra
    return payload


def responses_payload(
    cfg: EndpointConfig, messages: Sequence[Message], generation: GenerationSettings, images: "DataUrls"
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": cfg.model,
        "input": [_responses_message(m, images) for m in messages],
        "max_output_tokens": generation.max_new_tokens,
        "store": False,  # medical images: nothing kept server-side unless a config asks (extra)
        **_sampling(cfg, generation, seed=False),  # the Responses API has no seed
    }
    extra = _extra_body(cfg, generation)
    if extra:
        payload["extra_body"] = extra
    return payload


def _parts(message: Message) -> list[Any]:
    content = message.get("content")
    parts = [content] if isinstance(content, str) else list(content or [])
    for part in parts:
        if not isinstance(part, (str, ImagePart)):
            raise TypeError(f"message parts must be text or ImagePart, got {type(part).__name__}")
    return parts


def _chat_message(message: Message, images: "DataUrls") -> dict[str, Any]:
    parts = _parts(message)
    if len(parts) == 1 and isinstance(parts[0], str):
        # Plain string content: what every server's chat template accepts.
        return {"role": message["role"], "content": parts[0]}
    content = [
        {"type": "text", "text": p}
        if isinstance(p, str)
        else {"type": "image_url", "image_url": {"url": images.get(p)}}
        for p in parts
    ]
    return {"role": message["role"], "content": content}


def _responses_message(message: Message, images: "DataUrls") -> dict[str, Any]:
    role, parts = message["role"], _parts(message)
    if len(parts) == 1 and isinstance(parts[0], str):
        return {"role": role, "content": parts[0]}
    text_type = "output_text" if role == "assistant" else "input_text"
    content = []
    for p in parts:
        if isinstance(p, str):
            content.append({"type": text_type, "text": p})
        elif role == "assistant":
            raise ValueError("an assistant message cannot carry an image in the Responses API")
        else:
            content.append({"type": "input_image", "image_url": images.get(p), "detail": "auto"})
    return {"role": role, "content": content}


class DataUrls:
    """PNG data URLs, encoded once per image within a batch (one image often has many prompts)."""

    def __init__(self) -> None:
        self._urls: dict[Any, str] = {}
        self._lock = threading.Lock()

    def get(self, part: ImagePart) -> str:
        key = part.image_hash or id(part.image)
        with self._lock:
            url = self._urls.get(key)
        if url is None:
            url = _png_data_url(part.image)
            with self._lock:
                self._urls[key] = url
        return url


def _png_data_url(image: Image.Image) -> str:
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
