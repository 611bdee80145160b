"""What Apply Adapter needs beyond a UNet's attn2 layers: the text K/V of a diffusion
transformer (Flux.1, SD3 / SD3.5), which ComfyUI keeps as thirds of one fused ``qkv`` weight.

``model_fingerprint_and_weights`` gives the base fingerprint and canonical K/V weights of any
MODEL the pack trains: a UNet's through ``comfy_backend``, a diffusion transformer's from the
K and V rows of each block's fused text ``qkv`` (``formats.text_kv_from_fused``), keyed
``double_blocks.i.txt_attn.to_k`` / ``joint_blocks.i.context_block.attn.to_v`` as the diffusers
backend keys them, so both backends hash the same weights.
"""

from __future__ import annotations

import torch

from ..textloc_core.adapters.formats import COMFY_UNET_PREFIX, text_kv_from_fused
from ..textloc_core.backends.fingerprint import base_model_fingerprint
from .comfy_backend import base_fingerprint_and_weights


def model_fingerprint_and_weights(model) -> tuple[str, dict[str, torch.Tensor]]:
    """(fingerprint, canonical K/V weights) of a MODEL's *base* weights: ``get_key_patches`` (the
    call ComfyUI's model-merging nodes use) gives each weight as its base value plus patches.
    A MODEL without fused text ``qkv`` weights is a UNet (``comfy_backend``'s answer, or its
    error naming the models the pack trains)."""
    bases = {}
    for key, patches in model.get_key_patches(COMFY_UNET_PREFIX).items():
        base = patches[0]
        bases[key[len(COMFY_UNET_PREFIX) :]] = base[0] if isinstance(base, tuple) else base
    weights = text_kv_from_fused(bases)
    if not weights:
        return base_fingerprint_and_weights(model)
    return base_model_fingerprint(weights), weights
