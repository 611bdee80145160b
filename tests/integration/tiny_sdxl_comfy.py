"""A tiny, randomly initialised SDXL-architecture model as ComfyUI MODEL / CLIP / VAE objects.

Built the way ComfyUI's loaders build SDXL, at a size a CPU test runs in seconds:

* MODEL: ``comfy.supported_models.SDXL`` with a small unet_config (linear transformers, adm
  conditioning of pooled text + six 256-wide size embeddings, attention at two levels like
  SDXL's 64 and 32 grids) -> ``comfy.model_base.SDXL`` -> ModelPatcher;
* CLIP: ``comfy.sdxl_clip``'s tokenizer pair and model pair (CLIP-L and a bigG-like encoder,
  both read at the penultimate layer, bigG's projected pooled output), with narrow configs;
* VAE: the TinyWorld VAE architecture (factor 4), random.

The pack's loaders are not involved: stock CheckpointLoaderSimple cannot detect a model this
small as SDXL, so the headless workflow test loads it through a test-only node
(``tiny_sdxl_nodes``). Import only with ComfyUI on ``sys.path``.
"""

from __future__ import annotations

import torch
from torch import nn

from textloc_core.tinyworld.model_configs import small_comfy_unet_config

WIDTH_L, WIDTH_G, POOLED = 32, 48, 48
"""Hidden widths of the two text encoders (context = 80) and bigG's projection (pooled) width."""
ADM_CHANNELS = POOLED + 6 * 256
IMAGE_SIZE = 64


def _text_config(width: int, projection: int | None = None) -> dict:
    config = {
        "vocab_size": 49408,
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
    }
    if projection is not None:
        config["projection_dim"] = projection
    return config


# 32 wide; SDXL's pattern: no attention at the finest level, then two levels with attention (1 and
# 2 blocks), 2 in the middle block; the context is CLIP-L and CLIP-G side by side
UNET_CONFIG = small_comfy_unet_config(
    32,
    [0, 1, 2],
    2,
    WIDTH_L + WIDTH_G,
    num_classes="sequential",
    adm_in_channels=ADM_CHANNELS,
    use_linear_in_transformer=True,
    num_heads=-1,
    num_head_channels=16,
)


def _init(module: nn.Module, seed: int) -> None:
    """ComfyUI's ops skip torch's default init; initialise explicitly and deterministically."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for sub in module.modules():
            for base in (nn.Linear, nn.Conv2d, nn.Embedding, nn.GroupNorm, nn.LayerNorm):
                if isinstance(sub, base):
                    base.reset_parameters(sub)
                    break
    finally:
        torch.random.set_rng_state(state)


def build_model(seed: int = 0):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({}, "", device=torch.device("cpu"))
    _init(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def _clip_classes():
    import comfy.sd1_clip
    import comfy.sdxl_clip

    class TinySDXLTokenizer(comfy.sdxl_clip.SDXLTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            self.clip_l = comfy.sd1_clip.SDTokenizer(
                embedding_directory=embedding_directory,
                embedding_size=WIDTH_L,
                embedding_key="clip_l",
                tokenizer_data=tokenizer_data,
            )
            self.clip_g = comfy.sd1_clip.SDTokenizer(
                pad_with_end=False,
                embedding_directory=embedding_directory,
                embedding_size=WIDTH_G,
                embedding_key="clip_g",
                tokenizer_data=tokenizer_data,
            )

    class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            nn.Module.__init__(self)
            # both read the penultimate layer, unnormalised, as SDXL's encoders do
            penultimate = dict(layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                textmodel_json_config=_text_config(WIDTH_L),
                return_projected_pooled=False,
                model_options=model_options,
                **penultimate,
            )
            self.clip_g = comfy.sd1_clip.SDClipModel(
                textmodel_json_config=_text_config(WIDTH_G, POOLED),
                return_projected_pooled=True,
                special_tokens={"start": 49406, "end": 49407, "pad": 0},
                model_options={**model_options, "model_name": "clip_g"},
                **penultimate,
            )
            self.dtypes = {dtype}

    return TinySDXLTokenizer, TinySDXLClipModel


def build_clip(seed: int = 0, embedding_directory=None):
    return clip_of(*_clip_classes(), seed, embedding_directory)


def clip_of(tokenizer, model, seed: int, embedding_directory=None):
    """A ComfyUI CLIP object of a tokenizer class and a text-encoder class, as its loaders make
    it (float32), the encoder initialised from ``seed``."""
    import comfy.sd
    import comfy.supported_models_base

    clip = comfy.sd.CLIP(
        comfy.supported_models_base.ClipTarget(tokenizer, model),
        embedding_directory=embedding_directory,
        model_options={"dtype": torch.float32},
    )
    _init(clip.cond_stage_model, seed + 1)
    return clip


def build_vae(seed: int = 0, latent_channels: int | None = None):
    """The TinyWorld VAE architecture with random weights (64 px <-> 4 x 16 x 16; or
    ``latent_channels`` instead of 4, e.g. the 16 of Flux and SD3)."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    from textloc_core.tinyworld import model_configs as cfg

    config = {"params": dict(cfg.COMFY_VAE_CONFIG["params"])}
    if latent_channels is not None:
        config["params"]["embed_dim"] = latent_channels
        config["params"]["ddconfig"] = dict(config["params"]["ddconfig"], z_channels=latent_channels)
    with torch.device("cpu"):
        fresh = AutoencoderKL(**config["params"])
    _init(fresh, seed + 2)
    vae = comfy.sd.VAE(sd=fresh.state_dict(), config=config)
    vae.downscale_ratio = cfg.VAE_SCALE_FACTOR
    vae.upscale_ratio = cfg.VAE_SCALE_FACTOR
    if latent_channels is not None:
        vae.latent_channels = latent_channels
    return vae


def build_all(seed: int = 0, embedding_directory=None):
    """(MODEL, CLIP, VAE) of the tiny SDXL-architecture model."""
    return build_model(seed), build_clip(seed, embedding_directory), build_vae(seed)
