"""The Python API for researchers: load a model, train concepts, save, apply, generate with maps.

No ComfyUI needed; everything runs on a diffusers Stable Diffusion model::

    from textloc_core import api
    bundle = api.load_model("/models/stable-diffusion-v1-5")          # local folder or .safetensors
    concepts = api.read_concepts("/data/bucket+doll")                  # paper layout, folder or manifest
    result = api.train(bundle, concepts, api.TrainConfig(guidance="hard", steps=800))
    adapter = api.make_adapter(result, concepts, bundle)
    api.save_adapter(adapter, "bucket_doll.safetensors")
    out = api.generate(bundle, "a <bucket> bucket in the desert", adapters=[adapter], maps_for=["<bucket>"])
    out.images, out.token_maps["<bucket>"]                             # (B,3,H,W), (B,h,w)

The attention loss's weight is calibrated by default: before the first step it is set so that
the attention gradient is ``attention_fraction`` (1) x the denoising gradient, averaged over the
first ``calibration_batches`` (8) batches; ``TrainConfig(attention_weight_mode="fixed",
attention_weight=1.0)`` is the paper's fixed weight instead (``result.effective_attention_weight`` is the weight
used; docs/api.md, "The training step").

``generate`` captures the named tokens' cross-attention maps while sampling (averaged over
steps and over the ``map_levels`` resolutions), the same maps the trainer guides.

This module is the stable facade: every name below keeps working whatever module it lives
in (docs/api.md); the implementations live in the role packages of textloc_core.
"""

from __future__ import annotations

from .adapters.adapter import load_adapter, save_adapter
from .adapters.composition import applied
from .backends.diffusers_backend import load_model
from .data.readers import read_concepts
from .evaluation.localization import map_mask_error
from .sampling.generation import Generation, generate
from .stop import Cancelled
from .training.config import TrainConfig
from .training.loop import train
from .training.result import StepReport, TrainResult, make_adapter

__all__ = [
    "Cancelled",
    "Generation",
    "TrainConfig",
    "StepReport",
    "TrainResult",
    "applied",
    "generate",
    "load_adapter",
    "load_model",
    "make_adapter",
    "map_mask_error",
    "read_concepts",
    "save_adapter",
    "train",
]
