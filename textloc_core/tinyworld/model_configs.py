"""The TinyWorld model architecture: Stable Diffusion 1.x in miniature, as plain config dicts.

Every config here is plain data (JSON-able dicts) so that three consumers build the *same*
network from one source of truth:

* diffusers / transformers (``build_*`` below, random init, used by training and tests),
* ComfyUI (``COMFY_UNET_CONFIG`` for ``comfy.supported_models.SD15(COMFY_UNET_CONFIG)``,
  ``COMFY_VAE_CONFIG`` for ``comfy.sd.VAE(sd, config=COMFY_VAE_CONFIG)``, and the CLIP text
  config for ``comfy.sd1_clip`` via ``CLIP_TEXT_CONFIG``),
* anyone reading the shipped ``weights/*/config.json``.

Shapes: 64x64 RGB images, a KL autoencoder with 4 latent channels and a downsampling factor
of 4 (16x16 latents), a CLIP text encoder with the real CLIP BPE vocabulary (49408 pieces,
77 positions) and a 64-wide hidden state, and an SD1-style UNet with cross-attention at
latent resolutions 16 and 8 and in the middle block (at 4), mirrored on the way up
(one resnet per level down, two up: 7 attn2 layers, ~5.8M parameters; the shipped weights
stay under the 25 MB budget in fp16).

Heads: like SD1 (``attention_head_dim=8`` in diffusers means *8 heads*; ComfyUI's SD15
class forces ``num_heads=8, num_head_channels=-1``), so the stock SD15 class fits.
"""

from __future__ import annotations

import copy

from ..sampling.schedule import SD_SCHEDULER_CONFIG

IMAGE_SIZE = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 4
VAE_SCALE_FACTOR = 4
# SD1's latent scale. The trained VAE is rescaled (see tinyworld_build.train_world.rescale_vae_latents) so that
# latents times this factor have unit variance, which lets ComfyUI's stock SD15 latent format work.
SD_SCALING_FACTOR = 0.18215
TEXT_HIDDEN = 64
MAX_TOKENS = 77
CLIP_VOCAB_SIZE = 49408
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407

# ---------------------------------------------------------------- diffusers UNet
UNET_CONFIG: dict = {
    "sample_size": LATENT_SIZE,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "block_out_channels": [64, 128, 128],
    "layers_per_block": 1,
    "cross_attention_dim": TEXT_HIDDEN,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "use_linear_projection": False,
    "act_fn": "silu",
}

# ---------------------------------------------------------------- ComfyUI UNet (same network)
# Keys as comfy.model_detection.detect_unet_config produces them for an SD1 checkpoint; the
# SD15 supported-model class adds num_heads=8 / num_head_channels=-1 itself.


def small_comfy_unet_config(
    model_channels: int, transformer_depth: list[int], transformer_depth_middle: int, context_dim: int, **fields
) -> dict:
    """A small ComfyUI ``UNetModel`` config with the keys comfy.model_detection.detect_unet_config
    gives: a spatial-transformer UNet of three levels, one resnet each, 4 latent channels at image
    size 32, ``transformer_depth`` blocks at each level (the output blocks repeat each level's
    depth, shallow level first: ComfyUI pops them from the end while building from the deepest
    level); ``fields`` are the rest the model sets itself (``adm_in_channels``, heads...)."""
    return {
        "use_checkpoint": False,
        "image_size": 32,
        "use_spatial_transformer": True,
        "legacy": False,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "model_channels": model_channels,
        "channel_mult": [1, 2, 2],
        "num_res_blocks": [1, 1, 1],
        "transformer_depth": transformer_depth,
        "transformer_depth_output": [depth for depth in transformer_depth for _ in range(2)],
        "transformer_depth_middle": transformer_depth_middle,
        "context_dim": context_dim,
        **fields,
    }


# levels 16 and 8 have a transformer, level 4 has none
COMFY_UNET_CONFIG: dict = small_comfy_unet_config(
    64, [1, 1, 0], 1, TEXT_HIDDEN, adm_in_channels=None, use_linear_in_transformer=False
)
COMFY_UNET_EXTRA: dict = {"num_heads": 8, "num_head_channels": -1}
"""What comfy.supported_models.SD15 adds to the unet config (for building UNetModel directly)."""

# ---------------------------------------------------------------- VAE
VAE_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": LATENT_CHANNELS,
    "norm_num_groups": 32,
    "sample_size": IMAGE_SIZE,
    "scaling_factor": SD_SCALING_FACTOR,
    "act_fn": "silu",
}

COMFY_VAE_CONFIG: dict = {
    "target": "comfy.ldm.models.autoencoder.AutoencoderKL",
    "params": {
        "embed_dim": LATENT_CHANNELS,
        "ddconfig": {
            "double_z": True,
            "z_channels": LATENT_CHANNELS,
            "resolution": IMAGE_SIZE,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
    },
}
"""For ``comfy.sd.VAE(sd=ldm_sd, config=COMFY_VAE_CONFIG)`` where ``ldm_sd`` is
``comfy.diffusers_convert.convert_vae_state_dict(shift_vae_up_blocks_for_comfy(diffusers_sd))``;
afterwards set the VAE's ``downscale_ratio`` and ``upscale_ratio`` to VAE_SCALE_FACTOR
(ComfyUI assumes 8 when given a config)."""

# ---------------------------------------------------------------- CLIP (text + vision)
CLIP_TEXT_CONFIG: dict = {
    "vocab_size": CLIP_VOCAB_SIZE,
    "hidden_size": TEXT_HIDDEN,
    "intermediate_size": 4 * TEXT_HIDDEN,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 64,
    "bos_token_id": BOS_TOKEN_ID,
    "eos_token_id": EOS_TOKEN_ID,
    "pad_token_id": EOS_TOKEN_ID,
}

CLIP_VISION_CONFIG: dict = {
    "image_size": IMAGE_SIZE,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 64,
}

# ---------------------------------------------------------------- scheduler (SD1's)
SCHEDULER_CONFIG: dict = dict(SD_SCHEDULER_CONFIG)
"""TinyWorld is trained and sampled on SD1.5's noise schedule, so code tuned on it transfers."""


def _cfg(config: dict) -> dict:
    # builders must never let a library mutate the module-level dicts
    return copy.deepcopy(config)


def build_unet():
    """A randomly initialised diffusers UNet2DConditionModel with the TinyWorld shape."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_cfg(UNET_CONFIG))


def build_vae():
    """A randomly initialised diffusers AutoencoderKL (64x64 RGB <-> 4x16x16)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**_cfg(VAE_CONFIG))


def clip_text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**_cfg(CLIP_TEXT_CONFIG))


def clip_vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**_cfg(CLIP_VISION_CONFIG))


def build_text_encoder():
    """A randomly initialised CLIPTextModelWithProjection (the projection feeds CLIP metrics;
    the UNet reads ``last_hidden_state``, and CLIPTextModel loads the same weights)."""
    from transformers import CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(clip_text_config())


def build_vision_encoder():
    """A randomly initialised CLIPVisionModelWithProjection sharing the text tower's embedding space."""
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(clip_vision_config())


def build_scheduler():
    """SD1's DDPM training schedule (scaled-linear betas, 1000 steps, epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(_cfg(SCHEDULER_CONFIG))


def comfy_unet_config() -> dict:
    """A fresh copy of the ComfyUI unet_config (pass to comfy.supported_models.SD15)."""
    return _cfg(COMFY_UNET_CONFIG)


def shift_vae_up_blocks_for_comfy(diffusers_vae_state_dict: dict) -> dict:
    """Rename diffusers VAE decoder keys so ComfyUI's ``diffusers_convert.convert_vae_state_dict``
    converts them right.

    That converter assumes SD's four decoder levels (diffusers ``up_blocks.i`` -> LDM
    ``up.{3-i}``); TinyWorld has three, so ``up_blocks.i`` is renamed ``up_blocks.{i+1}`` first
    (landing on LDM ``up.{2-i}``). Pure key renaming; tensors are shared, not copied.
    """
    levels = len(VAE_CONFIG["block_out_channels"])
    shift = 4 - levels
    out = {}
    for key, value in diffusers_vae_state_dict.items():
        if key.startswith("decoder.up_blocks."):
            rest = key[len("decoder.up_blocks.") :]
            index, _, tail = rest.partition(".")
            key = f"decoder.up_blocks.{int(index) + shift}.{tail}"
        out[key] = value
    return out
