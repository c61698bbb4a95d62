"""Can this model be used here, and if not, why? Answered without loading anything.

The app's Models tab and the CLI's `models` command show these reasons, so a user sees
"gated: set HF_TOKEN" or "offline and not cached" before pressing Run, not a traceback after.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

from explorer.catalog.presets import ModelSpec

log = logging.getLogger(__name__)
_ANNOUNCED: set[tuple[str, str]] = set()


def _size_gb(spec: ModelSpec) -> Optional[float]:
    """The weights' size in GB at 16 bits, for the study models whose parameter counts are known."""
    from explorer.models.manager import known_params, weight_bytes

    params = known_params(spec.hf_id)
    return round(weight_bytes(params, "bfloat16") / 1e9, 1) if params else None


@dataclass(frozen=True)
class Availability:
    alias: str
    state: str  # "loaded", "loadable", "unavailable"
    reason: str  # one line a user can act on
    source: Optional[str] = None  # hf id, endpoint, or "built locally (random weights)"
    size_gb: Optional[float] = None


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def has_hf_token() -> bool:
    return bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))


def cached_repo_id(spec: ModelSpec) -> Optional[str]:
    """The first of the model's ids whose config is already in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    for repo_id in (spec.hf_id, *spec.alt_ids):
        if not repo_id:
            continue
        try:
            hit = try_to_load_from_cache(repo_id, "config.json", revision=spec.revision)
        except Exception:  # a malformed cache must not break a status page
            hit = None
        if isinstance(hit, str):
            return repo_id
    return None


def fallback_note(spec: ModelSpec, repo_id: Optional[str]) -> Optional[str]:
    """What to tell the user when a model resolves to one of its alt_ids instead of its hf_id (else None)."""
    if not repo_id or repo_id == spec.hf_id:
        return None
    return (
        f"{spec.alias}: {spec.hf_id} (the study's checkpoint) is not available here, so {repo_id} is used: "
        f"another conversion of the same model, listed in alt_ids; its answers are stored under {repo_id}, "
        f"apart from {spec.hf_id}'s"
    )


def announce_fallback(spec: ModelSpec, repo_id: Optional[str]) -> None:
    """Log the switch to another conversion once per process (a warning: results may differ)."""
    note = fallback_note(spec, repo_id)
    if note and (spec.alias, str(repo_id)) not in _ANNOUNCED:
        _ANNOUNCED.add((spec.alias, str(repo_id)))
        log.warning(note)


def model_availability(spec: ModelSpec, loaded: bool = False, endpoint: Optional[str] = None) -> Availability:
    if loaded:
        return Availability(spec.alias, "loaded", "in memory", spec.hf_id or "random weights")
    if endpoint:
        return Availability(spec.alias, "loadable", f"served by {endpoint}", endpoint)
    if spec.is_demo:
        return Availability(
            spec.alias,
            "loadable",
            "offline demo: random weights, answers are noise",
            "built locally (random weights)",
        )
    size = _size_gb(spec)
    cached = cached_repo_id(spec)
    if cached:
        reason = "in the local Hugging Face cache"
        if cached != spec.hf_id:
            reason += f" as {cached}, another conversion than the study's {spec.hf_id}"
        return Availability(spec.alias, "loadable", reason, cached, size)
    if hub_offline():
        return Availability(
            spec.alias,
            "unavailable",
            f"offline and {spec.hf_id} is not in the local Hugging Face cache",
            spec.hf_id,
            size,
        )
    if spec.gated and not has_hf_token():
        return Availability(
            spec.alias,
            "unavailable",
            f"gated: accept the licence of {spec.hf_id} on huggingface.co and set HF_TOKEN",
            spec.hf_id,
            size,
        )
    return Availability(spec.alias, "loadable", f"downloads {spec.hf_id} on first use", spec.hf_id, size)
