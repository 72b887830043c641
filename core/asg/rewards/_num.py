"""Small numeric helpers shared by the reward modules: pure Python, no torch import.

Tensors are accepted wherever a 1-D sequence of reals is (converted once with ``.tolist()``), so a
caller can pass ``completion.stats.entropy`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def as_floats(values: Any, where: str) -> list[float]:
    """A 1-D torch tensor / numpy array / sequence of finite reals, as a list of Python floats."""
    if hasattr(values, "detach"):  # torch.Tensor: one device->host copy, not one per element
        if values.ndim != 1:
            raise ValueError(f"{where} must be 1-D, got shape {tuple(values.shape)}")
        values = values.detach().float().cpu().tolist()
    elif hasattr(values, "tolist") and hasattr(values, "ndim"):  # numpy
        if values.ndim != 1:
            raise ValueError(f"{where} must be 1-D, got shape {tuple(values.shape)}")
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{where} must be a 1-D tensor or a sequence of numbers, got {type(values).__name__}")
    out: list[float] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{where}[{i}] must be a number, got {v!r} ({type(v).__name__})")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{where}[{i}] must be finite, got {v!r}")
        out.append(f)
    return out


def as_matrix(rows: Any, where: str) -> list[list[float]]:
    """A 2-D tensor / array or a sequence of 1-D rows, as a list of float lists of equal length."""
    if hasattr(rows, "ndim"):
        if rows.ndim != 2:
            raise ValueError(f"{where} must be 2-D (rows, features), got shape {tuple(rows.shape)}")
        rows = list(rows)
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise TypeError(f"{where} must be a 2-D tensor or a sequence of rows, got {type(rows).__name__}")
    out = [as_floats(r, f"{where}[{i}]") for i, r in enumerate(rows)]
    if len({len(r) for r in out}) > 1:
        raise ValueError(f"{where}: rows must have equal length, got {[len(r) for r in out]}")
    return out


def clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def sigmoid(x: float) -> float:
    """Logistic function, stable for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def gauss(x: float, mu: float, sigma: float) -> float:
    """Unnormalised Gaussian bump exp(-(x - mu)^2 / (2 sigma^2)); 1 at x = mu."""
    return math.exp(-((x - mu) ** 2) / (2.0 * sigma * sigma))


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already-sorted values (numpy's default 'linear' method)."""
    if not sorted_values:
        raise ValueError("quantile of an empty sequence")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def cosine(x: Sequence[float], y: Sequence[float]) -> float:
    """cos(x, y) of two equal-length float lists; 0 if either is the zero vector."""
    if len(x) != len(y):
        raise ValueError(f"cosine of vectors of length {len(x)} and {len(y)}")
    nx, ny = math.sqrt(math.fsum(v * v for v in x)), math.sqrt(math.fsum(v * v for v in y))
    if nx == 0 or ny == 0:
        return 0.0
    return math.fsum(p * q for p, q in zip(x, y)) / (nx * ny)


def flag(value: bool) -> float:
    """Booleans are logged as 0.0 / 1.0 so every diagnostic is a float."""
    return 1.0 if value else 0.0
