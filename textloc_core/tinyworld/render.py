"""Pixels and exact masks for TinyWorld scenes (numpy, no anti-aliasing on object edges).

Objects are hard-edged so that masks are exact: a pixel belongs to an object iff the object
covers the pixel centre and no later object does. ``render_scene`` paints an id map (0 =
background, k = k-th object) and composes the image from it, so masks and pixels can never
disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .world import COLOURS, IMAGE_SIZE, PlacedObject, SceneSpec

_ys, _xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5  # pixel centres


@dataclass
class RenderedScene:
    """``image`` (H, W, 3) float32 in [0, 1]; ``masks`` (n_objects, H, W) bool, visible pixels
    of each object in spec order; ``ids`` (H, W) int, 0 = background, k = object k-1."""

    spec: SceneSpec
    image: np.ndarray
    masks: np.ndarray
    ids: np.ndarray


@lru_cache(maxsize=None)
def _star_polygon() -> np.ndarray:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)


def _inside_polygon(x: np.ndarray, y: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon for arrays of points (unit-free coordinates)."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (x2 - x1) * (y - y1) / (y2 - y1) + x1
        inside ^= crosses & (x < x_at)
    return inside


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Coverage of a unit-radius ``shape`` at offsets (dx, dy) already divided by the radius."""
    d2 = dx * dx + dy * dy
    if shape == "circle":
        return d2 <= 1.0
    if shape == "ring":
        return (d2 <= 1.0) & (d2 >= 0.55**2)
    if shape == "square":
        return (np.abs(dx) <= 0.82) & (np.abs(dy) <= 0.82)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.05
    if shape == "triangle":
        return (dy <= 0.8) & (dy >= -1.0) & (np.abs(dx) <= (dy + 1.0) * 0.6)
    if shape == "cross":
        return ((np.abs(dx) <= 0.33) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.33) & (np.abs(dx) <= 1.0))
    if shape == "star":
        return _inside_polygon(dx, dy, _star_polygon() * 1.1)
    raise ValueError(f"unknown shape {shape!r}")


def object_coverage(obj: PlacedObject) -> np.ndarray:
    """(H, W) bool: the pixels whose centres ``obj`` covers, ignoring every other object."""
    return _shape_mask(obj.kind.shape, (_xs - obj.cx) / obj.r, (_ys - obj.cy) / obj.r)


def _object_pixels(obj: PlacedObject) -> np.ndarray:
    """(H, W, 3) the object's textured colour everywhere (cut out later by its mask)."""
    base = np.array(COLOURS[obj.kind.colour], dtype=np.float32)
    dark = base * 0.3
    # texture coordinates relative to the object so a pattern moves with its object
    u = np.floor(_xs - obj.cx + 64).astype(np.int64)
    v = np.floor(_ys - obj.cy + 64).astype(np.int64)
    texture = obj.kind.texture
    if texture == "plain":
        pick = np.zeros(u.shape, bool)
        second = dark
    elif texture == "striped":
        pick = ((u + v) // 3) % 2 == 1
        second = dark
    elif texture == "checkered":
        pick = ((u // 3) + (v // 3)) % 2 == 1
        second = dark
    elif texture == "dotted":
        du, dv = (u % 5) - 2, (v % 5) - 2
        pick = du * du + dv * dv <= 1
        # white dots, black dots on light objects so they stay visible
        second = np.array((0.05, 0.05, 0.05) if base.min() > 0.6 else (1.0, 1.0, 1.0), np.float32)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(pick[..., None], second, base).astype(np.float32)


def render_background(name: str, seed: int) -> np.ndarray:
    """(H, W, 3) float32 background ``name``, its noise drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    h = IMAGE_SIZE
    if name == "grass":
        img = np.array((0.16, 0.45, 0.14), np.float32) + rng.normal(0, 0.04, (h, h, 1)).astype(np.float32)
        blades = rng.random((h, h)) < 0.08
        img = np.where(blades[..., None], img * 0.6, img)
    elif name == "sky":
        t = (_ys / h)[..., None]
        img = (1 - t) * np.array((0.35, 0.6, 0.95), np.float32) + t * np.array((0.7, 0.85, 1.0), np.float32)
        for _ in range(2):  # soft clouds
            cx, cy, s = rng.uniform(0, h), rng.uniform(0, h * 0.6), rng.uniform(5, 9)
            w = np.exp(-(((_xs - cx) / (1.8 * s)) ** 2 + ((_ys - cy) / s) ** 2))[..., None]
            img = img * (1 - 0.6 * w) + 0.6 * w * np.float32(0.97)
    elif name == "night":
        img = np.broadcast_to(np.array((0.03, 0.04, 0.16), np.float32), (h, h, 3)).copy()
        stars = rng.random((h, h)) < 0.015
        img[stars] = (0.85, 0.85, 0.7)
    elif name == "sand":
        img = np.array((0.86, 0.74, 0.50), np.float32) + rng.normal(0, 0.035, (h, h, 1)).astype(np.float32)
    else:
        raise ValueError(f"unknown background {name!r}")
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def render_scene(spec: SceneSpec) -> RenderedScene:
    """Render ``spec``: image, per-object visible masks (occlusion respected) and id map."""
    image = render_background(spec.background, spec.texture_seed)
    ids = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.int64)
    for k, obj in enumerate(spec.objects, start=1):
        ids[object_coverage(obj)] = k  # later objects overwrite earlier ones
    for k, obj in enumerate(spec.objects, start=1):
        visible = ids == k
        image[visible] = _object_pixels(obj)[visible]
    masks = np.stack([ids == k for k in range(1, len(spec.objects) + 1)]) if spec.objects else np.zeros(
        (0, IMAGE_SIZE, IMAGE_SIZE), bool
    )
    return RenderedScene(spec, image, masks, ids)
