"""The vLLM backend's requests, against a fake `vllm` module put in sys.modules (vLLM itself is never
installed here): engine options, chat vs raw prompts with multi-modal data, sampling parameters,
logprobs -> first-token readout, exact mode, and a sweep through it."""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass, field

import pytest
from PIL import Image

from explorer.cases.images import content_hash
from explorer.catalog.presets import load_catalog
from explorer.models.backends.base import BackendError
from explorer.models.backends.registry import BackendRegistry
from explorer.models.backends.vllm_backend import READOUT_TOP_K, VLLMBackend
from explorer.prompts.messages import build_request
from explorer.schema import Case


@dataclass
class Logprob:
    logprob: float


@dataclass
class Completion:
    text: str
    token_ids: list
    logprobs: object = None
    finish_reason: str = "stop"


@dataclass
class Output:
    outputs: list
    prompt_token_ids: list = field(default_factory=lambda: [1, 2, 3])


class FakeTokenizer:
    """A vocabulary with yes/no tokens, as the readout looks them up."""

    vocab = {"Yes": 5, "No": 6, "▁yes": 7, "A": 8, "B": 9, "the": 10}
    all_special_ids: list = []

    def get_vocab(self):
        return dict(self.vocab)

    def batch_decode(self, ids, skip_special_tokens=False):
        names = {v: k.replace("▁", " ") for k, v in self.vocab.items()}
        return [names[i[0]] for i in ids]


class FakeLLM:
    instances: list = []

    def __init__(self, **options):
        self.options = options
        self.calls: list = []
        FakeLLM.instances.append(self)

    def _answer(self, params):
        logprobs = None
        if params.kwargs.get("logprobs"):
            # P(Yes)=0.6, P(yes)=0.1, P(No)=0.2, something else 0.1
            logprobs = [
                {
                    5: Logprob(math.log(0.6)),
                    7: Logprob(math.log(0.1)),
                    6: Logprob(math.log(0.2)),
                    10: Logprob(math.log(0.1)),
                }
            ]
        return Output([Completion("Yes, it is.", [5, 11, 12], logprobs)])

    def chat(self, messages, sampling_params=None, use_tqdm=True):
        self.calls.append(("chat", messages, sampling_params))
        return [self._answer(p) for p in sampling_params]

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append(("generate", prompts, sampling_params))
        return [self._answer(p) for p in sampling_params]

    def get_tokenizer(self):
        return FakeTokenizer()


class SamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture()
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.__version__ = FakeLLM, SamplingParams, "0.0-fake"
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    return module


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _case() -> Case:
    img = Image.new("RGB", (16, 16), (120, 30, 60))
    return Case(case_id="pneumonia:t:0", task="pneumonia", image=img, image_hash=content_hash(img), label="positive")


def _request(catalog, alias: str, style: str = "paper", prompt_id: str = None):
    from explorer.prompts.variants import closed_variants

    variants = closed_variants(catalog, "pneumonia")
    variant = next(v for v in variants if prompt_id is None or v.prompt_id == prompt_id)
    spec = catalog.model(alias)
    return build_request(spec, variant, _case(), style, spec.generation.settings()), variant


def test_raw_study_format_goes_to_generate_with_the_image_as_multi_modal_data(fake_vllm, catalog):
    backend = VLLMBackend(catalog)
    request, variant = _request(catalog, "llava")  # the study's "USER: <image>\n{prompt}\nASSISTANT:"
    [response] = backend.generate([request])
    engine = FakeLLM.instances[-1]
    kind, prompts, params = engine.calls[-1]
    assert kind == "generate"
    assert prompts[0]["prompt"] == f"USER: <image>\n{variant.text}\nASSISTANT:"
    assert prompts[0]["multi_modal_data"]["image"].size == (16, 16)
    p = params[0].kwargs
    assert (p["max_tokens"], p["min_tokens"], p["temperature"]) == (2048, 32, 0.0)  # the study's greedy settings
    assert engine.options["model"] == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert engine.options["enable_prefix_caching"] is True and engine.options["dtype"] == "bfloat16"
    assert engine.options["limit_mm_per_prompt"] == {"image": 1}
    assert response.text == "Yes, it is." and response.output_tokens == 3 and response.error is None


def test_chat_format_goes_to_chat_with_an_image_part(fake_vllm, catalog):
    backend = VLLMBackend(catalog)
    request, variant = _request(catalog, "gemma")
    backend.generate([request])
    kind, conversations, _ = FakeLLM.instances[-1].calls[-1]
    assert kind == "chat"
    content = conversations[0][0]["content"]
    assert content[0]["type"] == "image_url" and content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": variant.text}


def test_first_token_logprobs_give_the_readout(fake_vllm, catalog):
    backend = VLLMBackend(catalog)
    request, variant = _request(catalog, "gemma")
    assert variant.yes_means in ("positive", "negative")
    [response] = backend.generate([request])
    _, _, params = FakeLLM.instances[-1].calls[-1]
    assert params[0].kwargs["logprobs"] == READOUT_TOP_K
    yes, no = 0.6 + 0.1, 0.2
    expected = yes / (yes + no) if variant.yes_means == "positive" else no / (yes + no)
    assert response.p_positive == pytest.approx(expected)
    assert response.extra["readout"]["from"].startswith("top-")


def test_exact_mode_sends_one_request_per_call_without_prefix_caching(fake_vllm, catalog):
    backend = VLLMBackend(catalog, exact=True)
    requests = [_request(catalog, "gemma")[0] for _ in range(3)]
    backend.generate(requests)
    engine = FakeLLM.instances[-1]
    assert [len(call[1]) for call in engine.calls] == [1, 1, 1]
    assert engine.options["enable_prefix_caching"] is False
    assert backend.scheduling("gemma", 12)["batch"] == 1
    assert backend.identity("gemma")["execution"] != VLLMBackend(catalog).identity("gemma").get("execution")


def test_one_engine_at_a_time_and_parallel_options_reach_vllm(fake_vllm, catalog):
    backend = VLLMBackend(catalog, tensor_parallel_size=2, pipeline_parallel_size=2)
    backend.generate([_request(catalog, "gemma")[0]])
    backend.generate([_request(catalog, "medgemma")[0]])
    assert backend.loaded() == ["medgemma"] and len(FakeLLM.instances) == 2
    assert FakeLLM.instances[-1].options["tensor_parallel_size"] == 2
    assert FakeLLM.instances[-1].options["pipeline_parallel_size"] == 2


def test_chosen_by_the_registry_and_runs_a_sweep(fake_vllm, catalog, tmp_path):
    from explorer.runs.store import Store
    from explorer.runs.sweep import run_sweep

    registry = BackendRegistry(catalog, {}, local_backend="vllm")
    assert isinstance(registry.for_model("gemma"), VLLMBackend)
    request, variant = _request(catalog, "gemma")
    from explorer.runs.sweep import plan_sweep

    plan = plan_sweep(
        catalog, ["gemma", "llava"], ["pneumonia"], {"pneumonia": [_case()]}, {"pneumonia": [variant]}, "paper"
    )
    store = Store(tmp_path / "v.sqlite")
    summary = run_sweep(plan, registry.for_model, store, batch_size=12)
    assert (summary.computed, summary.errors) == (2, 0)
    rows = store.answers(include_errors=True)
    assert {r["backend"] for r in rows} == {"vllm"} and all(r["p_positive"] is not None for r in rows)
    store.close()


def test_without_vllm_installed_the_error_says_how_to_get_it(catalog, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(BackendError, match=r"pip install"):
        VLLMBackend(catalog).generate([_request(catalog, "gemma")[0]])


# ---------------------------------------------------------------- OpenAI-compatible servers (vLLM serve)
class _StubCompletions:
    def __init__(self, completion):
        self.completion, self.payloads = completion, []

    def create(self, **payload):
        self.payloads.append(payload)
        return self.completion


def test_a_server_with_logprobs_gives_the_first_token_readout(catalog, monkeypatch):
    import openai.types.chat as chat_types

    from explorer.models.backends.openai_backend import EndpointConfig, OpenAIBackend

    top = [
        {"token": "Yes", "logprob": math.log(0.5), "bytes": None},
        {"token": " yes", "logprob": math.log(0.2), "bytes": None},
        {"token": "No", "logprob": math.log(0.2), "bytes": None},
        {"token": "The", "logprob": math.log(0.1), "bytes": None},
    ]
    completion = chat_types.ChatCompletion.model_validate(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "g",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "Yes."},
                    "logprobs": {
                        "content": [{"token": "Yes", "logprob": math.log(0.5), "bytes": None, "top_logprobs": top}]
                    },
                }
            ],
        }
    )
    stub = _StubCompletions(completion)
    client = types.SimpleNamespace(chat=types.SimpleNamespace(completions=stub))
    request, variant = _request(catalog, "gemma", style="official")
    for logprobs in (True, False):
        backend = OpenAIBackend(
            {"gemma": EndpointConfig(base_url="http://127.0.0.1:9/v1", model="g", logprobs=logprobs)}
        )
        monkeypatch.setattr(backend, "_client", lambda cfg: client)
        # With logprobs the reply is read whole even when the caller streams (the stub cannot stream).
        [response] = backend.generate([request], on_text=(lambda i, t: None) if logprobs else None)
        assert response.error is None and response.text == "Yes."
        if logprobs:
            assert stub.payloads[-1]["logprobs"] is True and stub.payloads[-1]["top_logprobs"] == 20
            assert "stream" not in stub.payloads[-1]  # read whole: the first position's logprobs come with it
            yes, no = 0.7, 0.2
            expected = yes / (yes + no) if variant.yes_means == "positive" else no / (yes + no)
            assert response.p_positive == pytest.approx(expected)
        else:  # a server not marked as serving logprobs is not asked for them
            assert "logprobs" not in stub.payloads[-1] and response.p_positive is None
