"""Tiny, randomly initialised Flux.1- and SD3.5-architecture models as ComfyUI MODEL / CLIP / VAE.

Built the way ComfyUI's loaders build them, at a size a CPU test runs in seconds:

* MODEL: ``comfy.supported_models.Flux`` (2 double-stream + 1 single-stream block, 64 wide, 4
  heads, guidance embedding like Flux dev) or ``comfy.supported_models.SD3`` (3 joint blocks,
  128 wide, 2 heads of 64, RMS q/k norm and the image-only second attention in block 0 like
  SD3.5 Medium, the last block ``context_pre_only``) -> ``comfy.model_base.Flux`` / ``SD3`` ->
  ModelPatcher. ``weight_dtype`` stores the weights as ComfyUI's UNETLoader does for its
  ``weight_dtype`` option (fp8_e4m3fn: fp8 weights, computed in float32 by manual cast).
* CLIP: ComfyUI's own Flux / SD3 tokenizers (CLIP BPE, the T5 sentencepiece tokenizer shipped in
  ``comfy/text_encoders``) and encoder classes (``flux.FluxClipModel``: CLIP-L + T5;
  ``sd3_clip.SD3ClipModel``: CLIP-L + CLIP-G + T5) with narrow configs. SD3's encoder pads
  CLIP-L + CLIP-G to 4096 and concatenates T5 after them, so its T5 keeps the 4096 width (one
  layer, small heads; its embedding table is stored in bfloat16); Flux's T5 is 32 wide.
* VAE: the TinyWorld VAE architecture (factor 4) with 16 latent channels, random.

Stock UNETLoader / DualCLIPLoader / TripleCLIPLoader cannot load models this small (ComfyUI
0.3.64's detection fixes Flux's width at 3072, and the CLIP loaders read the full-size configs),
so the headless tests load them through test-only nodes (``tiny_sdxl_nodes``: "TextLoc Test Tiny
DiT Loader"). Import only with ComfyUI on ``sys.path``.
"""

from __future__ import annotations

import dataclasses

import torch
from tiny_sdxl_comfy import _init, _text_config, build_vae, clip_of
from torch import nn

WIDTH_L, WIDTH_G = 32, 48
"""Hidden widths of the tiny CLIP-L and CLIP-G (CLIP-G's projection is as wide as it)."""
FLUX_T5 = 32
"""Flux's T5 width (the MODEL's ``context_in_dim``)."""
SD3_T5 = 4096
"""SD3's T5 width: ComfyUI's SD3 text encoder pads CLIP-L + CLIP-G to 4096 before T5 joins."""
LATENT_CHANNELS = 16
VAE_FACTOR = 4
IMAGE_SIZE = 64
FAMILIES = ("flux", "sd3")

FLUX_CONFIG = {
    "image_model": "flux",
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "patch_size": 2,
    "vec_in_dim": WIDTH_L,
    "context_in_dim": FLUX_T5,
    "hidden_size": 64,
    "mlp_ratio": 2.0,
    "num_heads": 4,
    "depth": 2,
    "depth_single_blocks": 1,
    "axes_dim": [4, 6, 6],
    "theta": 10000,
    "qkv_bias": True,
    "guidance_embed": True,
}
FLUX_DOUBLE_BLOCKS = FLUX_CONFIG["depth"]

SD3_CONFIG = {
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "patch_size": 2,
    "depth": 2,  # MMDiT's width is 64 x depth with depth heads
    "num_blocks": 3,
    "input_size": None,
    "adm_in_channels": WIDTH_L + WIDTH_G,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": SD3_T5, "out_features": 128}},
    "num_patches": 256,
    "pos_embed_max_size": 16,
    "qk_norm": "rms",
    "x_block_self_attn_layers": [0],
    "pos_embed_scaling_factor": None,
}
SD3_JOINT_BLOCKS = SD3_CONFIG["num_blocks"]


def _t5_config(width: int, heads: int) -> dict:
    return {
        "d_ff": 64,
        "d_kv": 8,
        "d_model": width,
        "dense_act_fn": "gelu_pytorch_tanh",
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-6,
        "model_type": "t5",
        "num_heads": heads,
        "num_layers": 2,
        "relative_attention_num_buckets": 32,
        "vocab_size": 32128,
    }


def _unit_norms(module: nn.Module) -> None:
    """RMS norms (T5's, the DiTs' q/k norms), which neither torch nor ComfyUI's ops initialise, at 1."""
    with torch.no_grad():
        for sub in module.modules():
            if "RMSNorm" in type(sub).__name__ or "T5LayerNorm" in type(sub).__name__:
                for name in ("weight", "scale"):  # ComfyUI 0.3.64's RMSNorm calls it scale
                    if getattr(sub, name, None) is not None:
                        getattr(sub, name).fill_(1.0)


def _flux_unet_config() -> dict:
    """FLUX_CONFIG plus the fields this ComfyUI's ``FluxParams`` requires (0.33 added some)."""
    from comfy.ldm.flux.model import FluxParams

    config = dict(FLUX_CONFIG)
    fields = {f.name: f for f in dataclasses.fields(FluxParams)}
    if "txt_ids_dims" in fields and fields["txt_ids_dims"].default is dataclasses.MISSING:
        config["txt_ids_dims"] = []
    return config


def build_model(family: str, seed: int = 0, weight_dtype: torch.dtype | None = None):
    """The tiny MODEL; ``weight_dtype`` (e.g. ``torch.float8_e4m3fn``) stores its weights in that
    dtype and computes in float32, as UNETLoader's ``weight_dtype`` option does on a CPU."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    def make(dtype, manual_cast):
        if family == "flux":
            config = comfy.supported_models.Flux(_flux_unet_config())
        elif family == "sd3":
            config = comfy.supported_models.SD3(dict(SD3_CONFIG))
        else:
            raise ValueError(f"family: {family!r} is not one of {FAMILIES}")
        config.set_inference_dtype(dtype, manual_cast)
        return config.get_model({}, "", device=torch.device("cpu"))

    model = make(torch.float32, None)
    _init(model.diffusion_model, seed)
    _unit_norms(model.diffusion_model)
    if family == "sd3":  # a checkpoint's buffer, left empty: SD3's fixed 2-D sin-cos table
        from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

        table = model.diffusion_model.pos_embed
        side = SD3_CONFIG["pos_embed_max_size"]
        table.copy_(torch.from_numpy(get_2d_sincos_pos_embed(table.shape[-1], side)).reshape(table.shape))
    if weight_dtype is not None:
        # as comfy.sd.load_diffusion_model_state_dict: weights stored in weight_dtype, computed in
        # the manual-cast dtype, loaded from the (here: random float32) state dict
        state = model.diffusion_model.state_dict()
        manual_cast = mm.unet_manual_cast(
            weight_dtype, torch.device("cpu"), model.model_config.supported_inference_dtypes
        )
        model = make(weight_dtype, manual_cast)
        model.load_model_weights({f"model.diffusion_model.{k}": v for k, v in state.items()}, "model.diffusion_model.")
    return comfy.model_patcher.ModelPatcher(
        model, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device()
    )


def _t5_encoder(width: int, heads: int, dtype, model_options: dict):
    """ComfyUI's T5XXLModel with a tiny config (T5XXLModel itself reads the full-size json)."""
    import comfy.sd1_clip
    import comfy.text_encoders.t5

    return comfy.sd1_clip.SDClipModel(
        layer="last",
        dtype=dtype,
        textmodel_json_config=_t5_config(width, heads),
        special_tokens={"end": 1, "pad": 0},
        model_class=comfy.text_encoders.t5.T5,
        enable_attention_masks=False,
        return_attention_masks=False,
        model_options={**model_options, "model_name": "t5xxl"},
    )


def _clip(dtype, model_options: dict, name: str, penultimate: bool):
    """A tiny CLIP-L (``name`` "clip_l": pooled output unprojected) or CLIP-G ("clip_g": projected
    pooled output, pad id 0), read at the last layer or, ``penultimate``, the one before it
    without the final norm (SD3's settings; Flux reads CLIP-L's last layer)."""
    import comfy.sd1_clip

    is_g = name == "clip_g"
    extra = {"special_tokens": {"start": 49406, "end": 49407, "pad": 0}} if is_g else {}
    return comfy.sd1_clip.SDClipModel(
        layer="hidden" if penultimate else "last",
        layer_idx=-2 if penultimate else None,
        dtype=dtype,
        textmodel_json_config=_text_config(WIDTH_G, WIDTH_G) if is_g else _text_config(WIDTH_L),
        layer_norm_hidden_state=not penultimate,
        return_projected_pooled=is_g,
        model_options={**model_options, "model_name": name},
        **extra,
    )


def _clip_classes(family: str):
    """(tokenizer class, text-encoder class): ComfyUI's Flux (CLIP-L + T5) or SD3 (CLIP-L + CLIP-G
    + T5) classes with the tiny encoders. Flux reads CLIP-L's last layer, SD3 both CLIPs'
    penultimate (their classes' settings)."""
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd3_clip

    flux = family == "flux"
    if flux:
        tokenizer, encoder = comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.FluxClipModel
        widths = {"clip_l": WIDTH_L, "t5xxl": FLUX_T5}
    else:
        tokenizer, encoder = comfy.text_encoders.sd3_clip.SD3Tokenizer, comfy.text_encoders.sd3_clip.SD3ClipModel
        widths = {"clip_l": WIDTH_L, "clip_g": WIDTH_G, "t5xxl": SD3_T5}
    # SD3's T5 is 4096 wide (see SD3_T5); bfloat16 keeps its 32128 x 4096 table at 260 MB
    t5_dtype = None if flux else torch.bfloat16

    class TinyTokenizer(tokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
            for name, width in widths.items():
                getattr(self, name).embedding_size = width

    class TinyClipModel(encoder):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            nn.Module.__init__(self)
            for name in widths:
                if name != "t5xxl":
                    setattr(self, name, _clip(dtype, model_options, name, penultimate=not flux))
            self.t5xxl = _t5_encoder(widths["t5xxl"], 4 if flux else 2, t5_dtype or dtype, model_options)
            self.t5_attention_mask = False
            self.dtypes = {dtype, t5_dtype or dtype}

    return TinyTokenizer, TinyClipModel


def build_clip(family: str, seed: int = 0, embedding_directory=None):
    clip = clip_of(*_clip_classes(family), seed, embedding_directory)
    _unit_norms(clip.cond_stage_model)
    return clip


def build_all(family: str, seed: int = 0, embedding_directory=None, weight_dtype: torch.dtype | None = None):
    """(MODEL, CLIP, VAE) of the tiny Flux- (``"flux"``) or SD3.5- (``"sd3"``) architecture model."""
    return (
        build_model(family, seed, weight_dtype),
        build_clip(family, seed, embedding_directory),
        build_vae(seed, LATENT_CHANNELS),
    )
