"""Evaluation steps shared by the TinyWorld table and the paper-protocol harness.

* ``image_scores``: CLIP-I against references, CLIP-T against the prompts without their
  identifier tokens, KID against the references: one dict per set of generations.
* ``attention_on_images``: the identifier tokens' cross-attention maps on GIVEN images
  (noised at fixed timesteps, one UNet forward each, adapters applied), so they can be
  compared with known masks by ``metrics.attention_iou``. Generated images have no ground-
  truth mask; images with exact masks do, which makes this the clean localization measure:
  does the token look at its object, or at the object that stood next to it in training?
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from . import metrics, schedule
from .api import applied
from .attention import AttentionRouter
from .backends.base import ModelBundle
from .concepts import ConceptSet
from .maps import choose_layers, slot_layout, token_maps


def only_concepts(concept_set: ConceptSet, names: Sequence[str]) -> ConceptSet:
    """The set with only ``names`` learned: other concepts' masks are dropped, so their objects
    stay in the photos, unnamed (the paper's single target in multi-concept images)."""
    unknown = [n for n in names if n not in {c.name for c in concept_set.concepts}]
    if unknown:
        raise ValueError(f"concepts {unknown} are not in this set ({[c.name for c in concept_set.concepts]})")
    images = [
        replace(item, masks={n: m for n, m in item.masks.items() if n in names},
                mask_sources={n: m for n, m in item.mask_sources.items() if n in names})
        for item in concept_set.images
        if any(n in item.masks for n in names)
    ]
    return ConceptSet([c for c in concept_set.concepts if c.name in names], images)


def image_scores(
    feature_model: metrics.FeatureModel,
    images: torch.Tensor,
    prompts: Sequence[str],
    references: torch.Tensor,
    *,
    tokens: Sequence[str] | None = None,
    kid_feature: nn.Module | metrics.FeatureModel | None = None,
    kid_subset_size: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """CLIP-I, CLIP-T and KID of generated ``images`` (one prompt each) against ``references``.

    ``kid_feature`` defaults to ``feature_model``'s image tower. KID is ``nan`` when either
    set has fewer than ``kid_subset_size`` images.
    """
    generated = feature_model.encode_image(images)
    reference = feature_model.encode_image(references)
    texts = feature_model.encode_text([metrics.strip_identifier(p, tokens) for p in prompts])
    scores = {
        "clip_i": metrics.clip_i_from_features(generated, reference),
        "clip_t": metrics.clip_t_from_features(generated, texts),
        "kid": float("nan"),
    }
    if min(len(images), len(references)) >= kid_subset_size:
        result = metrics.kid(images, references, kid_feature or feature_model, subset_size=kid_subset_size, seed=seed)
        scores["kid"] = result.mean
    return scores


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
            raise ValueError(f"tokens: {missing} are not identifier tokens of the applied adapters {sorted(embeddings)}")
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
                noisy = schedule.add_noise(latents, noise, t_batch)
                with denoiser.route_attention(router):
                    denoiser.predict(noisy.to(bundle.compute_dtype), t_batch, encoded.context.to(bundle.compute_dtype))
                layers = choose_layers({m.layer: m.probs.shape[1] for m in router.captured}, map_levels)
                chosen = [m for m in router.captured if m.layer in layers]
                maps = token_maps(chosen, layout, tuple(latents.shape[-2:]))
                router.clear()
                summed = summed + maps * layout.present[..., None, None].to(maps)
            out.append((summed / len(timesteps)).cpu())
    return torch.cat(out)


def load_feature_model(choice: str) -> metrics.FeatureModel:
    """The feature model for image scores: ``"tinyworld"`` (TinyWorld's shipped CLIP) or the path
    of a local CLIP folder (``metrics.ClipFeatureModel.from_directory``; nothing downloads)."""
    choice = (choice or "").strip()
    if not choice:
        raise ValueError("feature_model: empty; write 'tinyworld' or the path of a local CLIP folder")
    if choice.lower() == "tinyworld":
        from . import tinyworld

        text, vision, tokenizer = tinyworld.load_clip()
        return metrics.ClipFeatureModel(vision, text, tokenizer)
    return metrics.ClipFeatureModel.from_directory(choice)


def score_images(
    feature_model: metrics.FeatureModel,
    images: torch.Tensor,
    references: torch.Tensor,
    prompt: str,
    *,
    kid_subset_size: int = 5,
    attention_maps: torch.Tensor | None = None,
    target_masks: torch.Tensor | None = None,
    threshold: float = 0.5,
    seed: int = 0,
) -> dict[str, float]:
    """CLIP-I, CLIP-T, KID and attention IoU of generated ``images`` (N, 3, H, W) in [0, 1].

    One ``prompt`` for every image (identifier tokens ``<...>`` are stripped for CLIP-T). KID is
    ``nan`` when either set has fewer than ``kid_subset_size`` images. IoU is the mean of
    ``metrics.attention_iou`` over the maps (M, h, w) against ``target_masks`` (one per map or
    one for all), or -1 when no maps are given.
    """
    if (attention_maps is None) != (target_masks is None):
        raise ValueError("attention_maps/target_masks: give both to score IoU, or neither")
    scores = image_scores(feature_model, images, [prompt] * len(images), references,
                          kid_subset_size=kid_subset_size, seed=seed)
    scores["iou"] = -1.0
    if attention_maps is not None:
        scores["iou"] = metrics.attention_iou(attention_maps, target_masks, threshold).mean().item()
    return scores


def score_report(scores: dict[str, float], *, n_images: int, n_references: int, prompt: str,
                 kid_subset_size: int) -> str:
    """The scores as a markdown table, saying why a score is missing instead of printing nan."""
    def show(name: str, value: float) -> str:
        if name == "kid" and value != value:
            return f"n/a (needs >= {kid_subset_size} generated and reference images)"
        if name == "iou" and value < 0:
            return "n/a (no attention maps given)"
        return f"{value:.4f}"

    rows = [("CLIP-I", "clip_i"), ("CLIP-T", "clip_t"), ("KID", "kid"), ("Attention IoU", "iou")]
    lines = [f"Scores of {n_images} generated images against {n_references} references; "
             f"CLIP-T prompt: {metrics.strip_identifier(prompt)!r}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {label} | {show(key, scores[key])} |" for label, key in rows]
    return "\n".join(lines) + "\n"
