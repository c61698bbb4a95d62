"""What a public deployment (a Hugging Face Space anyone can open) lets a visitor do.

Public mode is on when EXPLORER_PUBLIC says so ("1", "true", "yes", "on"), and by default whenever
SPACE_ID is set (Hugging Face sets it inside every Space); EXPLORER_PUBLIC=0 turns it off, e.g. for a
private Space. In public mode a visitor can only:
  - upload files up to max_upload_bytes, images up to max_image_pixels (checked before decoding),
  - run sweeps of at most max_sweep_items answers,
  - use the models the study preset lists (not any alias the catalog knows),
and can never type a path on the server or point the app at an endpoint of their own (both would let
a stranger read the server's files or send its keys and images elsewhere). The operator's own
configuration (EXPLORER_ENDPOINTS, the samples folder) is not a visitor's input and stays allowed.

Limits can be tuned with EXPLORER_PUBLIC_MAX_UPLOAD_MB, EXPLORER_PUBLIC_MAX_PIXELS and
EXPLORER_PUBLIC_MAX_SWEEP_ITEMS. Every check raises PolicyError (a ValueError) whose message is meant
for the visitor; with public mode off every check passes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sized, Union

PUBLIC_ENV = "EXPLORER_PUBLIC"
SPACE_ENV = "SPACE_ID"  # set by Hugging Face in every Space
MAX_UPLOAD_MB_ENV = "EXPLORER_PUBLIC_MAX_UPLOAD_MB"
MAX_PIXELS_ENV = "EXPLORER_PUBLIC_MAX_PIXELS"
MAX_SWEEP_ITEMS_ENV = "EXPLORER_PUBLIC_MAX_SWEEP_ITEMS"

# A digitised mammogram (the largest common 2-D clinical image) is ~4000x5000 px and an uncompressed
# DICOM of it ~40 MB; models resize far below that anyway.
DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
# The demo preset's whole sweep (4 models x 4 tasks x 8 images x 12 prompts) is 1,536 answers.
DEFAULT_MAX_SWEEP_ITEMS = 2_000

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class PolicyError(ValueError):
    """Something a public deployment does not allow; the message is meant for the visitor."""


def _flag(value: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    # A typo must not silently open a public Space: refuse to start instead.
    raise PolicyError(f"{PUBLIC_ENV}={value!r} is not understood; use 1 (public) or 0 (private)")


def _positive_number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PolicyError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise PolicyError(f"{name} must be above 0, got {raw!r}")
    return value


def public_mode_enabled(environ: Optional[Mapping[str, str]] = None) -> bool:
    """EXPLORER_PUBLIC when set, else whether this runs inside a Hugging Face Space."""
    env = os.environ if environ is None else environ
    raw = env.get(PUBLIC_ENV)
    if raw is not None:
        return _flag(raw)
    return bool(env.get(SPACE_ENV))


def _megabytes(n_bytes: float) -> str:
    return f"{n_bytes / (1024 * 1024):.1f} MB"


@dataclass(frozen=True)
class PublicPolicy:
    """The limits of a public deployment. `enabled=False` allows everything."""

    enabled: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_sweep_items: int = DEFAULT_MAX_SWEEP_ITEMS
    allowed_models: frozenset[str] = field(default_factory=frozenset)  # empty: the preset gave none

    @classmethod
    def from_env(cls, preset: Any = None, environ: Optional[Mapping[str, str]] = None) -> "PublicPolicy":
        """The policy this process runs under; allowed models are `preset.models` (a StudyPreset,
        or any iterable of aliases)."""
        env = os.environ if environ is None else environ
        models = getattr(preset, "models", preset) if preset is not None else ()
        return cls(
            enabled=public_mode_enabled(env),
            max_upload_bytes=int(_positive_number(env, MAX_UPLOAD_MB_ENV, DEFAULT_MAX_UPLOAD_BYTES / 2**20) * 2**20),
            max_image_pixels=int(_positive_number(env, MAX_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS)),
            max_sweep_items=int(_positive_number(env, MAX_SWEEP_ITEMS_ENV, DEFAULT_MAX_SWEEP_ITEMS)),
            allowed_models=frozenset(models or ()),
        )

    # ------------------------------------------------------------ what the UI can show
    def describe(self) -> str:
        """One line for a banner: what this deployment allows."""
        if not self.enabled:
            return "Private mode: no limits on uploads, sweeps, models, paths or endpoints."
        models = ", ".join(sorted(self.allowed_models)) or "none"
        return (
            f"Public mode: uploads up to {_megabytes(self.max_upload_bytes)} and "
            f"{self.max_image_pixels / 1e6:g} megapixels, sweeps up to {self.max_sweep_items:,} answers, "
            f"models: {models}; no server paths, no custom endpoints."
        )

    def visible_models(self, aliases: Iterable[str]) -> list[str]:
        """The aliases a visitor may pick, in the given order."""
        return [a for a in aliases if not self.enabled or a in self.allowed_models]

    def image_limits(self) -> dict[str, int]:
        """Keyword arguments for images.load_image (the pixel limit, checked before decoding)."""
        return {"max_pixels": self.max_image_pixels} if self.enabled else {}

    # ------------------------------------------------------------ checks
    def check_upload(self, source: Union[bytes, bytearray, memoryview, str, os.PathLike, int]) -> None:
        """Refuse an upload over max_upload_bytes: bytes, the path of the uploaded temp file, or a size."""
        if not self.enabled:
            return
        if isinstance(source, int):
            size = source
        elif isinstance(source, (bytes, bytearray, memoryview)):
            size = len(source)
        else:
            try:
                size = Path(source).stat().st_size
            except OSError:
                return  # nothing to measure; loading it will say what is wrong
        if size > self.max_upload_bytes:
            raise PolicyError(
                f"The file is too large for this public demo: {_megabytes(size)}, above the "
                f"{_megabytes(self.max_upload_bytes)} limit. Run the explorer on your own machine for larger files."
            )

    def check_image_pixels(self, width: int, height: int) -> None:
        if self.enabled and width * height > self.max_image_pixels:
            raise PolicyError(
                f"The image is too large for this public demo: {width}x{height} = {width * height / 1e6:.1f} "
                f"megapixels, above the {self.max_image_pixels / 1e6:g} megapixel limit."
            )

    def load_upload(self, source: Any):
        """An uploaded image within the limits: images.LoadedImage, or PolicyError / ImageLoadError."""
        from explorer.cases.images import load_image

        if isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
            self.check_upload(source)
        loaded = load_image(source, **self.image_limits())
        self.check_image_pixels(*loaded.original_size)  # DICOM and PIL sizes alike, after the fact too
        return loaded

    def check_models(self, aliases: Iterable[str]) -> None:
        if not self.enabled:
            return
        refused = [a for a in aliases if a not in self.allowed_models]
        if refused:
            allowed = ", ".join(sorted(self.allowed_models)) or "none"
            raise PolicyError(
                f"This public demo only runs the preset's models ({allowed}); not available here: {', '.join(refused)}."
            )

    def check_sweep(self, items: Union[int, Sized]) -> None:
        """Refuse a sweep (its plan, or its size) above max_sweep_items."""
        n = items if isinstance(items, int) else len(items)
        if self.enabled and n > self.max_sweep_items:
            raise PolicyError(
                f"This sweep has {n:,} answers; a public demo runs at most {self.max_sweep_items:,}. "
                "Choose fewer models, tasks, prompts or images, or run it on your own machine."
            )

    def check_server_path(self, path: Any) -> None:
        """A visitor may not name files on the server (a folder of images, a manifest, a store)."""
        if self.enabled and path is not None and str(path).strip():
            raise PolicyError(
                "This public demo does not read files from the server by path; upload the images instead."
            )

    def check_endpoints(self, endpoints: Any) -> None:
        """A visitor may not point the app at a server of their own (it would receive the images)."""
        if self.enabled and endpoints:
            raise PolicyError(
                "This public demo does not accept custom model endpoints; run the explorer yourself to use your own."
            )


def current_policy(preset: Any = None) -> PublicPolicy:
    """The policy of this process (from its environment)."""
    return PublicPolicy.from_env(preset)
