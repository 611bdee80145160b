"""The Python API for researchers: load a model, train concepts, save, apply, generate with maps.

No ComfyUI needed; everything runs on a diffusers Stable Diffusion model::

    from textloc_core import api
    bundle = api.load_model("/models/stable-diffusion-v1-5")          # local folder or .safetensors
    concepts = api.read_concepts("/data/bucket+doll")                  # paper layout, folder or manifest
    result = api.train(bundle, concepts, api.TrainConfig(method="hard", steps=800))
    adapter = api.make_adapter(result, concepts, bundle)
    api.save_adapter(adapter, "bucket_doll.safetensors")
    out = api.generate(bundle, "a <bucket> bucket in the desert", adapters=[adapter], maps_for=["<bucket>"])
    out.images, out.token_maps["<bucket>"]                             # (B,3,H,W), (B,h,w)

``generate`` captures the named tokens' cross-attention maps while sampling (averaged over
steps and over the ``map_levels`` resolutions), the same maps the trainer guides.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .adapter import Adapter, AdapterMetadata, architecture_signature, kv_weights_of, load_adapter, save_adapter
from .attention import AttentionRouter, KVDeltaInjector, find_cross_attention
from .backends.base import ModelBundle
from .concepts import ConceptSet
from .config import TrainConfig
from .maps import choose_layers, slot_layout, token_maps
from .readers import read_concepts
from .schedule import ddim_sample
from .trainer import StepReport, TrainResult, attn2_query_counts, map_mask_error, train

__all__ = [
    "Generation", "TrainConfig", "StepReport", "TrainResult", "applied", "generate", "load_adapter", "load_model",
    "make_adapter", "map_mask_error", "read_concepts", "save_adapter", "train",
]


def load_model(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelBundle:
    """A ``ModelBundle`` from a local diffusers folder or a single-file SD checkpoint.

    Never downloads: a folder must hold the pipeline, a file must be a full checkpoint.
    """
    from diffusers import StableDiffusionPipeline

    from .backends.diffusers_backend import bundle_from_diffusers

    path = Path(path)
    if path.is_dir():
        pipe = StableDiffusionPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True, safety_checker=None)
    elif path.is_file():
        pipe = StableDiffusionPipeline.from_single_file(str(path), dtype=dtype, local_files_only=True)
    else:
        raise ValueError(f"model path {path} does not exist: give a diffusers folder or a .safetensors checkpoint")
    pipe.to(device)
    return bundle_from_diffusers(pipe)


def _canonical_layers(bundle: ModelBundle) -> dict[str, torch.nn.Module]:
    denoiser = bundle.denoiser
    return {denoiser.canonical_layer_name(n): m for n, m in find_cross_attention(denoiser.unet).items()}


def make_adapter(result: TrainResult, concept_set: ConceptSet, bundle: ModelBundle) -> Adapter:
    """The adapter (deltas, tokens, metadata) of a training result, ready for ``save_adapter``."""
    config = result.config or TrainConfig()
    metadata = AdapterMetadata(
        base_fingerprint=result.fingerprint or bundle.fingerprint,
        architecture=architecture_signature(kv_weights_of(_canonical_layers(bundle))),
        concepts=[
            {"name": c.name, "token": c.token, "class_word": c.class_word, "init_word": c.init_word or ""}
            for c in concept_set.concepts
        ],
        method=config.method,
        train_config=config.to_json(),
        steps=result.steps_done,
        data_hashes={"concept_set": concept_set.data_hash()} if hasattr(concept_set, "data_hash") else {},
    )
    return Adapter(dict(result.kv_deltas), dict(result.token_embeddings), metadata)


@contextmanager
def applied(
    bundle: ModelBundle, adapters: Sequence[Adapter | TrainResult], strengths: Sequence[float] | None = None
) -> Iterator[dict[str, torch.Tensor]]:
    """While open, the UNet computes with ``W0 + sum strength_i * delta_i`` on every attn2 K/V
    (through forward hooks; the weights themselves are never written), and yields the token
    embeddings to pass to ``bundle.text.encode``. A token defined twice is an error."""
    if not adapters:  # the base model: nothing to hook
        yield {}
        return
    strengths = list(strengths) if strengths is not None else [1.0] * len(adapters)
    if len(strengths) != len(adapters):
        raise ValueError(f"strengths: {len(strengths)} values for {len(adapters)} adapters")
    denoiser = bundle.denoiser
    by_canonical = {
        f"{denoiser.canonical_layer_name(n)}.{p}": f"{n}.{p}" for n in find_cross_attention(denoiser.unet) for p in ("to_k", "to_v")
    }
    total: dict[str, torch.Tensor] = {}
    embeddings: dict[str, torch.Tensor] = {}
    for index, (adapter, strength) in enumerate(zip(adapters, strengths)):
        for key, delta in adapter.kv_deltas.items():
            if key not in by_canonical:
                raise ValueError(f"adapter {index + 1}: layer {key!r} does not exist in this model; it was trained on another architecture")
            local = by_canonical[key]
            total[local] = total.get(local, 0) + delta.float() * float(strength)
        for token, vector in adapter.token_embeddings.items():
            if token in embeddings and not torch.equal(embeddings[token], vector):
                raise ValueError(f"token {token!r} is defined by two adapters with different embeddings")
            embeddings[token] = vector
    with torch.inference_mode(False), KVDeltaInjector(denoiser.unet) as injector:
        injector.load(total)
        for delta in injector.deltas.values():
            delta.requires_grad_(False)
        yield {t: v.to(bundle.device) for t, v in embeddings.items()}


@dataclass
class Generation:
    """What ``generate`` returns."""

    images: torch.Tensor
    """(B, 3, H, W) in [0, 1]."""
    latents: torch.Tensor
    token_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    """Token -> (B, h, w) attention map in [0, 1], averaged over sampling steps."""


def generate(
    bundle: ModelBundle,
    prompt: str,
    *,
    adapters: Sequence[Adapter | TrainResult] = (),
    strengths: Sequence[float] | None = None,
    negative_prompt: str = "",
    num_images: int = 1,
    steps: int = 30,
    guidance_scale: float = 7.5,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    maps_for: Sequence[str] = (),
    map_levels: tuple[int, ...] | str = "all_but_finest",
) -> Generation:
    """Sample ``num_images`` images of ``prompt`` (DDIM + CFG) with ``adapters`` applied, and the
    cross-attention maps of the identifier tokens in ``maps_for``."""
    denoiser = bundle.denoiser
    if size is None:
        side = int(getattr(getattr(denoiser.unet, "config", None), "sample_size", 64)) * denoiser.vae_scale_factor
        size = (side, side)
    latent_hw = (size[0] // denoiser.vae_scale_factor, size[1] // denoiser.vae_scale_factor)
    with torch.no_grad(), applied(bundle, list(adapters), strengths) as embeddings:
        unknown = [t for t in maps_for if t not in embeddings]
        if unknown:
            raise ValueError(f"maps_for: {unknown} are not identifier tokens of the applied adapters {sorted(embeddings)}")
        encoded = bundle.text.encode([prompt, negative_prompt], embeddings)
        missing = [t for t in maps_for if t not in encoded.token_positions[0]]
        if missing:
            raise ValueError(f"maps_for: {missing} do not occur in the prompt {prompt!r}")
        cond = encoded.context[:1].expand(num_images, -1, -1)
        uncond = encoded.context[1:].expand(num_images, -1, -1)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((num_images, denoiser.latent_channels, *latent_hw), generator=generator).to(bundle.device)
        router, on_maps, summed = None, None, {}
        if maps_for:
            use_cfg = guidance_scale != 1.0
            layout = slot_layout([{}] * num_images * use_cfg + [encoded.token_positions[0]] * num_images, list(maps_for))
            # on the device once: token_maps would otherwise copy the weights host-to-device every
            # step, and that copy synchronises the GPU, stalling the sampling loop (perf, issue 7)
            layout.weights = layout.weights.to(bundle.device)
            # Only the layers of the chosen levels are routed; the rest keep fused attention.
            layers = choose_layers(attn2_query_counts(denoiser, noise, cond, bundle.compute_dtype), map_levels)
            router = AttentionRouter(layers=layers, token_slots=layout.slots.to(bundle.device), keep_grad=False)
            rows = slice(num_images if use_cfg else 0, None)

            def on_maps(_step, captured):
                maps = token_maps(captured, layout, latent_hw, rows=rows)
                summed["maps"] = summed.get("maps", 0) + maps
                summed["count"] = summed.get("count", 0) + 1

        dtype = bundle.compute_dtype
        latents = ddim_sample(
            denoiser, cond.to(dtype), uncond.to(dtype), noise, steps=steps, guidance_scale=guidance_scale,
            router=router, on_maps=on_maps,
        )
        images = denoiser.decode_latents(latents)
    result = Generation(images=images.float().cpu(), latents=latents.float().cpu())
    if maps_for:
        mean = (summed["maps"] / summed["count"]).cpu()
        result.token_maps = {token: mean[:, k] for k, token in enumerate(maps_for)}
    return result
