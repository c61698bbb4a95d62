"""A small OpenAI-compatible HTTP server for tests (stdlib only; a test server, not a model).

It serves POST /v1/chat/completions (plain and stream=true SSE) and POST /v1/responses on
127.0.0.1 at a free port, records every request (headers and JSON body) and can be scripted to
misbehave: faults queue up and each call takes the next one, in arrival order.

    with FakeOpenAIServer() as server:
        server.add_faults(Fault.http(429, retry_after="1"), Fault.delay(2.0))
        ... OpenAI(base_url=server.base_url) ...
        server.requests[0].body["messages"]

The default reply is derived from the prompt: "echo <model>: <last user text> [<n> image(s)]", or,
when a JSON schema is asked for, the first allowed value of each property.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional

import pytest

CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, used by exactly one call."""

    kind: str  # "http" | "delay" | "drop" | "drop_mid_stream" | "truncated" | "content" | "empty"
    status: int = 500
    headers: tuple[tuple[str, str], ...] = ()
    message: str = ""
    echo_auth: bool = False  # put the Authorization header in the error message (as real servers do)
    seconds: float = 0.0
    content: str = ""

    @classmethod
    def http(
        cls, status: int, message: str = "scripted failure", retry_after: Optional[str] = None, echo_auth: bool = False
    ) -> "Fault":
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return cls("http", status=status, headers=headers, message=message, echo_auth=echo_auth)

    @classmethod
    def delay(cls, seconds: float) -> "Fault":
        """Answer normally, but only after `seconds` (longer than a client timeout: a timeout)."""
        return cls("delay", seconds=seconds)

    @classmethod
    def drop(cls) -> "Fault":
        """Close the connection without any response."""
        return cls("drop")

    @classmethod
    def drop_mid_stream(cls) -> "Fault":
        """Stream the first chunk, then close the connection (a stream request only)."""
        return cls("drop_mid_stream")

    @classmethod
    def truncated(cls) -> "Fault":
        """HTTP 200 whose JSON body is cut in half."""
        return cls("truncated")

    @classmethod
    def reply(cls, content: str) -> "Fault":
        """HTTP 200 whose reply text is exactly `content` (e.g. invalid JSON)."""
        return cls("content", content=content)

    @classmethod
    def empty(cls) -> "Fault":
        """HTTP 200 with no choices (chat) / no output items (Responses API)."""
        return cls("empty")


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when the body was not JSON
    arrived: float  # time.monotonic()
    fault: Optional[str] = None


@dataclass
class _State:
    delay_s: float
    requests: list[RecordedRequest] = field(default_factory=list)
    faults: deque = field(default_factory=deque)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    # The reply to a request with no fault queued: a function of the last user text (default: an echo).
    replier: Optional[Callable[[str], str]] = None


class FakeOpenAIServer:
    def __init__(
        self, *, delay_s: float = 0.0, faults: tuple[Fault, ...] = (), replier: Optional[Callable[[str], str]] = None
    ):
        self._state = _State(delay_s=delay_s, faults=deque(faults), replier=replier)
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> "FakeOpenAIServer":
        state = self._state

        class Handler(_Handler):
            pass

        Handler.state = state
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stop.set()  # wakes handlers sleeping in a delay
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- scripting and inspection ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def host(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    def add_faults(self, *faults: Fault) -> None:
        with self._state.lock:
            self._state.faults.extend(faults)

    def set_delay(self, seconds: float) -> None:
        """A delay before every reply (to hold requests in flight)."""
        self._state.delay_s = seconds

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.0"  # one request per connection; the end of a stream is the close

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        state = self.state
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with state.lock:
            fault = state.faults.popleft() if state.faults else None
            state.requests.append(
                RecordedRequest(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    arrived=time.monotonic(),
                    fault=fault.kind if fault else None,
                )
            )
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            if state.delay_s:
                state.stop.wait(state.delay_s)
            self._answer(body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before we answered
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(self, body: Any, fault: Optional[Fault]) -> None:
        if self.path not in (CHAT_PATH, RESPONSES_PATH):
            return self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        if not isinstance(body, dict):
            return self._json(400, {"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}})
        kind = fault.kind if fault else None
        if kind == "delay":
            self.state.stop.wait(fault.seconds)
        if kind == "http":
            message = fault.message
            if fault.echo_auth:
                message += f" (Incorrect API key provided: {self.headers.get('Authorization', '')})"
            return self._json(
                fault.status, {"error": {"message": message, "type": "scripted", "code": None}}, headers=fault.headers
            )
        if kind == "drop":
            self._drop()
            return None
        text = fault.content if kind == "content" else _default_reply(body, self.state.replier)
        chat = self.path == CHAT_PATH
        if chat and body.get("stream"):
            return self._stream_chat(body, text, drop_after_first=kind == "drop_mid_stream", empty=kind == "empty")
        payload = _chat_completion(body, text) if chat else _response_object(body, text)
        if kind == "empty":
            payload["choices" if chat else "output"] = []
        if kind == "truncated":
            blob = json.dumps(payload).encode()
            return self._send(200, blob[: len(blob) // 2], "application/json")
        return self._json(200, payload)

    # --- writing -----------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json", headers)

    def _send(self, status: int, blob: bytes, content_type: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(blob)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(blob)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _stream_chat(self, body: dict, text: str, drop_after_first: bool, empty: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}

        def event(choices: list, usage: Any = None) -> None:
            chunk = dict(base, choices=choices)
            if usage is not None:
                chunk["usage"] = usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        if not empty:
            event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            for n, piece in enumerate(re.findall(r"\S+\s*", text)):
                event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
                if drop_after_first and n == 0:
                    self._drop()
                    return
            event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            event([], usage=_usage(body, text, chat=True))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


# --- deterministic replies ---------------------------------------------------------------------------


def _messages(body: dict) -> list[dict]:
    items = body.get("messages") if "messages" in body else body.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    return [m for m in items or [] if isinstance(m, dict)]


def _text_and_images(message: dict) -> tuple[str, int]:
    content = message.get("content")
    if isinstance(content, str):
        return content, 0
    texts = [p.get("text", "") for p in content or [] if p.get("type") in ("text", "input_text", "output_text")]
    images = sum(1 for p in content or [] if p.get("type") in ("image_url", "input_image"))
    return "\n".join(texts), images


def _schema(body: dict) -> Optional[dict]:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("json_schema", {}).get("schema")
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema":
        return fmt.get("schema")
    return None


def _example(schema: dict) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return {key: _example(spec) for key, spec in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    return {"string": "echo", "number": 0, "integer": 0, "boolean": False}.get(kind)


def _default_reply(body: dict, replier: Optional[Callable[[str], str]] = None) -> str:
    schema = _schema(body)
    if schema is not None:
        return json.dumps(_example(schema))
    users = [m for m in _messages(body) if m.get("role") == "user"]
    text, images = _text_and_images(users[-1]) if users else ("", 0)
    if replier is not None:
        return replier(text)
    suffix = f" [{images} image(s)]" if images else ""
    return f"echo {body.get('model')}: {text}{suffix}"


def _usage(body: dict, text: str, chat: bool) -> dict:
    prompt = sum(len(_text_and_images(m)[0].split()) + 10 * _text_and_images(m)[1] for m in _messages(body))
    completion = len(text.split())
    if chat:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _chat_completion(body: dict, text: str) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": _usage(body, text, chat=True),
    }


def _response_object(body: dict, text: str) -> dict:
    return {
        "id": "resp-fake",
        "object": "response",
        "created_at": 0,
        "model": body.get("model"),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "output": [
            {
                "type": "message",
                "id": "msg-fake",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": _usage(body, text, chat=False),
    }


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A started FakeOpenAIServer, stopped at teardown."""
    with FakeOpenAIServer() as server:
        yield server
