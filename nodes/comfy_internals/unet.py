"""UNets (SD1.x, SD2.x, SDXL) in ComfyUI: a direct call in DDPM time, SDXL's adm vector, and the
attn2 replacements and their call options the attention routing reads."""

from __future__ import annotations

import torch
from torch import nn

from .model import transformer_options

__all__ = ["attention_heads", "attn2_replacements", "conditional_chunks", "size_conditioning", "unet_forward"]


def unet_forward(
    unet: nn.Module,
    noisy_latents: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    transformer_options: dict,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """One call of a ComfyUI UNet in DDPM time (integer timesteps, unscaled latents).

    Relies on: ``model.model.diffusion_model`` (``comfy.ldm.modules.diffusionmodules.
    openaimodel.UNetModel``) taking ``(x, timesteps=, context=, y=, transformer_options=)``,
    ``y`` being the adm vector of UNets with ``num_classes`` (SDXL). ``BaseModel.apply_model``
    would add k-diffusion sigma scaling the DDPM loss does not use. The options dict is copied
    because the UNet writes block bookkeeping into it.
    """
    extra = {} if y is None else {"y": y}
    return unet(
        noisy_latents, timesteps=timesteps, context=context, transformer_options=dict(transformer_options), **extra
    )


def size_conditioning(base_model, pooled: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SDXL's adm vector ``y`` (B, adm) from the pooled text embedding and the image size in
    pixels, uncropped, as ComfyUI's sampler builds it for a latent of that size.

    Relies on: ``comfy.model_base.SDXL.encode_adm(pooled_output=, width=, height=, crop_w=,
    crop_h=, target_width=, target_height=)`` (pooled, then 256-wide Fourier features of the
    six sizes). It is differentiable with respect to ``pooled``.
    """
    adm = base_model.encode_adm(
        pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0, target_width=width, target_height=height
    )
    return adm.to(pooled.device, pooled.dtype)


def attn2_replacements(model) -> dict:
    """The attn2 replace functions set on a MODEL, by ``(block_name, number, transformer_index)``.

    Relies on: ``set_model_attn2_replace`` storing them in
    ``model_options["transformer_options"]["patches_replace"]["attn2"]``."""
    return transformer_options(model).get("patches_replace", {}).get("attn2", {})


def attention_heads(extra_options: dict) -> int:
    """The head count an attn2 replace function is called with. Relies on: ``extra_options["n_heads"]``."""
    return int(extra_options["n_heads"])


def conditional_chunks(extra_options: dict) -> list[int]:
    """Which chunks of an attn2 call's (or dit block's) batch are conditional (0) or unconditional
    (1). Relies on: the sampler's ``extra_options["cond_or_uncond"]`` (absent: one conditional chunk)."""
    return list(extra_options.get("cond_or_uncond") or [0])
