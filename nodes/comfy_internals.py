"""Every place where textloc relies on a part of ComfyUI that has no public surface.

Everything else in nodes/ uses public surfaces only: the V3 node API, ModelPatcher's clone /
setters / ``get_key_patches`` / ``add_patches``, and the CLIP object's ``tokenize`` /
``encode_from_tokens``. Training needs a few things those cannot give: gradients through the
text encoder, the embedding table to start a new token from, and a direct UNet call in DDPM
time. Each is one function here, with what it relies on. The ComfyUI names they use are in
the ``SURFACE`` list of tests/integration/test_comfy_surface.py, checked on every supported
ComfyUI version (0.3.64 and 0.33.0 read the same in all these places); the integration tests
exercise the functions themselves on each.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

# The token-dict keys of CLIP-family text encoders, in the order an adapter stores their
# slices of a token's vector (SDXL: clip_l's 768 values, then clip_g's 1280).
CLIP_KEYS = ("l", "g", "h")


def text_encoder_tables(clip) -> dict[str, torch.Tensor]:
    """Input-embedding table of each CLIP-family text encoder of a ComfyUI CLIP, by token key.

    Relies on: the token dict key ``k`` ("l", "g") belonging to ``clip.cond_stage_model.clip_k``
    (``SD1ClipModel`` / ``SDXLClipModel`` name their encoders so), and that encoder's
    ``transformer.get_input_embeddings()`` being the table token ids index.
    """
    tables = {}
    for key in CLIP_KEYS:
        encoder = getattr(clip.cond_stage_model, f"clip_{key}", None)
        transformer = getattr(encoder, "transformer", None)
        if transformer is not None and hasattr(transformer, "get_input_embeddings"):
            tables[key] = transformer.get_input_embeddings().weight
    if not tables:
        raise ValueError(
            "clip: this text encoder is not a CLIP-family encoder (SD1.x/SD2.x/SDXL); Textual "
            "Localization needs one to place identifier tokens"
        )
    return tables


def _clip_layer_forward(layer, x, mask=None, optimized_attention=None):
    """``comfy.clip_model.CLIPLayer.forward`` without its in-place residual adds (same values).

    ComfyUI writes ``x += ...``, which overwrites the tensor LayerNorm saved for backward;
    gradients to an injected token embedding then fail.
    """
    x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
    return x + layer.mlp(layer.layer_norm2(x))


@contextmanager
def differentiable_text_encoder(clip_model: nn.Module) -> Iterator[None]:
    """Let autograd pass through every ``CLIPLayer`` of ``clip_model`` while the context is open.

    Relies on: ``comfy.clip_model.CLIPLayer`` having ``layer_norm1``, ``self_attn``,
    ``layer_norm2``, ``mlp`` and ``forward(x, mask, optimized_attention)``. Tensor entries of a
    token list are concatenated into the input embeddings (``SDClipModel.process_tokens``), so
    with this the context is differentiable with respect to them.
    """
    import comfy.clip_model

    layers = [m for m in clip_model.modules() if isinstance(m, comfy.clip_model.CLIPLayer)]
    for layer in layers:
        layer.forward = functools.partial(_clip_layer_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)


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


def unet_forward(unet: nn.Module, noisy_latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 transformer_options: dict, y: torch.Tensor | None = None) -> torch.Tensor:
    """One call of a ComfyUI UNet in DDPM time (integer timesteps, unscaled latents).

    Relies on: ``model.model.diffusion_model`` (``comfy.ldm.modules.diffusionmodules.
    openaimodel.UNetModel``) taking ``(x, timesteps=, context=, y=, transformer_options=)``,
    ``y`` being the adm vector of UNets with ``num_classes`` (SDXL). ``BaseModel.apply_model``
    would add k-diffusion sigma scaling the DDPM loss does not use. The options dict is copied
    because the UNet writes block bookkeeping into it.
    """
    extra = {} if y is None else {"y": y}
    return unet(noisy_latents, timesteps=timesteps, context=context, transformer_options=dict(transformer_options), **extra)


def size_conditioning(base_model, pooled: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SDXL's adm vector ``y`` (B, adm) from the pooled text embedding and the image size in
    pixels, uncropped, as ComfyUI's sampler builds it for a latent of that size.

    Relies on: ``comfy.model_base.SDXL.encode_adm(pooled_output=, width=, height=, crop_w=,
    crop_h=, target_width=, target_height=)`` (pooled, then 256-wide Fourier features of the
    six sizes). It is differentiable with respect to ``pooled``.
    """
    adm = base_model.encode_adm(
        pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0, target_width=width, target_height=height,
    )
    return adm.to(pooled.device, pooled.dtype)


def checkpointed_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet modules whose activations gradient checkpointing recomputes: every transformer
    block and residual block (where activation memory goes at high resolution).

    Relies on: ``comfy.ldm.modules.attention.BasicTransformerBlock`` and
    ``comfy.ldm.modules.diffusionmodules.openaimodel.ResBlock``.
    """
    from comfy.ldm.modules.attention import BasicTransformerBlock
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    return [m for m in unet.modules() if isinstance(m, (BasicTransformerBlock, ResBlock))]


def set_reloader(patcher, factory, *args) -> None:
    """Tell ComfyUI how to build this model afresh, as its own loaders do for theirs.

    Relies on: ``ModelPatcher.cached_patcher_init`` = ``(factory, args)``, where
    ``factory(*args, disable_dynamic=True)`` returns a new ModelPatcher with the same weights.
    ComfyUI 0.33 calls it for ``clone(force_deepcopy=True)`` (TrainLoraNode),
    ``clone(disable_dynamic=True)`` and multi-GPU copies, and refuses those without it; 0.3.64
    has no such attribute and never reads it.
    """
    patcher.cached_patcher_init = (factory, tuple(args))
