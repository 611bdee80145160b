"""Feature models for the image metrics: images and texts embedded in one space.

Metrics never train and never download. CLIP-I / CLIP-T need a *feature model*: any object
with ``encode_image`` and ``encode_text`` (``FeatureModel``). For real runs that is a local
CLIP checkpoint (``ClipFeatureModel.from_directory``; the paper uses CLIP ViT-L/14); for
TinyWorld it is TinyWorld's own small CLIP. KID takes any ``nn.Module`` that maps images to
feature vectors (the paper: Inception at 299 px; ``inception_from_file`` loads torchvision's
InceptionV3 from a local weight file).

Images are (N, 3, H, W) float in [0, 1] (ComfyUI's IMAGE is (N, H, W, 3): pass
``images.movedim(-1, 1)``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn import functional as F

from ..data.imaging import fit_size


@runtime_checkable
class FeatureModel(Protocol):
    """What CLIP-I / CLIP-T need: images and texts embedded in one space."""

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, D) features (need not be normalised)."""

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """N strings -> (N, D) features in the same space as ``encode_image``."""


OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_images(images: torch.Tensor, name: str) -> torch.Tensor:
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
    images: torch.Tensor, size: int, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD
) -> torch.Tensor:
    """CLIP's image preprocessing on tensors: resize the short side to ``size`` (bicubic,
    antialiased), centre-crop ``size`` x ``size``, normalise. Same steps as CLIPImageProcessor,
    without the round trip through PIL."""
    images = check_images(images, "images").float()
    resized, box = fit_size(images.shape[-2], images.shape[-1], size, center_crop=True)
    images = F.interpolate(images, size=resized, mode="bicubic", antialias=True, align_corners=False)
    if box is not None:
        top, left, height, width = box
        images = images[..., top : top + height, left : left + width]
    images = images.clamp(0, 1)
    mean_t = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


WEIGHT_INDEX_BYTES = 16 << 20
"""The largest sharded-weights index read (a real one lists a few hundred tensors: kilobytes)."""


def check_weight_index(directory: Path, shown: str) -> None:
    """Refuse a sharded checkpoint's ``*.index.json`` in ``directory`` unless every shard it names
    is a plain ``.safetensors`` file name in the folder itself: transformers opens the files an
    index names, and a hostile folder would name any file on the machine (or a pickle). The
    message depends only on the index's text, never on what exists at the paths it names, and
    quotes none of it."""
    for index in sorted(directory.glob("*.index.json")):
        problem = None
        if not index.name.endswith(".safetensors.index.json"):
            problem = "is the index of pickle weights, which are never loaded"
        elif index.stat().st_size > WEIGHT_INDEX_BYTES:
            problem = f"is larger than {WEIGHT_INDEX_BYTES >> 20} MiB"
        else:
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
            except (ValueError, AttributeError):
                weight_map = None
            if not isinstance(weight_map, dict) or not weight_map:
                problem = "has no weight_map of tensor names to shard files"
            elif not all(_plain_shard_name(shard) and _stays_in(directory, shard) for shard in weight_map.values()):
                problem = (
                    "names a shard that is not a .safetensors file in the folder itself (a path with a "
                    "separator, '..', another suffix, or a link leading out)"
                )
        if problem is not None:
            raise ValueError(
                f"CLIP directory {shown!r}: {index.name} {problem}; keep the index transformers wrote, whose "
                "shards are .safetensors files beside it"
            )


def _plain_shard_name(shard) -> bool:
    return (
        isinstance(shard, str)
        and shard.endswith(".safetensors")
        and "/" not in shard
        and "\\" not in shard
        and ":" not in shard
        and "\x00" not in shard
        and shard not in (".", "..")
        and not shard.startswith(".")
    )


def _stays_in(directory: Path, shard: str) -> bool:
    """``directory / shard`` after every link is followed (missing or not) is still in ``directory``."""
    real = os.path.realpath(directory)
    return os.path.dirname(os.path.realpath(directory / shard)) == real


def _has_tokenizer(directory: Path) -> bool:
    return (directory / "tokenizer.json").is_file() or (directory / "vocab.json").is_file()


class ClipFeatureModel:
    """A ``FeatureModel`` over transformers CLIP towers.

    ``vision``: a ``CLIPModel`` or ``CLIPVisionModelWithProjection`` (anything with
    ``vision_model`` and ``visual_projection``); ``text``: a ``CLIPModel`` or
    ``CLIPTextModelWithProjection`` (``text_model`` and ``text_projection``); ``tokenizer``: the
    matching CLIP tokenizer. Features are the projected pooled outputs; ``projected=False``
    gives images the vision tower's pooler output without the projection (the bench's "CLIP-I
    pair"; the paper's CLIP-I uses the projected image features, ``projected=True``).
    """

    def __init__(
        self,
        vision: nn.Module,
        text: nn.Module,
        tokenizer,
        *,
        image_size: int | None = None,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        batch_size: int = 32,
        projected: bool = True,
    ):
        self.projected = projected
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
    def from_directory(
        cls, path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> ClipFeatureModel:
        """Load from a local directory, never from the network.

        Accepted layouts: a saved ``CLIPModel`` (config.json with model_type "clip", tokenizer
        files beside it, as the openai/clip-vit-large-patch14 snapshot), or a directory with
        ``vision/`` (CLIPVisionModelWithProjection), ``text/`` (CLIPTextModelWithProjection) and
        ``tokenizer/`` sub-folders. A ``preprocessor_config.json`` found there sets the crop size
        and normalisation.
        """
        from transformers import CLIPModel, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

        root = Path(path)
        if not root.is_dir():
            raise ValueError(f"CLIP directory {str(root)!r} does not exist: point it at a local CLIP checkpoint folder")
        config_file = root / "config.json"
        kwargs = dict(local_files_only=True, use_safetensors=True, dtype=dtype)  # never unpickle weights
        for folder in (root, root / "vision", root / "text"):
            if folder.is_dir():
                check_weight_index(folder, str(path))
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
                extra = {
                    k: v
                    for k, v in (("image_size", crop), ("mean", pre.get("image_mean")), ("std", pre.get("image_std")))
                    if v
                }
                break
        return cls(vision, text, tokenizer, **extra)

    def unprojected(self) -> ClipFeatureModel:
        """The same towers, image features taken before the visual projection (the pooler
        output: the bench's "CLIP-I pair", not the paper's CLIP-I); text features stay projected."""
        twin = copy.copy(self)
        twin.projected = False
        return twin

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
            out.append((self.vision.visual_projection(pooled) if self.projected else pooled).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str) or not texts:
            raise ValueError("texts: expected a non-empty list of strings")
        device, _ = self._device_dtype(self.text)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            pooled = self.text.text_model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).pooler_output
            out.append(self.text.text_projection(pooled).float().cpu())
        return torch.cat(out)


class ImageFeatureExtractor(nn.Module):
    """Wrap a ``FeatureModel``'s image tower as the ``nn.Module`` torchmetrics' KID expects."""

    def __init__(self, model: FeatureModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class Float64Features(nn.Module):
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
            raise ValueError(
                f"inception weights {str(path)!r} not found: pass the local torchvision InceptionV3 .pth file"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    net.aux_logits, net.AuxLogits = False, None
    return InceptionPoolFeatures(net)
