"""Segmentation masks: one normal form, and the few operations the rest of the pack needs.

Every mask that enters textloc becomes a ``(H, W)`` float32 tensor holding only 0 and 1
(1 = the concept). Users hand masks over in many encodings; all of these give the same
result for the same drawing:

* grayscale (PIL ``L``/``1``/``I``/``F``, a 2-D array): white = concept;
* RGB (black background, the concept painted in any bright colour): a pixel is in the mask
  when any channel is bright, so a red scribble counts as well as a white one;
* RGBA / LA whose alpha varies: alpha is the mask (opaque = concept, the convention of
  cut-outs from background removers). An RGBA file whose alpha is fully opaque (the paper's
  masks are stored that way) is read from its colour channels instead;
* bool or float arrays / tensors, and ComfyUI ``MASK`` tensors ``(H, W)`` or ``(1, H, W)``.

Values are thresholded at 0.5 (soft edges are rounded, so the losses see a clean region).

ComfyUI's LoadImage returns ``MASK = 1 - alpha``: what is *transparent* is masked, which is
what its mask editor paints. A ComfyUI ``MASK`` is therefore taken as it is (1 = concept),
and an RGBA *file* saved from the mask editor (photo in RGB, painted region transparent)
is read the same way with ``invert=True, channel="alpha"``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MASK_THRESHOLD = 0.5
"""Pixels at or above this value (after scaling to [0, 1]) belong to the concept."""

MASK_CHANNELS = ("auto", "alpha", "color")
"""How to read a mask with colour and/or alpha: "auto" (alpha when it varies, else colour),
"alpha" (always alpha; opaque = concept) or "color" (ignore alpha; any bright channel)."""


def to_binary_mask(mask, *, invert: bool = False, channel: str = "auto", what: str = "mask") -> torch.Tensor:
    """Normalise ``mask`` (PIL image, numpy array or torch tensor) to ``(H, W)`` float32 {0, 1}.

    ``invert`` flips the result (use it for files painted in ComfyUI's mask editor, where the
    painted region is transparent). ``what`` names the input in error messages
    ("mask 3 of concept 'doll'").
    """
    if channel not in MASK_CHANNELS:
        raise ValueError(f"{what}: channel={channel!r} is not one of {MASK_CHANNELS}")
    if isinstance(mask, Image.Image):
        values = _pil_to_hwc(mask)
    elif isinstance(mask, torch.Tensor):
        values = _tensor_to_hwc(mask, what)
    elif isinstance(mask, np.ndarray):
        values = mask if mask.ndim == 3 else mask.reshape(*mask.shape, 1) if mask.ndim == 2 else mask
        if values.ndim != 3 or values.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"{what}: array of shape {mask.shape} is not one mask; expected (H, W) or (H, W, C)")
    else:
        raise ValueError(f"{what}: expected a PIL image, numpy array or torch tensor, got {type(mask).__name__}")
    # Work in the data's own dtype and compare against half of its full scale: no float copy
    # of a large photo-sized mask is needed.
    full = _full_scale(values, what)
    plane = _select_plane(values, full, channel, what)
    binary = plane >= MASK_THRESHOLD * full
    if invert:
        binary = ~binary
    return torch.from_numpy(np.ascontiguousarray(binary)).to(torch.float32)


def _pil_to_hwc(image: Image.Image) -> np.ndarray:
    """A PIL image as an (H, W, C) array in its own dtype, C in {1, 2, 3, 4}."""
    if image.mode == "P":
        # Palette images: expand the palette, keeping transparency when the file has it.
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode not in ("1", "L", "LA", "RGB", "RGBA", "F") and not image.mode.startswith("I"):
        image = image.convert("RGBA")  # CMYK, YCbCr, LAB...: compare in RGB(A)
    array = np.asarray(image)
    return array if array.ndim == 3 else array[:, :, None]


def _full_scale(array: np.ndarray, what: str) -> float:
    """The value that means "fully in the mask" for this array's dtype and contents.

    bool and float data: 1 (floats must lie in [0, 1]). Integer data holding only 0 and 1
    is read as labels (segmentation tools often save masks that way): 1. 8-bit data: 255.
    Wider integers: 255 or 65535, whichever range the values fit.
    """
    if array.dtype == bool:
        return 1.0
    if np.issubdtype(array.dtype, np.integer):
        high = int(array.max()) if array.size else 0
        if np.issubdtype(array.dtype, np.signedinteger) and array.size and int(array.min()) < 0:
            raise ValueError(f"{what}: integer mask has negative values; expected 0..255 (or 0..65535)")
        if high <= 1:
            return 1.0
        return 255.0 if array.dtype == np.uint8 or high <= 255 else 65535.0
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not np.isfinite(array).all():
            raise ValueError(f"{what}: mask has NaN or infinite values")
        if array.size and (array.min() < 0.0 or array.max() > 1.0):
            raise ValueError(
                f"{what}: float mask values span [{array.min():g}, {array.max():g}], expected [0, 1]; "
                "divide 8-bit values by 255 first"
            )
        return 1.0
    raise ValueError(f"{what}: unsupported mask dtype {array.dtype}")


def _tensor_to_hwc(tensor: torch.Tensor, what: str) -> np.ndarray:
    """A torch mask as (H, W, C). Accepts ComfyUI MASK (H, W) / (1, H, W), and (H, W, C) /
    (1, H, W, C) images with C in {1, 3, 4} (an IMAGE used as a mask)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.to(torch.float32)  # numpy has no bfloat16
    array = tensor.numpy()
    shape = tuple(array.shape)
    if array.ndim == 4 and shape[0] == 1 and shape[-1] in (1, 3, 4):
        return array[0]
    if array.ndim == 3 and shape[0] == 1:
        return array[0][:, :, None]
    if array.ndim == 3 and shape[-1] in (1, 3, 4):
        return array
    if array.ndim == 2:
        return array[:, :, None]
    raise ValueError(
        f"{what}: tensor of shape {shape} is not one mask; expected a ComfyUI MASK (H, W) or (1, H, W) "
        "(split a batch of masks first)"
    )


def _select_plane(values: np.ndarray, full: float, channel: str, what: str) -> np.ndarray:
    """Reduce (H, W, C) values to the (H, W) plane that carries the mask."""
    count = values.shape[2]
    has_alpha = count in (2, 4)
    if channel == "alpha":
        if not has_alpha:
            raise ValueError(f"{what}: channel='alpha' but the mask has no alpha channel; use channel='auto'")
        return values[:, :, -1]
    if channel == "auto" and has_alpha and values[:, :, -1].min(initial=full) < full:
        return values[:, :, -1]
    colour = values[:, :, : count - 1] if has_alpha else values
    # "Any bright channel": max over colour channels, so grey, white and coloured paint all count.
    return colour[:, :, 0] if colour.shape[2] == 1 else colour.max(axis=2)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a binary mask (``(H, W)`` or ``(..., H, W)``) to ``size = (height, width)``
    with nearest-neighbour sampling, so it stays binary. Use this next to an image resize."""
    return _interpolate(mask, size, mode="nearest-exact")


def mask_to_grid(mask: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resample a mask onto an attention-map grid (``(..., H, W)`` -> ``(..., h, w)``).

    Shrinking (the usual case: a photo-sized mask onto a 64x64..8x8 map) area-averages, so
    each cell holds the fraction of its pixels inside the mask, the target the attention
    losses compare a token map with. When the grid is larger than the mask in either side,
    bilinear interpolation is used instead (area mode would just repeat pixels in blocks).
    ``size`` is a side or ``(h, w)``.
    """
    if isinstance(size, int):
        size = (size, size)
    shrinking = mask.dim() >= 2 and mask.shape[-2] >= size[0] and mask.shape[-1] >= size[1]
    return _interpolate(mask, size, mode="area" if shrinking else "bilinear")


def _interpolate(mask: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mask.dim() < 2:
        raise ValueError(f"mask: expected (..., H, W), got shape {tuple(mask.shape)}")
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).to(torch.float32)
    extra = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(flat, size=tuple(int(s) for s in size), mode=mode, **extra)
    return out.reshape(*lead, *out.shape[-2:])


def mask_area(mask: torch.Tensor) -> int:
    """Number of pixels in the mask (value >= 0.5)."""
    return int((mask >= MASK_THRESHOLD).sum().item())


def mask_coverage(mask: torch.Tensor) -> float:
    """Fraction of the picture the mask covers, in [0, 1]."""
    return mask_area(mask) / max(1, mask.numel())
