"""Small tensor helpers shared by the losses."""

from __future__ import annotations

import torch


def per_sequence(values: torch.Tensor, mask: torch.Tensor | None, reduction: str = "mean") -> torch.Tensor:
    """Reduce per-token ``values`` (B, T) over real tokens (``mask`` (B, T), True = real) to (B,).

    ``mean`` is length-normalised (a sequence with no real token gives 0); ``sum`` adds them up.
    A (B,) input is already per sequence and is returned as is.
    """
    if values.ndim == 1:
        return values
    if values.ndim != 2:
        raise ValueError(f"expected per-token values of shape (B, T) or (B,), got {tuple(values.shape)}")
    m = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    if m.shape != values.shape:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match values shape {tuple(values.shape)}")
    total = torch.where(m, values, torch.zeros_like(values)).sum(-1)  # where(): padding may hold inf/nan
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / m.sum(-1).clamp_min(1).to(values.dtype)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def stats(x: torch.Tensor, prefix: str) -> dict[str, float]:
    """mean/std (population)/min/max of a 1-D tensor as floats, keys ``{prefix}_mean`` etc."""
    x = x.detach().float()
    if x.numel() == 0:
        return {f"{prefix}_{k}": 0.0 for k in ("mean", "std", "min", "max")}
    return {
        f"{prefix}_mean": float(x.mean()), f"{prefix}_std": float(x.std(unbiased=False)),
        f"{prefix}_min": float(x.min()), f"{prefix}_max": float(x.max()),
    }
