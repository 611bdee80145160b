"""Token maps -> pictures a person can read: coloured overlays and labelled per-token grids.

Used by the ComfyUI attention-preview node and by the results figure. Plain torch + PIL (for
the labels); no matplotlib. Images are (B, 3, H, W) float in [0, 1] (ComfyUI's IMAGE is
(B, H, W, 3): ``images.movedim(-1, 1)`` in, ``.movedim(1, -1)`` out); maps are (B, h, w) on
the attention grid, any scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch.nn import functional as F

from ..attention.maps import normalize_maps


def jet(values: torch.Tensor) -> torch.Tensor:
    """The classic "jet" colormap: values in [0, 1] (any shape) -> RGB in [0, 1] (shape + (3,)).

    Blue at 0, through cyan, yellow, to red at 1; piecewise linear, as matplotlib's jet.
    """
    x = values.float().clamp(0, 1).unsqueeze(-1)
    centres = torch.tensor([0.75, 0.5, 0.25], device=x.device)  # where red, green, blue peak
    return (1.5 - (4 * x - 4 * centres).abs()).clamp(0, 1)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps -> (B, H, W), bilinear (a smooth picture of a coarse grid)."""
    _check_maps(maps)
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    return F.interpolate(maps.float().unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def _check_maps(maps: torch.Tensor) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"maps: expected a (B, h, w) tensor of token maps, got {shape}")


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"images: expected (B, 3, H, W) in [0, 1], got {shape}; ComfyUI IMAGE tensors are "
            "(B, H, W, 3): pass images.movedim(-1, 1)"
        )


def colorize(maps: torch.Tensor, size: tuple[int, int] | None = None, normalize: bool = True) -> torch.Tensor:
    """(B, h, w) maps -> (B, 3, H, W) jet pictures, upsampled to ``size`` when given."""
    _check_maps(maps)
    values = maps.detach().float()
    if size is not None:
        values = upsample_maps(values, size)
    if normalize:
        values = normalize_maps(values)
    return jet(values).permute(0, 3, 1, 2).contiguous()


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, normalize: bool = True) -> torch.Tensor:
    """Blend jet-coloured maps over images: (B, 3, H, W) and (B, h, w) -> (B, 3, H, W) in [0, 1].

    ``alpha`` is the map's weight (0: the image, 1: the map alone). One map for many images,
    or one image for many maps, is broadcast.
    """
    _check_images(images)
    _check_maps(maps)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: {alpha} must be in [0, 1]")
    if images.shape[0] != maps.shape[0] and 1 not in (images.shape[0], maps.shape[0]):
        raise ValueError(
            f"images/maps: {images.shape[0]} images and {maps.shape[0]} maps; give equal counts or one of either"
        )
    colours = colorize(maps.to(images.device), tuple(images.shape[-2:]), normalize)
    return ((1 - alpha) * images.detach().float().clamp(0, 1) + alpha * colours).clamp(0, 1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> 8-bit RGB PIL image."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image: expected (3, H, W), got {tuple(image.shape)}")
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def from_pil(picture: Image.Image) -> torch.Tensor:
    """8-bit PIL image -> (3, H, W) float in [0, 1]."""
    array = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def token_grid(
    images: torch.Tensor,
    maps: torch.Tensor,
    labels: Sequence[str],
    *,
    row_labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    cell: int | None = None,
    show_image: bool = True,
    pad: int = 2,
) -> torch.Tensor:
    """A labelled grid: one row per image, columns = the image, then one overlay per token.

    ``images`` (B, 3, H, W); ``maps`` (B, K, h, w) with ``labels`` naming the K tokens
    ("<doll1>"); ``row_labels`` optionally names the rows (e.g. the method). ``cell``: side of
    each picture in pixels (default: the image's height, at least 64 so labels fit).
    Returns (3, H', W') in [0, 1]; ``to_pil`` makes it a file.
    """
    _check_images(images)
    if maps.dim() != 4 or maps.shape[0] != images.shape[0]:
        raise ValueError(f"maps: expected (B, K, h, w) with B = {images.shape[0]} images, got {tuple(maps.shape)}")
    if len(labels) != maps.shape[1]:
        raise ValueError(f"labels: {len(labels)} labels for {maps.shape[1]} token maps; give one per token")
    if row_labels is not None and len(row_labels) != images.shape[0]:
        raise ValueError(f"row_labels: {len(row_labels)} labels for {images.shape[0]} rows")
    batch, n_tokens = maps.shape[:2]
    cell = cell or max(64, images.shape[-2])
    pictures = F.interpolate(
        images.detach().float().clamp(0, 1), size=(cell, cell), mode="bilinear", antialias=True, align_corners=False
    )
    font_size = max(10, cell // 8)
    header = font_size + 2 * pad
    side = 0
    font = _font(font_size)
    if row_labels is not None:
        side = max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(str(t), font=font) for t in row_labels)
        side = int(side) + 2 * pad
    columns = ([("image", None)] if show_image else []) + [(labels[k], k) for k in range(n_tokens)]
    width = side + len(columns) * (cell + pad) + pad
    height = header + batch * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, (title, _) in enumerate(columns):
        draw.text((side + pad + c * (cell + pad), pad), str(title), fill=(0, 0, 0), font=font)
    for b in range(batch):
        top = header + b * (cell + pad)
        if row_labels is not None:
            draw.text((pad, top + cell // 2 - font_size // 2), str(row_labels[b]), fill=(0, 0, 0), font=font)
        for c, (_, k) in enumerate(columns):
            tile = pictures[b] if k is None else overlay(pictures[b : b + 1], maps[b, k : k + 1], alpha)[0]
            canvas.paste(to_pil(tile), (side + pad + c * (cell + pad), top))
    return from_pil(canvas)
