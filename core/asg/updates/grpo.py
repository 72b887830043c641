"""Group-relative policy optimisation with a PPO clip (algorithm.md §3.10, §5.2).

Advantages within a group of G members (the K proposer candidates + extras, or the L images of an
autoregressive generator):

    A_k = (r_k − mean(r)) / (std(r) + ε)        population std, ε = 1e-8 (§5.2)
    if std(r) < 1e-6 (a degenerate group): add a virtual reward 1.0 and z-score the real members
    against the augmented mean/std (NGRPO fallback, §5.2); with ``degenerate="zero"`` A = 0.

Loss (per member k; ``level="sequence"`` uses the length-normalised sequence log-prob as in §5.2,
``level="token"`` the per-token ratios of standard GRPO):

    ρ_k  = min(cap, exp(ℓ_k − ℓ_k^old))        ratio to the SAMPLING policy (recipe quirk 3)
    pg_k = max(−A_k·ρ_k, −A_k·clip(ρ_k, 1 − ε_c, 1 + ε_c))      ε_c = 0.2
    KL_k = mean_t [exp(ℓ^ref_t − ℓ_t) − (ℓ^ref_t − ℓ_t) − 1]   (k3 estimator, ≥ 0) to the REFERENCE
    loss = mean_k pg_k + β · mean_k KL_k

(or per-token full-vocabulary KL passed as ``kl``). Autoregressive image tokens: pass (B,) per-sample
log-probs (``Backbone.image_token_logprobs``, normalised by the token count) with ``mask=None``.
"""

from __future__ import annotations

import attrs
import torch

from asg._validate import number, one_of
from asg.errors import ConfigError
from asg.updates._tensor import per_sequence, stats


@attrs.frozen
class GRPOConfig:
    """Constants of the group-relative update."""

    clip_eps: float = attrs.field(default=0.2, validator=number(0.0, 1.0, lo_open=True))  # PPO clip ε (§5.2)
    ratio_cap: float = attrs.field(default=10.0, validator=number(1.0, None))  # ρ ≤ cap before clipping (§5.2)
    level: str = attrs.field(default="sequence", validator=one_of(("sequence", "token")))  # ratio per sequence (§5.2) or per token
    std_eps: float = attrs.field(default=1e-8, validator=number(0.0, None))  # ε in A = (r − mean)/(std + ε)
    degenerate_std: float = attrs.field(default=1e-6, validator=number(0.0, None))  # std below this = degenerate group
    degenerate: str = attrs.field(default="ngrpo", validator=one_of(("ngrpo", "zero")))  # what a degenerate group gets
    virtual_reward: float = attrs.field(default=1.0, validator=number())  # the NGRPO virtual (maximal) reward


def group_advantages(rewards: torch.Tensor, config: GRPOConfig | None = None) -> torch.Tensor:
    """Group-normalised advantages of rewards (G,) or (N, G) (one group per row), same shape."""
    cfg = config or GRPOConfig()
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.ndim not in (1, 2) or r.shape[-1] == 0:
        raise ValueError(f"rewards must have shape (G,) or (N, G) with G >= 1, got {tuple(r.shape)}")
    rows = r.reshape(-1, r.shape[-1])
    out = torch.empty_like(rows)
    for n, g in enumerate(rows):
        std = g.std(unbiased=False)
        if std >= cfg.degenerate_std:
            out[n] = (g - g.mean()) / (std + cfg.std_eps)
        elif cfg.degenerate == "zero":
            out[n] = 0.0
        else:  # NGRPO: the members are z-scored against the group augmented by a virtual max reward
            aug = torch.cat([g, g.new_tensor([cfg.virtual_reward])])
            a_std = aug.std(unbiased=False)
            out[n] = 0.0 if a_std < cfg.degenerate_std else (g - aug.mean()) / (a_std + cfg.std_eps)
    return out.reshape(r.shape)


def max_abs_advantages(shifted: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The proposer's baseline-shifted path (§3.10 step 6): A_k = r'_k / max_j |r'_j| (0 when all ≈ 0)."""
    s = torch.as_tensor(shifted, dtype=torch.float32)
    m = s.abs().max() if s.numel() else s.new_tensor(0.0)
    return torch.zeros_like(s) if m < eps else s / m


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    kl: torch.Tensor | None = None,
    beta: float = 0.0,
    config: GRPOConfig | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped group-relative policy loss and its diagnostics.

    logprobs: (B, T) policy log-probs of the sampled tokens (with grad), or (B,) per sample.
    old_logprobs: same shape, log-probs under the policy that SAMPLED them (no grad).
    advantages: (B,) group-relative advantages (:func:`group_advantages`).
    ref_logprobs: same shape, under the reference policy (adapters off), for the k3 KL estimate;
    or ``kl``: (B, T) per-token full-vocabulary KL to the reference. ``beta > 0`` needs one of them.
    """
    cfg = config or GRPOConfig()
    if old_logprobs.shape != logprobs.shape:
        raise ValueError(f"old_logprobs shape {tuple(old_logprobs.shape)} must match logprobs {tuple(logprobs.shape)}")
    B = logprobs.shape[0]
    adv = torch.as_tensor(advantages, dtype=logprobs.dtype, device=logprobs.device).detach().reshape(-1)
    if adv.shape[0] != B:
        raise ValueError(f"advantages must have shape ({B},), got {tuple(adv.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logprobs is None and kl is None:
        raise ConfigError("grpo_loss: beta > 0 needs ref_logprobs (k3 estimate) or kl (per-token full-vocabulary KL)")
    if mask is not None and logprobs.ndim == 2:  # padding may hold -inf/nan: zero it before any arithmetic
        pad = ~mask.bool()
        logprobs = logprobs.masked_fill(pad, 0.0)
        old_logprobs = old_logprobs.masked_fill(pad, 0.0)
        ref_logprobs = None if ref_logprobs is None else ref_logprobs.masked_fill(pad, 0.0)
        kl = None if kl is None else kl.masked_fill(pad, 0.0)
    old = old_logprobs.detach()
    token_level = cfg.level == "token" and logprobs.ndim == 2
    if token_level:
        log_ratio = logprobs - old  # (B, T)
        a = adv[:, None]
    else:
        log_ratio = per_sequence(logprobs, mask) - per_sequence(old, mask)  # (B,)
        a = adv
    # exp of a clamped log-ratio: the cap of §5.2 (no gradient beyond it, no overflow to inf)
    ratio = torch.exp(log_ratio.clamp(max=torch.log(torch.tensor(cfg.ratio_cap)).item()))
    unclipped = -a * ratio
    clipped = -a * ratio.clamp(1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps)
    pg_units = torch.maximum(unclipped, clipped)  # (B, T) or (B,)
    pg = per_sequence(pg_units, mask) if token_level else pg_units  # (B,)
    if kl is not None:
        seq_kl = per_sequence(kl, mask)
    elif ref_logprobs is not None:
        delta = ref_logprobs.detach() - logprobs  # log π_ref − log π, per token (or per sample)
        seq_kl = per_sequence(torch.exp(delta) - delta - 1.0, mask)  # k3 ≥ 0
    else:
        seq_kl = torch.zeros_like(pg)
    loss = pg.mean() + beta * seq_kl.mean()
    # diagnostics over real units (tokens at token level, sequences otherwise)
    real = (mask.bool() if (token_level and mask is not None) else torch.ones_like(ratio, dtype=torch.bool))
    r_real = ratio.detach()[real]
    active = (clipped.detach() > unclipped.detach())[real]  # the clipped branch won: no gradient there
    diag = {
        "loss": float(loss.detach()),
        "pg_loss": float(pg.detach().mean()),
        "kl": float(seq_kl.detach().mean()),
        "beta": float(beta),
        "clip_fraction": float(active.float().mean()) if active.numel() else 0.0,
        "ratio_mean": float(r_real.mean()) if r_real.numel() else 1.0,
        "ratio_min": float(r_real.min()) if r_real.numel() else 1.0,
        "ratio_max": float(r_real.max()) if r_real.numel() else 1.0,
        **stats(adv, "adv"),
    }
    return loss, diag


__all__ = ["GRPOConfig", "group_advantages", "grpo_loss", "max_abs_advantages"]
