"""Generation with adapters applied, and the identifier tokens' attention maps while sampling.

``generate`` samples with DDIM + CFG (``schedule.ddim_sample``) and, for the tokens in
``maps_for``, routes the attn2 layers of the chosen resolutions through an
``AveragingRouter``: the conditional rows' maps are averaged over the sampling steps, then
folded into one map per token (``maps.token_maps``), the same maps the trainer guides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..adapters.composition import applied
from ..attention.cross_attention import AveragingRouter
from ..attention.maps import attn2_query_counts, choose_layers, slot_layout, token_maps
from ..backends.base import ModelBundle
from .schedule import ddim_sample, guided_conditioning


@dataclass
class Generation:
    """What ``generate`` returns."""

    images: torch.Tensor
    """(B, 3, H, W) in [0, 1]."""
    latents: torch.Tensor
    token_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    """Token -> (B, h, w) attention map in [0, 1], averaged over sampling steps."""


def generate(
    bundle: ModelBundle,
    prompt: str,
    *,
    adapters: Sequence = (),
    strengths: Sequence[float] | None = None,
    negative_prompt: str = "",
    num_images: int = 1,
    steps: int = 30,
    guidance_scale: float = 7.5,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    maps_for: Sequence[str] = (),
    map_levels: tuple[int, ...] | str = "all_but_finest",
    allow_base_mismatch: bool = False,
) -> Generation:
    """Sample ``num_images`` images of ``prompt`` (DDIM + CFG) with ``adapters`` applied
    (``composition.applied``), and the cross-attention maps of the identifier tokens in ``maps_for``."""
    denoiser = bundle.denoiser
    if size is None:
        side = int(getattr(getattr(denoiser.unet, "config", None), "sample_size", 64)) * denoiser.vae_scale_factor
        size = (side, side)
    latent_hw = (size[0] // denoiser.vae_scale_factor, size[1] // denoiser.vae_scale_factor)
    with (
        torch.no_grad(),
        applied(bundle, list(adapters), strengths, allow_base_mismatch=allow_base_mismatch) as embeddings,
    ):
        unknown = [t for t in maps_for if t not in embeddings]
        if unknown:
            raise ValueError(
                f"maps_for: {unknown} are not identifier tokens of the applied adapters {sorted(embeddings)}"
            )
        encoded = bundle.text.encode([prompt, negative_prompt], embeddings)
        missing = [t for t in maps_for if t not in encoded.token_positions[0]]
        if missing:
            raise ValueError(f"maps_for: {missing} do not occur in the prompt {prompt!r}")
        conditioning = guided_conditioning(encoded, num_images, bundle.compute_dtype)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((num_images, denoiser.latent_channels, *latent_hw), generator=generator).to(bundle.device)
        router = layout = None
        if maps_for:
            layout = slot_layout([encoded.token_positions[0]] * num_images, list(maps_for))
            # Only the layers of the chosen levels are routed; the rest keep fused attention.
            layers = choose_layers(attn2_query_counts(denoiser, noise, encoded, bundle.compute_dtype), map_levels)
            # the sampler's batch is [uncond; cond] with CFG: the maps of the cond half count
            cond_rows = slice(num_images, None) if guidance_scale != 1.0 else None
            router = AveragingRouter(layers=layers, token_slots=layout.slots[:1].to(bundle.device), keep_rows=cond_rows)
        latents = ddim_sample(
            denoiser, latents=noise, steps=steps, guidance_scale=guidance_scale, router=router, **conditioning
        )
        images = denoiser.decode_latents(latents)
    result = Generation(images=images.float().cpu(), latents=latents.float().cpu())
    if maps_for:
        maps = token_maps(router.averaged(), layout, latent_hw).cpu()
        result.token_maps = {token: maps[:, k] for k, token in enumerate(maps_for)}
    return result
