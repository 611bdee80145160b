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


DEFAULT_MAX_PIXELS = 4096 * 4096
"""Pixels a photo or mask file may hold when it is kept at its own size (no training
resolution: Concept Folder's ``resolution`` 0). A decoded RGB photo of this size is 200 MB
as float32; Train refuses sides above 2x a model's native size anyway."""

MAX_PIXELS = 8192 * 8192
"""Pixels no photo or mask file may exceed, whatever the resolution (192 MB decoded as RGB)."""

OVERSIZE = 8
"""With a training resolution R, files up to (OVERSIZE x R)^2 pixels are read (between the two
limits above); they are decoded and then reduced by a whole factor before resizing."""

_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F")


def pixel_limit(resolution: int | None) -> int:
    """The most pixels a photo or mask file may hold when it is read for ``resolution``
    (None or 0: kept at its own size)."""
    if not resolution:
        return DEFAULT_MAX_PIXELS
    return min(MAX_PIXELS, max(DEFAULT_MAX_PIXELS, (OVERSIZE * resolution) ** 2))


def reduce_factor(width: int, height: int, resolution: int | None) -> int:
    """The power of two a ``width x height`` photo can be shrunk by while its shorter side stays
    at least twice ``resolution`` (so the final antialiased resize still has detail to use);
    1 when kept at its own size."""
    factor = 1
    while resolution and min(width, height) >= 4 * resolution * factor:
        factor *= 2
    return factor


def picture_size(path: Path, shown: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (nothing is decoded). A file over
    ``max_pixels`` raises ValueError naming it and the limit, so a small file that would
    decompress to gigabytes (a decompression bomb) is refused before it takes any memory."""
    with _opened(path, shown) as picture:
        return _checked_size(picture, shown, max_pixels)


def open_picture(path: Path, shown: str, max_pixels: int = DEFAULT_MAX_PIXELS, factor: int = 1) -> Image.Image:
    """Open and decode an image file, EXIF rotation applied, after checking its size against
    ``max_pixels`` (``picture_size``). ``factor`` > 1 shrinks it by that whole factor (box
    average) right after decoding, so only the reduced copy is kept.

    ``shown`` is how the file is named in errors (usually relative to the dataset folder).
    A truncated, corrupt or non-image file raises ValueError naming it.
    """
    with _opened(path, shown) as picture:
        _checked_size(picture, shown, max_pixels)
        try:
            picture.load()
            if factor > 1:
                if picture.mode not in _REDUCIBLE_MODES:  # "1", "P", "I;16"...: one Pillow can reduce
                    picture = picture.convert("I" if picture.mode.startswith("I;") else "RGBA")
                picture = picture.reduce(factor)
            picture = ImageOps.exif_transpose(picture)
            picture.load()
            return picture
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise _unreadable(shown, error, path) from None


class _opened:
    """``Image.open`` of ``path`` as a context manager whose errors name the file as ``shown``."""

    def __init__(self, path: Path, shown: str):
        self.path, self.shown, self.picture = path, shown, None

    def __enter__(self) -> Image.Image:
        try:
            with warnings.catch_warnings():
                # Pillow warns from 89 megapixels on and refuses twice that; our own limit
                # (``_checked_size``, at most MAX_PIXELS) is checked right after the header is read.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.picture = Image.open(self.path)
        except FileNotFoundError:
            raise ValueError(f"{self.shown} does not exist") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise _unreadable(self.shown, error, self.path) from None
        return self.picture

    def __exit__(self, *exc) -> None:
        self.picture.close()


def _checked_size(picture: Image.Image, shown: str, max_pixels: int) -> tuple[int, int]:
    width, height = picture.size
    if width * height > max_pixels:
        raise ValueError(
            f"{shown} is {width}x{height} ({width * height / 1e6:.1f} megapixels), above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels for this read (README, Security): downscale the file, or set a "
            "training resolution (files up to 8 times its side are read)"
        )
    return width, height


def _unreadable(shown: str, error: BaseException, path: Path) -> ValueError:
    # Pillow's messages may quote the file's full path: the server's folders are not the user's
    detail = str(error).replace(str(path), shown)
    return ValueError(
        f"{shown} is not a readable image: {detail}. Re-export it as PNG or JPEG, or remove it from the folder"
    )


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
    out = F.interpolate(
        image[None].to(torch.float32), size=tuple(size), mode="bicubic", antialias=True, align_corners=False
    )
    return out[0].clamp(0.0, 1.0)


def fit_size(
    height: int, width: int, resolution: int, center_crop: bool
) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
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
