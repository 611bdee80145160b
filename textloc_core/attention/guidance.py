"""The attention losses of Textual Localization, as pure functions of (maps, masks).

``maps`` and ``masks`` are (B, K, h, w): for each of B instance images, one token map per
concept slot K (see ``maps.token_maps``) and that concept's mask resized to the map grid.
``present`` (B, K) bool marks which concepts an image actually names; absent slots carry
no loss. With several concepts, an image's loss is the mean over its present concepts, and
the batch loss is the mean over images that name at least one concept.

* hard: mean over pixels of (map - mask)^2: the map is pulled onto the mask.
* soft: mean over the pixels outside the mask of map^2: attention leaking outside is
  suppressed, attention inside is left free.
* none: zero (the Custom Diffusion baseline; the trainer skips capture altogether).
"""

from __future__ import annotations

import torch

GUIDANCE_METHODS = ("hard", "soft", "none")
"""hard: pull the token map onto the mask; soft: suppress it outside the mask;
none: no attention loss (Custom Diffusion), the same code path."""


def _per_concept_hard(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return ((maps - masks) ** 2).mean(dim=(-2, -1))


def _per_concept_soft(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    # Soft masks weight each pixel by how much it lies outside; a mask covering the whole
    # image leaves nothing outside and so no loss.
    outside = 1.0 - masks
    return (outside * maps**2).sum(dim=(-2, -1)) / outside.sum(dim=(-2, -1)).clamp_min(1e-8)


def _average_present(per_concept: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    weights = present.to(per_concept.dtype)
    count = weights.sum(dim=1)
    per_image = (per_concept * weights).sum(dim=1) / count.clamp_min(1.0)
    has_any = count > 0
    if not bool(has_any.any()):
        return per_concept.sum() * 0.0  # keeps the graph; no image names a concept
    return per_image[has_any].mean()


def hard_loss(maps: torch.Tensor, masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Hard guidance: mean over pixels of (map - mask)^2, averaged over present concepts."""
    return _average_present(_per_concept_hard(maps, masks), present)


def soft_loss(maps: torch.Tensor, masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Soft guidance: mean over pixels outside the mask of map^2, averaged over present concepts."""
    return _average_present(_per_concept_soft(maps, masks), present)


def attention_loss(guidance: str, maps: torch.Tensor, masks: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Dispatch on the config's ``guidance`` ("hard", "soft" or "none")."""
    if maps.shape != masks.shape or maps.shape[:2] != present.shape:
        raise ValueError(
            f"attention loss: maps {tuple(maps.shape)}, masks {tuple(masks.shape)} and present "
            f"{tuple(present.shape)} must agree as (B, K, h, w) / (B, K)"
        )
    if guidance == "hard":
        return hard_loss(maps, masks, present)
    if guidance == "soft":
        return soft_loss(maps, masks, present)
    if guidance == "none":
        return maps.sum() * 0.0
    raise ValueError(f"guidance: {guidance!r} is not one of {GUIDANCE_METHODS}")
