"""Local models through transformers: the study's LLaVA-NeXT, LLaVA (LLaVA-Med) and Gemma 3 models,
and their offline demo stand-ins, all loaded with the same from_pretrained path.

One backend owns every loaded model (weights are shared by all sessions), kept within a memory
budget by a ModelManager (least recently used unloaded first). A generate() call may mix models
and settings; it groups requests into batches of one model and one generation setting and never
raises for a single bad request: a failed batch is retried one request at a time, and a CUDA
out-of-memory batch is halved. Problems a user must fix (a gated or missing model, not enough
memory) raise BackendError with a reason they can act on.

How a batch is run (constructor option `reuse`):
* "prefix" (default): each image's shared prompt prefix (template + image tokens) goes through
  the vision tower and the language model once; its KV cache is extended by every prompt's own
  tokens in one batched pass and generation continues from it (see prefix_reuse.py);
* "features": the vision tower + projector run once per image; prompts are read whole;
* "none": the plain left-padded batch, every row encoding its own copy of its image.
All three give the answers one-at-a-time generation gives, up to floating-point summation order.
`exact=True` is the study's own way: one request per generate call, no reuse, the authors' dtype
(bf16 on a GPU, fp32 on CPU, as their pipeline() call); its answers carry another cache key.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from explorer.catalog.presets import Catalog, ModelSpec, PresetError
from explorer.models.availability import announce_fallback, cached_repo_id, has_hf_token, hub_offline
from explorer.models.backends.base import LOCAL_DEVICE, BackendError, OnText
from explorer.models.backends.image_memo import ImageMemo
from explorer.models.demo import BUILD_VERSION, DemoSize, config_hash, ensure_demo_model, read_marker
from explorer.models.manager import (
    QUANTIZATIONS,
    MemoryBudgetError,
    ModelManager,
    ParamCounts,
    free_bytes,
    human_bytes,
    known_params,
    measured_bytes,
    safetensors_params,
    weight_bytes,
)
from explorer.models.manager import (
    memory_available_bytes as _memory_available_bytes,
)
from explorer.models.readout import FirstLogits, answer_tokens, readout_from_logits
from explorer.schema import GenerationSettings, ImagePart, Request, Response

REUSE_MODES = ("prefix", "features", "none")


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


def _lazy_module(name: str) -> Any:
    """The module, executed on first attribute use (importlib's LazyLoader): prefix_reuse imports torch,
    which a sweep served wholly from the store never needs."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


reuse_lib = _lazy_module(__package__ + ".prefix_reuse")
shared_lib = _lazy_module(__package__ + ".shared_prefix")


# Cache keys name this execution mode, so exact and batched answers are never served for each other.
EXACT_EXECUTION = "exact-v1: one request per call, no prefix reuse, authors' dtype"


_LOG = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _LOG.warning(message.strip())


def _cuda_possible() -> bool:
    """False when no GPU driver device exists, so torch need not be imported to know it has no CUDA."""
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def _installed_version(package: str) -> str:
    """A package's __version__ read from its files, without importing it (torch takes seconds to import;
    a sweep served from the store needs none). Its metadata version can lack the build tag (+cu130)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec(package)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for name in ("version.py", "__init__.py"):
            path = Path(folder) / name
            if path.is_file():
                found = re.search(
                    r"^__version__\s*(?::\s*str)?\s*=\s*['\"]([^'\"]+)['\"]",
                    path.read_text(encoding="utf-8", errors="replace"),
                    re.M,
                )
                if found:
                    return found.group(1)
    return __import__(package).__version__


Quantization = Union[None, str, Mapping[str, Optional[str]]]

# Architectures whose batches (and a sweep's units) take the prompts of several images when decoding
# shares each image's prefix: 36 rows decode in little more time than 12 on a CPU (on a GPU, where a
# decoding step is bound by reading weights, more rows should cost less per row; not yet measured).
# 3 images against 1 (bench_speed --threads 1, CPU, demo shapes, times the study loop): LLaVA-1.6
# 9.0x against 7.9x, Gemma 3 11.1x against 8.7x. A batch of several images is split per image where
# the prefix cannot be shared, and on a GPU where its KV cache at max_new_tokens would not fit.
SHARED_PREFIX_IMAGES = {"llava": 3, "llava_next": 3, "gemma3": 3}


class SplitBatch(MemoryError):
    """A batch made larger than batch_size for shared-prefix decoding that must be split (where the
    image changes) before anything is built: its KV cache at max_new_tokens would not fit the GPU, or
    its prefixes cannot be shared (a copy per row for 36 rows takes 3x the memory of 12). The
    prefixes remembered for other batches stay."""


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        catalog: Catalog,
        device: Optional[str] = None,
        dtype: Optional[str] = None,
        batch_size: int = 12,
        local_paths: Optional[dict[str, str | Path]] = None,
        demo_size: Optional[DemoSize] = None,
        demo_cache_dir: Optional[str | Path] = None,
        reuse: str = "prefix",
        memory_budget: Optional[int] = None,
        quantization: Quantization = None,
        image_memo: int = 3,
        exact: bool = False,
        shared_prefix: bool = True,
    ):
        """device: "cuda", "cuda:1", "cpu"... (default: CUDA when available); dtype overrides every
        model's preset dtype; local_paths maps an alias (in the catalog or not) to a model folder.
        batch_size: most requests per forward pass (12 = the study's prompts of one image).
        reuse: "prefix" | "features" | "none" (see the module docstring).
        memory_budget: bytes the loaded models may take together (default: 90% of free memory).
        quantization: "8bit" | "4bit" for every non-demo model, or {alias: "8bit"|"4bit"|None};
        bitsandbytes on CUDA only.
        image_memo: how many images' prefix caches / features each model keeps between calls.
        exact: the study's execution (one request per call, no reuse, the authors' dtype).
        shared_prefix: with reuse="prefix", decode against one copy of each image's prefix where the
        model allows it (see shared_prefix.py); False keeps a copy per row."""
        if exact:
            reuse, batch_size = "none", 1
        if reuse not in REUSE_MODES:
            raise ValueError(f"reuse must be one of {', '.join(REUSE_MODES)}")
        self.catalog = catalog
        self._device = device
        self.dtype_override = dtype
        self.batch_size = max(1, int(batch_size))
        self.local_paths = {alias: Path(p) for alias, p in (local_paths or {}).items()}
        self.demo_size = demo_size or DemoSize.tiny()
        self.demo_cache_dir = Path(demo_cache_dir) if demo_cache_dir else None
        self.reuse = reuse
        self.shared_prefix = shared_prefix
        self.exact = exact
        self.quantization = quantization
        for value in quantization.values() if isinstance(quantization, Mapping) else [quantization]:
            if value is not None and value not in QUANTIZATIONS:
                raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)} (or None)")
        self.memo = ImageMemo(image_memo)
        self._token_memos: dict[str, Any] = {}  # model alias -> prefix_reuse.TokenMemo
        self.models = ModelManager(
            budget_bytes=memory_budget,
            device=device or "cpu",  # the real device is known on first use
            on_unload=self._release,
            free_memory=self._free_memory,
        )
        self._lock = threading.RLock()

    # ------------------------------------------------------------ settings
    @property
    def device(self) -> str:
        if self._device is None:
            self._device = "cuda" if _cuda_possible() and _torch().cuda.is_available() else "cpu"
            self.models.device = self._device
        elif self._device.startswith("cuda") and not _torch().cuda.is_available():
            # Otherwise the first symptom is a baffling "0 bytes GPU free" from the memory budget.
            raise BackendError(
                f"device {self._device!r} was asked for, but torch sees no CUDA GPU on this machine "
                f"(torch {_torch().__version__}); use --device cpu or install a CUDA build of torch"
            )
        return self._device

    def _free_memory(self) -> int:
        """Free memory where this backend's models go (the default memory budget follows it)."""
        return free_bytes(self.device) if self.device.startswith("cuda") else _memory_available_bytes()

    def _spec(self, alias: str) -> Optional[ModelSpec]:
        try:
            return self.catalog.model(alias)
        except PresetError as exc:
            if alias in self.local_paths:
                return None
            raise BackendError(str(exc)) from None

    def _dtype_name(self, spec: Optional[ModelSpec]) -> str:
        on_cuda = self.device.startswith("cuda")
        if self.exact and not self.dtype_override:
            return "bfloat16" if on_cuda else "float32"  # the authors' make_pipe()
        name = self.dtype_override or (spec.dtype if spec else "auto")
        if name == "auto":
            name = "bfloat16" if on_cuda else "float32"
        if name == "bfloat16" and on_cuda and not _torch().cuda.is_bf16_supported():
            name = "float16"
        if name == "float16" and spec is not None and spec.architecture == "gemma3":
            # Gemma 3 overflows in fp16 and answers with nothing.
            name = "bfloat16" if not on_cuda or _torch().cuda.is_bf16_supported() else "float32"
        return name

    def _quantization_for(self, alias: str, spec: Optional[ModelSpec]) -> Optional[str]:
        if isinstance(self.quantization, Mapping):
            return self.quantization.get(alias)
        if spec is not None and spec.is_demo:  # a blanket setting is meant for the real models
            return None
        return self.quantization

    # ------------------------------------------------------------ identity
    def identity(self, model_alias: str) -> dict[str, Any]:
        """What determines this model's outputs, computed without loading it (or importing torch)."""
        spec = self._spec(model_alias)
        ident: dict[str, Any] = {
            "backend": self.name,
            "dtype": self._dtype_name(spec),
            "device": self.device.split(":")[0],
            "transformers": _installed_version("transformers"),
            "torch": _installed_version("torch"),
        }
        if self.exact:  # only when set, so batched fingerprints stay what they were
            ident["execution"] = EXACT_EXECUTION
        quantization = self._quantization_for(model_alias, spec)
        if quantization:  # only when set, so unquantized fingerprints stay what they were
            ident["quantization"] = f"bitsandbytes-{quantization}"
        loaded = self.models.peek(model_alias)
        if model_alias in self.local_paths:
            path = self.local_paths[model_alias].expanduser().resolve()
            marker = read_marker(path) or {}
            ident.update(model=f"local:{path}", revision=None, random_weights=bool(marker.get("random_weights")))
            if marker.get("config_hash"):
                ident["config_hash"] = marker["config_hash"]
        elif spec is not None and spec.is_demo:
            digest = config_hash(spec.architecture, spec.demo_seed, self.demo_size)
            ident.update(
                model=f"demo/{spec.alias}",
                demo_of=spec.demo_of,
                config_hash=digest,
                revision=f"demo-build-{BUILD_VERSION}",
                random_weights=True,
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
                announce_fallback(spec, cached)
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
                announce_fallback(spec, repo_id)
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

    # ------------------------------------------------------------ memory
    def _params(self, source: _Source) -> Optional[ParamCounts]:
        """Parameter counts before loading: safetensors headers, the Hub's metadata, or the known table."""
        params = safetensors_params(source.weights_dir) if source.weights_dir else None
        if params is None and not source.random_weights and not os.path.isdir(source.path):
            if not hub_offline():
                try:
                    from huggingface_hub import HfApi

                    meta = HfApi().get_safetensors_metadata(source.path, revision=source.revision)
                    total = sum(meta.parameter_count.values())
                    known = known_params(source.path)
                    params = ParamCounts(total, known.unquantized if known else 0)
                except Exception:  # noqa: BLE001 - sizing is advisory; the table below is the fallback
                    params = None
            if params is None:
                params = known_params(source.path)
        return params

    def _check_memory(self, alias: str, need: int, dtype: str) -> None:
        """Refuse, with numbers, a model whose weights cannot fit; loading it would crash or swap."""
        ram = _memory_available_bytes()
        if self.device.startswith("cuda"):
            torch = _torch()
            vram = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
            if need > vram + ram:
                raise BackendError(
                    f"{alias}: not enough memory: needs about {human_bytes(need)} in {dtype}; free: "
                    f"{human_bytes(vram)} GPU + {human_bytes(ram)} RAM. Unload other models first, or load it in 8-/4-bit."
                )
        elif need > ram:
            raise BackendError(
                f"{alias}: not enough memory: needs about {human_bytes(need)} in {dtype} on CPU, "
                f"{human_bytes(ram)} RAM free. Unload other models, or use a GPU (bfloat16)."
            )

    def _make_room(self, alias: str, need: int, dtype: str) -> None:
        try:
            unloaded = self.models.make_room(need, keep=(alias,))
        except MemoryBudgetError as exc:
            raise BackendError(
                f"{alias}: not enough memory: {exc} in {dtype} ({human_bytes(self._free_memory())} "
                f"{'GPU' if self.device.startswith('cuda') else 'RAM'} free). Raise the budget, or load it in 8-/4-bit."
            ) from None
        if unloaded:
            self._free_released()

    # ------------------------------------------------------------ loading
    def load(self, alias: str) -> LoadedModel:
        """The loaded model (loaded now if needed, after unloading least recently used models that
        would not leave it room in the memory budget)."""
        with self._lock:
            hit = self.models.get(alias)
            if hit is not None:
                return hit
            spec = self._spec(alias)
            source = self._resolve(alias, spec)
            dtype = self._dtype_name(spec)
            quantization = self._quantization_for(alias, spec)
            params = self._params(source)
            need = int(weight_bytes(params, dtype, quantization) * 1.1) if params else 0
            if need:
                self._make_room(alias, need, dtype)
                self._check_memory(alias, need, dtype)
            return self.models.acquire(
                alias,
                lambda: self._load(alias, source, dtype, quantization),
                need,
                device=self.device,
                dtype=dtype,
                quantization=quantization,
                measure=lambda lm: measured_bytes(lm.model),
            )

    def _quantization_config(self, alias: str, quantization: str, dtype: str) -> Any:
        """bitsandbytes settings as the transformers docs give them (untested here: no GPU in CI)."""
        if not self.device.startswith("cuda"):
            raise BackendError(
                f"{alias}: 8-/4-bit loading (bitsandbytes) needs a CUDA GPU; this backend runs on {self.device}"
            )
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise BackendError(
                f"{alias}: {quantization} loading needs bitsandbytes: pip install bitsandbytes"
            ) from None
        from transformers import BitsAndBytesConfig

        if quantization == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=getattr(_torch(), dtype),
        )

    def _load(self, alias: str, source: _Source, dtype: str, quantization: Optional[str] = None) -> LoadedModel:
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
            if quantization:
                load_kwargs["quantization_config"] = self._quantization_config(alias, quantization, dtype)
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
        adds_bos = bool(
            tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
        )
        return LoadedModel(
            alias=alias,
            model=model,
            processor=processor,
            tokenizer=tokenizer,
            source=source.path,
            revision=source.revision,
            dtype=dtype if not quantization else f"{dtype}+{quantization}",
            device=str(model.device),
            multimodal=multimodal,
            random_weights=source.random_weights,
            load_s=time.perf_counter() - started,
            image_token=getattr(processor, "image_token", None) if multimodal else None,
            adds_bos=adds_bos,
            fixes=fixes,
        )

    def loaded(self) -> list[str]:
        return self.models.aliases()

    def loaded_table(self) -> list[dict[str, Any]]:
        """What is loaded, most recently used first: alias, size, device, dtype, last used."""
        return self.models.table()

    def _release(self, alias: str, lm: Any) -> None:
        self.memo.drop_model(alias)  # its remembered prefixes hold memory too
        self._token_memos.pop(alias, None)

    @staticmethod
    def _free_released() -> None:
        gc.collect()
        torch = _torch()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def unload(self, alias: str) -> bool:
        if not self.models.unload(alias):
            return False
        self._free_released()
        return True

    def close(self) -> None:
        for alias in self.models.aliases():
            self.unload(alias)
        self.memo.clear()

    # ------------------------------------------------------------ generation
    def scheduling(self, alias: str, batch_size: int) -> dict[str, Any]:
        """For the sweep scheduler: the local device's lane; exact mode takes one request at a time,
        and a model whose images take few positions takes the prompts of several images at once."""
        batch = 1 if self.exact else batch_size * self.images_per_batch(alias)
        return {"device": LOCAL_DEVICE, "batch": batch, "workers": 1}

    def images_per_batch(self, alias: str) -> int:
        """How many images' prompts one batch holds: several where decoding shares each image's
        prefix (SHARED_PREFIX_IMAGES), one in the other reuse modes and for other architectures."""
        try:
            spec = self._spec(alias)
        except BackendError:  # an unknown model: its requests fail on their own, later
            return 1
        if self.reuse != "prefix" or not self.shared_prefix or spec is None:
            return 1
        return SHARED_PREFIX_IMAGES.get(spec.architecture, 1)

    def generate(self, requests: Sequence[Request], on_text: Optional[OnText] = None) -> list[Response]:
        """Answers in the order asked. Raises BackendError only when a model cannot be had at all."""
        responses: list[Optional[Response]] = [None] * len(requests)
        for batch in self._plan_batches(requests):
            lm = self.load(requests[batch[0]].model)
            self._run_with_fallback(lm, [(i, requests[i]) for i in batch], responses, on_text)
        return [r if r is not None else Response(error="no answer produced") for r in responses]

    def _plan_batches(self, requests: Sequence[Request]) -> list[list[int]]:
        """Indices grouped by (model, generation settings, with/without images), models one after
        another so each is loaded once per call; inside a group the prompts of one image sit
        together (in asked order), so a batch shares each image's work; then cut to batch_size."""
        groups: dict[tuple[str, GenerationSettings, bool], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.model, req.generation, bool(req.images())), []).append(i)
        batches = []
        for idx in groups.values():
            if self.reuse != "none":
                first_seen: dict[Any, int] = {}
                for i in idx:
                    first_seen.setdefault(_image_key(requests[i]), len(first_seen))
                idx = sorted(idx, key=lambda i: first_seen[_image_key(requests[i])])
            size = self.batch_size * (self.images_per_batch(requests[idx[0]].model) if idx else 1)
            batches += [idx[s : s + size] for s in range(0, len(idx), size)]
        return batches

    def _run_with_fallback(self, lm: LoadedModel, items, responses, on_text) -> None:
        torch = _torch()
        try:
            for (i, _), resp in zip(items, self._run_batch(lm, items, on_text)):
                responses[i] = resp
            return
        except (torch.OutOfMemoryError, MemoryError) as exc:
            if not isinstance(exc, SplitBatch):  # a real shortage: remembered prefixes go too
                self.memo.drop_model(lm.alias)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(items) == 1:
                responses[items[0][0]] = Response(error=f"out of memory: {exc}".strip())
                return
            half = _halfway(items)
            self._run_with_fallback(lm, items[:half], responses, on_text)
            self._run_with_fallback(lm, items[half:], responses, on_text)
        except Exception as exc:  # noqa: BLE001 - one bad request must not fail the others
            if len(items) == 1:
                responses[items[0][0]] = Response(error=f"{type(exc).__name__}: {exc}")
                return
            for item in items:
                self._run_with_fallback(lm, [item], responses, on_text)

    def _run_batch(self, lm: LoadedModel, items, on_text: Optional[OnText]) -> list[Response]:
        """One generation over requests of one model and one generation setting, by the configured
        reuse mode when the batch allows it (one image per request), else the plain way."""
        torch = _torch()
        texts = [self.prompt_text(lm, req) for _, req in items]
        images = [req.images() for _, req in items]
        if not lm.multimodal and any(images):
            raise RequestError(f"{lm.alias} is a text-only model and cannot take images")
        keys = [_image_key(req) for _, req in items]
        started = time.perf_counter()
        with torch.inference_mode():
            if lm.multimodal and self.reuse != "none" and all(len(ims) == 1 for ims in images):
                try:
                    prepared = self._prepare_shared(lm, items, texts, keys)
                except torch.OutOfMemoryError:
                    raise
                except (reuse_lib.ReuseNotApplicable, RuntimeError, ValueError, TypeError, IndexError) as exc:
                    # The plain path answers the same, slower: say why the shared one was skipped, in the
                    # answer's record and once in the log (a transformers upgrade can cause this).
                    self._split_unless_shared(keys, f"the plain path ({exc})")
                    prepared = self._prepare_plain(lm, texts, images)
                    prepared["info"]["reuse_skipped"] = f"{type(exc).__name__}: {exc}"[:300]
                    _warn_once(
                        f"{lm.alias}: prefix/feature reuse failed, answering the slow plain way "
                        f"({prepared['info']['reuse_skipped']}). {reuse_lib.version_note() or ''}"
                    )
            else:
                self._split_unless_shared(keys, "the plain path")
                prepared = self._prepare_plain(lm, texts, images)
            return self._generate(lm, items, prepared, on_text, started)

    # ------------------------------------------------------------ the three ways to prepare a batch
    def _prepare_plain(self, lm: LoadedModel, texts: list[str], images: list[list[Any]]) -> dict[str, Any]:
        """Left-padded rows, each with its own copy of its image (reuse="none")."""
        if lm.multimodal:
            inputs = lm.processor(text=texts, images=images if any(images) else None, padding=True, return_tensors="pt")
            inputs = inputs.to(lm.model.device, dtype=lm.model.dtype)
        else:
            inputs = lm.tokenizer(texts, padding=True, return_tensors="pt").to(lm.model.device)
        return {"inputs": dict(inputs), "info": {"reuse": "none"}}

    def _prepare_shared(self, lm: LoadedModel, items, texts: list[str], keys: list[Any]) -> dict[str, Any]:
        """Each distinct image (keys: each row's image key) is resized/tiled, encoded (and, for
        "prefix", prefilled) once."""
        canonical: dict[Any, Any] = {}
        images = [canonical.setdefault(key, req.images()[0]) for key, (_, req) in zip(keys, items)]
        image_ids = [getattr(lm.model.config, "image_token_id", None)]
        memo = self._token_memo(lm.alias)
        if self.reuse == "prefix":
            try:
                rows = reuse_lib.encode_rows(lm.processor, texts, images, image_ids, memo)
                return self._prepare_prefix(lm, keys, rows, items[0][1].generation.max_new_tokens)
            except reuse_lib.ReuseNotApplicable as exc:
                skipped = str(exc)[:300]
        else:
            skipped = None
        self._split_unless_shared(keys, f"the features path ({skipped or 'reuse=features'})")
        # The features path hands generate one padded batch, so it takes one processor call.
        inputs = reuse_lib.encode_once_per_image(lm.processor, texts, images, memo)
        prepared = self._prepare_features(lm, keys, reuse_lib.split_rows(inputs, image_ids), inputs)
        if skipped:
            prepared["info"]["reuse_skipped"] = skipped
        return prepared

    def forget_reused(self) -> None:
        """Drop every remembered image prefix, image feature and tokenized prompt batch (the next
        request starts as a fresh process would)."""
        self.memo.clear()
        self._token_memos.clear()

    def _token_memo(self, alias: str) -> Any:
        """The tokenized prompts of one model, kept between batches (see prefix_reuse.TokenMemo)."""
        if alias not in self._token_memos:
            self._token_memos[alias] = reuse_lib.TokenMemo()
        return self._token_memos[alias]

    def _prepare_features(self, lm: LoadedModel, keys: list[Any], rows: reuse_lib.Rows, inputs: Any) -> dict[str, Any]:
        """Vision tower + projector once per image; the features go to generate as mm_encoder_outputs."""
        reuse_lib.check_features_applicable(lm.model)
        per_row: list[Any] = []
        computed: dict[Any, Any] = {}
        hits = 0
        for row, key in enumerate(keys):
            if key not in computed:
                memo_key = (lm.alias, "features", key)
                found = self.memo.get(memo_key) if _memo_ok(key) else None
                if found is None:
                    found = reuse_lib.image_features(lm.model, reuse_lib.image_inputs_of_row(rows, row))
                    self._remember(lm, key, memo_key, found)
                else:
                    hits += 1
                computed[key] = found
            per_row.append(computed[key])
        device = lm.model.device
        gen_inputs = {
            "input_ids": inputs["input_ids"].to(device),
            "attention_mask": inputs["attention_mask"].to(device),
        }
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in inputs:  # Gemma 3: bidirectional attention among the image tokens
                gen_inputs[key] = inputs[key].to(device)
        gen_inputs["mm_encoder_outputs"] = {"image": reuse_lib.features_for_rows(per_row)}
        return {"inputs": gen_inputs, "info": {"reuse": "features", "images_encoded": len(computed) - hits}}

    def _prepare_prefix(
        self, lm: LoadedModel, keys: list[Any], rows: reuse_lib.Rows, max_new_tokens: int
    ) -> dict[str, Any]:
        """Each image's prefix (the template up to the end of its image tokens) prefilled once,
        extended with every prompt's own tokens, laid out as a left-padded batch."""
        model = lm.model
        ends = [reuse_lib.image_span_end(rows, i) for i in range(len(keys))]
        if any(end == 0 or end >= len(ids) for end, ids in zip(ends, rows.ids)):
            raise reuse_lib.ReuseNotApplicable("a prompt has no text after its image")
        reuse_lib.check_prefix_applicable(
            model, max(ends) + max(len(ids) - end - 1 for ids, end in zip(rows.ids, ends))
        )
        starts: dict[Any, set] = {}
        for key, end, ids in zip(keys, ends, rows.ids):
            starts.setdefault(key, set()).add(tuple(ids[:end]))
        if any(len(s) > 1 for s in starts.values()):  # e.g. a template that puts the image after the question
            raise reuse_lib.ReuseNotApplicable("the prompts of one image differ before its image tokens")
        # KV room: what the batch can reach when that is small, else grown as decoding goes on. The
        # estimate is checked before anything is prefilled (too big: the batch is halved); a batch
        # enlarged past batch_size must share its prefixes and fit even if every row runs to
        # max_new_tokens, else it is split.
        width = max(len(ids) for ids in rows.ids)
        room = reuse_lib.initial_room(max_new_tokens, width)
        # One copy of a prefix pays off when rows share it; a lone row decodes faster with plain sdpa.
        shared = self.shared_prefix and len(rows.ids) > len(starts) and shared_lib.enable(model)
        if not shared:
            self._split_unless_shared(keys, "a copy of the prefix per row")
        # A shared-prefix cache allocates the rows' own tokens only (each prefix is kept once, apart).
        per_row = max(len(ids) - end for ids, end in zip(rows.ids, ends)) if shared else width
        estimate = reuse_lib.kv_cache_bytes(model, len(rows.ids), per_row + room)
        if len(keys) > self.batch_size:  # enlarged for shared-prefix decoding: must fit at max_new_tokens
            # Every prefix (remembered or not), and the rows' storage as it grows: by an eighth at a time.
            prefix_length = dict(zip(keys, ends))
            prefixes_bytes = sum(reuse_lib.kv_cache_bytes(model, 1, n) for n in prefix_length.values())
            grown = reuse_lib.positions_at_limit(per_row, max_new_tokens, room)
            worst = prefixes_bytes + reuse_lib.kv_cache_bytes(model, len(rows.ids), grown)
            what = f"{len(keys)} prompts of {len(starts)} images at {max_new_tokens} new tokens"
            short = self._kv_short(lm, worst, what)
            if short:
                raise SplitBatch(short)
        self._check_kv_room(lm, estimate)
        prefixes: list[Optional[reuse_lib.Prefix]] = [None] * len(keys)
        computed: dict[Any, reuse_lib.Prefix] = {}
        prefilled = 0
        for row, (key, end) in enumerate(zip(keys, ends)):
            ids = tuple(rows.ids[row][:end])
            group = (key, ids)
            if group not in computed:
                memo_key = (lm.alias, "prefix", key, ids)
                found = self.memo.get(memo_key) if _memo_ok(key) else None
                if found is None:
                    types = rows.token_types[row][:end] if rows.token_types is not None else None
                    found = reuse_lib.prefill_prefix(model, ids, types, reuse_lib.image_inputs_of_row(rows, row))
                    prefilled += 1
                    self._remember(lm, key, memo_key, found)
                computed[group] = found
            prefixes[row] = computed[group]
        batch = reuse_lib.continue_from_prefixes(
            model, rows.ids, prefixes, lm.tokenizer.pad_token_id, room=room, shared=shared
        )
        gen_inputs = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            reuse_lib.cache_arg(model): batch.cache,
        }
        info = {
            "reuse": "prefix",
            "kv_layout": "shared prefix" if shared else "copy per row",
            "prefix_tokens": max(p.length for p in computed.values()),
            "images_encoded": prefilled,
            "kv_estimate_bytes": estimate,
            "kv_room": room,
        }
        return {"inputs": gen_inputs, "info": info, "shared_cache": batch.cache if shared else None}

    def _remember(self, lm: LoadedModel, key: tuple, memo_key: tuple, value: Any) -> None:
        """Keep an image's features or prefix for later calls: only for content-hashed images, and
        not for a model unloaded meanwhile (unloading dropped its entries; nothing would evict these)."""
        if _memo_ok(key) and lm.alias in self.models:
            self.memo.put(memo_key, value)

    def _split_unless_shared(self, keys: Sequence[Any], path: str) -> None:
        """SplitBatch when a batch made larger than batch_size for shared-prefix decoding (keys: each
        row's image key) is about to take a path that copies each row's prefix."""
        if len(keys) > self.batch_size:
            raise SplitBatch(f"{len(keys)} prompts of {len(set(keys))} images would go to {path}"[:300])

    def _check_kv_room(self, lm: LoadedModel, need: int) -> None:
        """MemoryError (the caller halves the batch, dropping remembered prefixes) when a batch's KV
        cache would not fit the GPU's free memory."""
        short = self._kv_short(lm, need)
        if short:
            raise MemoryError(short)

    def _kv_short(self, lm: LoadedModel, need: int, what: str = "") -> str:
        """Why `need` bytes of KV cache would not fit the GPU's free memory ("" when they would)."""
        free = self._kv_free_bytes(lm)
        if free is None or need <= 0.9 * free:
            return ""
        return f"the batch's KV cache{f' ({what})' if what else ''} needs about {human_bytes(need)}, {human_bytes(free)} free"

    def _kv_free_bytes(self, lm: LoadedModel) -> Optional[int]:
        """Free memory on the model's GPU, counting what torch holds reserved but unused; None on CPU,
        where the operating system has the last word."""
        device = str(lm.device)
        if not device.startswith("cuda"):
            return None
        torch = _torch()
        return free_bytes(device) + max(0, torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))

    # ------------------------------------------------------------ generating
    def _generate(
        self, lm: LoadedModel, items, prepared: dict[str, Any], on_text: Optional[OnText], started: float
    ) -> list[Response]:
        torch = _torch()
        inputs, info = prepared["inputs"], prepared["info"]
        settings = items[0][1].generation
        gen_kwargs = self._generation_kwargs(lm, settings)
        prompt_len = inputs["input_ids"].shape[1]
        stream = on_text is not None and len(items) == 1
        wants_readout = any(req.readout is not None for _, req in items)
        first_token_s = None
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        with FirstLogits(lm.model, enabled=wants_readout) as first:
            if stream:
                output, first_token_s = self._generate_streaming(
                    lm, inputs, gen_kwargs, items[0][0], on_text, prepared.get("shared_cache")
                )
            else:
                with shared_lib.attending(prepared.get("shared_cache")):
                    output = lm.model.generate(**inputs, **gen_kwargs)
        wall = time.perf_counter() - started
        new_tokens = output[:, prompt_len:]
        eos_ids = self._eos_ids(lm)
        tokens = answer_tokens(lm.tokenizer) if wants_readout and first.logits is not None else None
        responses = []
        for row, (_, req) in enumerate(items):
            ids = new_tokens[row].tolist()
            n_out = next((k + 1 for k, t in enumerate(ids) if t in eos_ids), len(ids))
            text = lm.tokenizer.decode(ids[:n_out], skip_special_tokens=True).strip()
            extra = {"batch_wall_s": wall, "batch_size": len(items), "device": lm.device, "dtype": lm.dtype, **info}
            if first_token_s is not None:
                extra["first_text_s"] = first_token_s
            p_positive = None
            if tokens is not None and req.readout is not None:
                p_positive, raw = readout_from_logits(first.logits[row], req.readout, tokens)
                if raw:
                    extra["readout"] = raw
            responses.append(
                Response(
                    text=text,
                    latency_s=wall / len(items),
                    input_tokens=int(inputs["attention_mask"][row].sum()),
                    output_tokens=n_out,
                    p_positive=p_positive,
                    extra=extra,
                )
            )
        return responses

    def _generate_streaming(
        self, lm: LoadedModel, inputs, gen_kwargs, index: int, on_text: OnText, shared_cache: Any = None
    ):
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}
        torch = _torch()

        def work() -> None:
            try:
                with torch.inference_mode(), shared_lib.attending(shared_cache):
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
    def prompt_text(self, lm: LoadedModel, req: Request) -> str:
        """The text the processor is given for a request: the model's chat template or the study's
        raw format, without a BOS the tokenizer adds again (benchmarks and tests compare on it)."""
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


def _image_key(request: Request) -> tuple:
    """What identifies a request's image(s) for sharing work: the content hashes, or ("object", id)
    of the image itself when a hash is missing (shared within one call only, see _memo_ok)."""
    parts = [p for m in request.messages for p in m["content"] if isinstance(p, ImagePart)]
    return tuple(p.image_hash or ("object", id(p.image)) for p in parts)


def _halfway(items: Sequence[tuple[int, Request]]) -> int:
    """Where to split a batch that does not fit: at the change of image nearest its middle, so each
    image's prompts stay together (its prefix made once), else at the middle."""
    keys = [_image_key(req) for _, req in items]
    changes = [i for i in range(1, len(keys)) if keys[i] != keys[i - 1]]
    return min(changes, key=lambda i: (abs(2 * i - len(keys)), i)) if changes else len(keys) // 2


def _memo_ok(key: tuple) -> bool:
    """Only content hashes may be remembered across calls: an object id can be reused by a new image."""
    return bool(key) and all(isinstance(k, str) for k in key)
