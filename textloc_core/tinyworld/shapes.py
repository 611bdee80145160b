"""TinyWorld's pixel geometry: the image grid and each shape as an exact, hard-edged mask.

The lowest module of the world: ``world`` places objects so that each stays visible
(``object_coverage``), and ``render`` paints them.
"""

from __future__ import annotations

from functools import cache

import numpy as np

IMAGE_SIZE = 64

_ys, _xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def pixel_centres() -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs): the (H, W) coordinates of every pixel centre."""
    return _ys, _xs


@cache
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


def object_coverage(obj) -> np.ndarray:
    """(H, W) bool: the pixels whose centres ``obj`` (a ``world.PlacedObject``) covers,
    ignoring every other object."""
    return _shape_mask(obj.kind.shape, (_xs - obj.cx) / obj.r, (_ys - obj.cy) / obj.r)
