"""Rasterise a Scene into an anti-aliased RGB image."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ._checks import require_int
from .geometry import coverage
from .scene import Scene
from .vocab import BACKGROUND, COLORS

MIN_SIZE = 16


def _supersample(size: int) -> int:
    # At least 4x, and more on small canvases so edge coverage is accurate to
    # ~1/64 of a pixel: the detector's shape fit relies on faithful edges.
    return max(4, math.ceil(256 / size))


def paint(canvas: np.ndarray, shape: str, color: tuple[int, int, int],
          x: float, y: float, extent: float) -> None:
    """Alpha-blend one shape (normalised centre/side) into a float HxWx3 canvas in place."""
    h, w = canvas.shape[:2]
    cx, cy, side_x = x * w, y * h, extent * w
    # Only touch the pixels under the box (plus one for rounding): rendering
    # cost then scales with object size, not canvas size.
    half = side_x / 2 + 1
    rows = (max(0, math.floor(cy - half)), min(h, math.ceil(cy + half)))
    cols = (max(0, math.floor(cx - half)), min(w, math.ceil(cx + half)))
    if rows[0] >= rows[1] or cols[0] >= cols[1]:
        return
    alpha = coverage(shape, cx, cy, side_x, rows, cols, _supersample(min(h, w)))[..., None]
    patch = canvas[rows[0]:rows[1], cols[0]:cols[1]]
    patch[...] = alpha * np.asarray(color, dtype=np.float64) + (1 - alpha) * patch


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw `scene` on a size x size light background."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    size = require_int("size", size, MIN_SIZE)
    canvas = np.empty((size, size, 3), dtype=np.float64)
    canvas[...] = BACKGROUND
    for o in scene.objects:
        paint(canvas, o.shape, COLORS[o.color], o.x, o.y, o.extent)
    return Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), "RGB")
