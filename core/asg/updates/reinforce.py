"""REINFORCE with an EMA baseline and a full-vocabulary KL penalty (algorithm.md §3.9, §5.1).

Per sample i with completion tokens t (mask m):

    A_i  = r_i − b_i                       b: EMA baseline, read BEFORE sample i (§3.9)
    b_{i+1} = μ·b_i + (1 − μ)·r_i           μ = 0.6
    ℓ_i  = −A_i · mean_t log π(y_t) + β · mean_t KL_t       (= A_i·CE_i + β·KL_i, length-normalised)
    loss = (1/B) Σ_i w_i · ℓ_i

KL_t = Σ_v π(v)(log π(v) − log π_ref(v)) is the full-vocabulary KL to the reference policy (adapters
off) at each completion position, computed by the caller (``asg.kernels.token_kl``) and passed in.
The reference takes one optimiser step per sample; asg batches the N samples of a question in one
loss, keeping the sequential baseline semantics through :meth:`EMABaseline.advantages`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import torch

from asg._validate import number, one_of
from asg.updates._tensor import per_sequence, stats


@attrs.frozen
class ReinforceConfig:
    """Constants of the Solver's REINFORCE update."""

    momentum: float = attrs.field(default=0.6, validator=number(0.0, 1.0, hi_open=True))  # EMA baseline μ (§3.9)
    baseline_init: float = attrs.field(default=0.0, validator=number())  # b before the first reward
    # per-sequence log-prob and KL: length-normalised mean (§5.1 CE) or sum over tokens
    reduction: str = attrs.field(default="mean", validator=one_of(("mean", "sum")))


class EMABaseline:
    """Exponential moving average of rewards: b ← μ·b + (1 − μ)·r, one reward at a time."""

    def __init__(self, momentum: float = 0.6, init: float = 0.0) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"EMABaseline.momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.value = float(init)
        self.count = 0

    @classmethod
    def from_config(cls, config: ReinforceConfig) -> EMABaseline:
        return cls(config.momentum, config.baseline_init)

    def update(self, reward: float) -> float:
        """Fold one reward in; returns the new baseline."""
        self.value = self.momentum * self.value + (1.0 - self.momentum) * float(reward)
        self.count += 1
        return self.value

    def advantages(self, rewards: Sequence[float] | torch.Tensor, *, update: bool = True) -> torch.Tensor:
        """A_i = r_i − b_i with b updated after each reward, in order (§3.9); (B,) float32.

        With ``update=False`` the baseline is left as it was (a dry run).
        """
        values = [float(r) for r in (rewards.detach().flatten().tolist() if isinstance(rewards, torch.Tensor) else rewards)]
        saved = (self.value, self.count)
        out = []
        for r in values:
            out.append(r - self.value)
            self.update(r)
        if not update:
            self.value, self.count = saved
        return torch.tensor(out, dtype=torch.float32)

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "count": float(self.count), "momentum": self.momentum}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        if set(state) != {"value", "count", "momentum"}:
            raise KeyError(f"EMABaseline state must have keys ['count', 'momentum', 'value'], got {sorted(state)}")
        if float(state["momentum"]) != self.momentum:
            raise ValueError(f"EMABaseline state has momentum {state['momentum']} but this baseline uses {self.momentum}")
        self.value, self.count = float(state["value"]), int(state["count"])

    def __repr__(self) -> str:
        return f"EMABaseline(value={self.value:.6g}, momentum={self.momentum}, count={self.count})"


def reinforce_loss(
    logprobs: torch.Tensor,
    mask: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    weights: torch.Tensor | None = None,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL-regularised REINFORCE loss (§5.1) and its diagnostics.

    logprobs: (B, T) log π(y_t) of the completion tokens under the policy (with grad).
    mask: (B, T) True at real completion tokens (None = all real).
    advantages: (B,) r − b (no grad; see :meth:`EMABaseline.advantages`).
    kl: (B, T) per-token full-vocabulary KL(π ‖ π_ref), or None for no penalty.
    weights: (B,) non-negative per-sample weights (default 1); the loss is (1/B)·Σ w_i·ℓ_i.
    """
    B = logprobs.shape[0]
    adv = torch.as_tensor(advantages, dtype=logprobs.dtype, device=logprobs.device).detach().reshape(-1)
    if adv.shape[0] != B:
        raise ValueError(f"advantages must have shape ({B},), got {tuple(adv.shape)}")
    w = torch.ones(B, dtype=logprobs.dtype, device=logprobs.device) if weights is None else (
        torch.as_tensor(weights, dtype=logprobs.dtype, device=logprobs.device).detach().reshape(-1))
    if w.shape[0] != B or bool((w < 0).any()):
        raise ValueError(f"weights must be {B} non-negative values, got {w.tolist()}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if mask is not None and logprobs.ndim == 2:  # padding may hold -inf/nan: zero it before any arithmetic
        logprobs = logprobs.masked_fill(~mask.bool(), 0.0)
        kl = None if kl is None else kl.masked_fill(~mask.bool(), 0.0)
    seq_logp = per_sequence(logprobs, mask, reduction)  # (B,)
    pg = -adv * seq_logp  # (B,)  = A·CE for the mean reduction
    if kl is not None:
        seq_kl = per_sequence(kl, mask, reduction)  # (B,)
    else:
        seq_kl = torch.zeros_like(seq_logp)
    per_sample = pg + beta * seq_kl  # (B,)
    loss = (w * per_sample).sum() / B
    m = torch.ones_like(logprobs, dtype=torch.bool) if (mask is None or logprobs.ndim == 1) else mask.bool()
    diag = {
        "loss": float(loss.detach()),
        "pg_loss": float((w * pg).detach().sum() / B),
        "kl": float(seq_kl.detach().mean()),
        "beta": float(beta),
        "logprob_mean": float(seq_logp.detach().mean()),
        "tokens_mean": float(m.sum(-1).float().mean()) if m.ndim == 2 else 1.0,
        "weight_sum": float(w.sum()),
        **stats(adv, "adv"),
    }
    return loss, diag


__all__ = ["EMABaseline", "ReinforceConfig", "reinforce_loss"]
