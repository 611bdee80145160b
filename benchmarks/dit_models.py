"""Flux.1-dev and SD3.5 (Medium, Large) architectures, random weights, for the performance benchmark.

The published configs of ``black-forest-labs/FLUX.1-dev`` (transformer, 16-channel VAE, CLIP-L,
T5-XXL encoder) and ``stabilityai/stable-diffusion-3.5-medium`` / ``-large`` (MMDiT, VAE, CLIP-L,
CLIP-G, T5-XXL), built in code with random weights: timing and memory depend on the
architecture, not on the weight values. Nothing is downloaded; the T5 tokenizer is the tiny
word-level one of ``tiny_models`` (prompts are padded to the model's sequence length either way,
so the sequence the transformer sees has the published length).

Depth arguments shorten the stacks for CPU runs (widths, heads, sequence lengths stay the
published ones); ``weight_dtype`` "fp8_e4m3fn" stores the transformer's and T5's linear weights
in float8 (``textloc_core.backends.fp8_base``), as ComfyUI's fp8 loaders and T5 files give them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .sd15_models import SD15_TEXT_CONFIG, SD15_VAE_CONFIG, build_clip_text, build_vae, random_module
from .sdxl_models import build_sdxl_text_encoders

FLUX_DEV_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
"""Flux.1-dev's transformer (11.9 B parameters: 19 double-stream, 38 single-stream blocks)."""

SD35_CONFIGS: dict[str, dict[str, Any]] = {
    "medium": {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 24,
        "attention_head_dim": 64,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 384,
        "dual_attention_layers": tuple(range(13)),
        "qk_norm": "rms_norm",
    },
    "large": {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 38,
        "attention_head_dim": 64,
        "num_attention_heads": 38,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 2432,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "qk_norm": "rms_norm",
    },
}
"""SD3.5 Medium (2.5 B, 24 joint blocks, dual attention in the first 13) and Large (8.1 B, 38)."""

DIT_VAE_CONFIG: dict[str, Any] = {
    **SD15_VAE_CONFIG,
    "latent_channels": 16,
    "sample_size": 1024,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
"""The 16-channel AutoencoderKL of Flux and SD3 (84 M); scaling and shift set per family."""
VAE_SCALING = {"flux": (0.3611, 0.1159), "sd35": (1.5305, 0.0609)}

T5_XXL_CONFIG: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
"""T5 v1.1 XXL's encoder (4.8 B parameters), as Flux and SD3 read it."""


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules built inside are created in ``dtype`` (a full Flux in float32 would be 48 GB)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _shallower(config: dict[str, Any], key: str, depth: int | None) -> dict[str, Any]:
    config = dict(config)
    if depth is not None:
        if not 1 <= depth <= config[key]:
            raise ValueError(f"{key}: {depth} must be between 1 and {config[key]} (the published depth)")
        config[key] = depth
    return config


def build_t5_xxl(*, num_layers: int | None = None, seed: int = 0, dtype=torch.float32, device="cpu"):
    """(tiny word-level tokenizer, a random T5-XXL encoder, ``num_layers`` deep)."""
    from transformers import T5Config, T5EncoderModel

    from .tiny_models import build_tiny_t5_tokenizer

    config = T5Config(**_shallower(T5_XXL_CONFIG, "num_layers", num_layers))
    with default_dtype(dtype):
        model = random_module(lambda: T5EncoderModel(config), seed=seed, dtype=dtype, device=device)
    return build_tiny_t5_tokenizer(), model


def _vae(family: str, dtype, device):
    scaling, shift = VAE_SCALING[family]
    return build_vae({**DIT_VAE_CONFIG, "scaling_factor": scaling, "shift_factor": shift}, dtype=dtype, device=device)


def _transformer_and_t5(
    cls, config: dict[str, Any], *, t5_layers=None, dtype=torch.bfloat16, device="cpu", weight_dtype="default"
):
    """(random transformer of ``config``, T5 tokenizer, random T5-XXL ``t5_layers`` deep), all
    in ``dtype`` on ``device``, T5 stored as ``weight_dtype`` (the bundle builder stores the
    transformer so)."""
    from textloc_core.backends.fp8_base import apply_weight_dtype

    with default_dtype(dtype):
        transformer = random_module(lambda: cls(**config), dtype=dtype, device=device)
    t5_tokenizer, t5 = build_t5_xxl(num_layers=t5_layers, seed=1, dtype=dtype, device=device)
    apply_weight_dtype([t5], weight_dtype)
    return transformer, t5_tokenizer, t5


def build_flux_bundle(double_blocks: int | None = None, single_blocks: int | None = None, **options):
    """A ``ModelBundle`` of Flux.1-dev's architecture with random weights (depths: the published
    19 double, 38 single blocks unless given; ``options``: ``_transformer_and_t5``'s, 24 T5
    layers, bfloat16 on the CPU unless given). T5 reads 512 tokens, as in dev."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTokenizer

    from textloc_core.backends.flux_backend import bundle_from_flux

    from .tiny_models import TOKENIZER_DIR

    config = _shallower(_shallower(FLUX_DEV_CONFIG, "num_layers", double_blocks), "num_single_layers", single_blocks)
    transformer, t5_tokenizer, t5 = _transformer_and_t5(FluxTransformer2DModel, config, **options)
    dtype, device = options.get("dtype", torch.bfloat16), options.get("device", "cpu")
    return bundle_from_flux(
        transformer=transformer,
        vae=_vae("flux", dtype, device),
        text_encoder=build_clip_text(SD15_TEXT_CONFIG, seed=2, dtype=dtype, device=device),
        tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        max_sequence_length=512,
        guidance=3.5,
        weight_dtype=options.get("weight_dtype", "default"),
    )


def build_sd35_bundle(size: str = "medium", joint_blocks: int | None = None, **options):
    """A ``ModelBundle`` of SD3.5 Medium's or Large's architecture with random weights (depths:
    the published joint blocks unless given; ``options``: ``_transformer_and_t5``'s). T5 reads
    256 tokens, diffusers' default."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTokenizer

    from textloc_core.backends.sd3_backend import bundle_from_sd3

    from .tiny_models import TOKENIZER_DIR

    config = _shallower(SD35_CONFIGS[size], "num_layers", joint_blocks)
    if "dual_attention_layers" in config:  # Medium: the first 13 of 24 blocks, scaled with the depth
        dual = round(13 * config["num_layers"] / 24)
        config["dual_attention_layers"] = tuple(range(dual))
    transformer, t5_tokenizer, t5 = _transformer_and_t5(SD3Transformer2DModel, config, **options)
    dtype, device = options.get("dtype", torch.bfloat16), options.get("device", "cpu")
    clip_l, clip_g = build_sdxl_text_encoders(seed=2, dtype=dtype, device=device)
    return bundle_from_sd3(
        transformer=transformer,
        vae=_vae("sd35", dtype, device),
        text_encoder=clip_l,
        tokenizer=CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR)),
        text_encoder_2=clip_g,
        tokenizer_2=CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token="!"),
        text_encoder_3=t5,
        tokenizer_3=t5_tokenizer,
        max_sequence_length=256,
        weight_dtype=options.get("weight_dtype", "default"),
    )
