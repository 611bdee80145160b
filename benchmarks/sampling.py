"""How the benchmark protocols sample the images they score: one ``api.generate`` call a prompt,
with the protocol's images per prompt, sampling steps and guidance (the TinyWorld protocol's
``Protocol`` and the paper protocol's ``PaperSettings`` both carry them)."""

from __future__ import annotations

from typing import Any, Protocol

from textloc_core import api


class SamplingSettings(Protocol):
    """What a protocol's settings say about the scored generations."""

    images_per_prompt: int
    sample_steps: int
    guidance_scale: float


def generate_scored(bundle, prompt: str, settings: SamplingSettings, seed: int, **options: Any):
    """``api.generate`` of ``prompt`` under ``settings``; ``options`` are the rest of
    ``api.generate``'s arguments (``adapters``, ``size``, ``maps_for``...)."""
    return api.generate(
        bundle,
        prompt,
        num_images=settings.images_per_prompt,
        steps=settings.sample_steps,
        guidance_scale=settings.guidance_scale,
        seed=seed,
        **options,
    )
