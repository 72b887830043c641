"""Adaptive KL coefficient β (algorithm.md §5.1).

After each successful update step, fed the MEAN KL of that step (recipe quirk 4: the reference fed
the GRPO group's summed KL):

    e = clip((KL − target) / target, −50, 50)
    β ← clip(β · exp(clip(rate · e, −50, 50)), β_min, β_max)

with β_0 = 0.01, target 0.02, rate 0.10, β ∈ [0.001, 100].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from asg._validate import number


@attrs.frozen
class KLConfig:
    """The adaptive-β controller's constants (§5.1)."""

    init: float = attrs.field(default=0.01, validator=number(0.0, None, lo_open=True))  # β before any step
    target: float = attrs.field(default=0.02, validator=number(0.0, None, lo_open=True))  # KL (nats/token) aimed at
    rate: float = attrs.field(default=0.10, validator=number(0.0, None))  # log-β change per unit relative error
    error_clip: float = attrs.field(default=50.0, validator=number(0.0, None, lo_open=True))  # |relative error| cap
    step_clip: float = attrs.field(default=50.0, validator=number(0.0, None, lo_open=True))  # |log-β step| cap
    beta_min: float = attrs.field(default=0.001, validator=number(0.0, None))  # floor of β
    beta_max: float = attrs.field(default=100.0, validator=number(0.0, None, lo_open=True))  # ceiling of β
    adaptive: bool = True  # False keeps β fixed at init

    def __attrs_post_init__(self) -> None:
        if not self.beta_min <= self.init <= self.beta_max:
            raise ValueError(f"KLConfig.init must lie in [beta_min, beta_max] = [{self.beta_min}, {self.beta_max}], got {self.init}")


def _mean(kl: Any) -> float:
    """A scalar KL: a number as is; a tensor or sequence of per-sample KLs by its MEAN (quirk 4)."""
    if isinstance(kl, (int, float)):
        return float(kl)
    if hasattr(kl, "detach"):
        t = kl.detach().float()
        if t.numel() == 0:
            raise ValueError("cannot adapt β to an empty KL tensor")
        return float(t.mean())
    if isinstance(kl, Sequence) and kl:
        return sum(float(v) for v in kl) / len(kl)
    raise TypeError(f"kl must be a number, a tensor or a non-empty sequence, got {kl!r}")


class AdaptiveKL:
    """β for one updater; ``update(kl)`` after each successful step, ``value`` in the loss."""

    def __init__(self, config: KLConfig | None = None) -> None:
        self.config = config or KLConfig()
        self.value = self.config.init
        self.steps = 0

    def update(self, kl: Any) -> float:
        """Adapt β to this step's mean KL; returns the new β. Non-finite KL leaves β unchanged."""
        cfg = self.config
        k = _mean(kl)
        if not cfg.adaptive or not math.isfinite(k):
            return self.value
        err = min(cfg.error_clip, max(-cfg.error_clip, (k - cfg.target) / cfg.target))
        step = min(cfg.step_clip, max(-cfg.step_clip, cfg.rate * err))
        self.value = min(cfg.beta_max, max(cfg.beta_min, self.value * math.exp(step)))
        self.steps += 1
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.value, "steps": float(self.steps)}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        if set(state) != {"beta", "steps"}:
            raise KeyError(f"AdaptiveKL state must have keys ['beta', 'steps'], got {sorted(state)}")
        self.value, self.steps = float(state["beta"]), int(state["steps"])

    def __repr__(self) -> str:
        return f"AdaptiveKL(beta={self.value:.6g}, steps={self.steps})"


__all__ = ["AdaptiveKL", "KLConfig"]
