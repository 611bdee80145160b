"""Stable Diffusion XL architecture, random weights, for the performance benchmark.

The published configs of ``stabilityai/stable-diffusion-xl-base-1.0`` (UNet, SDXL VAE, CLIP
ViT-L/14 text encoder and OpenCLIP ViT-bigG/14 text encoder with projection), built with random
weights by the shared builders of ``benchmarks.sd15_models``: timing and memory depend on the
architecture, not on the weight values.

``transformer_depth`` < 10 shortens the transformer stacks at the coarsest attention level
(1280 channels; SDXL has 10 per block there): the full UNet (2.6B parameters) with its 341M
trainable attn2 K/V parameters and their AdamW state does not fit a small CPU machine's memory,
while widths, heads, context, attention resolutions and conditioning stay SDXL's.
"""

from __future__ import annotations

from typing import Any

import torch

from .sd15_models import (
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    build_clip_text,
    build_unet,
    build_vae,
    unet_config,
)

SDXL_UNET_CONFIG: dict[str, Any] = {
    **SD15_UNET_CONFIG,  # what SDXL keeps of SD1.5's UNet (channels in/out, time embedding, norms, 2 layers per block)
    "sample_size": 128,  # latent side at 1024 px (VAE factor 8)
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "cross_attention_dim": 2048,  # CLIP-L 768 + bigG 1280, penultimate layers concatenated
    "transformer_layers_per_block": (1, 2, 10),
    # diffusers' historical name: these are head counts (head dim 64 at every level)
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # bigG pooled 1280 + 6 size numbers x 256
}
"""SDXL base UNet (2.6B parameters; attn2 layers at latent/2 and latent/4: the 64 and 32 grids
at 1024 px, 10 and 60 layers; no attention at the finest level)."""

SDXL_VAE_CONFIG: dict[str, Any] = {**SD15_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025}
"""SDXL's AutoencoderKL: SD's architecture (84M), its own scaling factor."""

SDXL_TEXT_CONFIG: dict[str, Any] = SD15_TEXT_CONFIG
"""SDXL's first text encoder: CLIP ViT-L/14, SD1.5's (123M)."""

SDXL_TEXT_2_CONFIG: dict[str, Any] = {
    **SD15_TEXT_CONFIG,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
"""SDXL's second text encoder: OpenCLIP ViT-bigG/14's text tower with projection (695M)."""

FULL_DEPTH = SDXL_UNET_CONFIG["transformer_layers_per_block"][-1]


def sdxl_unet_config(sample_size: int | None = None, transformer_depth: int | None = None) -> dict[str, Any]:
    """A copy of the SDXL UNet config; ``sample_size`` (latent side) defaults to 128 (1024 px),
    ``transformer_depth`` (transformer blocks per attention block at 1280 channels) to SDXL's 10."""
    config = unet_config(SDXL_UNET_CONFIG, sample_size, levels=3)
    if transformer_depth is not None:
        if not 1 <= transformer_depth <= FULL_DEPTH:
            raise ValueError(f"transformer_depth: {transformer_depth} must be between 1 and {FULL_DEPTH} (SDXL's)")
        config["transformer_layers_per_block"] = (*config["transformer_layers_per_block"][:-1], transformer_depth)
    return config


def build_sdxl_unet(
    *,
    sample_size: int | None = None,
    transformer_depth: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device="cpu",
):
    """A randomly initialised diffusers ``UNet2DConditionModel`` with SDXL's architecture."""
    return build_unet(sdxl_unet_config(sample_size, transformer_depth), seed=seed, dtype=dtype, device=device)


def build_sdxl_vae(*, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"):
    """A randomly initialised diffusers ``AutoencoderKL`` with the SDXL VAE's architecture."""
    return build_vae(SDXL_VAE_CONFIG, seed=seed, dtype=dtype, device=device)


def build_sdxl_text_encoders(
    *, num_layers_2: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"
):
    """(CLIP-L ``CLIPTextModel``, bigG ``CLIPTextModelWithProjection``), randomly initialised;
    ``num_layers_2`` < 32 gives a shallower bigG tower of the same width."""
    first = build_clip_text(SDXL_TEXT_CONFIG, seed=seed, dtype=dtype, device=device)
    second = build_clip_text(
        SDXL_TEXT_2_CONFIG, num_layers=num_layers_2, projection=True, seed=seed + 1, dtype=dtype, device=device
    )
    return first, second
