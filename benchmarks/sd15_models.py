"""Stable Diffusion 1.5 architecture, random weights: the model the paper trains, minus its weights.

No SD weights exist on our machines and none may be downloaded, but time and memory of a
training step depend on the architecture, not on the weight values. This module holds the
published SD1.5 configs (``runwayml/stable-diffusion-v1-5``: UNet, VAE, CLIP ViT-L/14 text
encoder; the noise schedule is ``textloc_core.sampling.schedule``'s) and builds randomly
initialised diffusers / transformers modules from them, for the performance benchmark
(``scripts/bench_performance.py``). diffusers / transformers are imported inside the builders.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,  # latent side at 512 px (VAE factor 8)
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    # diffusers' historical name: SD1.5 has 8 heads per attention layer (head dim 40/80/160).
    "attention_head_dim": 8,
    "use_linear_projection": False,
    "upcast_attention": False,
}
"""SD1.5 UNet (860M parameters, 16 cross-attention layers at latent sides 64/32/16/8 for 512 px)."""

SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
"""SD1.5 AutoencoderKL (84M parameters, factor 8)."""

SD15_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}
"""CLIP ViT-L/14 text tower as SD1.5 uses it (123M parameters)."""


@contextmanager
def seeded(seed: int):
    """Random init under a fixed seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def random_module(factory, *, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"):
    """``factory()`` built under ``seed``, on ``device`` in ``dtype``, frozen and in eval mode
    (shared by the SD1.5 and SDXL builders)."""
    with seeded(seed):
        module = factory()
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def unet_config(base: dict[str, Any], sample_size: int | None, levels: int) -> dict[str, Any]:
    """A copy of a UNet config with its latent side set; the UNet downsamples ``levels - 1`` times."""
    config = dict(base)
    if sample_size is not None:
        step = 2 ** (levels - 1)
        if sample_size < step or sample_size % step:
            raise ValueError(
                f"sample_size: {sample_size} must be a multiple of {step} (the UNet downsamples {levels - 1} times)"
            )
        config["sample_size"] = sample_size
    return config


def build_unet(config: dict[str, Any], **kwargs):
    """A randomly initialised diffusers ``UNet2DConditionModel`` of ``config``."""
    from diffusers import UNet2DConditionModel

    return random_module(lambda: UNet2DConditionModel(**config), **kwargs)


def build_vae(config: dict[str, Any], **kwargs):
    """A randomly initialised diffusers ``AutoencoderKL`` of ``config``."""
    from diffusers import AutoencoderKL

    return random_module(lambda: AutoencoderKL(**config), **kwargs)


def build_clip_text(config: dict[str, Any], *, num_layers: int | None = None, projection: bool = False, **kwargs):
    """A randomly initialised transformers CLIP text tower of ``config`` (``CLIPTextModelWithProjection``
    when ``projection``); ``num_layers`` below the config's depth gives a shallower tower of the
    same width for CPU runs."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = dict(config)
    depth = config["num_hidden_layers"]
    if num_layers is not None:
        if not 1 <= num_layers <= depth:
            raise ValueError(f"num_layers: {num_layers} must be between 1 and {depth} (the published depth)")
        config["num_hidden_layers"] = num_layers
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return random_module(lambda: cls(CLIPTextConfig(**config)), **kwargs)


def sd15_unet_config(sample_size: int | None = None) -> dict[str, Any]:
    """A copy of the SD1.5 UNet config; ``sample_size`` (latent side) defaults to 64 (512 px)."""
    return unet_config(SD15_UNET_CONFIG, sample_size, levels=4)


def build_sd15_unet(*, sample_size: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"):
    """A randomly initialised diffusers ``UNet2DConditionModel`` with SD1.5's architecture."""
    return build_unet(sd15_unet_config(sample_size), seed=seed, dtype=dtype, device=device)


def build_sd15_vae(*, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"):
    """A randomly initialised diffusers ``AutoencoderKL`` with SD1.5's architecture."""
    return build_vae(SD15_VAE_CONFIG, seed=seed, dtype=dtype, device=device)


def build_sd15_text_encoder(
    *, num_layers: int | None = None, seed: int = 0, dtype: torch.dtype = torch.float32, device="cpu"
):
    """A randomly initialised transformers ``CLIPTextModel`` of SD1.5's shape.

    ``num_layers`` < 12 gives a shallower tower of the same width (context 768) for CPU runs;
    the UNet's cost, which dominates a training step, does not depend on it.
    """
    return build_clip_text(SD15_TEXT_CONFIG, num_layers=num_layers, seed=seed, dtype=dtype, device=device)
