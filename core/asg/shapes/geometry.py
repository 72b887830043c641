"""Exact shape geometry as anti-aliased pixel coverage, shared by renderer and detector.

Using one definition for both means the detector's templates are the very
shapes the renderer draws, so clean renders match a template almost perfectly.
"""

from __future__ import annotations

import numpy as np

from .vocab import SHAPES


def inside(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """Boolean mask of points (pixel units) inside a shape whose square box has
    centre (cx, cy) and side `side`.  Triangles point up: apex at the top centre,
    base along the bottom edge, so their box is also side x side."""
    half = side / 2
    dx, dy = px - cx, py - cy
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        depth = dy + half  # distance below the apex
        return (depth >= 0) & (depth <= side) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def coverage(shape: str, cx: float, cy: float, side: float,
             rows: tuple[int, int], cols: tuple[int, int], ss: int = 4) -> np.ndarray:
    """Fraction of each pixel in rows x cols (half-open ranges) covered by the shape.

    Equivalent to drawing at ss-times resolution and box-downsampling, which is
    what "anti-aliased" means here.
    """
    r0, r1 = rows
    c0, c1 = cols
    ys = (np.arange(r0 * ss, r1 * ss) + 0.5) / ss
    xs = (np.arange(c0 * ss, c1 * ss) + 0.5) / ss
    hit = inside(shape, xs[None, :], ys[:, None], cx, cy, side)
    return hit.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3))


def unit_area(shape: str) -> float:
    """Area of a shape with box side 1 (circle pi/4, square 1, triangle 1/2)."""
    return {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}[shape]


def centroid_offset(shape: str) -> float:
    """Vertical offset (in box sides) of the centroid below the box centre.

    Only the triangle is asymmetric: its centroid sits 2/3 of the way down from
    the apex, i.e. 2/3 - 1/2 = 1/6 of a side below the box centre.
    """
    return 1.0 / 6.0 if shape == "triangle" else 0.0
