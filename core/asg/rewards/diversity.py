"""Set-level diversity of the L candidates generated from one spec (algorithm.md §6.3 item 3).

For a set S of images, with g = grayscale 96x96 pixels and h = 32-bin RGB histogram at 64x64:

    D(S) = 0.6 min(1, mean_pairs (1 - cos(g_a, g_b)) / 0.30) + 0.4 min(1, mean_pairs (1 - BC(h_a, h_b)) / 0.25)

(BC = Bhattacharyya coefficient sum sqrt(h_a h_b); D = 0.5 for a single image). Candidate i is
credited with what it adds to the set, normalised by the best contribution:

    div_i = max(0, D(S) - D(S \\ i)) / max_j max(0, D(S) - D(S \\ j))      (0 if every contribution is 0)

L = 2: both get D(S); L = 1: 0.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import TYPE_CHECKING, Any

import attrs

from asg._validate import number
from asg.rewards._num import as_matrix, cosine
from asg.rewards.components import RewardOutput

if TYPE_CHECKING:
    from PIL import Image


@attrs.frozen
class DiversityConfig:
    """Constants of D(S) (§6.3 item 3)."""

    gray_weight: float = attrs.field(default=0.6, validator=number(0.0, None))  # weight of the pixel term
    gray_scale: float = attrs.field(default=0.30, validator=number(0.0, None, lo_open=True))  # distance giving full credit
    hist_weight: float = attrs.field(default=0.4, validator=number(0.0, None))  # weight of the colour term
    hist_scale: float = attrs.field(default=0.25, validator=number(0.0, None, lo_open=True))  # distance giving full credit
    single_value: float = attrs.field(default=0.5, validator=number(0.0, 1.0))  # D of a one-image set
    gray_size: int = attrs.field(default=96, validator=number(1, None, integer=True))  # side of the grayscale thumbnail
    hist_size: int = attrs.field(default=64, validator=number(1, None, integer=True))  # side of the histogram thumbnail
    hist_bins: int = attrs.field(default=32, validator=number(1, 256, integer=True))  # bins per RGB channel


DEFAULT_DIVERSITY = DiversityConfig()


def image_features(image: Image.Image, config: DiversityConfig = DEFAULT_DIVERSITY) -> tuple[list[float], list[float]]:
    """(grayscale pixels in [0, 1], normalised concatenated per-channel histogram) of one PIL image."""
    from PIL import Image as PILImage

    if not isinstance(image, PILImage.Image):
        raise TypeError(f"image must be a PIL.Image.Image, got {type(image).__name__}")
    side = config.gray_size
    gray = [v / 255.0 for v in image.convert("L").resize((side, side), PILImage.BILINEAR).tobytes()]  # 1 byte/pixel
    small = image.convert("RGB").resize((config.hist_size, config.hist_size), PILImage.BILINEAR)
    full = small.histogram()  # 3 x 256 counts
    hist = []
    edges = [(b * 256) // config.hist_bins for b in range(config.hist_bins + 1)]  # 32 bins: 8 levels each
    for ch in range(3):
        counts = full[256 * ch : 256 * (ch + 1)]
        hist.extend(sum(counts[edges[b] : edges[b + 1]]) for b in range(config.hist_bins))
    total = float(sum(hist))
    return gray, [c / total for c in hist]


def _bhattacharyya(p: list[float], q: list[float]) -> float:
    sp, sq = sum(p), sum(q)
    if sp <= 0 or sq <= 0:
        return 0.0
    return math.fsum(math.sqrt(max(a, 0.0) / sp * max(b, 0.0) / sq) for a, b in zip(p, q))


def _set_value(gray: list[list[float]], hist: list[list[float]], config: DiversityConfig) -> float:
    if len(gray) < 2:
        return config.single_value
    pairs = list(combinations(range(len(gray)), 2))
    g = sum(1.0 - cosine(gray[a], gray[b]) for a, b in pairs) / len(pairs)
    h = sum(1.0 - _bhattacharyya(hist[a], hist[b]) for a, b in pairs) / len(pairs)
    return config.gray_weight * min(1.0, g / config.gray_scale) + config.hist_weight * min(1.0, h / config.hist_scale)


def _inputs(gray: Any, hist: Any) -> tuple[list[list[float]], list[list[float]]]:
    g, h = as_matrix(gray, "gray"), as_matrix(hist, "hist")
    if len(g) != len(h):
        raise ValueError(f"gray has {len(g)} images but hist has {len(h)}")
    return g, h


def set_diversity(gray: Any, hist: Any, config: DiversityConfig = DEFAULT_DIVERSITY) -> float:
    """D(S) of the set whose images have grayscale vectors ``gray`` (L, P) and histograms ``hist`` (L, B)."""
    g, h = _inputs(gray, hist)
    if not g:
        raise ValueError("set_diversity of an empty set")
    return _set_value(g, h, config)


def diversity(gray: Any, hist: Any, config: DiversityConfig = DEFAULT_DIVERSITY) -> RewardOutput:
    """Leave-one-out diversity credit of each of the L candidates (module docstring)."""
    g, h = _inputs(gray, hist)
    n = len(g)
    if n == 0:
        return RewardOutput([], [])
    whole = _set_value(g, h, config)
    if n == 1:
        return RewardOutput([0.0], [{"diversity.set": whole, "diversity.gain": 0.0}])
    if n == 2:
        return RewardOutput([whole, whole], [{"diversity.set": whole, "diversity.gain": whole}] * 2)
    gains = []
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        gains.append(max(0.0, whole - _set_value([g[j] for j in rest], [h[j] for j in rest], config)))
    top = max(gains)
    values = [x / top if top > 0 else 0.0 for x in gains]
    return RewardOutput(values, [{"diversity.set": whole, "diversity.gain": x} for x in gains])


__all__ = ["DEFAULT_DIVERSITY", "DiversityConfig", "diversity", "image_features", "set_diversity"]
