"""Which backend answers which model alias.

Local models (the study's and the offline demos) share one TransformersBackend (or, with
local_backend="vllm", one VLLMBackend), which owns the loaded weights; an alias listed in the endpoints config is answered by an OpenAI-compatible server
instead (e.g. a vLLM server per model on a GPU box).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from explorer.catalog.presets import Catalog
from explorer.models.backends.base import Backend, BackendError

ENDPOINTS_ENV = "EXPLORER_ENDPOINTS"


def load_endpoints(path: Optional[str | Path] = None) -> dict:
    """Endpoint configs by model alias from a YAML/JSON file (path, or $EXPLORER_ENDPOINTS).

    File shape: {alias: {base_url: ..., model: <name on the server>, api_key_env: OPENAI_API_KEY, ...}}.
    Keys are never in the file: only the NAME of the environment variable that holds one.
    """
    path = path or os.environ.get(ENDPOINTS_ENV)
    if not path:
        return {}
    from explorer.models.backends.openai_backend import EndpointConfig

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise BackendError(f"cannot read endpoints file {p}: {exc.strerror or exc}") from None
    from explorer.catalog.yaml_files import YamlFileError, load_yaml

    try:
        # Strict: a repeated key or an alias bomb (a few bytes that expand without bound) is refused.
        data = json.loads(text, object_pairs_hook=_unique_keys) if p.suffix == ".json" else load_yaml(text)
    except (ValueError, YamlFileError) as exc:
        raise BackendError(f"endpoints file {p} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BackendError(f"endpoints file {p}: expected a mapping of model alias -> endpoint")
    configs = {}
    for alias, cfg in data.items():
        if not isinstance(cfg, dict) or "base_url" not in cfg:
            raise BackendError(f"endpoints file {p}: key '{alias}' needs at least base_url")
        if "api_key" in cfg:
            raise BackendError(
                f"endpoints file {p}: key '{alias}.api_key': put keys in the environment and name the "
                "variable with api_key_env"
            )
        try:
            configs[alias] = EndpointConfig(**cfg)
        except TypeError as exc:
            raise BackendError(f"endpoints file {p}: key '{alias}': {exc}") from None
    return configs


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key {repeated[0]!r} appears twice")
    return dict(pairs)


class BackendRegistry:
    def __init__(
        self,
        catalog: Catalog,
        endpoints: Optional[dict] = None,
        local_backend: Optional[str] = None,
        **transformers_options,
    ):
        """local_backend: "transformers" (default) or "vllm" (offline vLLM engines, an optional dependency)."""
        self.catalog = catalog
        self.endpoints = dict(endpoints or {})
        self.local_backend = local_backend or "transformers"
        if self.local_backend not in ("transformers", "vllm"):
            raise BackendError(f"unknown local backend {self.local_backend!r}: transformers or vllm")
        self._transformers_options = transformers_options
        self._local: Optional[Backend] = None
        self._remote: Optional[Backend] = None

    @property
    def local(self) -> Backend:
        if self._local is None:
            if self.local_backend == "vllm":
                from explorer.models.backends.vllm_backend import VLLMBackend

                self._local = VLLMBackend(self.catalog, **self._transformers_options)
            else:
                from explorer.models.backends.transformers_backend import TransformersBackend

                self._local = TransformersBackend(self.catalog, **self._transformers_options)
        return self._local

    def for_model(self, alias: str) -> Backend:
        if alias in self.endpoints:
            if self._remote is None:
                from explorer.models.backends.openai_backend import OpenAIBackend

                self._remote = OpenAIBackend(self.endpoints)
            return self._remote
        self.catalog.model(alias)  # unknown aliases fail here, with the list of known ones
        return self.local

    def endpoint_label(self, alias: str) -> Optional[str]:
        cfg = self.endpoints.get(alias)
        return getattr(cfg, "base_url", None) if cfg else None

    def loaded_aliases(self) -> list[str]:
        if self._local is None:
            return []
        return list(self._local.loaded())

    def memory(self) -> tuple[list[dict], Optional[int]]:
        """The local models in memory (most recently used first) and their budget in bytes (None: nothing
        local has started, so no budget has been set yet)."""
        if self._local is None:
            return [], None
        return self._local.loaded_table(), self._local.models.budget_bytes

    def close(self) -> None:
        for backend in (self._local, self._remote):
            if backend is not None:
                backend.close()
