"""Turn (model, prompt variant, case) into the Request a backend answers."""

from __future__ import annotations

from typing import Optional

from explorer.catalog.presets import ModelSpec
from explorer.schema import Case, GenerationSettings, ImagePart, PromptVariant, Request


def build_request(
    model: ModelSpec,
    variant: PromptVariant,
    case: Case,
    prompt_style: str = "paper",
    generation: Optional[GenerationSettings] = None,
) -> Request:
    """One user turn: the image, then the prompt text (the study's order for every model).

    `generation` replaces the model's own settings (e.g. a shorter limit for a live demo).
    """
    settings = generation or model.generation.settings()
    return Request(
        model=model.alias,
        messages=({"role": "user", "content": (ImagePart(case.image, case.image_hash), variant.text)},),
        generation=settings,
        prompt_format=model.prompt_format(prompt_style),
        readout=variant if variant.kind == "closed" else None,
    )


def text_request(model_alias: str, text: str, generation: GenerationSettings) -> Request:
    """A text-only request (LLM judge, diagnosis from a description)."""
    return Request(model=model_alias, messages=({"role": "user", "content": (text,)},), generation=generation)
