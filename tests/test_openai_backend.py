"""The OpenAI-compatible backend against a local fake server: formats, retries, routing, secrets."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from fake_openai_server import FakeOpenAIServer, Fault, fake_openai  # noqa: F401  (fixture)
from PIL import Image

from explorer.models.backends.base import BackendError
from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
from explorer.schema import GenerationSettings, ImagePart, Request

KEY_ENV = "EXPLORER_TEST_OPENAI_KEY"
SENTINEL = "sk-test-SENTINEL-4b1d9e7f0c"
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["Yes", "No"]}},
    "required": ["answer"],
    "additionalProperties": False,
}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SENTINEL)


def config(server: FakeOpenAIServer, **overrides) -> EndpointConfig:
    settings = dict(
        base_url=server.base_url,
        model="served-model",
        api_key_env=KEY_ENV,
        timeout_s=0.5,
        max_retries=2,
        max_concurrency=4,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
    )
    settings.update(overrides)
    return EndpointConfig(**settings)


def image() -> Image.Image:
    img = Image.new("RGB", (6, 4), (10, 20, 30))
    img.putpixel((1, 2), (250, 0, 128))
    return img


def request(text: str = "Is there pneumonia?", model: str = "m", with_image: bool = True, **kw) -> Request:
    content = [text, ImagePart(image(), "hash-1")] if with_image else [text]
    return Request(
        model=model,
        messages=({"role": "user", "content": content},),
        generation=GenerationSettings(max_new_tokens=32),
        **kw,
    )


def generate(backend: OpenAIBackend, *requests: Request, on_text=None):
    try:
        return backend.generate(list(requests), on_text=on_text)
    finally:
        backend.close()


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))).convert("RGB")


def test_success_sends_the_image_as_a_png_data_url_in_chat_format(fake_openai):
    backend = OpenAIBackend({"m": config(fake_openai)})
    system = {"role": "system", "content": ["Be brief."]}
    req = request()
    req = Request(model="m", messages=(system,) + req.messages, generation=req.generation)
    [resp] = generate(backend, req)

    assert resp.ok, resp.error
    assert resp.text == "echo served-model: Is there pneumonia? [1 image(s)]"
    assert resp.input_tokens == 2 + 3 + 10 and resp.output_tokens == len(resp.text.split())
    assert resp.latency_s > 0 and resp.extra["attempts"] == 1
    [seen] = fake_openai.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == f"Bearer {SENTINEL}"
    body = seen.body
    assert body["model"] == "served-model"
    assert body["max_completion_tokens"] == 32 and body["temperature"] == 0.0
    assert "stream" not in body and "seed" not in body
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    text_part, image_part = body["messages"][1]["content"]
    assert text_part == {"type": "text", "text": "Is there pneumonia?"}
    assert image_part["type"] == "image_url"
    sent = decode_data_url(image_part["image_url"]["url"])
    assert sent.size == (6, 4) and list(sent.getdata()) == list(image().getdata())


def test_send_temperature_false_omits_sampling_parameters(fake_openai):
    backend = OpenAIBackend({"m": config(fake_openai, send_temperature=False, extra={"reasoning_effort": "none"})})
    [resp] = generate(backend, request())
    assert resp.ok
    body = fake_openai.requests[0].body
    assert "temperature" not in body and "top_p" not in body
    assert body["reasoning_effort"] == "none"


def test_sampling_settings_and_min_tokens_are_sent_when_configured(fake_openai):
    backend = OpenAIBackend({"m": config(fake_openai, min_tokens_param="min_tokens")})
    gen = GenerationSettings(max_new_tokens=16, min_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    req = Request(model="m", messages=({"role": "user", "content": ["hi"]},), generation=gen)
    [resp] = generate(backend, req)
    assert resp.ok and "not_sent" not in resp.extra
    body = fake_openai.requests[0].body
    assert (body["temperature"], body["top_p"], body["seed"], body["min_tokens"]) == (0.7, 0.9, 3, 4)


def test_a_timeout_and_a_500_are_retried_then_succeed(fake_openai):
    fake_openai.add_faults(Fault.delay(2.0), Fault.http(500))
    backend = OpenAIBackend({"m": config(fake_openai, timeout_s=0.3)})
    [resp] = generate(backend, request())
    assert resp.ok, resp.error
    assert resp.extra["attempts"] == 3
    assert [r.fault for r in fake_openai.requests] == ["delay", "http", None]


def test_a_dropped_connection_is_retried(fake_openai):
    fake_openai.add_faults(Fault.drop())
    [resp] = generate(OpenAIBackend({"m": config(fake_openai)}), request())
    assert resp.ok, resp.error
    assert len(fake_openai.requests) == 2


def test_retry_after_is_honoured(fake_openai):
    fake_openai.add_faults(Fault.http(429, "slow down", retry_after="1"))
    [resp] = generate(OpenAIBackend({"m": config(fake_openai)}), request())
    assert resp.ok, resp.error
    first, second = fake_openai.requests
    # The backoff alone would wait at most 0.05 s.
    assert second.arrived - first.arrived >= 0.95
    assert resp.extra["total_s"] >= 0.95


def test_retries_give_up_with_the_last_error(fake_openai):
    fake_openai.add_faults(*[Fault.http(503, "overloaded")] * 3)
    [resp] = generate(OpenAIBackend({"m": config(fake_openai, max_retries=2)}), request())
    assert not resp.ok and resp.text == ""
    assert resp.error.startswith("gave up after 3 attempts") and "HTTP 503: overloaded" in resp.error
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize(
    "fault, expected",
    [
        (Fault.http(400, "bad image"), "HTTP 400: bad image"),
        (Fault.empty(), "no choices"),
        (Fault.truncated(), "unreadable reply"),
    ],
)
def test_non_retryable_failures_are_recorded_not_raised(fake_openai, fault, expected):
    fake_openai.add_faults(fault)
    ok_request = request("second question", with_image=False)
    bad, good = generate(OpenAIBackend({"m": config(fake_openai, max_concurrency=1)}), request(), ok_request)
    assert not bad.ok and expected in bad.error and bad.text == ""
    assert fake_openai.host in bad.error
    assert good.ok and good.text == "echo served-model: second question"
    assert len(fake_openai.requests) == 2  # no retry of the failure


def test_concurrency_is_bounded_per_endpoint(fake_openai):
    fake_openai.set_delay(0.15)
    backend = OpenAIBackend({"m": config(fake_openai, max_concurrency=2)})
    responses = generate(backend, *[request(f"q{i}", with_image=False) for i in range(6)])
    assert all(r.ok for r in responses)
    assert [r.text for r in responses] == [f"echo served-model: q{i}" for i in range(6)]
    assert fake_openai.max_in_flight == 2


def test_concurrency_is_bounded_across_simultaneous_batches(fake_openai):
    fake_openai.set_delay(0.15)
    backend = OpenAIBackend({"m": config(fake_openai, max_concurrency=2), "n": config(fake_openai, max_concurrency=3)})
    results: dict[str, list] = {}

    def run(alias: str) -> None:
        results[alias] = backend.generate([request(f"{alias}{i}", model=alias, with_image=False) for i in range(3)])

    threads = [threading.Thread(target=run, args=(alias,)) for alias in ("m", "n")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    backend.close()
    assert all(r.ok for rs in results.values() for r in rs) and len(results) == 2
    assert fake_openai.max_in_flight == 2  # one server: the smaller limit, shared by both batches


def test_two_aliases_route_to_two_endpoints():
    with FakeOpenAIServer() as one, FakeOpenAIServer() as two:
        backend = OpenAIBackend({"a": config(one, model="model-a"), "b": config(two, model="model-b")})
        reqs = [request(f"q{i}", model="ab"[i % 2], with_image=False) for i in range(4)]
        responses = generate(backend, *reqs)
        assert [r.text for r in responses] == [f"echo model-{'ab'[i % 2]}: q{i}" for i in range(4)]
        assert {r.body["model"] for r in one.requests} == {"model-a"} and len(one.requests) == 2
        assert {r.body["model"] for r in two.requests} == {"model-b"} and len(two.requests) == 2
        assert backend.identity("a")["endpoint"] == one.host
        assert backend.identity("b")["model"] == "model-b"


def test_configuration_problems_raise_backend_error(fake_openai, monkeypatch):
    backend = OpenAIBackend({"m": config(fake_openai)})
    with pytest.raises(BackendError, match="'nope' has no OpenAI-compatible endpoint"):
        backend.generate([request(model="nope")])
    with pytest.raises(BackendError, match="nope"):
        backend.identity("nope")
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(BackendError, match=KEY_ENV):
        OpenAIBackend({"m": config(fake_openai)}).generate([request()])
    with pytest.raises(BackendError, match="NAME"):
        config(fake_openai, api_key_env=SENTINEL)
    assert fake_openai.requests == []


def test_a_raw_prompt_format_is_refused_per_request(fake_openai):
    [resp] = generate(
        OpenAIBackend({"m": config(fake_openai)}), request(prompt_format="USER: <image>\n{prompt}\nASSISTANT:")
    )
    assert not resp.ok and "chat template" in resp.error
    assert fake_openai.requests == []


def test_streaming_feeds_on_text_and_restarts_after_a_drop(fake_openai):
    fake_openai.add_faults(Fault.drop_mid_stream())
    seen: list[tuple[int, str]] = []
    lock = threading.Lock()

    def on_text(i, text):
        with lock:
            seen.append((i, text))

    [resp] = generate(OpenAIBackend({"m": config(fake_openai)}), request("one two three"), on_text=on_text)
    assert resp.ok, resp.error
    assert resp.text == "echo served-model: one two three [1 image(s)]"
    assert resp.extra["streamed"] and resp.extra["attempts"] == 2
    assert resp.output_tokens == len(resp.text.split())
    assert all(r.body["stream"] is True for r in fake_openai.requests)
    texts = [t for _, t in seen]
    assert texts[-1] == resp.text and {i for i, _ in seen} == {0}
    last_reset = max(k for k, t in enumerate(texts) if t == "")
    after = texts[last_reset:]
    assert all(resp.text.startswith(t) for t in after) and after == sorted(after, key=len)


def test_responses_api_path(fake_openai):
    backend = OpenAIBackend({"m": config(fake_openai, api="responses", extra={"reasoning": {"effort": "none"}})})
    [resp] = generate(backend, request())
    assert resp.ok, resp.error
    assert resp.text == "echo served-model: Is there pneumonia? [1 image(s)]"
    assert resp.output_tokens == len(resp.text.split()) and resp.extra["status"] == "completed"
    [seen] = fake_openai.requests
    assert seen.path == "/v1/responses"
    body = seen.body
    assert body["max_output_tokens"] == 32 and body["store"] is False
    assert body["reasoning"] == {"effort": "none"}
    text_part, image_part = body["input"][0]["content"]
    assert text_part == {"type": "input_text", "text": "Is there pneumonia?"}
    assert image_part["type"] == "input_image"
    assert decode_data_url(image_part["image_url"]).size == (6, 4)


def test_responses_api_empty_output_is_an_error(fake_openai):
    fake_openai.add_faults(Fault.empty())
    [resp] = generate(OpenAIBackend({"m": config(fake_openai, api="responses")}), request())
    assert not resp.ok and "no message" in resp.error


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_complete_json_parses_a_schema_reply(fake_openai, api):
    backend = OpenAIBackend({"judge": config(fake_openai, api=api)})
    try:
        result = backend.complete_json(
            [{"role": "user", "content": "Description: clear lungs"}], SCHEMA, model="judge", max_output_tokens=64
        )
    finally:
        backend.close()
    assert result.ok, (result.error, result.parse_error)
    assert result.data == {"answer": "Yes"} and result.text == '{"answer": "Yes"}'
    body = fake_openai.requests[0].body
    if api == "chat":
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
        }
        assert body["max_completion_tokens"] == 64
    else:
        assert body["text"]["format"] == {"type": "json_schema", "name": "answer", "schema": SCHEMA, "strict": True}
        assert body["max_output_tokens"] == 64


@pytest.mark.parametrize(
    "reply, why",
    [
        ('{"answer": "Ye', "not valid JSON"),
        ('["Yes"]', "JSON object"),
        ('{"answer": "Maybe"}', "not one of"),
        ("{}", "missing required keys: answer"),
    ],
)
def test_complete_json_records_an_unparsable_reply(fake_openai, reply, why):
    fake_openai.add_faults(Fault.reply(reply))
    backend = OpenAIBackend(config(fake_openai))  # one config answers every alias
    try:
        result = backend.complete_json([{"role": "user", "content": "x"}], SCHEMA)
    finally:
        backend.close()
    assert result.error is None and result.data is None and why in result.parse_error
    assert result.text == reply


def test_complete_json_http_failure_is_an_error(fake_openai):
    fake_openai.add_faults(Fault.http(404, "no such model"))
    backend = OpenAIBackend({"judge": config(fake_openai)})
    try:
        result = backend.complete_json([{"role": "user", "content": "x"}], SCHEMA, model="judge")
    finally:
        backend.close()
    assert not result.ok and "HTTP 404: no such model" in result.error and result.parse_error is None


def test_the_api_key_never_leaks(fake_openai):
    with pytest.raises(BackendError, match="extra.api_key") as refused:
        config(fake_openai, extra={"api_key": SENTINEL})
    cfg = config(fake_openai, extra={"reasoning_effort": "none", "note": SENTINEL})
    backend = OpenAIBackend({"m": cfg})
    fake_openai.add_faults(
        Fault.http(401, "unauthorized", echo_auth=True),
        Fault.http(400, f"bad {SENTINEL}"),
        *[Fault.http(500, f"Bearer {SENTINEL}")] * 3,
    )
    backend_repr = repr(backend)
    responses = generate(OpenAIBackend({"m": config(fake_openai, max_concurrency=1)}), request(), request(), request())
    identity = backend.identity("m")
    backend.close()
    assert fake_openai.requests[0].headers["authorization"] == f"Bearer {SENTINEL}"  # it was sent...
    errors = [r.error for r in responses]
    assert all(errors) and "unauthorized" in errors[0] and "[redacted]" in errors[0]
    for text in [backend_repr, repr(cfg), str(identity), str(refused.value), *errors]:  # ...and shown nowhere
        assert SENTINEL not in text
        assert "SENTINEL" not in text


def test_close_interrupts_a_long_retry_wait(fake_openai):
    fake_openai.add_faults(Fault.http(429, retry_after="30"))
    backend = OpenAIBackend({"m": config(fake_openai)})
    timer = threading.Timer(0.3, backend.close)
    timer.start()
    started = time.monotonic()
    try:
        [resp] = backend.generate([request()])
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    assert not resp.ok and "cancelled" in resp.error
    with pytest.raises(BackendError, match="closed"):
        backend.generate([request()])
