"""Findings 3 (the OpenAI backend's part), 12 and 14 (reply size): what a misbehaving server can do to
an answer, and where a key may go. Requests go through the Explorer the app's Compare tab calls
(ask with on_text: streamed; without: one reply), to a local server (tests/misbehaving_server.py).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from misbehaving_server import MisbehavingServer
from PIL import Image

from explorer.cases import hub as datasets
from explorer.models.backends.openai_backend import EndpointConfig
from explorer.models.backends.openai_wire import MAX_REPLY_CHARS
from explorer.probes.diagnosers import is_openai_host, openai_diagnoser
from explorer.service.core import Explorer

MODEL = "demo-gemma"  # chat-template prompts, so an OpenAI-compatible server can answer it
SENTINEL = "sk-reliability-SENTINEL-0042"


@pytest.fixture()
def case(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8), "L").save(path)
    return datasets.upload_case(path, "pneumonia", label="positive", name="x.png")


def _explorer(tmp_path, server: MisbehavingServer, **endpoint) -> Explorer:
    cfg = EndpointConfig(base_url=server.base_url, model="served", **{"max_retries": 0, **endpoint})
    return Explorer(preset="demo", store_path=tmp_path / "s.sqlite", endpoints={MODEL: cfg})


def _ask(ex: Explorer, case, streamed: bool):
    shown: list[str] = []
    on_text = (lambda alias, text: shown.append(text)) if streamed else None
    (view,) = ex.ask(case, ex.variant("pneumonia", "abnormal"), [MODEL], on_text=on_text)
    return view


# ---------------------------------------------------------------- 3: null content while streaming
def test_a_streamed_reply_with_null_content_is_an_error_and_never_cached(tmp_path, case):
    with MisbehavingServer("null_stream") as server:
        ex = _explorer(tmp_path, server)
        try:
            first = _ask(ex, case, streamed=True)
            assert first.error and "no text content" in first.error and first.verdict != "refusal"
            again = _ask(ex, case, streamed=True)
            assert not again.cached and len(server.requests) == 2  # asked again, not served from the store
            assert ex.store.count(include_errors=False) == 0
        finally:
            ex.close()


# ---------------------------------------------------------------- 3: a per-request wall-clock deadline
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed (Compare)", "one reply"])
def test_a_trickling_server_cannot_hold_a_request_past_its_deadline(tmp_path, case, streamed):
    with MisbehavingServer("trickle", trickle_s=0.2) as server:
        ex = _explorer(tmp_path, server, timeout_s=2.0, deadline_s=1.5)
        try:
            started = time.perf_counter()
            view = _ask(ex, case, streamed)
            took = time.perf_counter() - started
        finally:
            ex.close()
    assert view.error and "within the 1.5 s deadline" in view.error
    assert took < 4.0, took  # a byte every 0.2 s never trips the 2 s read timeout: only the deadline ends it


def test_retries_stop_at_the_deadline(tmp_path, case):
    """Backoff 0.3, 0.6, 1.2 s...: the retry that could not finish by the 1 s deadline is not made."""
    with MisbehavingServer("http500") as server:
        ex = _explorer(tmp_path, server, deadline_s=1.0, max_retries=10, backoff_base_s=0.3, backoff_max_s=5.0)
        try:
            started = time.perf_counter()
            view = _ask(ex, case, streamed=False)
            took = time.perf_counter() - started
        finally:
            ex.close()
    assert view.error and "no time left to retry within the 1 s deadline" in view.error
    assert took < 2.0 and 1 <= len(server.requests) <= 3


# ---------------------------------------------------------------- 14: replies capped
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "one reply"])
def test_a_10mb_reply_is_stored_capped(tmp_path, case, streamed):
    with MisbehavingServer("huge", huge_chars=10_000_000) as server:
        ex = _explorer(tmp_path, server)
        try:
            view = _ask(ex, case, streamed)
            stored = ex.store.answers()[0]
        finally:
            ex.close()
    assert view.error is None and len(view.answer) == MAX_REPLY_CHARS == len(stored["answer"])


# ---------------------------------------------------------------- 12: keys only to their exact host
@pytest.mark.parametrize("path", ["/api.openai.com/v1", "/v1?via=api.openai.com"], ids=["as a path", "in a query"])
def test_the_openai_key_is_not_sent_to_a_url_that_merely_contains_api_openai_com(monkeypatch, path):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    with MisbehavingServer("ok") as server:
        base = server.base_url.rsplit("/v1", 1)[0] + path
        diagnoser = openai_diagnoser("gpt-test", api="chat", base_url=base, structured=False)
        try:
            diagnoser.diagnose(["Does the description suggest pneumonia?"])
        finally:
            diagnoser.close()
    assert server.requests, "the diagnoser sent nothing"
    auth = [next((v for k, v in r["headers"].items() if k.lower() == "authorization"), "") for r in server.requests]
    assert all(SENTINEL not in a for a in auth) and all(a == "Bearer EMPTY" for a in auth)


def test_only_https_api_openai_com_itself_gets_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    assert (
        openai_diagnoser("gpt-test", base_url="https://api.openai.com/v1").backend.endpoint("diagnoser").api_key_env
        == "OPENAI_API_KEY"
    )
    for url in (
        "https://api.openai.com.evil.example/v1",
        "https://evil.example/api.openai.com/v1",
        "http://api.openai.com/v1",
        "https://api.openai.com:8443/v1",
    ):
        assert not is_openai_host(url), url
        assert openai_diagnoser("gpt-test", base_url=url).backend.endpoint("diagnoser").api_key_env is None
    assert not is_openai_host("https://user@api.openai.com/v1")  # (such a URL is refused by EndpointConfig too)
