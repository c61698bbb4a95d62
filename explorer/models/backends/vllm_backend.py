"""Local models through vLLM's offline engine (an optional dependency, `pip install vllm`, GPU).

vLLM batches and schedules on its own (continuous batching, paged KV cache, automatic prefix caching:
the prompts of one image share its prefix without any code here), so a sweep hands it large units.
Requests go in two ways, as the preset's prompt format says:
  - chat_template: LLM.chat with OpenAI-style messages (the image as a data URL), the model's template;
  - a raw format (the study's "USER: <image>\\n{prompt}\\nASSISTANT:" for LLaVA-1.6, LLaVA-Med's
    "[INST] <image>\\n{prompt} [/INST]"): LLM.generate with the prompt string and multi_modal_data,
    so the study's own formats run unchanged (an OpenAI-compatible server refuses them).
Greedy settings map to temperature 0; min_new_tokens to min_tokens. For closed-form prompts the first
answer token's top logprobs give the first-token readout (p_positive), as the transformers backend's
logits do (over the top-k tokens vLLM returns, not the whole vocabulary: said in Response.extra).

One engine is held at a time (vLLM takes a fixed share of GPU memory); a request for another model
replaces it. Multi-GPU: tensor_parallel_size / pipeline_parallel_size are vLLM's own options.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from explorer.catalog.presets import Catalog, ModelSpec, PresetError
from explorer.models.backends.base import LOCAL_DEVICE, BackendError, OnText
from explorer.models.readout import answer_tokens, readout
from explorer.schema import ImagePart, Request, Response

EXACT_EXECUTION = "exact-v1: one request per call, no prefix caching, authors' dtype"
READOUT_TOP_K = 20  # logprobs asked for the first answer token (vLLM's default max_logprobs is 20)
UNIT = 256  # requests per generate() call: vLLM schedules inside it


def _vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise BackendError(
            "--backend vllm needs vLLM: pip install vllm (Linux with a CUDA GPU; it is not in requirements.txt)"
        ) from None
    return vllm


def _installed_vllm_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vllm")
    except metadata.PackageNotFoundError:
        return str(getattr(_vllm(), "__version__", "unknown"))


def _data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class VLLMBackend:
    name = "vllm"

    def __init__(
        self,
        catalog: Catalog,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        exact: bool = False,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: Optional[int] = None,
        local_paths: Optional[dict[str, str | Path]] = None,
        engine_options: Optional[dict[str, Any]] = None,
        **ignored: Any,
    ):
        """exact: one request per call, no prefix caching, bf16 (the authors' dtype on a GPU).
        engine_options go to vllm.LLM as they are (e.g. quantization="awq", enforce_eager=True).
        Options of the transformers backend without a vLLM meaning (reuse, memory_budget) are ignored."""
        if device is not None and not str(device).startswith("cuda"):
            raise BackendError(f"the vLLM backend runs on CUDA GPUs, not {device!r}; use --backend transformers")
        if ignored.get("quantization"):
            raise BackendError(
                "--quantization is bitsandbytes for the transformers backend; with vLLM give a "
                "quantized checkpoint or engine_options={'quantization': ...}"
            )
        self.catalog = catalog
        self.dtype_override = dtype
        self.exact = exact
        self.parallel = {
            "tensor_parallel_size": int(tensor_parallel_size),
            "pipeline_parallel_size": int(pipeline_parallel_size),
        }
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.local_paths = {a: Path(p) for a, p in (local_paths or {}).items()}
        self.engine_options = dict(engine_options or {})
        self._engine: Optional[tuple[str, Any]] = None  # (alias, vllm.LLM)
        self._lock = threading.RLock()

    # ------------------------------------------------------------ settings and identity
    def _spec(self, alias: str) -> Optional[ModelSpec]:
        try:
            return self.catalog.model(alias)
        except PresetError as exc:
            if alias in self.local_paths:
                return None
            raise BackendError(str(exc)) from None

    def _dtype(self, spec: Optional[ModelSpec]) -> str:
        if self.exact and not self.dtype_override:
            return "bfloat16"
        name = self.dtype_override or (spec.dtype if spec else "auto")
        return "bfloat16" if name == "auto" else name

    def _source(self, alias: str, spec: Optional[ModelSpec]) -> tuple[str, Optional[str]]:
        """(what vllm.LLM loads, revision)."""
        if alias in self.local_paths:
            return str(self.local_paths[alias].expanduser()), None
        assert spec is not None
        if spec.is_demo:
            from explorer.models.demo import DemoSize, ensure_demo_model

            return str(ensure_demo_model(spec, DemoSize.tiny())), None
        from explorer.models.availability import cached_repo_id

        return cached_repo_id(spec) or spec.hf_id, spec.revision

    def identity(self, model_alias: str) -> dict[str, Any]:
        spec = self._spec(model_alias)
        if spec is not None and spec.is_demo:  # named as the transformers backend names it, never built here
            source, revision = f"demo/{spec.alias}", None
        else:
            source, revision = self._source(model_alias, spec)
        ident: dict[str, Any] = {
            "backend": self.name,
            "model": source,
            "revision": revision,
            "dtype": self._dtype(spec),
            "vllm": _installed_vllm_version(),
            "random_weights": bool(spec and spec.is_demo),
        }
        if self.exact:
            ident["execution"] = EXACT_EXECUTION
        return ident

    def scheduling(self, alias: str, batch_size: int) -> dict[str, Any]:
        """vLLM schedules inside a call: a sweep hands it big units (one request at a time when exact)."""
        return {"device": LOCAL_DEVICE, "batch": 1 if self.exact else max(UNIT, batch_size), "workers": 1}

    # ------------------------------------------------------------ the engine
    def load(self, alias: str) -> Any:
        with self._lock:
            if self._engine is not None and self._engine[0] == alias:
                return self._engine[1]
            self.unload_all()
            vllm = _vllm()
            spec = self._spec(alias)
            source, revision = self._source(alias, spec)
            options: dict[str, Any] = {
                "model": source,
                "revision": revision,
                "dtype": self._dtype(spec),
                "enable_prefix_caching": not self.exact,
                "limit_mm_per_prompt": {"image": 1},
                "gpu_memory_utilization": self.gpu_memory_utilization,
                "seed": 0,
                "max_logprobs": READOUT_TOP_K,
                **self.parallel,
            }
            if self.max_model_len:
                options["max_model_len"] = int(self.max_model_len)
            options.update(self.engine_options)
            engine = vllm.LLM(**{k: v for k, v in options.items() if v is not None})
            self._engine = (alias, engine)
            return engine

    def unload_all(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine = None
                import gc

                gc.collect()

    def unload(self, alias: str) -> bool:
        with self._lock:
            if self._engine is None or self._engine[0] != alias:
                return False
            self.unload_all()
            return True

    def loaded(self) -> list[str]:
        return [self._engine[0]] if self._engine else []

    def close(self) -> None:
        self.unload_all()

    # ------------------------------------------------------------ requests
    def sampling_params(self, request: Request) -> Any:
        g = request.generation
        options: dict[str, Any] = {
            "max_tokens": g.max_new_tokens,
            "min_tokens": g.min_new_tokens,
            "temperature": g.temperature if g.do_sample else 0.0,
            "top_p": g.top_p if g.do_sample else 1.0,
            "seed": g.seed,
        }
        if request.readout is not None and request.readout.kind == "closed":
            options["logprobs"] = READOUT_TOP_K
        return _vllm().SamplingParams(**options)

    @staticmethod
    def chat_messages(request: Request) -> list[dict[str, Any]]:
        """OpenAI-style messages for LLM.chat, each image as a PNG data URL."""
        return [
            {
                "role": m["role"],
                "content": [
                    {"type": "image_url", "image_url": {"url": _data_url(p.image)}}
                    if isinstance(p, ImagePart)
                    else {"type": "text", "text": p}
                    for p in m["content"]
                ],
            }
            for m in request.messages
        ]

    @staticmethod
    def raw_prompt(request: Request) -> dict[str, Any]:
        """{"prompt", "multi_modal_data"} for LLM.generate: the preset's raw template with the question in
        it and its "<image>" left for vLLM's processor to expand; an image-less format gets the image first."""
        template = request.prompt_format.removeprefix("raw:")
        images = request.images()
        if images and "<image>" not in template:
            template = "<image>\n" + template
        prompt: dict[str, Any] = {"prompt": template.replace("{prompt}", request.text())}
        if images:
            prompt["multi_modal_data"] = {"image": images[0] if len(images) == 1 else images}
        return prompt

    def generate(self, requests: Sequence[Request], on_text: Optional[OnText] = None) -> list[Response]:
        responses: list[Optional[Response]] = [None] * len(requests)
        by_model: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            by_model[request.model].append(i)
        for alias, indices in by_model.items():
            engine = self.load(alias)
            chat = [i for i in indices if requests[i].prompt_format == "chat_template"]
            raw = [i for i in indices if requests[i].prompt_format != "chat_template"]
            for group, call in ((chat, self._run_chat), (raw, self._run_raw)):
                step = 1 if self.exact else len(group) or 1
                for s in range(0, len(group), step):
                    part = group[s : s + step]
                    for i, response in zip(part, call(engine, [requests[i] for i in part])):
                        responses[i] = response
        return [r if r is not None else Response(error="no answer produced") for r in responses]

    def _run_chat(self, engine: Any, requests: list[Request]) -> list[Response]:
        started = time.perf_counter()
        outputs = engine.chat(
            [self.chat_messages(r) for r in requests],
            sampling_params=[self.sampling_params(r) for r in requests],
            use_tqdm=False,
        )
        return self._responses(engine, requests, outputs, time.perf_counter() - started)

    def _run_raw(self, engine: Any, requests: list[Request]) -> list[Response]:
        started = time.perf_counter()
        outputs = engine.generate(
            [self.raw_prompt(r) for r in requests],
            sampling_params=[self.sampling_params(r) for r in requests],
            use_tqdm=False,
        )
        return self._responses(engine, requests, outputs, time.perf_counter() - started)

    def _responses(self, engine: Any, requests: list[Request], outputs: list[Any], wall: float) -> list[Response]:
        if len(outputs) != len(requests):
            raise BackendError(f"vLLM returned {len(outputs)} outputs for {len(requests)} prompts")
        tokens = None
        out = []
        for request, result in zip(requests, outputs):
            completion = result.outputs[0]
            extra: dict[str, Any] = {
                "batch_wall_s": wall,
                "batch_size": len(requests),
                "finish_reason": getattr(completion, "finish_reason", None),
            }
            p_positive = None
            first = (completion.logprobs or [None])[0] if getattr(completion, "logprobs", None) else None
            if first and request.readout is not None:
                if tokens is None:
                    tokens = answer_tokens(engine.get_tokenizer())
                probs: defaultdict = defaultdict(float)
                for token_id, logprob in first.items():
                    probs[int(token_id)] = _exp(getattr(logprob, "logprob", logprob))
                p_positive, raw = readout(probs, request.readout, tokens)
                if raw:
                    extra["readout"] = {**raw, "from": f"top-{READOUT_TOP_K} logprobs"}
            out.append(
                Response(
                    text=completion.text,
                    latency_s=wall / max(1, len(requests)),
                    input_tokens=len(getattr(result, "prompt_token_ids", None) or []) or None,
                    output_tokens=len(getattr(completion, "token_ids", None) or []) or None,
                    p_positive=p_positive,
                    extra=extra,
                )
            )
        return out


def _exp(logprob: float) -> float:
    import math

    return math.exp(float(logprob))
