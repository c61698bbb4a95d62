"""The LLM judge as the study ran it, against a local server that behaves like a reasoning model.

The server below (stdlib only) answers /v1/chat/completions the way gpt-5 does where it matters:
it rejects any temperature, spends hidden "reasoning" tokens inside the output cap before it
writes a word (so a small cap gives an empty reply with finish_reason "length"), and classifies the
VLM's response it is shown with a fixed, simple rule. It can also be told to fail (HTTP 401) or to
reply with nothing.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from explorer.catalog.presets import load_catalog
from explorer.cli.main import main
from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend
from explorer.prompts.variants import closed_variants
from explorer.runs.store import Store
from explorer.scoring.judge import (
    AMBIGUOUS,
    JUDGE_ERROR,
    JudgeError,
    LLMJudge,
    judge_endpoint,
    judge_generation,
    study_judge_prompts,
)

STRINGS = Path(__file__).resolve().parents[2] / "shared" / "study" / "strings.json"
REASONING_TOKENS = 300  # what the fake model "thinks" before it answers
JUDGE_FILES = {
    "brain_tumor": "judge_brain",
    "pneumonia": "judge_pneumonia",
    "skin_cancer": "judge_skin_cancer",
    "histo_idc": "judge_idc",
}


class ReasoningServer:
    """A fake reasoning model behind an OpenAI-compatible chat endpoint (a test server, not a model)."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.modes: list[str] = []  # per call, first in first out: "401", "empty" or a word; then normal replies
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    mode = server.modes.pop(0) if server.modes else ""
                if mode == "401":
                    return self._send(
                        401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
                    )
                if "temperature" in body or "top_p" in body:
                    return self._send(
                        400,
                        {
                            "error": {
                                "message": "Unsupported value: 'temperature' does not support 0 "
                                "with this model. Only the default (1) value is supported."
                            }
                        },
                    )
                cap = body.get("max_completion_tokens")
                text, finish, used = server.classify(body), "stop", REASONING_TOKENS + 3
                if mode == "empty":
                    text = ""
                elif mode:
                    text = mode  # a scripted word
                elif cap is not None and cap < REASONING_TOKENS + 3:
                    text, finish, used = "", "length", cap  # all of the cap went on reasoning
                self._send(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}
                        ],
                        "usage": {
                            "prompt_tokens": 100,
                            "completion_tokens": used,
                            "total_tokens": 100 + used,
                            "completion_tokens_details": {"reasoning_tokens": min(used, REASONING_TOKENS)},
                        },
                    },
                )

            def _send(self, status, payload):
                blob = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(blob)))
                self.end_headers()
                self.wfile.write(blob)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def classify(body: dict) -> str:
        """The judge's one word from the system prompt's tokens: what a careful reader would answer."""
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
        user = body["messages"][-1]["content"]
        words = re.findall(r"exactly one word: (\w+), (\w+), or AMBIGUOUS", system + user)
        positive, negative = words[0]
        prompt = user.split("Original prompt given to the model:")[1].split("Model's response:")[0]
        response = user.split("Model's response:")[1].split("Classification")[0].strip(" \n<>")
        if response.lower().startswith("yes"):
            return negative if re.search(r"\bnormal\b", prompt) else positive
        if response.lower().startswith("no"):
            return positive if re.search(r"\bnormal\b", prompt) else negative
        return AMBIGUOUS

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    with ReasoningServer() as s:
        yield s


def gpt5_judge(server: ReasoningServer, **kwargs) -> LLMJudge:
    # send_temperature=True on purpose: a reasoning model's endpoint must drop it anyway.
    endpoint = EndpointConfig(base_url=server.base_url, model="gpt-5", max_retries=0, send_temperature=True)
    endpoint = judge_endpoint(endpoint, "gpt-5")
    catalog = load_catalog()
    tokens = {key: task.judge_tokens for key, task in catalog.tasks.items()}
    kwargs.setdefault("prompts", "study")
    return LLMJudge(OpenAIBackend({"gpt-5": endpoint}), "gpt-5", tokens, **kwargs)


def variant(task: str, prompt_id: str):
    return next(v for v in closed_variants(load_catalog(), task) if v.prompt_id == prompt_id)


def test_gpt5_request_shape_no_temperature_no_small_cap_explicit_effort(server):
    judge = gpt5_judge(server)
    verdict = judge.judge("Yes, there is a mass.", variant("brain_tumor", "abnormal"), "brain_tumor")
    assert verdict.label == "positive" and verdict.detail == "judge answered TUMOR"
    (body,) = server.bodies
    assert "temperature" not in body and "top_p" not in body
    assert body["max_completion_tokens"] >= 25_000  # room to reason (the authors set no cap at all)
    assert body["reasoning_effort"] == "medium"  # explicit, gpt-5's own default
    assert "stream" not in body or body["stream"] is False
    # The study's messages: its per-task system prompt, then its user template, as it filled them.
    study = study_judge_prompts()
    assert body["messages"][0] == {"role": "system", "content": study.system["brain_tumor"]}
    assert body["messages"][1]["content"] == study.user_template.format(
        prompt="Is this image abnormal?", response="Yes, there is a mass."
    )
    assert verdict.method == f"judge:gpt-5|study@{study.version}"


def test_reasoning_server_answers_every_task_and_polarity_correctly(server):
    judge = gpt5_judge(server)
    items = [
        ("Yes.", variant("pneumonia", "normal"), "pneumonia"),  # "normal? yes" means NEGATIVE
        ("No, it is not normal.", variant("pneumonia", "normal"), "pneumonia"),
        ("Yes", variant("skin_cancer", "evidence_ow"), "skin_cancer"),
        ("No", variant("histo_idc", "abnormal"), "histo_idc"),
        ("I cannot tell from this image.", variant("brain_tumor", "evidence"), "brain_tumor"),
    ]
    verdicts = judge.judge_many(items)
    assert [v.label for v in verdicts] == ["negative", "positive", "positive", "negative", "hedge"]
    assert verdicts[-1].detail == f"{AMBIGUOUS}: judge answered {AMBIGUOUS}"
    assert len(server.bodies) == 5  # each answered first time: the budget was enough


def test_small_cap_gives_empty_replies_which_are_retried_with_a_larger_budget(server):
    # 200 tokens: all spent on reasoning, the reply is empty (finish_reason "length"); doubled, 400 fit.
    judge = gpt5_judge(server, generation=judge_generation("gpt-5", 200))
    verdict = judge.judge("No.", variant("brain_tumor", "evidence"), "brain_tumor")
    assert verdict.label == "negative"
    assert [b["max_completion_tokens"] for b in server.bodies] == [200, 400]

    # 16 tokens (what the explorer used to send) never fits in 2 retries: a judge error, not a refusal.
    server.bodies.clear()
    judge = gpt5_judge(server, generation=judge_generation("gpt-5", 16))
    result = judge.judge("No.", variant("brain_tumor", "evidence"), "brain_tumor")
    assert isinstance(result, JudgeError) and result.label is None
    assert result.detail == JUDGE_ERROR + "empty judge output (finish_reason=length) (after 3 attempts)"
    assert [b["max_completion_tokens"] for b in server.bodies] == [16, 32, 64]


def test_empty_reply_is_retried_then_a_judge_error(server):
    server.modes = ["empty"]
    judge = gpt5_judge(server, retries=2)
    assert judge.judge("Yes", variant("pneumonia", "abnormal"), "pneumonia").label == "positive"
    assert len(server.bodies) == 2  # one empty reply, then the real one

    server.bodies.clear()
    server.modes = ["empty"] * 3
    result = judge.judge("Yes", variant("pneumonia", "abnormal"), "pneumonia")
    assert isinstance(result, JudgeError)
    assert result.detail == JUDGE_ERROR + "empty judge output (finish_reason=stop) (after 3 attempts)"
    assert len(server.bodies) == 3


def test_explorer_prompts_are_selectable_and_carry_their_own_id(server):
    judge = gpt5_judge(server, prompts="explorer")
    assert judge.judge("Yes", variant("pneumonia", "abnormal"), "pneumonia").label == "positive"
    body = server.bodies[0]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert judge.method.startswith("judge:gpt-5|explorer@") and judge.method != gpt5_judge(server).method


@pytest.mark.skipif(not STRINGS.is_file(), reason="../shared/study/strings.json is absent")
def test_study_judge_strings_are_the_authors_byte_for_byte():
    as_run = json.loads(STRINGS.read_text(encoding="utf-8"))["as_run_de96238"]
    study = study_judge_prompts()
    for task, stem in JUDGE_FILES.items():
        constants = as_run[f"judging/gpt5_{stem}.py"]
        assert study.system[task] == constants["JUDGE_SYSTEM_PROMPT"], task
        assert study.user_template == constants["JUDGE_USER_TEMPLATE"], task
        assert constants["JUDGE_MODEL"] == load_catalog().study("paper").judge.model
    head = json.loads(STRINGS.read_text(encoding="utf-8"))["head_1e9dde1"]
    assert study.user_template == head["src/evaluate_vqa.py"]["JUDGE_USER_TEMPLATE"]


def test_paper_preset_judges_with_the_study_prompts():
    judge = load_catalog().study("paper").judge
    assert (judge.method, judge.model, judge.prompts, judge.reasoning_effort) == ("llm", "gpt-5", "study", "medium")


# ---------------------------------------------------------------- the command line, as a user hits it
def _samples(root: Path) -> Path:
    for i, cls in enumerate(("negative", "positive")):
        for j in range(1):
            img = Image.new("L", (48, 48), color=30 + 60 * i + j)
            ImageDraw.Draw(img).ellipse((8, 8, 30 + i * 8, 30), fill=220)
            (root / "pneumonia" / cls).mkdir(parents=True, exist_ok=True)
            img.save(root / "pneumonia" / cls / f"img{j}.png")
    return root


def test_cli_failing_judge_is_reported_not_refusal_and_rejudge_sends_exactly_those(
    server, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JUDGE_KEY", "sk-test-not-real")
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(
        f"gpt-5: {{base_url: '{server.base_url}', model: gpt-5, api_key_env: JUDGE_KEY, max_retries: 0}}\n"
    )
    store_path = tmp_path / "s.sqlite"
    args = [
        "sweep",
        "--preset",
        "demo",
        "--samples",
        str(_samples(tmp_path / "samples")),
        "--tasks",
        "pneumonia",
        "--models",
        "demo-gemma",
        "--prompts",
        "abnormal,normal",
        "--per-class",
        "1",
        "--max-new-tokens",
        "4",
        "--judge",
        "--endpoints",
        str(endpoints),
        "--store",
        str(store_path),
    ]
    server.modes = ["401"] * 100  # a wrong key: every judge call fails
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "judge: 0 judged (0 AMBIGUOUS), 4 failed" in captured.out
    assert "4 judgements failed" in captured.err and "--rejudge" in captured.err
    with Store(store_path) as store:
        rows = store.answers()
    assert [r["verdict"] for r in rows] == [None] * 4  # not "refusal"
    assert all(r["verdict_detail"].startswith(JUDGE_ERROR) and "401" in r["verdict_detail"] for r in rows)
    assert len(server.bodies) == 4 * 3  # each tried 1 + 2 times

    server.modes, server.bodies[:] = [], []  # the key is fixed
    assert main([*args, "--rejudge"]) == 0
    captured = capsys.readouterr()
    assert "rejudged 4 of 4 failed or AMBIGUOUS judgements" in captured.out
    assert "judge: 4 judged (4 AMBIGUOUS), 0 failed" in captured.out  # random-weight answers: no yes or no
    assert len(server.bodies) == 4
    with Store(store_path) as store:
        assert [r["verdict"] for r in store.answers()] == ["hedge"] * 4

    # AMBIGUOUS is re-asked too: one of the four now gets a word, the other three stay AMBIGUOUS.
    server.bodies.clear()
    server.modes = ["POSITIVE"]
    assert main([*args, "--rejudge"]) == 0
    assert "judge: 4 judged (3 AMBIGUOUS), 0 failed" in capsys.readouterr().out
    assert len(server.bodies) == 4
    server.bodies.clear()
    assert main([*args, "--rejudge"]) == 0
    assert len(server.bodies) == 3  # exactly the AMBIGUOUS ones; the judged one is left alone
    # The metrics count AMBIGUOUS as a non-answer (the study's refusal) and nothing else.
    assert main(["metrics", "--store", str(store_path), "--all", "--cells"]) == 0


@pytest.mark.parametrize(
    "model, reasoning",
    [
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("gpt-5.1", True),
        ("o4-mini", True),
        ("openai/gpt-5", True),
        ("gpt-4o", False),
        ("llama-3.1-8b", False),
        ("o10-preview", False),
    ],
)
def test_which_judges_reason_and_what_they_are_sent(model, reasoning):
    endpoint = EndpointConfig(base_url="http://127.0.0.1:9/v1", model=model, send_temperature=True)
    chat = judge_endpoint(endpoint, model)
    assert chat.stream is False
    assert chat.send_temperature is (not reasoning)
    assert (chat.extra.get("reasoning_effort") == "medium") is reasoning
    assert judge_generation(model).max_new_tokens == (25_000 if reasoning else 16)
    if reasoning:  # the Responses API spells it reasoning.effort; an effort the endpoint sets is kept
        responses = judge_endpoint(
            EndpointConfig(base_url="http://127.0.0.1:9/v1", model=model, api="responses"), model, "low"
        )
        assert responses.extra == {"reasoning": {"effort": "low"}}
        own = EndpointConfig(base_url="http://127.0.0.1:9/v1", model=model, extra={"reasoning_effort": "high"})
        assert judge_endpoint(own, model, "low").extra == {"reasoning_effort": "high"}
