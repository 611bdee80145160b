"""Pixels and exact masks for TinyWorld scenes (numpy, no anti-aliasing on object edges).

Objects are hard-edged so that masks are exact: a pixel belongs to an object iff the object
covers the pixel centre and no later object does. ``render_scene`` paints an id map (0 =
background, k = k-th object) and composes the image from it, so masks and pixels can never
disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import IMAGE_SIZE, object_coverage, pixel_centres
from .world import COLOURS, PlacedObject, SceneSpec

_ys, _xs = pixel_centres()


@dataclass
class RenderedScene:
    """``image`` (H, W, 3) float32 in [0, 1]; ``masks`` (n_objects, H, W) bool, visible pixels
    of each object in spec order; ``ids`` (H, W) int, 0 = background, k = object k-1."""

    spec: SceneSpec
    image: np.ndarray
    masks: np.ndarray
    ids: np.ndarray


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
    masks = (
        np.stack([ids == k for k in range(1, len(spec.objects) + 1)])
        if spec.objects
        else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), bool)
    )
    return RenderedScene(spec, image, masks, ids)
