"""Where the identifier tokens look: their cross-attention maps on images with known masks.

* ``attention_on_images``: the tokens' maps on GIVEN images (noised at fixed timesteps, one
  UNet forward each, adapters applied), to compare with known masks by
  ``metrics.attention_iou``. Generated images have no ground-truth mask; images with exact
  masks do, which makes this the clean localization measure: does the token look at its
  object, or at the object that stood next to it in training?
* ``map_mask_error``: the hard-guidance error (map - mask)^2 of a training result on its own
  training set, through the trainer's own forward (``training.step.losses``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..adapters.composition import applied
from ..attention.cross_attention import AttentionRouter
from ..attention.maps import choose_layers, slot_layout, token_maps
from ..backends.base import ModelBundle
from ..data.concepts import ConceptSet
from ..sampling import schedule
from ..training.config import TrainConfig
from ..training.result import TrainResult
from ..training.setup import setup
from ..training.step import losses


def attention_on_images(
    bundle: ModelBundle,
    adapters: Sequence,
    images: torch.Tensor,
    prompts: Sequence[str],
    tokens: Sequence[str],
    *,
    timesteps: Sequence[int] = (200, 500, 800),
    map_levels: tuple[int, ...] | str = "all",
    seed: int = 0,
    batch_size: int = 16,
) -> torch.Tensor:
    """(B, K, h, w) maps of ``tokens`` on ``images`` (B, 3, H, W) in [0, 1], prompt i for image i.

    Each image is noised at each of ``timesteps`` with seeded noise, denoised once with the
    adapters applied, and the captured maps (min-max normalised per resolution, resolutions
    chosen by ``map_levels``) are averaged over timesteps. A token absent from a prompt gets
    a zero map for that image.
    """
    if len(prompts) != len(images):
        raise ValueError(f"prompts: {len(prompts)} prompts for {len(images)} images; give one per image")
    denoiser = bundle.denoiser
    out = []
    with torch.no_grad(), applied(bundle, list(adapters)) as embeddings:
        missing = [t for t in tokens if t not in embeddings]
        if missing:
            raise ValueError(
                f"tokens: {missing} are not identifier tokens of the applied adapters {sorted(embeddings)}"
            )
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(bundle.device)
            encoded = bundle.text.encode(list(prompts[start : start + batch_size]), embeddings)
            latents = denoiser.encode_images(chunk).float()
            layout = slot_layout(encoded.token_positions, list(tokens))
            router = AttentionRouter(layers=None, token_slots=layout.slots.to(bundle.device), keep_grad=False)
            summed = 0
            for t in timesteps:
                generator = torch.Generator().manual_seed(seed * 1000 + int(t) + start)
                noise = torch.randn(latents.shape, generator=generator).to(latents.device)
                t_batch = torch.full((len(latents),), int(t), dtype=torch.long, device=latents.device)
                noisy, _ = schedule.noised_and_target(denoiser, latents, noise, t_batch)
                with denoiser.route_attention(router):
                    denoiser.predict(
                        noisy.to(bundle.compute_dtype),
                        t_batch,
                        encoded.context.to(bundle.compute_dtype),
                        encoded.pooled,
                    )
                layers = choose_layers({m.layer: m.probs.shape[1] for m in router.captured}, map_levels)
                chosen = [m for m in router.captured if m.layer in layers]
                maps = token_maps(chosen, layout, tuple(latents.shape[-2:]))
                router.clear()
                summed = summed + maps * layout.present[..., None, None].to(maps)
            out.append((summed / len(timesteps)).cpu())
    return torch.cat(out)


def map_mask_error(
    bundle: ModelBundle,
    concept_set: ConceptSet,
    config: TrainConfig,
    result: TrainResult | None = None,
    *,
    timesteps: tuple[int, ...] = (200, 500, 800),
    seed: int = 1234,
) -> float:
    """Mean hard-guidance error (map - mask)^2 over every image and present concept, with
    ``result``'s deltas and tokens applied (None: the untrained initial tokens), at fixed
    timesteps and noise, so two results can be compared: how well each token's map sits
    on its mask."""
    probe = replace(config, guidance="hard", attention_weight=1.0, lambda_prior=0.0)
    with torch.inference_mode(False), torch.no_grad():
        run = setup(bundle, concept_set, probe)
        with run.hooks():
            if result is not None:
                run.trainables.load(result.kv_deltas, result.token_embeddings)
            inst = torch.arange(len(run.latents))
            errors = []
            for t in timesteps:
                noise = torch.randn(run.latents.shape, generator=torch.Generator().manual_seed(seed + t))
                terms, _ = losses(run, inst, None, torch.full((len(inst),), t), noise)
                errors.append(float(terms["attention"]))
    return sum(errors) / len(errors)
