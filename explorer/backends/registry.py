"""Which backend answers which model alias.

Local models (the study's and the offline demos) share one TransformersBackend, which owns the
loaded weights; an alias listed in the endpoints config is answered by an OpenAI-compatible server
instead (e.g. a vLLM server per model on a GPU box).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

from ..presets import Catalog
from .base import Backend, BackendError

ENDPOINTS_ENV = "EXPLORER_ENDPOINTS"


def load_endpoints(path: Optional[str | Path] = None) -> dict:
    """Endpoint configs by model alias from a YAML/JSON file (path, or $EXPLORER_ENDPOINTS).

    File shape: {alias: {base_url: ..., model: <name on the server>, api_key_env: OPENAI_API_KEY, ...}}.
    Keys are never in the file: only the NAME of the environment variable that holds one.
    """
    from .openai_backend import EndpointConfig

    path = path or os.environ.get(ENDPOINTS_ENV)
    if not path:
        return {}
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise BackendError(f"cannot read endpoints file {p}: {exc.strerror or exc}") from None
    import yaml

    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
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


class BackendRegistry:
    def __init__(self, catalog: Catalog, endpoints: Optional[dict] = None, **transformers_options):
        self.catalog = catalog
        self.endpoints = dict(endpoints or {})
        self._transformers_options = transformers_options
        self._local: Optional[Backend] = None
        self._remote: Optional[Backend] = None

    @property
    def local(self) -> Backend:
        if self._local is None:
            from .transformers_backend import TransformersBackend

            self._local = TransformersBackend(self.catalog, **self._transformers_options)
        return self._local

    def for_model(self, alias: str) -> Backend:
        if alias in self.endpoints:
            if self._remote is None:
                from .openai_backend import OpenAIBackend

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
