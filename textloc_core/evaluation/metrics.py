"""Evaluation metrics: CLIP-I, CLIP-T, KID and attention-mask IoU.

Image and text features come from a feature model (``features``); metrics never train and
never download. Images are (N, 3, H, W) float in [0, 1] (ComfyUI's IMAGE is (N, H, W, 3):
pass ``images.movedim(-1, 1)``). Scores are plain cosines in [-1, 1]; some papers report
CLIP-T scaled (CLIPScore uses 2.5 x cos, others 100 x cos), so compare methods within one
table. Judge-based scene scores (TinyWorld) are ``judge_scores``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..attention.maps import normalize_maps
from ..data.masks import mask_to_grid
from ..stop import check_stop
from .features import FeatureModel, Float64Features, ImageFeatureExtractor, check_images

# --------------------------------------------------------------------------------------
# CLIP-I and CLIP-T


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) cosine similarities."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features: expected (N, D) and (M, D) with equal D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T


def clip_i_from_features(generated: torch.Tensor, references: torch.Tensor) -> float:
    """CLIP-I: mean cosine over every (generated, reference) pair of image features."""
    return cosine_matrix(generated, references).mean().item()


def clip_t_from_features(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """CLIP-T: mean cosine between each image and its prompt. ``text_features`` is (N, D),
    row i being image i's prompt, or (1, D) when all images share one prompt."""
    if text_features.shape[0] not in (1, image_features.shape[0]):
        raise ValueError(
            f"text features: {text_features.shape[0]} prompts for {image_features.shape[0]} images; "
            "give one prompt per image or a single prompt for all"
        )
    cos = F.cosine_similarity(image_features.double(), text_features.double().expand_as(image_features.double()), dim=1)
    return cos.mean().item()


_ANGLE_TOKEN = re.compile(r"<[^<>\s]+>")


def strip_identifier(prompt: str, tokens: Sequence[str] | None = None) -> str:
    """The prompt with identifier tokens removed, for CLIP-T ("a <doll1> doll in the desert"
    -> "a doll in the desert"). ``tokens=None`` removes every ``<...>`` token; otherwise
    exactly the given tokens, wherever they occur. Spaces are tidied."""
    if tokens is None:
        text = _ANGLE_TOKEN.sub(" ", prompt)
    else:
        text = prompt
        for token in sorted(tokens, key=len, reverse=True):  # longest first: "<a10>" before "<a1>"
            text = text.replace(token, " ")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", text)


def clip_i(model: FeatureModel, generated: torch.Tensor, references: torch.Tensor) -> float:
    """CLIP-I of generated images against a concept's reference images."""
    gen = model.encode_image(check_images(generated, "generated"))
    ref = model.encode_image(check_images(references, "references"))
    return clip_i_from_features(gen, ref)


def clip_t(
    model: FeatureModel,
    images: torch.Tensor,
    prompts: Sequence[str] | str,
    identifier_tokens: Sequence[str] | None = None,
) -> float:
    """CLIP-T of images against their prompts with the identifier tokens removed.

    ``prompts``: one per image, or one string for all images."""
    images = check_images(images, "images")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) not in (1, images.shape[0]):
        raise ValueError(
            f"prompts: {len(prompts)} prompts for {images.shape[0]} images; give one per image or one for all"
        )
    text = model.encode_text([strip_identifier(p, identifier_tokens) for p in prompts])
    return clip_t_from_features(model.encode_image(images), text)


# --------------------------------------------------------------------------------------
# KID


@dataclass
class KIDResult:
    """KID mean and standard deviation over random subsets (torchmetrics' estimator)."""

    mean: float
    std: float


KID_CHUNK = 16
"""Images per KID feature call; ``should_stop`` is polled before each."""


def kid(
    generated: torch.Tensor,
    references: torch.Tensor,
    feature: nn.Module | FeatureModel,
    *,
    subset_size: int = 5,
    subsets: int = 100,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> KIDResult:
    """Kernel Inception Distance between generated and reference images.

    ``feature``: an ``nn.Module`` images -> (N, D) (e.g. ``inception_from_file(...)``), or a
    ``FeatureModel`` whose image tower is used. ``subset_size`` 5 as the paper (few references);
    both sets need at least that many images. Subsets are drawn from a generator seeded with
    ``seed`` so the number is reproducible. ``should_stop`` is polled before every chunk of
    ``KID_CHUNK`` images and before the subset statistics (``stop.Cancelled``).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    generated = check_images(generated, "generated")
    references = check_images(references, "references")
    for name, images in (("generated", generated), ("references", references)):
        if images.shape[0] < subset_size:
            raise ValueError(
                f"{name}: {images.shape[0]} images but KID subset_size is {subset_size}; "
                f"give at least {subset_size} images or lower subset_size"
            )
    if not isinstance(feature, nn.Module):
        if not isinstance(feature, FeatureModel):
            raise ValueError("feature: expected an nn.Module (images -> features) or a FeatureModel")
        feature = ImageFeatureExtractor(feature)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=Float64Features(feature), subsets=subsets, subset_size=subset_size)
    with torch.no_grad():
        for images, real in ((references, True), (generated, False)):
            for start in range(0, len(images), KID_CHUNK):
                check_stop(
                    should_stop, f"during KID at {'reference' if real else 'generated'} image {start} of {len(images)}"
                )
                metric.update(images[start : start + KID_CHUNK], real=real)
    check_stop(should_stop, "before KID's subset statistics")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics draws subsets with the global generator
        mean, std = metric.compute()
    return KIDResult(float(mean), float(std))


# --------------------------------------------------------------------------------------
# Attention-mask IoU


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising between-class variance."""
    values = values.detach().float().flatten().clamp(0, 1)
    hist = torch.histc(values, bins=bins, min=0.0, max=1.0).double()
    prob = hist / hist.sum()
    centers = (torch.arange(bins, dtype=torch.float64) + 0.5) / bins
    weight0 = prob.cumsum(0)
    mean0_sum = (prob * centers).cumsum(0)
    total_mean = mean0_sum[-1]
    weight1 = 1 - weight0
    between = (total_mean * weight0 - mean0_sum) ** 2 / (weight0 * weight1).clamp_min(1e-12)
    between[(weight0 <= 0) | (weight1 <= 0)] = -1
    index = int(between.argmax())
    return float((index + 1) / bins)  # values above bin `index` form the foreground


def attention_iou(
    maps: torch.Tensor, masks: torch.Tensor, threshold: float | str = 0.5, normalize: bool = True
) -> torch.Tensor:
    """Per-sample IoU between thresholded token maps and target masks.

    ``maps``: (B, h, w) or (h, w) attention maps; ``masks``: (B, H, W) or (H, W) binary
    masks of the target, resized to the map grid. ``threshold``: a number in [0, 1] applied
    after min-max normalisation (``normalize=True``), or "otsu" for a per-map Otsu cut.
    Returns a (B,) float tensor.
    """
    if maps.dim() == 2:
        maps = maps.unsqueeze(0)
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if maps.dim() != 3 or masks.dim() != 3:
        raise ValueError(
            f"maps/masks: expected (B, h, w) and (B, H, W), got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    if masks.shape[0] != maps.shape[0]:
        if masks.shape[0] != 1:
            raise ValueError(f"masks: {masks.shape[0]} masks for {maps.shape[0]} maps; give one per map or one for all")
        masks = masks.expand(maps.shape[0], -1, -1)
    # a cell is inside when at least half its area is, so thin borders do not flip cells
    target = mask_to_grid(masks, tuple(maps.shape[-2:])) >= 0.5
    for index in range(target.shape[0]):
        if not target[index].any():
            raise ValueError(
                f"mask {index}: empty at the {tuple(maps.shape[-2:])} map grid; the target must cover at "
                "least half a map cell (draw the object in the mask or use a finer map)"
            )
    values = normalize_maps(maps.detach().float()) if normalize else maps.detach().float()
    if threshold == "otsu":
        cuts = torch.tensor([otsu_threshold(v) for v in values]).view(-1, 1, 1)
    elif isinstance(threshold, (int, float)) and 0 <= threshold <= 1:
        cuts = torch.full((values.shape[0], 1, 1), float(threshold))
    else:
        raise ValueError(f"threshold: {threshold!r} must be a number in [0, 1] or 'otsu'")
    predicted = values >= cuts
    intersection = (predicted & target).flatten(1).sum(1).float()
    union = (predicted | target).flatten(1).sum(1).float()
    return intersection / union
