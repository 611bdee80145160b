"""Evaluation metrics: CLIP-I, CLIP-T, KID, attention-mask IoU, and judge-based scene scores.

Metrics never train and never download. Image/text features come from a *feature model*:
any object with ``encode_image`` and ``encode_text`` (``FeatureModel`` below). For real runs
that is a local CLIP checkpoint (``ClipFeatureModel.from_directory``, the paper uses CLIP
ViT-L/14); for TinyWorld it is TinyWorld's own small CLIP. KID takes any ``nn.Module`` that
maps images to feature vectors (the paper: Inception at 299 px; ``inception_from_file`` loads
torchvision's InceptionV3 from a local weight file).

Conventions: images are (N, 3, H, W) float in [0, 1] (ComfyUI's IMAGE is (N, H, W, 3): pass
``images.movedim(-1, 1)``). Scores are plain cosines in [-1, 1]; some papers report CLIP-T
scaled (CLIPScore uses 2.5 x cos, others 100 x cos), so compare methods within one table.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from .heatmap import normalize_maps
from .imaging import fit_size
from .masks import mask_to_grid

# --------------------------------------------------------------------------------------
# Feature models


@runtime_checkable
class FeatureModel(Protocol):
    """What CLIP-I / CLIP-T need: images and texts embedded in one space."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, D) features (need not be normalised)."""

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """N strings -> (N, D) features in the same space as ``encode_image``."""


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _check_images(images: torch.Tensor, name: str) -> torch.Tensor:
    """Validate an image batch: (N, 3, H, W) with N >= 1, else a ValueError naming ``name``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"{name}: expected a (N, 3, H, W) image tensor in [0, 1], got {shape}; "
            "ComfyUI IMAGE tensors are (N, H, W, 3): pass images.movedim(-1, 1)"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name}: the image batch is empty")
    return images


def clip_preprocess(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """CLIP's image preprocessing on tensors: resize the short side to ``size`` (bicubic,
    antialiased), centre-crop ``size`` x ``size``, normalise. Same steps as CLIPImageProcessor,
    without the round trip through PIL."""
    images = _check_images(images, "images").float()
    resized, box = fit_size(images.shape[-2], images.shape[-1], size, center_crop=True)
    images = F.interpolate(images, size=resized, mode="bicubic", antialias=True, align_corners=False)
    if box is not None:
        top, left, height, width = box
        images = images[..., top : top + height, left : left + width]
    images = images.clamp(0, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def _has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file()


class ClipFeatureModel:
    """A ``FeatureModel`` over transformers CLIP towers.

    ``vision``: a ``CLIPModel`` or ``CLIPVisionModelWithProjection`` (anything with
    ``vision_model`` and ``visual_projection``); ``text``: a ``CLIPModel`` or
    ``CLIPTextModelWithProjection`` (``text_model`` and ``text_projection``); ``tokenizer``: the
    matching CLIP tokenizer. Features are the projected pooled outputs, as the paper uses.
    """

    def __init__(self, vision: nn.Module, text: nn.Module, tokenizer, *, image_size: int | None = None,
                 mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                 batch_size: int = 32):
        self.vision = vision.eval()
        self.text = text.eval()
        self.tokenizer = tokenizer
        vision_config = getattr(vision.config, "vision_config", vision.config)
        self.image_size = int(image_size or vision_config.image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        text_config = getattr(text.config, "text_config", text.config)
        # The position table bounds the prompt, whatever the tokenizer file says.
        self.max_length = int(text_config.max_position_embeddings)

    @classmethod
    def from_directory(cls, path: str | Path, *, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> "ClipFeatureModel":
        """Load from a local directory, never from the network.

        Accepted layouts: a saved ``CLIPModel`` (config.json with model_type "clip", tokenizer
        files beside it, as the openai/clip-vit-large-patch14 snapshot), or a directory with
        ``vision/`` (CLIPVisionModelWithProjection), ``text/`` (CLIPTextModelWithProjection) and
        ``tokenizer/`` sub-folders. A ``preprocessor_config.json`` found there sets the crop size
        and normalisation.
        """
        from transformers import (CLIPModel, CLIPTextModelWithProjection, CLIPTokenizer,
                                  CLIPVisionModelWithProjection)

        root = Path(path)
        if not root.is_dir():
            raise ValueError(f"CLIP directory {str(root)!r} does not exist: point it at a local CLIP checkpoint folder")
        config_file = root / "config.json"
        kwargs = dict(local_files_only=True, dtype=dtype)
        if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == "clip":
            model = CLIPModel.from_pretrained(root, **kwargs).to(device)
            vision = text = model
            tokenizer_dir = root if _has_tokenizer(root) else root / "tokenizer"
        elif (root / "vision").is_dir() and (root / "text").is_dir():
            vision = CLIPVisionModelWithProjection.from_pretrained(root / "vision", **kwargs).to(device)
            text = CLIPTextModelWithProjection.from_pretrained(root / "text", **kwargs).to(device)
            tokenizer_dir = root / "tokenizer"
        else:
            raise ValueError(
                f"CLIP directory {str(root)!r}: expected a saved CLIPModel (config.json with "
                "model_type 'clip') or vision/ + text/ + tokenizer/ sub-folders"
            )
        if not _has_tokenizer(tokenizer_dir):
            raise ValueError(
                f"CLIP directory {str(root)!r}: no tokenizer files (vocab.json + merges.txt, or tokenizer.json) "
                f"in {str(tokenizer_dir)!r}; copy the checkpoint's tokenizer files there"
            )
        tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        extra = {}
        for candidate in (root / "preprocessor_config.json", root / "vision" / "preprocessor_config.json"):
            if candidate.is_file():
                pre = json.loads(candidate.read_text())
                crop = pre.get("crop_size")
                if isinstance(crop, dict):
                    crop = crop.get("height")
                extra = {k: v for k, v in (("image_size", crop), ("mean", pre.get("image_mean")),
                                           ("std", pre.get("image_std"))) if v}
                break
        return cls(vision, text, tokenizer, **extra)

    def _device_dtype(self, module: nn.Module) -> tuple[torch.device, torch.dtype]:
        parameter = next(module.parameters())
        return parameter.device, parameter.dtype

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        device, dtype = self._device_dtype(self.vision)
        pixels = clip_preprocess(images, self.image_size, self.mean, self.std)
        out = []
        for chunk in pixels.split(self.batch_size):
            pooled = self.vision.vision_model(pixel_values=chunk.to(device, dtype)).pooler_output
            out.append(self.vision.visual_projection(pooled).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not texts:
            raise ValueError("texts: expected a non-empty list of strings")
        device, _ = self._device_dtype(self.text)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start : start + self.batch_size]), padding="max_length",
                                   truncation=True, max_length=self.max_length, return_tensors="pt")
            pooled = self.text.text_model(input_ids=batch["input_ids"].to(device),
                                          attention_mask=batch["attention_mask"].to(device)).pooler_output
            out.append(self.text.text_projection(pooled).float().cpu())
        return torch.cat(out)


class ImageFeatureExtractor(nn.Module):
    """Wrap a ``FeatureModel``'s image tower as the ``nn.Module`` torchmetrics' KID expects."""

    def __init__(self, model: FeatureModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class _Float64Features(nn.Module):
    """Features as float64 on the CPU: the polynomial kernel cubes dot products, and float32
    loses the small differences KID is made of."""

    def __init__(self, feature: nn.Module):
        super().__init__()
        self.feature = feature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature(images).double().cpu()


class InceptionPoolFeatures(nn.Module):
    """torchvision InceptionV3's 2048-d pool features of [0, 1] images resized to 299 px
    (the paper's KID features). Build it with ``inception_from_file``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        net.fc = nn.Identity()  # the pooled 2048-d vector instead of class logits
        self.net = net.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = F.interpolate(images.float(), size=(299, 299), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225], device=images.device).view(1, 3, 1, 1)
        parameter = next(self.net.parameters())
        return self.net(((images - mean) / std).to(parameter.device, parameter.dtype)).float()


def inception_from_file(path: str | Path | None) -> InceptionPoolFeatures:
    """InceptionV3 features from a local torchvision state-dict file (``inception_v3_google-*.pth``).

    ``path=None`` gives random weights: only for testing the pipeline, the numbers mean nothing.
    """
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=True, init_weights=False)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"inception weights {str(path)!r} not found: pass the local torchvision InceptionV3 .pth file")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    net.aux_logits, net.AuxLogits = False, None
    return InceptionPoolFeatures(net)


# --------------------------------------------------------------------------------------
# CLIP-I and CLIP-T


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) cosine similarities."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features: expected (N, D) and (M, D) with equal D, got {tuple(a.shape)} and {tuple(b.shape)}")
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
    gen = model.encode_image(_check_images(generated, "generated"))
    ref = model.encode_image(_check_images(references, "references"))
    return clip_i_from_features(gen, ref)


def clip_t(model: FeatureModel, images: torch.Tensor, prompts: Sequence[str] | str,
           identifier_tokens: Sequence[str] | None = None) -> float:
    """CLIP-T of images against their prompts with the identifier tokens removed.

    ``prompts``: one per image, or one string for all images."""
    images = _check_images(images, "images")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if len(prompts) not in (1, images.shape[0]):
        raise ValueError(f"prompts: {len(prompts)} prompts for {images.shape[0]} images; give one per image or one for all")
    text = model.encode_text([strip_identifier(p, identifier_tokens) for p in prompts])
    return clip_t_from_features(model.encode_image(images), text)


# --------------------------------------------------------------------------------------
# KID


@dataclass
class KIDResult:
    """KID mean and standard deviation over random subsets (torchmetrics' estimator)."""

    mean: float
    std: float


def kid(generated: torch.Tensor, references: torch.Tensor, feature: nn.Module | FeatureModel, *,
        subset_size: int = 5, subsets: int = 100, seed: int = 0) -> KIDResult:
    """Kernel Inception Distance between generated and reference images.

    ``feature``: an ``nn.Module`` images -> (N, D) (e.g. ``inception_from_file(...)``), or a
    ``FeatureModel`` whose image tower is used. ``subset_size`` 5 as the paper (few references);
    both sets need at least that many images. Subsets are drawn from a generator seeded with
    ``seed`` so the number is reproducible.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    generated = _check_images(generated, "generated")
    references = _check_images(references, "references")
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
        metric = KernelInceptionDistance(feature=_Float64Features(feature), subsets=subsets, subset_size=subset_size)
    with torch.no_grad():
        metric.update(references, real=True)
        metric.update(generated, real=False)
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


def attention_iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float | str = 0.5,
                  normalize: bool = True) -> torch.Tensor:
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
        raise ValueError(f"maps/masks: expected (B, h, w) and (B, H, W), got {tuple(maps.shape)} and {tuple(masks.shape)}")
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


# --------------------------------------------------------------------------------------
# Judge-based scene scores (TinyWorld)

ObjectSpec = Mapping[str, str]
"""An object by its attributes, e.g. {"shape": "star", "colour": "orange", "texture": "dotted"}."""


@dataclass
class Judgement:
    """What a judge saw in one image.

    ``objects``: detections, each an attribute dict. A detection may be partial: the TinyWorld
    judge reports (colour, shape) and (texture, shape) pairs separately, i.e. detections
    {"colour": "orange", "shape": "star"} and {"texture": "dotted", "shape": "star"}.
    """

    objects: list[dict[str, str]]
    background: str | None = None


@dataclass
class ExpectedScene:
    """What one generated image was supposed to show.

    ``targets``: the learned concept(s) prompted, with their exact attributes.
    ``others``: other prompted objects (new scene content). ``background``: the prompted one.
    ``unprompted``: objects that must NOT appear (the co-occurring non-target object of the
    training images when it is not in the prompt).
    """

    targets: list[ObjectSpec]
    others: list[ObjectSpec] = field(default_factory=list)
    background: str | None = None
    unprompted: list[ObjectSpec] = field(default_factory=list)


@dataclass
class JudgeScores:
    """Fractions over images (``nan`` where no image had anything to score).

    target_fidelity: all targets present with their exact attributes.
    leakage: any unprompted co-occurring object present.
    prompt_alignment: mean fraction of the prompted other objects + background present.
    """

    target_fidelity: float
    leakage: float
    prompt_alignment: float
    n: int


def object_present(judgement: Judgement, spec: ObjectSpec) -> bool:
    """Whether the judge confirms every attribute of ``spec``.

    Attribute ``k`` is confirmed by a detection that has ``k`` with the spec's value and
    agrees with the spec on every other attribute both name. With full detections this is
    "one detection matches the whole spec"; with partial ones (colour+shape, texture+shape)
    it binds each attribute to the spec's shape, the most a pairwise judge can say.
    """
    if not spec:
        raise ValueError("object spec is empty: name at least one attribute (e.g. {'shape': 'star'})")

    def confirms(detection: Mapping[str, str], key: str) -> bool:
        return detection.get(key) == spec[key] and all(
            detection[other] == value for other, value in spec.items() if other in detection
        )

    return all(any(confirms(d, key) for d in judgement.objects) for key in spec)


def _mean_or_nan(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def judge_scores(judgements: Sequence[Judgement], expected: Sequence[ExpectedScene] | ExpectedScene) -> JudgeScores:
    """Score a judge's view of generated images against what each image's prompt asked."""
    if isinstance(expected, ExpectedScene):
        expected = [expected] * len(judgements)
    if len(expected) != len(judgements):
        raise ValueError(
            f"expected: {len(expected)} expected scenes for {len(judgements)} judgements; give one per image or one for all"
        )
    fidelity, leakage, alignment = [], [], []
    for judgement, spec in zip(judgements, expected):
        if spec.targets:
            fidelity.append(float(all(object_present(judgement, t) for t in spec.targets)))
        if spec.unprompted:
            leakage.append(float(any(object_present(judgement, u) for u in spec.unprompted)))
        checks = [object_present(judgement, o) for o in spec.others]
        if spec.background is not None:
            checks.append(judgement.background == spec.background)
        if checks:
            alignment.append(sum(checks) / len(checks))
    return JudgeScores(_mean_or_nan(fidelity), _mean_or_nan(leakage), _mean_or_nan(alignment), len(judgements))
