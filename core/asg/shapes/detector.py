"""GenEval-mini's deterministic detector: image -> coloured shapes.

Pipeline (each step chosen to survive blurry, noisy, off-colour model output):
1. Chroma: project RGB onto the plane orthogonal to grey.  Mixing a colour
   with a grey background (anti-aliasing, blur) scales its chroma but keeps its
   hue, so hue names the colour and chroma length measures coverage.
2. Foreground = pixels clearly off the background (in RGB) that keep some
   chroma and whose hue is near a palette hue; black/grey/brown-ish pixels are
   rejected rather than forced into a colour.
3. Colour-agnostic 4-connected components, then per-component colour votes;
   a component is only split by colour when a second colour is substantial
   (so hue noise on edges cannot fragment one object).
4. Shape: soft coverage (RGB + luminance, see _coverage_estimate) gives area
   and centroid, which blur does not change; ideal circle/square/triangle
   templates of that area and centroid, sharp or blurred, are compared by
   soft IoU and the best match wins.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
from PIL import Image

from . import _checks as c
from .components import label
from .geometry import centroid_offset, coverage, unit_area
from .vocab import BACKGROUND, COLORS, SHAPES

_COLOR_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[k] for k in _COLOR_NAMES], dtype=np.float64)

# Minimum coverage (along the background->colour line in RGB) for a pixel to
# seed the foreground, and the minimum share of its colour's chroma it must
# keep (chroma noise at sigma 8 is ~0.06 of a palette chroma, so 0.2 is > 3 sigma).
FG_ALPHA = 0.4
MIN_CHROMA = 0.2
# A pixel whose hue is further than this from every palette hue is "no colour".
MAX_HUE_DEG = 35.0
# A second colour must hold this share of a component's weight to split it.
SPLIT_SHARE = 0.25
# Smallest object, as a fraction of the image area.  The smallest real object
# (small triangle: 0.5 * 0.2^2 = 0.02) is 5x larger; noise specks are smaller.
MIN_AREA_FRAC = 0.004
# Best template IoU below this means "not one of our shapes" (clean renders
# score > 0.9); rejects blobs from noise, merged objects and model garbage.
MIN_IOU = 0.5
_SCALES = (0.9, 0.95, 1.0, 1.05, 1.1)  # absorb area bias from blur/noise
# Candidate blur (Gaussian sigma, px) applied to the templates: a blurred square
# looks like a circle to a sharp template, but not to an equally blurred one.
_SIGMAS = (0.0, 0.6, 0.9, 1.2, 1.5)
_RING = 3  # px of soft edge kept around a part: most of a blur tail, little noise
MIN_IMAGE = 16
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as used by JPEG
_LUMA_WEIGHT = 0.5
_MIN_LUMA_CONTRAST = 25.0  # palette yellow has ~47 against the default background


@attrs.frozen
class Detection:
    """A detected object: normalised box centre/size (x right, y down) and area in pixels."""

    shape: str = attrs.field(validator=c.one_of(SHAPES))
    color: str = attrs.field(validator=c.one_of(COLORS))
    x: float = attrs.field(converter=c.to_float, validator=c.real_in(0.0, 1.0))
    y: float = attrs.field(converter=c.to_float, validator=c.real_in(0.0, 1.0))
    # Sizes are unbounded above: a template fitted to a blob filling the image
    # can be wider than the image (e.g. a triangle of the same area).
    w: float = attrs.field(converter=c.to_float, validator=c.real_in(0.0, math.inf, lo_open=True))
    h: float = attrs.field(converter=c.to_float, validator=c.real_in(0.0, math.inf, lo_open=True))
    area: float = attrs.field(default=0.0, converter=c.to_float, validator=c.nonneg_float)


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """Opponent chroma (..., 2): zero for any grey, angle ~ hue."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([r - (g + b) / 2, (math.sqrt(3) / 2) * (g - b)], axis=-1)


def _background(rgb: np.ndarray) -> np.ndarray:
    # Generated images may have an off-white or tinted background; estimate it
    # from clearly unsaturated pixels, falling back to the canonical colour.
    low = np.linalg.norm(_chroma(rgb), axis=-1) < 20
    if low.mean() < 0.2:
        return np.asarray(BACKGROUND, dtype=np.float64)
    return np.median(rgb[low], axis=0)


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def _coverage_estimate(rgb: np.ndarray, bg: np.ndarray, color: np.ndarray) -> np.ndarray:
    """Per-pixel fraction of `color` over `bg` (unclipped).

    Two estimates are averaged: the projection onto the bg->colour line in RGB,
    and the luminance ratio.  For yellow and orange the RGB line is mostly the
    blue channel, which JPEG stores at half resolution, so at 32 px the RGB
    estimate alone smears a small square into a circle; luminance is kept at
    full resolution.  (Measured at 32 px, JPEG q40: 91% -> 99% exact scenes.)
    Luminance is skipped when the colour barely differs from bg in brightness.
    """
    line = color - bg
    a = ((rgb - bg) @ line) / (line @ line)
    dy = float(line @ _LUMA)
    if abs(dy) < _MIN_LUMA_CONTRAST:
        return a
    return (1 - _LUMA_WEIGHT) * a + _LUMA_WEIGHT * (((rgb - bg) @ _LUMA) / dy)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """n x n Gaussian blur operator (rows sum to <= 1: mass leaving the window is lost)."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = np.exp(-0.5 * (d / sigma) ** 2)
    return k / (sigma * math.sqrt(2 * math.pi))


def _fit_shape(alpha: np.ndarray, r0: int, c0: int) -> tuple[str, float, float, float, float]:
    """Best (shape, iou, cx, cy, side) in pixel units for a soft mask at offset (r0, c0)."""
    area = float(alpha.sum())
    ys, xs = np.indices(alpha.shape)
    mx = float((alpha * (xs + c0 + 0.5)).sum() / area)
    my = float((alpha * (ys + r0 + 0.5)).sum() / area)
    rows, cols = (r0, r0 + alpha.shape[0]), (c0, c0 + alpha.shape[1])
    blur_r = {sg: _blur_matrix(alpha.shape[0], sg) for sg in _SIGMAS if sg}
    blur_c = {sg: _blur_matrix(alpha.shape[1], sg) for sg in _SIGMAS if sg}
    best = ("circle", -1.0, mx, my, 0.0)
    for shape in SHAPES:
        side0 = math.sqrt(area / unit_area(shape))
        for k in _SCALES:
            side = side0 * k
            cy = my - centroid_offset(shape) * side  # centroid -> box centre
            sharp = coverage(shape, mx, cy, side, rows, cols)
            for sg in _SIGMAS:
                t = sharp if sg == 0 else blur_r[sg] @ sharp @ blur_c[sg].T
                iou = float(np.minimum(alpha, t).sum() / np.maximum(alpha, t).sum())
                if iou > best[1]:
                    best = (shape, iou, mx, cy, side)
    return best


def detect(image: Image.Image) -> list[Detection]:
    """Detect our coloured shapes in any RGB-convertible image (>= 32 px recommended).

    Returns detections sorted left to right (then top to bottom).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    if min(image.size) < MIN_IMAGE:
        raise ValueError(f"image must be at least {MIN_IMAGE}x{MIN_IMAGE} px, got {image.size}")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = rgb.shape[:2]
    bg = _background(rgb)

    pal = _chroma(_PALETTE) - _chroma(bg)  # (6, 2): each colour's chroma offset from bg
    chroma = _chroma(rgb) - _chroma(bg)
    proj = chroma @ pal.T  # (h, w, 6)
    norm = np.linalg.norm(chroma, axis=-1, keepdims=True) * np.linalg.norm(pal, axis=-1)
    cos = proj / np.maximum(norm, 1e-9)
    hue = cos.argmax(axis=-1)
    alpha_c = np.take_along_axis(proj / (pal ** 2).sum(-1), hue[..., None], -1)[..., 0]
    lines = _PALETTE - bg  # (6, 3): background -> colour, in RGB
    alpha_rgb = np.take_along_axis(
        ((rgb - bg) @ lines.T) / (lines ** 2).sum(-1), hue[..., None], -1)[..., 0]
    # Coverage must show in full RGB, which keeps luminance detail (JPEG
    # smears chroma of small objects, leaving dark cores with weak chroma), and
    # the pixel must still carry some chroma so greys and blacks never qualify.
    fg = ((alpha_rgb >= FG_ALPHA) & (alpha_c >= MIN_CHROMA)
          & (cos.max(axis=-1) >= math.cos(math.radians(MAX_HUE_DEG))))

    min_px = MIN_AREA_FRAC * h * w
    comps, n = label(fg)
    parts: list[tuple[np.ndarray, int]] = []  # (pixel mask, colour index)
    for i in range(1, n + 1):
        m = comps == i
        if m.sum() < min_px:
            continue
        weights = np.bincount(hue[m], weights=alpha_rgb[m].clip(0, 1), minlength=len(_COLOR_NAMES))
        kept = np.flatnonzero(weights >= SPLIT_SHARE * weights.sum())
        if kept.size == 0:  # hue soup (noise): no colour dominates
            continue
        if kept.size == 1:
            parts.append((m, int(kept[0])))
            continue
        # Several substantial colours: touching objects.  Reassign every pixel
        # to its closest kept colour and split each colour into components.
        owner = kept[cos[..., kept].argmax(axis=-1)]
        for k in kept:
            sub, ns = label(m & (owner == k))
            parts += [(sub == j, int(k)) for j in range(1, ns + 1) if (sub == j).sum() >= min_px]

    claimed = np.zeros((h, w), dtype=bool)
    for m, _ in parts:
        claimed |= m
    found = []
    for m, k in parts:
        # Soft coverage of colour k, restricted to a _RING px ring around the
        # part and away from other objects.
        ring = _dilate(m, _RING) & ~(claimed & ~m)
        rr, cc = np.nonzero(ring)
        r0, r1, c0, c1 = rr.min(), rr.max() + 1, cc.min(), cc.max() + 1
        a = _coverage_estimate(rgb[r0:r1, c0:c1], bg, _PALETTE[k])
        a = np.where(ring[r0:r1, c0:c1], np.clip(a, 0.0, 1.0), 0.0)
        if a.sum() < min_px:
            continue
        shape, iou, cx, cy, side = _fit_shape(a, int(r0), int(c0))
        if iou < MIN_IOU:
            continue
        found.append(Detection(shape, _COLOR_NAMES[k], min(max(cx / w, 0.0), 1.0),
                               min(max(cy / h, 0.0), 1.0), side / w, side / h, float(a.sum())))
    return sorted(found, key=lambda d: (d.x, d.y))
