"""Local models through transformers: the study's LLaVA-NeXT, LLaVA (LLaVA-Med) and Gemma 3 models,
and their offline demo stand-ins, all loaded with the same from_pretrained path.

One backend owns every loaded model (weights are shared by all sessions). A generate() call may mix
models and settings; it groups requests into batches of one model and one generation setting, runs
each batch with left padding, and never raises for a single bad request: a failed batch is retried
one request at a time, and a CUDA out-of-memory batch is halved. Problems a user must fix (a gated or
missing model, not enough memory) raise BackendError with a reason they can act on.
"""
from __future__ import annotations

import gc
import json
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..availability import cached_repo_id, has_hf_token, hub_offline
from ..demo_models import BUILD_VERSION, DemoSize, config_hash, ensure_demo_model, read_marker
from ..presets import Catalog, ModelSpec, PresetError
from ..schema import GenerationSettings, ImagePart, Request, Response
from .base import BackendError, OnText

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Weight sizes (GB at 16 bits) used when no weight file can be inspected before loading.
_KNOWN_SIZES_GB = {
    "llava-hf/llava-v1.6-mistral-7b-hf": 15.1,
    "wnkh/llava-med-v1.5-mistral-7b-hf": 15.1,
    "chaoyinshe/llava-med-v1.5-mistral-7b-hf": 15.1,
    "google/gemma-3-4b-it": 8.6,
    "google/medgemma-4b-it": 8.6,
}


class RequestError(ValueError):
    """A request this model cannot answer (wrong image count, no chat template...): fails that request only."""


@dataclass
class LoadedModel:
    alias: str
    model: Any
    processor: Any  # a ProcessorMixin for image-text models, the tokenizer for text-only models
    tokenizer: Any
    source: str  # hub id, or the local folder
    revision: Optional[str]
    dtype: str
    device: str
    multimodal: bool
    random_weights: bool
    load_s: float
    image_token: Optional[str] = None  # what the processor expands into image features
    adds_bos: bool = False  # the tokenizer prepends BOS itself, so a rendered template must not
    fixes: list[str] = field(default_factory=list)  # processor settings filled in from the model config


@dataclass(frozen=True)
class _Source:
    path: str  # what from_pretrained gets
    revision: Optional[str]
    random_weights: bool
    weights_dir: Optional[Path]  # a local folder whose safetensors can be sized before loading


def _torch():
    import torch

    return torch


def _memory_available_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024


def _safetensors_params(folder: Path) -> Optional[int]:
    """Parameter count from the safetensors headers (8-byte length + JSON), without reading weights."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a sharded model half downloaded would be undercounted
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        if not all((folder / shard).is_file() for shard in shards):
            return None
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def _human_gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        catalog: Catalog,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        batch_size: int = 8,
        local_paths: Optional[dict[str, str | Path]] = None,
        demo_size: Optional[DemoSize] = None,
        demo_cache_dir: Optional[str | Path] = None,
    ):
        """device: "cuda", "cuda:1", "cpu"... (default: CUDA when available); dtype overrides every
        model's preset dtype; local_paths maps an alias (in the catalog or not) to a model folder."""
        self.catalog = catalog
        self._device = device
        self.dtype_override = dtype
        self.batch_size = max(1, int(batch_size))
        self.local_paths = {alias: Path(p) for alias, p in (local_paths or {}).items()}
        self.demo_size = demo_size or DemoSize.tiny()
        self.demo_cache_dir = Path(demo_cache_dir) if demo_cache_dir else None
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------ settings
    @property
    def device(self) -> str:
        if self._device is None:
            self._device = "cuda" if _torch().cuda.is_available() else "cpu"
        return self._device

    def _spec(self, alias: str) -> Optional[ModelSpec]:
        try:
            return self.catalog.model(alias)
        except PresetError as exc:
            if alias in self.local_paths:
                return None
            raise BackendError(str(exc)) from None

    def _dtype_name(self, spec: Optional[ModelSpec]) -> str:
        name = self.dtype_override or (spec.dtype if spec else "auto")
        on_cuda = self.device.startswith("cuda")
        if name == "auto":
            name = "bfloat16" if on_cuda else "float32"
        if name == "bfloat16" and on_cuda and not _torch().cuda.is_bf16_supported():
            name = "float16"
        if name == "float16" and spec is not None and spec.architecture == "gemma3":
            # Gemma 3 overflows in fp16 and answers with nothing.
            name = "bfloat16" if not on_cuda or _torch().cuda.is_bf16_supported() else "float32"
        return name

    # ------------------------------------------------------------ identity
    def identity(self, model_alias: str) -> dict[str, Any]:
        """What determines this model's outputs, computed without loading it."""
        import transformers

        spec = self._spec(model_alias)
        ident: dict[str, Any] = {
            "backend": self.name,
            "dtype": self._dtype_name(spec),
            "device": self.device.split(":")[0],
            "transformers": transformers.__version__,
            "torch": _torch().__version__,
        }
        loaded = self._models.get(model_alias)
        if model_alias in self.local_paths:
            path = self.local_paths[model_alias].expanduser().resolve()
            marker = read_marker(path) or {}
            ident.update(model=f"local:{path}", revision=None, random_weights=bool(marker.get("random_weights")))
            if marker.get("config_hash"):
                ident["config_hash"] = marker["config_hash"]
        elif spec is not None and spec.is_demo:
            digest = config_hash(spec.architecture, spec.demo_seed, self.demo_size)
            ident.update(
                model=f"demo/{spec.alias}", demo_of=spec.demo_of, config_hash=digest,
                revision=f"demo-build-{BUILD_VERSION}", random_weights=True,
            )
        else:
            assert spec is not None
            source = loaded.source if loaded else (cached_repo_id(spec) or spec.hf_id)
            ident.update(model=source, revision=spec.revision, random_weights=False)
        return ident

    # ------------------------------------------------------------ resolution
    def _resolve(self, alias: str, spec: Optional[ModelSpec]) -> _Source:
        if alias in self.local_paths:
            path = self.local_paths[alias].expanduser()
            if not (path / "config.json").is_file():
                raise BackendError(f"{alias}: local path {path} has no config.json")
            return _Source(str(path), None, bool((read_marker(path) or {}).get("random_weights")), path)
        assert spec is not None
        if spec.is_demo:
            path = ensure_demo_model(spec, self.demo_size, self.demo_cache_dir)
            return _Source(str(path), None, True, path)
        return self._resolve_hub(spec)

    def _resolve_hub(self, spec: ModelSpec) -> _Source:
        ids = [i for i in (spec.hf_id, *spec.alt_ids) if i]
        cached = cached_repo_id(spec)
        if hub_offline():
            if cached:
                return _Source(cached, spec.revision, False, self._cached_folder(cached, spec.revision))
            raise BackendError(
                f"{spec.alias}: offline (HF_HUB_OFFLINE is set) and not in the local cache: {', '.join(ids)}. "
                "Download it where the Hub is reachable, or give a local folder."
            )
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        problems, gated = [], False
        for repo_id in ids:
            try:
                hf_hub_download(repo_id, "config.json", revision=spec.revision)
                return _Source(repo_id, spec.revision, False, self._cached_folder(repo_id, spec.revision))
            except GatedRepoError:
                gated = True
                problems.append(f"{repo_id}: gated")
            except RevisionNotFoundError:
                problems.append(f"{repo_id}: no revision {spec.revision!r}")
            except RepositoryNotFoundError:
                problems.append(f"{repo_id}: not found on the Hub (or private)")
            except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
                problems.append(f"{repo_id}: the Hub is unreachable and it is not in the local cache ({exc})")
        if gated:
            token = "HF_TOKEN is set but has no access" if has_hf_token() else "set HF_TOKEN"
            raise BackendError(
                f"{spec.alias}: gated: {token} after accepting the licence of {spec.hf_id} on huggingface.co"
            )
        raise BackendError(f"{spec.alias}: cannot get the model: " + "; ".join(problems))

    @staticmethod
    def _cached_folder(repo_id: str, revision: str) -> Optional[Path]:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        return Path(hit).parent if isinstance(hit, str) else None

    def _check_memory(self, alias: str, source: _Source, dtype: str) -> None:
        """Refuse, with numbers, a model whose weights cannot fit; loading it would crash or swap."""
        params = _safetensors_params(source.weights_dir) if source.weights_dir else None
        if params is None and not source.random_weights and not os.path.isdir(source.path):
            if not hub_offline():
                try:
                    from huggingface_hub import HfApi

                    meta = HfApi().get_safetensors_metadata(source.path, revision=source.revision)
                    params = sum(meta.parameter_count.values())
                except Exception:  # noqa: BLE001 - sizing is advisory; the table below is the fallback
                    params = None
            if params is None and source.path in _KNOWN_SIZES_GB:
                params = int(_KNOWN_SIZES_GB[source.path] * 1e9 / 2)
        if not params:
            return
        need = params * _DTYPE_BYTES[dtype] * 1.1
        ram = _memory_available_bytes()
        if self.device.startswith("cuda"):
            torch = _torch()
            vram = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
            if need > vram + ram:
                raise BackendError(
                    f"{alias}: not enough memory: needs about {_human_gb(need)} in {dtype}; free: "
                    f"{_human_gb(vram)} GPU + {_human_gb(ram)} RAM. Unload other models first."
                )
        elif need > ram:
            raise BackendError(
                f"{alias}: not enough memory: needs about {_human_gb(need)} in {dtype} on CPU, "
                f"{_human_gb(ram)} RAM free. Unload other models, or use a GPU (bfloat16)."
            )

    # ------------------------------------------------------------ loading
    def load(self, alias: str) -> LoadedModel:
        with self._lock:
            if alias in self._models:
                return self._models[alias]
            spec = self._spec(alias)
            source = self._resolve(alias, spec)
            dtype = self._dtype_name(spec)
            self._check_memory(alias, source, dtype)
            self._models[alias] = self._load(alias, source, dtype)
            return self._models[alias]

    def _load(self, alias: str, source: _Source, dtype: str) -> LoadedModel:
        import transformers
        from transformers import AutoConfig

        torch = _torch()
        started = time.perf_counter()
        kwargs: dict[str, Any] = {"revision": source.revision} if source.revision else {}
        try:
            config = AutoConfig.from_pretrained(source.path, **kwargs)
            multimodal = getattr(config, "vision_config", None) is not None
            model_cls = transformers.AutoModelForImageTextToText if multimodal else transformers.AutoModelForCausalLM
            load_kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
            if self.device.startswith("cuda"):
                load_kwargs["device_map"] = "auto" if self.device == "cuda" else {"": self.device}
            model = model_cls.from_pretrained(source.path, **kwargs, **load_kwargs)
            if "device_map" not in load_kwargs:
                model.to(self.device)
            model.eval()
            if multimodal:
                processor = transformers.AutoProcessor.from_pretrained(source.path, **kwargs)
                tokenizer = processor.tokenizer
            else:
                processor = tokenizer = transformers.AutoTokenizer.from_pretrained(source.path, **kwargs)
        except BackendError:
            raise
        except torch.OutOfMemoryError:
            raise BackendError(f"{alias}: not enough GPU memory to load it in {dtype}") from None
        except (OSError, ValueError, KeyError) as exc:
            raise BackendError(f"{alias}: cannot load {source.path}: {exc}") from exc
        fixes = _fix_processor(processor, model) if multimodal else []
        tokenizer.padding_side = "left"  # generation continues from the right edge of every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        adds_bos = bool(tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
        return LoadedModel(
            alias=alias, model=model, processor=processor, tokenizer=tokenizer, source=source.path,
            revision=source.revision, dtype=dtype, device=str(model.device), multimodal=multimodal,
            random_weights=source.random_weights, load_s=time.perf_counter() - started,
            image_token=getattr(processor, "image_token", None) if multimodal else None,
            adds_bos=adds_bos, fixes=fixes,
        )

    def loaded(self) -> list[str]:
        return list(self._models)

    def unload(self, alias: str) -> bool:
        with self._lock:
            gone = self._models.pop(alias, None)
        if gone is None:
            return False
        del gone
        gc.collect()
        torch = _torch()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

    def close(self) -> None:
        for alias in list(self._models):
            self.unload(alias)

    # ------------------------------------------------------------ generation
    def generate(self, requests: Sequence[Request], on_text: Optional[OnText] = None) -> list[Response]:
        """Answers in the order asked. Raises BackendError only when a model cannot be had at all."""
        responses: list[Optional[Response]] = [None] * len(requests)
        for batch in self._plan_batches(requests):
            lm = self.load(requests[batch[0]].model)
            self._run_with_fallback(lm, [(i, requests[i]) for i in batch], responses, on_text)
        return [r if r is not None else Response(error="no answer produced") for r in responses]

    def _plan_batches(self, requests: Sequence[Request]) -> list[list[int]]:
        """Indices grouped by (model, generation settings, with/without images), in asked order, then
        cut to batch_size. Models come one after another so each is loaded once per call.
        (A later step can order a group by image hash here to reuse image features.)"""
        groups: dict[tuple[str, GenerationSettings, bool], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.model, req.generation, bool(req.images())), []).append(i)
        batches = []
        for idx in groups.values():
            batches += [idx[s : s + self.batch_size] for s in range(0, len(idx), self.batch_size)]
        return batches

    def _run_with_fallback(self, lm: LoadedModel, items, responses, on_text) -> None:
        torch = _torch()
        try:
            for (i, _), resp in zip(items, self._run_batch(lm, items, on_text)):
                responses[i] = resp
            return
        except (torch.OutOfMemoryError, MemoryError) as exc:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(items) == 1:
                responses[items[0][0]] = Response(error=f"out of memory: {exc}".strip())
                return
            half = len(items) // 2
            self._run_with_fallback(lm, items[:half], responses, on_text)
            self._run_with_fallback(lm, items[half:], responses, on_text)
        except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
            if len(items) == 1:
                responses[items[0][0]] = Response(error=f"{type(exc).__name__}: {exc}")
                return
            for item in items:
                self._run_with_fallback(lm, [item], responses, on_text)

    def _run_batch(self, lm: LoadedModel, items, on_text: Optional[OnText]) -> list[Response]:
        """One forward-and-generate over requests of one model and one generation setting."""
        torch = _torch()
        texts = [self._prompt_text(lm, req) for _, req in items]
        images = [req.images() for _, req in items]
        if lm.multimodal:
            inputs = lm.processor(
                text=texts, images=images if any(images) else None, padding=True, return_tensors="pt"
            )
            inputs = inputs.to(lm.model.device, dtype=lm.model.dtype)
        else:
            if any(images):
                raise RequestError(f"{lm.alias} is a text-only model and cannot take images")
            inputs = lm.tokenizer(texts, padding=True, return_tensors="pt").to(lm.model.device)
        settings = items[0][1].generation
        gen_kwargs = self._generation_kwargs(lm, settings)
        prompt_len = inputs["input_ids"].shape[1]
        stream = on_text is not None and len(items) == 1
        started = time.perf_counter()
        first_token_s = None
        with torch.inference_mode():
            if settings.do_sample:
                torch.manual_seed(settings.seed)
            if stream:
                output, first_token_s = self._generate_streaming(lm, inputs, gen_kwargs, items[0][0], on_text)
            else:
                output = lm.model.generate(**inputs, **gen_kwargs)
        wall = time.perf_counter() - started
        new_tokens = output[:, prompt_len:]
        eos_ids = self._eos_ids(lm)
        responses = []
        for row in range(len(items)):
            ids = new_tokens[row].tolist()
            n_out = next((k + 1 for k, t in enumerate(ids) if t in eos_ids), len(ids))
            text = lm.tokenizer.decode(ids[:n_out], skip_special_tokens=True).strip()
            extra = {"batch_wall_s": wall, "batch_size": len(items), "device": lm.device, "dtype": lm.dtype}
            if first_token_s is not None:
                extra["first_text_s"] = first_token_s
            responses.append(
                Response(
                    text=text,
                    latency_s=wall / len(items),
                    input_tokens=int(inputs["attention_mask"][row].sum()),
                    output_tokens=n_out,
                    extra=extra,
                )
            )
        return responses

    def _generate_streaming(self, lm: LoadedModel, inputs, gen_kwargs, index: int, on_text: OnText):
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}
        torch = _torch()

        def work() -> None:
            try:
                with torch.inference_mode():
                    result["output"] = lm.model.generate(**inputs, **gen_kwargs, streamer=streamer)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
                result["error"] = exc
                streamer.on_finalized_text("", stream_end=True)

        started = time.perf_counter()
        thread = threading.Thread(target=work, name=f"generate-{lm.alias}", daemon=True)
        thread.start()
        text, first = "", None
        callback_ok = True
        for chunk in streamer:
            if not chunk:
                continue
            if first is None:
                first = time.perf_counter() - started
            text += chunk
            if callback_ok:
                try:
                    on_text(index, text)
                except Exception:  # noqa: BLE001 - a broken display must not lose the answer
                    callback_ok = False
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["output"], first

    @staticmethod
    def _eos_ids(lm: LoadedModel) -> set[int]:
        eos = lm.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        if lm.tokenizer.eos_token_id is not None:
            ids.add(lm.tokenizer.eos_token_id)
        return ids

    @staticmethod
    def _generation_kwargs(lm: LoadedModel, settings: GenerationSettings) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "pad_token_id": lm.tokenizer.pad_token_id,
        }
        if settings.min_new_tokens:
            kwargs["min_new_tokens"] = min(settings.min_new_tokens, settings.max_new_tokens)
        if settings.do_sample:  # greedy decoding gets no sampling parameters at all
            if settings.temperature > 0:
                kwargs["temperature"] = settings.temperature
            kwargs["top_p"] = settings.top_p
        return kwargs

    # ------------------------------------------------------------ prompts
    def _prompt_text(self, lm: LoadedModel, req: Request) -> str:
        n_images = len(req.images())
        if n_images and not lm.multimodal:
            raise RequestError(f"{lm.alias} is a text-only model and cannot take images")
        if req.prompt_format == "chat_template":
            text = self._chat_text(lm, req)
        else:
            text = self._raw_text(lm, req, n_images)
        bos = lm.tokenizer.bos_token
        if lm.adds_bos and bos and text.startswith(bos):
            text = text[len(bos) :]  # the tokenizer adds it again
        return text

    @staticmethod
    def _chat_text(lm: LoadedModel, req: Request) -> str:
        if not getattr(lm.processor, "chat_template", None):
            raise RequestError(
                f"{lm.alias} has no chat template; choose a raw prompt format (e.g. the preset's paper format)"
            )
        conversation = []
        for message in req.messages:
            parts = [
                {"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p}
                for p in message["content"]
            ]
            if not lm.multimodal:  # text chat templates expect plain string content
                parts = "\n".join(p["text"] for p in parts)
            conversation.append({"role": message["role"], "content": parts})
        return lm.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    @staticmethod
    def _raw_text(lm: LoadedModel, req: Request, n_images: int) -> str:
        template = req.prompt_format.removeprefix("raw:")
        marker = "<image>"
        token = lm.image_token or marker
        # Map the preset's "<image>" to this processor's image token before the user's text goes in,
        # so a prompt that happens to contain "<image>" is not mistaken for an image slot.
        template = template.replace(marker, token)
        slots = template.count(token) if lm.multimodal else 0
        if n_images and not slots:
            template = token * n_images + "\n" + template
        elif not n_images and slots:
            template = template.replace(token + "\n", "").replace(token, "")
        elif n_images != slots:
            raise RequestError(f"the prompt format has {slots} image slots but the request has {n_images} images")
        return template.replace("{prompt}", req.text())


def _fix_processor(processor: Any, model: Any) -> list[str]:
    """Fill processor settings that some HF conversions leave empty (LLaVA-Med ships patch_size=None),
    from the model's own config, so the number of image tokens matches the vision features."""
    fixes = []
    vision = getattr(model.config, "vision_config", None)
    if vision is None:
        return fixes
    for owner in (processor, getattr(processor, "image_processor", None)):
        if owner is not None and hasattr(owner, "patch_size") and owner.patch_size is None:
            owner.patch_size = vision.patch_size
            fixes.append(f"{type(owner).__name__}.patch_size={vision.patch_size}")
    if getattr(processor, "vision_feature_select_strategy", "unset") is None:
        strategy = getattr(model.config, "vision_feature_select_strategy", None)
        if strategy:
            processor.vision_feature_select_strategy = strategy
            fixes.append(f"vision_feature_select_strategy={strategy}")
            # "default" drops the CLS token the CLIP tower adds; count it so the two cancel out.
            if strategy == "default" and getattr(vision, "model_type", "") == "clip_vision_model":
                processor.num_additional_image_tokens = 1
                fixes.append("num_additional_image_tokens=1")
    return fixes
