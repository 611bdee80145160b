"""Which base model is this: the fingerprint of its attn2 K/V weights, under canonical names.

Adapters record the fingerprint of the model they were trained on, the prior cache is keyed
by it, and Apply compares it; every backend (diffusers, ComfyUI) computes it here, so one
checkpoint has one fingerprint everywhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

from ..attention.cross_attention import find_cross_attention

PROJECTIONS = ("to_k", "to_v")
"""The attn2 projections an adapter changes."""


def canonical_layers(denoiser) -> dict[str, torch.nn.Module]:
    """A denoiser backend's attn2 modules under their canonical (LDM / ComfyUI) layer names."""
    return {denoiser.canonical_layer_name(n): m for n, m in find_cross_attention(denoiser.unet).items()}


def kv_projections(denoiser) -> dict[str, torch.nn.Module]:
    """The text K/V linear layers an adapter changes, by canonical key, in forward order.

    A UNet's are its attn2 ``to_k``/``to_v`` (``"<canonical attn2>.to_k"``); a backend whose
    text K/V live elsewhere (a diffusion transformer's text stream) names them itself with
    ``text_kv_projections()``, keyed the same way by block."""
    own = getattr(denoiser, "text_kv_projections", None)
    if own is not None:
        return own()
    return {
        f"{name}.{proj}": getattr(attn, proj)
        for name, attn in canonical_layers(denoiser).items()
        for proj in PROJECTIONS
    }


def kv_weights(denoiser) -> dict[str, torch.Tensor]:
    """``{"<canonical>.to_k": weight, ...}`` of a denoiser backend's text K/V layers."""
    return {key: linear.weight for key, linear in kv_projections(denoiser).items()}


def kv_weights_of(layers: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """``{"<canonical>.to_k": weight, ...}`` from canonical layer name -> attn2 module."""
    return {f"{name}.{proj}": getattr(attn, proj).weight for name, attn in layers.items() for proj in PROJECTIONS}


FINGERPRINT_DTYPE = torch.float16
"""The dtype K/V weights are hashed in (see ``base_model_fingerprint``)."""


def base_model_fingerprint(kv_weights: Mapping[str, torch.Tensor]) -> str:
    """The base-model fingerprint: a short sha256 of the attn2 K/V weights keyed
    ``"<canonical layer>.to_k"`` / ``".to_v"``, in sorted key order.

    Every backend (diffusers, ComfyUI) computes it here, so one checkpoint has one
    fingerprint everywhere. The weights are hashed as float16, whatever dtype the model was
    loaded in: an fp16 checkpoint loaded in fp32 (or fp16) hashes its exact stored values, and
    an fp32 checkpoint loaded in fp16 hashes the same values as when it is loaded in fp32
    (fp32 -> fp16 rounds to nearest either way), so the dtype a user picks in a loader never
    reads as "another base model".

    Residual edge case: bf16 (and fp8) keep fewer mantissa bits than fp16, so an fp32 or fp16
    checkpoint *loaded in* bf16 has already lost bits and hashes differently from the same
    checkpoint loaded in fp16/fp32. A bf16-stored checkpoint is consistent in any dtype
    (bf16 -> fp32 is exact, and bf16 -> fp16 rounds as bf16 -> fp32 -> fp16 does). Where a
    user hits the edge case, ``allow_base_mismatch`` overrides the check.
    """
    digest = hashlib.sha256()
    for key in sorted(kv_weights):
        # cast on the weight's own device first: half the bytes to copy off a GPU
        weight = kv_weights[key].detach().to(FINGERPRINT_DTYPE).cpu().contiguous()
        digest.update(f"{key}{tuple(weight.shape)}".encode())
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()[:16]
