"""An OpenAI-compatible server that misbehaves in the ways the reliability tests and bench/soak.py need
(stdlib only; a test server, not a model). Any POST path is served, every request's path and headers
are recorded, and `mode` says how it answers:

  "trickle"      HTTP 200 headers, then one byte every `trickle_s` seconds, never a complete reply
  "null_stream"  a chat stream whose deltas all carry content null, then finish_reason "stop"
  "huge"         a complete chat reply of `huge_chars` characters (a server ignoring max_tokens)
  "http500"      HTTP 500 at once (a retryable failure)
  "ok"           a short ordinary chat reply (streamed when asked)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class MisbehavingServer:
    def __init__(self, mode: str = "ok", trickle_s: float = 0.2, huge_chars: int = 10_000_000):
        self.mode, self.trickle_s, self.huge_chars = mode, trickle_s, huge_chars
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                try:
                    getattr(self, f"_{owner.mode}")(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _trickle(self, body: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream" if body.get("stream") else "application/json")
                self.send_header("Content-Length", "100000000")
                self.end_headers()
                while not owner._stop.is_set():
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(owner.trickle_s)

            def _events(self, chunks: list[dict]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _chunk(self, body: dict, delta: dict, finish: Any = None) -> dict:
                return {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }

            def _null_stream(self, body: dict) -> None:
                self._events(
                    [
                        self._chunk(body, {"role": "assistant", "content": None}),
                        self._chunk(body, {"content": None}),
                        self._chunk(body, {}, "stop"),
                    ]
                )

            def _reply(self, body: dict, text: str) -> None:
                if body.get("stream"):
                    self._events(
                        [
                            self._chunk(body, {"role": "assistant", "content": ""}),
                            self._chunk(body, {"content": text}),
                            self._chunk(body, {}, "stop"),
                        ]
                    )
                    return
                blob = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body.get("model"),
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        ],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

            def _huge(self, body: dict) -> None:
                self._reply(body, "y" * owner.huge_chars)

            def _http500(self, body: dict) -> None:
                blob = b'{"error": {"message": "scripted failure"}}'
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

            def _ok(self, body: dict) -> None:
                self._reply(body, "Yes.")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> "MisbehavingServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
