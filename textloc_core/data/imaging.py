"""Picture files and picture geometry: open a photo or mask file safely, and bring an image
and its masks to a training resolution together.

Photos are read the way ComfyUI's LoadImage reads them (EXIF rotation applied, alpha
dropped, 8-bit values / 255), so a photo given as a file and the same photo given as a
ComfyUI IMAGE yield the same tensor and the same data hash.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .masks import resize_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
"""File types the readers open as photos or masks."""


def open_picture(path: Path, shown: str) -> Image.Image:
    """Open and fully decode an image file, EXIF rotation applied.

    ``shown`` is how the file is named in errors (usually relative to the dataset folder).
    A truncated, corrupt or non-image file raises ValueError naming it.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns on very large images and raises past twice its limit; an error is enough.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as picture:
                picture.load()
                picture = ImageOps.exif_transpose(picture)
                picture.load()
                return picture
    except FileNotFoundError:
        raise ValueError(f"{shown} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(
            f"{shown} is not a readable image: {error}. Re-export it as PNG or JPEG, or remove it from the folder"
        ) from None


def picture_to_image(picture: Image.Image) -> torch.Tensor:
    """A PIL photo as a (3, H, W) float32 tensor in [0, 1]. Alpha is dropped (as in ComfyUI's
    LoadImage), so RGBA photos become their RGB."""
    if picture.mode == "I":
        # Exactly ComfyUI's LoadImage step for 32-bit integer images, so both paths agree.
        picture = picture.point(lambda value: value * (1 / 255))
    array = np.asarray(picture.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).to(torch.float32).div_(255.0)


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (3, H, W) image to ``size = (height, width)`` (bicubic, antialiased), clamped to [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None].to(torch.float32), size=tuple(size), mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp(0.0, 1.0)


def fit_size(height: int, width: int, resolution: int, center_crop: bool) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """Where an image of ``height x width`` goes for a ``resolution`` square.

    With ``center_crop`` the shorter side is scaled to ``resolution`` and the centre square
    cut out (no distortion); otherwise the image is stretched to the square. Returns the
    resized ``(h, w)`` and the crop box ``(top, left, h, w)`` (None when nothing is cut).
    """
    if resolution < 1:
        raise ValueError(f"resolution {resolution} must be a positive number of pixels")
    if not center_crop:
        return (resolution, resolution), None
    scale = resolution / min(height, width)
    new_h = max(resolution, round(height * scale))
    new_w = max(resolution, round(width * scale))
    top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    box = None if (new_h, new_w) == (resolution, resolution) else (top, left, resolution, resolution)
    return (new_h, new_w), box


def fit_pair(
    image: torch.Tensor, masks: dict[str, torch.Tensor], resolution: int, center_crop: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bring a (3, H, W) image and its (H, W) masks to ``resolution x resolution`` with the same
    geometry (see ``fit_size``); masks are resized with nearest sampling and stay binary."""
    size, box = fit_size(image.shape[-2], image.shape[-1], resolution, center_crop)
    image = _crop(resize_image(image, size), box)
    return image, {name: fit_mask(mask, resolution, center_crop) for name, mask in masks.items()}


def fit_mask(mask: torch.Tensor, resolution: int, center_crop: bool = True) -> torch.Tensor:
    """A (H, W) mask as ``fit_pair`` would make it, without needing its photo."""
    size, box = fit_size(mask.shape[-2], mask.shape[-1], resolution, center_crop)
    return _crop(resize_mask(mask, size), box)


def _crop(picture: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    if box is None:
        return picture
    top, left, h, w = box
    return picture[..., top : top + h, left : left + w].contiguous()
