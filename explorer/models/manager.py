"""Which local models stay in memory: load on first use, keep within a memory budget, unload the
least recently used model when the next one would not fit.

Sizes are estimated before loading from the safetensors headers (an 8-byte length and a JSON table
of tensor shapes at the start of each file; no weights are read), and measured after loading.
Also: a plan of the study models' weight sizes under bf16 / 8-bit / 4-bit (bitsandbytes), and
whether all four fit on one 24 GB GPU.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

GB = 1e9
# Share of the free memory a default budget may use: activations and KV caches need the rest.
DEFAULT_BUDGET_SHARE = 0.9
QUANTIZATIONS = ("8bit", "4bit")
# Bytes per parameter of a quantized Linear weight. 8-bit (LLM.int8): one byte plus a float32 scale
# per output row (negligible). 4-bit NF4/FP4: half a byte plus a float32 absmax per 64-weight
# block (4/64 byte), without double quantization.
_QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5 + 4 / 64}
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "uint8": 1}

# Parameter counts of the study models (all weights, and those bitsandbytes keeps in 16 bits:
# token embeddings and the output head), for sizing without any file. Llava: 32,064 or 32,000 x 4,096
# embeddings plus an untied head; Gemma 3: a 262,208 x 2,560 embedding tied to the head.
KNOWN_PARAMS: dict[str, tuple[int, int]] = {
    "llava-hf/llava-v1.6-mistral-7b-hf": (7_566_747_648, 262_668_288),
    "wnkh/llava-med-v1.5-mistral-7b-hf": (7_566_000_000, 262_144_000),
    "chaoyinshe/llava-med-v1.5-mistral-7b-hf": (7_566_000_000, 262_144_000),
    "google/gemma-3-4b-it": (4_300_079_472, 671_252_480),
    "google/medgemma-4b-it": (4_300_079_472, 671_252_480),
}


def human_bytes(n: float) -> str:
    if n >= GB:
        return f"{n / GB:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{int(n)} bytes"


class MemoryBudgetError(RuntimeError):
    """A model that cannot fit in the budget even with every other model unloaded."""


# ---------------------------------------------------------------- sizes without loading
@dataclass(frozen=True)
class ParamCounts:
    total: int
    unquantized: int  # kept in 16 bits by 8-/4-bit loading (embeddings, output head, norms, biases)

    @property
    def quantizable(self) -> int:
        return self.total - self.unquantized


def _quantizable(name: str, shape: Sequence[int]) -> bool:
    """Linear weights are what bitsandbytes replaces: 2-D "*.weight" tensors that are not an
    embedding table or the output head (convolutions are 4-D, norms and biases 1-D)."""
    return len(shape) == 2 and name.endswith(".weight") and "embed" not in name and "lm_head" not in name


def safetensors_params(folder: str | Path) -> Optional[ParamCounts]:
    """Parameter counts from the safetensors headers of a model folder; None when it has no complete set."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():  # a sharded model half downloaded would be undercounted
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        if not all((folder / shard).is_file() for shard in shards):
            return None
    total = unquantized = 0
    for path in files:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
            if not _quantizable(name, entry["shape"]):
                unquantized += count
    return ParamCounts(total, unquantized)


def known_params(hf_id: Optional[str]) -> Optional[ParamCounts]:
    if hf_id in KNOWN_PARAMS:
        total, unquantized = KNOWN_PARAMS[hf_id]
        return ParamCounts(total, unquantized)
    return None


def weight_bytes(params: ParamCounts, dtype: str = "bfloat16", quantization: Optional[str] = None) -> int:
    """Bytes of the weights once loaded in `dtype`, or with 8-/4-bit Linear layers (the rest in dtype)."""
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}")
    if quantization is None:
        return int(params.total * _DTYPE_BYTES[dtype])
    if quantization not in _QUANT_BYTES:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}")
    return int(params.quantizable * _QUANT_BYTES[quantization] + params.unquantized * _DTYPE_BYTES[dtype])


def measured_bytes(model: Any) -> int:
    """Bytes the loaded model's parameters and buffers take (what it holds, wherever it is)."""
    footprint = getattr(model, "get_memory_footprint", None)
    if footprint is not None:
        return int(footprint())
    return int(sum(t.nelement() * t.element_size() for t in (*model.parameters(), *model.buffers())))


# ---------------------------------------------------------------- free memory
def memory_available_bytes() -> int:
    """RAM a new allocation can use now."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024


def free_bytes(device: str) -> int:
    """Free memory where models go: every visible GPU's free memory for "cuda", that GPU for
    "cuda:N", RAM otherwise."""
    if device.startswith("cuda"):
        import torch

        if ":" in device:
            return int(torch.cuda.mem_get_info(int(device.split(":")[1]))[0])
        return int(sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())))
    return memory_available_bytes()


# ---------------------------------------------------------------- the manager
@dataclass
class Entry:
    alias: str
    value: Any  # what the loader returned (the backend's LoadedModel)
    size_bytes: int
    device: str
    dtype: str
    quantization: Optional[str]
    loaded_at: float
    last_used: float


class ModelManager:
    """Loaded models by alias, kept within budget_bytes; least recently used unloaded first.

    budget_bytes None: 90% of (the free memory of the device now + what this manager holds),
    recomputed at each decision, so other programs' use is respected.
    """

    def __init__(
        self,
        budget_bytes: Optional[int] = None,
        device: str = "cpu",
        on_unload: Optional[Callable[[str, Any], None]] = None,
        clock: Callable[[], float] = time.time,
        free_memory: Optional[Callable[[], int]] = None,
    ):
        self._budget = int(budget_bytes) if budget_bytes is not None else None
        self.device = device
        self.on_unload = on_unload
        self.clock = clock
        self._free_memory = free_memory or (lambda: free_bytes(self.device))
        self._entries: dict[str, Entry] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------ views
    @property
    def used_bytes(self) -> int:
        return sum(e.size_bytes for e in self._entries.values())

    @property
    def budget_bytes(self) -> int:
        if self._budget is not None:
            return self._budget
        return int(DEFAULT_BUDGET_SHARE * (self._free_memory() + self.used_bytes))

    @budget_bytes.setter
    def budget_bytes(self, value: Optional[int]) -> None:
        self._budget = int(value) if value is not None else None

    def aliases(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, alias: object) -> bool:
        return alias in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, alias: str) -> Any:
        """The loaded value without counting it as a use; None when not loaded."""
        entry = self._entries.get(alias)
        return entry.value if entry else None

    def get(self, alias: str) -> Any:
        """The loaded value, marked as just used; None when not loaded."""
        with self._lock:
            entry = self._entries.get(alias)
            if entry is None:
                return None
            entry.last_used = self.clock()
            return entry.value

    def table(self) -> list[dict[str, Any]]:
        """What is loaded, most recently used first: alias, size, device, dtype, last used."""
        rows = []
        for e in sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True):
            rows.append(
                {
                    "alias": e.alias,
                    "size_gb": round(e.size_bytes / GB, 3),
                    "size_bytes": e.size_bytes,
                    "device": e.device,
                    "dtype": e.dtype,
                    "quantization": e.quantization or "",
                    "loaded_at": e.loaded_at,
                    "last_used": e.last_used,
                }
            )
        return rows

    # ------------------------------------------------------------ decisions
    def plan_evictions(self, need_bytes: int, keep: Iterable[str] = ()) -> list[str]:
        """Aliases to unload, least recently used first, so that need_bytes more fit the budget.
        Raises MemoryBudgetError when it cannot fit even with all of them unloaded."""
        budget = self.budget_bytes
        keep = set(keep)
        if need_bytes > budget:
            raise MemoryBudgetError(
                f"needs about {human_bytes(need_bytes)} but the model budget is {human_bytes(budget)}"
            )
        used = self.used_bytes
        victims = []
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if used + need_bytes <= budget:
                break
            if entry.alias in keep:
                continue
            victims.append(entry.alias)
            used -= entry.size_bytes
        if used + need_bytes > budget:
            raise MemoryBudgetError(
                f"needs about {human_bytes(need_bytes)}; {human_bytes(used)} of the {human_bytes(budget)} budget "
                f"are held by models in use ({', '.join(sorted(keep & set(self._entries)))})"
            )
        return victims

    def make_room(self, need_bytes: int, keep: Iterable[str] = ()) -> list[str]:
        """Unload the least recently used models until need_bytes more fit; returns who was unloaded."""
        with self._lock:
            victims = self.plan_evictions(need_bytes, keep)
            for alias in victims:
                self.unload(alias)
            return victims

    def acquire(
        self,
        alias: str,
        loader: Callable[[], Any],
        estimate_bytes: int,
        *,
        device: Optional[str] = None,
        dtype: str = "",
        quantization: Optional[str] = None,
        measure: Optional[Callable[[Any], int]] = None,
    ) -> Any:
        """The model for alias: the loaded one, or loader()'s after making room for estimate_bytes."""
        with self._lock:
            hit = self.get(alias)
            if hit is not None:
                return hit
            self.make_room(max(0, int(estimate_bytes)), keep=(alias,))
            value = loader()
            size = int(measure(value)) if measure is not None else int(estimate_bytes)
            now = self.clock()
            self._entries[alias] = Entry(alias, value, size, device or self.device, dtype, quantization, now, now)
            return value

    def add(self, alias: str, value: Any, size_bytes: int, **info: Any) -> None:
        """Register an already loaded value (no eviction)."""
        with self._lock:
            now = self.clock()
            self._entries[alias] = Entry(
                alias,
                value,
                int(size_bytes),
                info.get("device", self.device),
                info.get("dtype", ""),
                info.get("quantization"),
                now,
                now,
            )

    def unload(self, alias: str) -> bool:
        with self._lock:
            entry = self._entries.pop(alias, None)
        if entry is None:
            return False
        if self.on_unload is not None:
            self.on_unload(alias, entry.value)
        del entry
        return True

    def clear(self) -> None:
        for alias in list(self._entries):
            self.unload(alias)


# ---------------------------------------------------------------- the study's memory plan
def _cached_params(repo_ids: Sequence[str], revision: Optional[str]) -> Optional[ParamCounts]:
    """Counts from the headers of a model already in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for repo_id in repo_ids:
        try:
            hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        except Exception:  # noqa: BLE001 - a malformed cache is the same as no cache here
            hit = None
        if isinstance(hit, str):
            counts = safetensors_params(Path(hit).parent)
            if counts is not None:
                return counts
    return None


def memory_plan(catalog: Any, aliases: Optional[Sequence[str]] = None, gpu_gb: float = 24.0) -> list[dict[str, Any]]:
    """Weight sizes (GB) of the models under bf16 / 8-bit / 4-bit, one row per alias, then a total
    row saying whether all of them fit on one GPU of gpu_gb at the same time.

    Weights only: generation also needs KV cache and activations (a 12-prompt batch of LLaVA-NeXT,
    about 2,900 image tokens each, holds about 0.4 GB of bf16 KV cache per prompt), shown as headroom.
    Sizes come from the local Hugging Face cache when the model is there, else from KNOWN_PARAMS.
    """
    names = list(aliases) if aliases is not None else ["llava", "llava-med", "gemma", "medgemma"]
    rows = []
    totals = {"bf16": 0.0, "8bit": 0.0, "4bit": 0.0}
    for alias in names:
        spec = catalog.model(alias)
        ids = [i for i in (spec.hf_id, *getattr(spec, "alt_ids", ())) if i]
        params = _cached_params(ids, getattr(spec, "revision", None))
        source = "local cache headers"
        if params is None:
            params = next((p for p in (known_params(i) for i in ids) if p is not None), None)
            source = "known parameter count"
        if params is None:
            rows.append(
                {
                    "alias": alias,
                    "hf_id": spec.hf_id or "",
                    "params_b": None,
                    "bf16_gb": None,
                    "8bit_gb": None,
                    "4bit_gb": None,
                    "source": "unknown",
                }
            )
            continue
        sizes = {
            "bf16": weight_bytes(params, "bfloat16") / GB,
            "8bit": weight_bytes(params, "bfloat16", "8bit") / GB,
            "4bit": weight_bytes(params, "bfloat16", "4bit") / GB,
        }
        for key, value in sizes.items():
            totals[key] += value
        rows.append(
            {
                "alias": alias,
                "hf_id": spec.hf_id or "",
                "params_b": round(params.total / 1e9, 2),
                "bf16_gb": round(sizes["bf16"], 1),
                "8bit_gb": round(sizes["8bit"], 1),
                "4bit_gb": round(sizes["4bit"], 1),
                "source": source,
            }
        )
    rows.append(
        {
            "alias": f"all {len(names)}",
            "hf_id": f"fit in {gpu_gb:g} GB?",
            "params_b": None,
            **{f"{k}_gb": round(v, 1) for k, v in totals.items()},
            **{f"fits_{k}": v <= gpu_gb for k, v in totals.items()},
            **{f"headroom_{k}_gb": round(gpu_gb - v, 1) for k, v in totals.items()},
            "source": "",
        }
    )
    return rows


def format_memory_plan(rows: Sequence[dict[str, Any]]) -> str:
    """The plan as a markdown table."""

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return "?"
        fits = row.get(f"fits_{key.removesuffix('_gb')}")
        return f"{value:.1f}" + ("" if fits is None else (" (fits)" if fits else " (does not fit)"))

    lines = ["| model | weights from | bf16 GB | 8-bit GB | 4-bit GB |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['alias']} | {row['hf_id']} | {cell(row, 'bf16_gb')} | {cell(row, '8bit_gb')} | {cell(row, '4bit_gb')} |"
        )
    return "\n".join(lines)
