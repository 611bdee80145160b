"""Build ComfyUI MODEL / CLIP / VAE objects for the tiny TinyWorld model.

Stock loaders cannot load it: ComfyUI's model detection assumes SD1's 320 channels and
768-wide context. The architecture is fixed in ``textloc_core.tinyworld.model_configs``
(one source of truth for diffusers and ComfyUI), so here we build each part the way
ComfyUI's loaders would, from those configs:

* MODEL: ``comfy.supported_models.SD15`` with the TinyWorld unet_config -> BaseModel ->
  ModelPatcher (the SD1 latent format and eps schedule apply unchanged);
* CLIP: ``comfy.sd.CLIP`` over ``sd1_clip.SD1ClipModel`` with the tiny text config and the
  real CLIP BPE vocabulary, so prompts tokenise exactly like SD1.5's;
* VAE: ``comfy.sd.VAE`` with the tiny ddconfig and a downscale ratio of 4.

Weights come from the shipped TinyWorld files when present (diffusers / transformers
layout, converted to ComfyUI names). When they are absent the networks are initialised
explicitly from ``seed`` (ComfyUI's ops skip torch's default init, so left alone the
weights would be uninitialised memory).
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..textloc_core.tinyworld import model_configs as cfg
from .comfy_internals import (
    NATIVE_RESOLUTION_ATTR,
    base_unet,
    clip_text_transformer,
    patchers,
    set_reloader,
    set_vae_scale_factor,
)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "textloc_core" / "tinyworld" / "weights"
TOKENIZER_DIR = WEIGHTS_DIR / "tokenizer"


def _init_explicitly(module: nn.Module, seed: int) -> None:
    """Deterministic torch-default initialisation for modules built with ComfyUI's ops."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for sub in module.modules():
            for base in (nn.Linear, nn.Conv2d, nn.Conv1d, nn.Conv3d, nn.Embedding, nn.GroupNorm, nn.LayerNorm):
                if isinstance(sub, base):
                    base.reset_parameters(sub)
                    break
    finally:
        torch.random.set_rng_state(generator_state)


def _safetensors(folder: Path) -> dict[str, torch.Tensor] | None:
    """The single safetensors state dict in ``folder`` (None when the folder has none)."""
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    import safetensors.torch

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(safetensors.torch.load_file(str(file), device="cpu"))
    return state


def _unet_state_from_diffusers(diffusers_sd: dict[str, torch.Tensor], unet_config: dict) -> dict[str, torch.Tensor]:
    import comfy.utils

    mapping = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> ldm key (a superset)
    unmapped = sorted(set(diffusers_sd) - set(mapping))
    if unmapped:
        raise ValueError(
            f"TinyWorld unet weights: {len(unmapped)} tensors have no ComfyUI name (e.g. {unmapped[:3]}); re-export the weights"
        )
    # load_state_dict(strict=True) then names any tensor the ComfyUI model still lacks
    return {ldm_key: diffusers_sd[key] for key, ldm_key in mapping.items() if key in diffusers_sd}


def build_model(seed: int = 0, weights_dir: Path | None = WEIGHTS_DIR, disable_dynamic: bool = False):
    """TinyWorld UNet as a ComfyUI ModelPatcher (SD15 class, eps prediction), which ComfyUI can
    rebuild from scratch like a stock loader's (``set_reloader``; ours is never dynamic, so
    ``disable_dynamic`` changes nothing)."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    unet_config = cfg.comfy_unet_config()
    model_config = comfy.supported_models.SD15(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    load_device = mm.get_torch_device()
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    setattr(model, NATIVE_RESOLUTION_ATTR, cfg.IMAGE_SIZE)
    state = _safetensors(weights_dir / "unet") if weights_dir is not None else None
    if state is not None:
        full_config = dict(unet_config)
        full_config.update(cfg.COMFY_UNET_EXTRA)
        base_unet(model).load_state_dict(_unet_state_from_diffusers(state, full_config), strict=True)
    else:
        _init_explicitly(base_unet(model), seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    set_reloader(patcher, build_model, seed, weights_dir)
    return patcher


def build_clip(seed: int = 0, weights_dir: Path | None = WEIGHTS_DIR, embedding_directory=None):
    """TinyWorld text encoder as a ComfyUI CLIP (SD1 tokenizer pipeline, 64-wide hidden state)."""
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base

    text_config = dict(cfg.CLIP_TEXT_CONFIG)
    tokenizer = functools.partial(
        comfy.sd1_clip.SD1Tokenizer,
        tokenizer=functools.partial(
            comfy.sd1_clip.SDTokenizer, tokenizer_path=str(TOKENIZER_DIR), embedding_size=cfg.TEXT_HIDDEN
        ),
    )
    clip_model = functools.partial(
        comfy.sd1_clip.SDClipModel, return_projected_pooled=False, textmodel_json_config=text_config
    )
    target = comfy.supported_models_base.ClipTarget(
        tokenizer, functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=clip_model)
    )
    clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, model_options={"dtype": torch.float32})
    state = _safetensors(weights_dir / "text_encoder") if weights_dir is not None else None
    transformer = clip_text_transformer(clip, "l")
    if state is not None:
        missing, _unexpected = transformer.load_state_dict(state, strict=False)
        # the UNet reads the hidden states only: the pooled projection may be absent; it is then
        # the identity, not the uninitialised memory ComfyUI's ops leave (a rebuilt copy equals it)
        if "text_projection.weight" in missing:
            with torch.no_grad():
                transformer.text_projection.weight.copy_(torch.eye(*transformer.text_projection.weight.shape))
        missing = [k for k in missing if "position_ids" not in k and not k.startswith("text_projection")]
        if missing:
            raise ValueError(f"TinyWorld text encoder weights: missing {missing[:3]}; re-export the weights")
    else:
        _init_explicitly(transformer, seed + 1)
    set_reloader(clip, _clip_patcher, seed, weights_dir, embedding_directory)
    return clip


def _clip_patcher(seed: int, weights_dir: Path | None, embedding_directory, disable_dynamic: bool = False):
    """A fresh TinyWorld CLIP's patcher: what ComfyUI rebuilds a deep copy of the CLIP from."""
    return patchers(build_clip(seed, weights_dir, embedding_directory))[0]


def _vae_state_from_diffusers(state: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL names -> LDM names for a VAE with ``levels`` resolution levels.

    ComfyUI's converter assumes SD's four levels (diffusers up_blocks.i -> LDM up.{3-i});
    with fewer levels the decoder's LDM index must drop by the difference.
    """
    import comfy.diffusers_convert

    converted = comfy.diffusers_convert.convert_vae_state_dict(state)
    shift = 4 - levels
    out = {}
    for key, value in converted.items():
        match = re.match(r"^decoder\.up\.(\d+)\.(.*)$", key)
        out[f"decoder.up.{int(match.group(1)) - shift}.{match.group(2)}" if match else key] = value
    return out


def build_vae(seed: int = 0, weights_dir: Path | None = WEIGHTS_DIR):
    """TinyWorld KL autoencoder as a ComfyUI VAE (64 px <-> 4x16x16)."""
    import comfy.sd

    config = {"params": dict(cfg.COMFY_VAE_CONFIG["params"])}
    state = _safetensors(weights_dir / "vae") if weights_dir is not None else None
    if state is None:
        # Build the autoencoder once to initialise it, then hand ComfyUI its state dict, so the
        # VAE goes through the same path (and checks) as a loaded one.
        from comfy.ldm.models.autoencoder import AutoencoderKL

        with torch.device("cpu"):
            fresh = AutoencoderKL(**config["params"])
        _init_explicitly(fresh, seed + 2)
        state = fresh.state_dict()
    elif "decoder.up_blocks.0.resnets.0.norm1.weight" in state:
        state = _vae_state_from_diffusers(state, len(config["params"]["ddconfig"]["ch_mult"]))
    vae = comfy.sd.VAE(sd=state, config=config)
    set_vae_scale_factor(vae, cfg.VAE_SCALE_FACTOR)
    set_reloader(vae, _vae_patcher, seed, weights_dir)
    return vae


def _vae_patcher(seed: int, weights_dir: Path | None, disable_dynamic: bool = False):
    """A fresh TinyWorld VAE's patcher: what ComfyUI rebuilds a deep copy of the VAE from."""
    return patchers(build_vae(seed, weights_dir))[0]


def weights_present(weights_dir: Path = WEIGHTS_DIR) -> bool:
    return all(
        (weights_dir / part).is_dir() and any((weights_dir / part).glob("*.safetensors"))
        for part in ("unet", "vae", "text_encoder")
    )


def build_all(seed: int = 0, use_weights: bool = True, embedding_directory=None):
    """(MODEL, CLIP, VAE) for TinyWorld; random-initialised from ``seed`` when no weights ship."""
    weights_dir = WEIGHTS_DIR if use_weights and weights_present() else None
    if use_weights and weights_dir is None:
        logging.warning("textloc: TinyWorld weights not found in %s; using randomly initialised networks", WEIGHTS_DIR)
    return (
        build_model(seed, weights_dir),
        build_clip(seed, weights_dir, embedding_directory),
        build_vae(seed, weights_dir),
    )
