"""What a ComfyUI MODEL, CLIP and VAE hold with no public call to read it: the diffusion model,
prediction type, latent format, dtype and device, transformer_options, patchers, the VAE's scale;
and what training and the TinyWorld loader set on them (ordinary weights, checkpointed blocks,
how ComfyUI rebuilds a model, ComfyUI's training switch)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModelParts",
    "NATIVE_RESOLUTION_ATTR",
    "base_unet",
    "checkpointed_blocks",
    "comfy_training_mode",
    "latents_in",
    "latents_out",
    "model_parts",
    "ordinary_weights",
    "patchers",
    "set_reloader",
    "set_vae_scale_factor",
    "transformer_options",
    "vae_scale_factor",
]


@contextmanager
def ordinary_weights(*modules: nn.Module) -> Iterator[None]:
    """Swap inference-mode parameters/buffers of ``modules`` for ordinary clones.

    Relies on: ComfyUI's loaders running under ``torch.inference_mode()``, so every weight
    they made is an inference tensor, which autograd cannot save for backward. Values are
    unchanged, so nothing is restored on exit; the clones simply stay.
    """
    with torch.inference_mode(False):
        for module in modules:
            for sub in module.modules():
                for name, param in list(sub._parameters.items()):
                    if param is not None and param.is_inference():
                        sub._parameters[name] = nn.Parameter(param.clone(), requires_grad=False)
                    elif param is not None:
                        param.requires_grad_(False)
                for name, buf in list(sub._buffers.items()):
                    if buf is not None and buf.is_inference():
                        sub._buffers[name] = buf.clone()
    yield


def checkpointed_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet modules whose activations gradient checkpointing recomputes: every transformer
    block and residual block (where activation memory goes at high resolution).

    Relies on: ``comfy.ldm.modules.attention.BasicTransformerBlock``,
    ``comfy.ldm.modules.diffusionmodules.openaimodel.ResBlock`` and, in a diffusion transformer,
    ``comfy.ldm.flux.layers.DoubleStreamBlock`` / ``SingleStreamBlock`` and ``mmdit.JointBlock``.
    """
    from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.modules.diffusionmodules.mmdit import JointBlock
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    kinds = (BasicTransformerBlock, ResBlock, DoubleStreamBlock, SingleStreamBlock, JointBlock)
    return [m for m in unet.modules() if isinstance(m, kinds)]


def set_reloader(obj, factory, *args) -> None:
    """Tell ComfyUI how to build this model afresh, as its own loaders do for theirs.

    Relies on: ``ModelPatcher.cached_patcher_init`` = ``(factory, args)``, where
    ``factory(*args, disable_dynamic=True)`` returns a new ModelPatcher with the same weights
    (``obj``: a MODEL, or a CLIP or VAE, whose patcher it is set on).
    ComfyUI 0.33 calls it for ``clone(force_deepcopy=True)`` (TrainLoraNode),
    ``clone(disable_dynamic=True)`` and multi-GPU copies, and refuses those without it; 0.3.64
    has no such attribute and never reads it.
    """
    patchers(obj)[0].cached_patcher_init = (factory, tuple(args))


@dataclass(frozen=True)
class ModelParts:
    """What the pack reads off a MODEL (a ModelPatcher) for which ComfyUI has no public call."""

    base_model: Any
    """The ``comfy.model_base.BaseModel`` (SDXL's adm, the latent format live there)."""
    unet: nn.Module
    prediction: str
    """"epsilon", "v_prediction", or ComfyUI's ModelType name in lower case (flow models...)."""
    is_sdxl: bool
    latent_channels: int
    dtype: torch.dtype
    """The dtype the UNet computes in (its manual-cast dtype when it has one)."""
    device: torch.device
    """Where ComfyUI loads the model to compute."""
    tagged_resolution: int | None
    """The native side in pixels a loader tagged the model with (``NATIVE_RESOLUTION_ATTR``)."""


#: attribute of a MODEL's BaseModel giving the side in pixels it was trained at (TextLoc Train
#: caps its resolution by it; the TinyWorld loader sets it); ComfyUI's model classes carry no such number
NATIVE_RESOLUTION_ATTR = "textloc_native_resolution"


def model_parts(model) -> ModelParts:
    """A MODEL's UNet, prediction type, latent channels, compute dtype and device.

    Relies on: ``ModelPatcher.model`` (a ``comfy.model_base.BaseModel``: ``diffusion_model``,
    ``model_type`` a ``comfy.model_base.ModelType``, ``latent_format.latent_channels``,
    ``get_dtype()``, ``manual_cast_dtype``), ``ModelPatcher.load_device`` and
    ``comfy.model_base.SDXL``.
    """
    import comfy.model_base

    base = model.model
    types = {comfy.model_base.ModelType.EPS: "epsilon", comfy.model_base.ModelType.V_PREDICTION: "v_prediction"}
    dtype = base.manual_cast_dtype if base.manual_cast_dtype is not None else base.get_dtype()
    tagged = getattr(base, NATIVE_RESOLUTION_ATTR, None)
    return ModelParts(
        base_model=base,
        unet=base_unet(base),
        prediction=types.get(base.model_type, base.model_type.name.lower()),
        is_sdxl=isinstance(base, comfy.model_base.SDXL),
        latent_channels=int(base.latent_format.latent_channels),
        dtype=dtype,
        device=model.load_device,
        tagged_resolution=int(tagged) if tagged else None,
    )


def base_unet(base_model) -> nn.Module:
    """The UNet of a ``comfy.model_base.BaseModel``. Relies on: its ``diffusion_model``."""
    return base_model.diffusion_model


def latents_in(parts: ModelParts, latents: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the scaled latents the UNet sees (SD1's x 0.18215...).

    Relies on: ``BaseModel.latent_format.process_in``."""
    return parts.base_model.latent_format.process_in(latents)


def latents_out(parts: ModelParts, latents: torch.Tensor) -> torch.Tensor:
    """The UNet's latents -> what the VAE decodes. Relies on: ``latent_format.process_out``."""
    return parts.base_model.latent_format.process_out(latents)


def transformer_options(model) -> dict:
    """A MODEL's transformer_options (other packs' patches, our routing), as its UNet gets them.

    Relies on: ``ModelPatcher.model_options["transformer_options"]``."""
    return model.model_options.get("transformer_options", {})


def patchers(*objects) -> list:
    """The ModelPatchers behind MODEL, CLIP and VAE objects (a MODEL is one), for
    ``load_models_gpu``. Relies on: ``comfy.sd.CLIP.patcher`` / ``comfy.sd.VAE.patcher``."""
    return [getattr(o, "patcher", o) for o in objects]


def vae_scale_factor(vae) -> int:
    """Pixels per latent cell of a VAE. Relies on: ``comfy.sd.VAE.spacial_compression_encode()``; none: SD's 8."""
    return int(vae.spacial_compression_encode()) if vae is not None else 8


def set_vae_scale_factor(vae, factor: int) -> None:
    """Set a VAE's pixels per latent cell, for a VAE ComfyUI builds without detecting it.

    Relies on: ``comfy.sd.VAE.downscale_ratio`` / ``upscale_ratio``."""
    vae.downscale_ratio = factor
    vae.upscale_ratio = factor


@contextmanager
def comfy_training_mode() -> Iterator[None]:
    """ComfyUI's own training switch (its TrainLoraNode's): kernels without a backward (0.33's
    fused rotary embedding) fall back to differentiable ones. Relies on:
    ``comfy.model_management.in_training`` (0.33.0 on; 0.3.64 reads none, so setting it is inert)."""
    import comfy.model_management as mm

    before, mm.in_training = getattr(mm, "in_training", False), True
    try:
        yield
    finally:
        mm.in_training = before
