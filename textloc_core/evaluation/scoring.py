"""Scoring steps shared by the TinyWorld table, the paper-protocol harness and the Score
Images node.

* ``image_scores``: CLIP-I against references, CLIP-T against the prompts without their
  identifier tokens, KID against the references: one dict per set of generations.
* ``score_images`` / ``score_report``: those plus attention IoU, and the markdown table.
* ``load_feature_model``: TinyWorld's CLIP or a local CLIP folder.

Where a token looks is measured in ``localization``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import nn

from ..data.concepts import ConceptSet
from ..stop import check_stop
from . import features, metrics

SCORE_CHUNK = 16
"""Images per feature-model call; ``should_stop`` is polled before each."""


def _chunked(encode, items, what: str, should_stop) -> torch.Tensor:
    """``encode`` (a feature model's image or text encoder) over ``items`` in chunks of
    SCORE_CHUNK, polling ``should_stop`` before each, so Cancel lands within one chunk."""
    chunks = []
    for start in range(0, len(items), SCORE_CHUNK):
        check_stop(should_stop, f"while scoring {what} {start} of {len(items)}")
        chunks.append(encode(items[start : start + SCORE_CHUNK]))
    return torch.cat(chunks)


def only_concepts(concept_set: ConceptSet, names: Sequence[str]) -> ConceptSet:
    """The set with only ``names`` learned: other concepts' masks are dropped, so their objects
    stay in the photos, unnamed (the paper's single target in multi-concept images)."""
    unknown = [n for n in names if n not in {c.name for c in concept_set.concepts}]
    if unknown:
        raise ValueError(f"concepts {unknown} are not in this set ({[c.name for c in concept_set.concepts]})")
    images = [
        replace(
            item,
            masks={n: m for n, m in item.masks.items() if n in names},
            mask_sources={n: m for n, m in item.mask_sources.items() if n in names},
        )
        for item in concept_set.images
        if any(n in item.masks for n in names)
    ]
    return ConceptSet([c for c in concept_set.concepts if c.name in names], images)


def image_scores(
    feature_model: features.FeatureModel,
    images: torch.Tensor,
    prompts: Sequence[str],
    references: torch.Tensor,
    *,
    tokens: Sequence[str] | None = None,
    kid_feature: nn.Module | features.FeatureModel | None = None,
    kid_subset_size: int = 5,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """CLIP-I, CLIP-T and KID of generated ``images`` (one prompt each) against ``references``.

    ``kid_feature`` defaults to ``feature_model``'s image tower. KID is ``nan`` when either
    set has fewer than ``kid_subset_size`` images. ``should_stop`` is polled before every
    chunk of images or prompts, in every phase (KID's too; ``stop.Cancelled``).
    """
    generated = _chunked(feature_model.encode_image, images, "generated image", should_stop)
    reference = _chunked(feature_model.encode_image, references, "reference image", should_stop)
    texts = _chunked(
        feature_model.encode_text, [metrics.strip_identifier(p, tokens) for p in prompts], "prompt", should_stop
    )
    scores = {
        "clip_i": metrics.clip_i_from_features(generated, reference),
        "clip_t": metrics.clip_t_from_features(generated, texts),
        "kid": float("nan"),
    }
    if min(len(images), len(references)) >= kid_subset_size:
        check_stop(should_stop, "before KID")
        result = metrics.kid(
            images,
            references,
            kid_feature or feature_model,
            subset_size=kid_subset_size,
            seed=seed,
            should_stop=should_stop,
        )
        scores["kid"] = result.mean
    return scores


def load_feature_model(choice: str) -> features.FeatureModel:
    """The feature model for image scores: ``"tinyworld"`` (TinyWorld's shipped CLIP) or the path
    of a local CLIP folder (``features.ClipFeatureModel.from_directory``; nothing downloads)."""
    choice = (choice or "").strip()
    if not choice:
        raise ValueError("feature_model: empty; write 'tinyworld' or the path of a local CLIP folder")
    if choice.lower() == "tinyworld":
        from .. import tinyworld

        text, vision, tokenizer = tinyworld.load_clip()
        return features.ClipFeatureModel(vision, text, tokenizer)
    return features.ClipFeatureModel.from_directory(choice)


def score_images(
    feature_model: features.FeatureModel,
    images: torch.Tensor,
    references: torch.Tensor,
    prompt: str,
    *,
    kid_subset_size: int = 5,
    attention_maps: torch.Tensor | None = None,
    target_masks: torch.Tensor | None = None,
    threshold: float = 0.5,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """CLIP-I, CLIP-T, KID and attention IoU of generated ``images`` (N, 3, H, W) in [0, 1].

    One ``prompt`` for every image (identifier tokens ``<...>`` are stripped for CLIP-T). KID is
    ``nan`` when either set has fewer than ``kid_subset_size`` images. IoU is the mean of
    ``metrics.attention_iou`` over the maps (M, h, w) against ``target_masks`` (one per map or
    one for all), or -1 when no maps are given. ``should_stop``: as in ``image_scores``.
    """
    if (attention_maps is None) != (target_masks is None):
        raise ValueError("attention_maps/target_masks: give both to score IoU, or neither")
    scores = image_scores(
        feature_model,
        images,
        [prompt] * len(images),
        references,
        kid_subset_size=kid_subset_size,
        seed=seed,
        should_stop=should_stop,
    )
    scores["iou"] = -1.0
    if attention_maps is not None:
        scores["iou"] = metrics.attention_iou(attention_maps, target_masks, threshold).mean().item()
    return scores


def score_report(
    scores: dict[str, float], *, n_images: int, n_references: int, prompt: str, kid_subset_size: int
) -> str:
    """The scores as a markdown table, saying why a score is missing instead of printing nan."""

    def show(name: str, value: float) -> str:
        if name == "kid" and value != value:
            return f"n/a (needs >= {kid_subset_size} generated and reference images)"
        if name == "iou" and value < 0:
            return "n/a (no attention maps given)"
        return f"{value:.4f}"

    rows = [("CLIP-I", "clip_i"), ("CLIP-T", "clip_t"), ("KID", "kid"), ("Attention IoU", "iou")]
    lines = [
        f"Scores of {n_images} generated images against {n_references} references; "
        f"CLIP-T prompt: {metrics.strip_identifier(prompt)!r}",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {label} | {show(key, scores[key])} |" for label, key in rows]
    return "\n".join(lines) + "\n"
