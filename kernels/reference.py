"""PyTorch reference implementation of the per-token statistics (semantics in ``asg.kernels``)."""

from __future__ import annotations

from typing import NamedTuple

import torch

# Rows per chunk are chosen so one fp32 chunk of logits stays near this many elements (64 MiB).
_CHUNK_ELEMENTS = 1 << 24


class TokenStatsOutput(NamedTuple):
    """Per-row statistics; every field has the leading shape of the logits without the vocab axis."""

    entropy: torch.Tensor  # nats, fp32
    logprob: torch.Tensor  # log p(target), fp32 (0 where target is ignored or absent)
    logsumexp: torch.Tensor  # log sum exp(z / temperature), fp32
    top1: torch.Tensor  # argmax index, int64
    top1_logit: torch.Tensor  # largest (temperature-scaled) logit, fp32
    top2_logit: torch.Tensor  # second largest; equals top1_logit on ties

    @property
    def margin(self) -> torch.Tensor:
        finite = torch.isfinite(self.top1_logit) & torch.isfinite(self.top2_logit)
        return torch.where(finite, self.top1_logit - self.top2_logit, torch.zeros_like(self.top1_logit))


def _prepare(logits: torch.Tensor, temperature: float, vocab_size: int | None) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point torch.Tensor, got {type(logits).__name__}"
                        + (f" of dtype {logits.dtype}" if isinstance(logits, torch.Tensor) else ""))
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty vocabulary axis, got shape {tuple(logits.shape)}")
    if not (temperature > 0.0) or temperature != temperature or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    if vocab_size is not None and vocab_size < z.shape[-1]:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        pad = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
        pad[vocab_size:] = True
        z = z.masked_fill(pad, float("-inf"))
    return z


def _rows_per_chunk(vocab: int) -> int:
    return max(1, _CHUNK_ELEMENTS // vocab)


def token_stats(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    vocab_size: int | None = None,
) -> TokenStatsOutput:
    """Entropy, log-prob of ``target``, log-sum-exp and top-1/top-2 of each row of ``logits`` (..., V).

    Differentiable in ``logits`` (entropy, log-prob, log-sum-exp and the top logits).
    """
    lead = logits.shape[:-1] if isinstance(logits, torch.Tensor) else ()
    z_all = _prepare(logits, temperature, vocab_size)
    V = z_all.shape[-1]
    z_all = z_all.reshape(-1, V)  # (N, V)
    N = z_all.shape[0]
    if target is not None:
        if target.shape != lead:
            raise ValueError(f"target must have shape {tuple(lead)} (logits without the vocab axis), got {tuple(target.shape)}")
        if target.is_floating_point():
            raise TypeError(f"target must hold integer token ids, got dtype {target.dtype}")
        tgt_all = target.reshape(-1).to(device=z_all.device, dtype=torch.long)
        valid = tgt_all != ignore_index
        bad = valid & ((tgt_all < 0) | (tgt_all >= V))
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"target id {int(tgt_all[i])} at row {i} is outside the vocabulary [0, {V}) "
                             f"and is not ignore_index={ignore_index}")
    outs: list[tuple[torch.Tensor, ...]] = []
    rows = _rows_per_chunk(V)
    for start in range(0, N, rows):
        z = z_all[start:start + rows]  # (n, V) fp32
        m = z.amax(-1, keepdim=True)  # (n, 1)
        dead = torch.isneginf(m)  # rows whose logits are all -inf
        m_safe = torch.where(dead, torch.zeros_like(m), m)
        shifted = z - m_safe  # <= 0 where finite, -inf where masked
        e = shifted.exp()
        s = e.sum(-1, keepdim=True)  # >= 1 on live rows
        log_s = s.log()
        # H = log s - sum(e * shifted) / s, with the 0 * (-inf) products guarded to 0
        a = torch.where(e > 0, e * shifted, torch.zeros_like(e)).sum(-1, keepdim=True)
        ent = torch.where(dead, torch.zeros_like(log_s), log_s - a / s.clamp_min(1e-30)).squeeze(-1)
        lse = (m_safe + log_s).squeeze(-1)
        lse = torch.where(dead.squeeze(-1), torch.full_like(lse, float("-inf")), lse)
        top = z.detach().topk(min(2, V), dim=-1)
        top1 = top.indices[:, 0]
        top1_logit = z.gather(-1, top1[:, None]).squeeze(-1)
        if V > 1:
            top2_logit = z.gather(-1, top.indices[:, 1:2]).squeeze(-1)
        else:
            top2_logit = torch.full_like(top1_logit, float("-inf"))
        if target is not None:
            t = tgt_all[start:start + z.shape[0]]
            ok = t != ignore_index
            picked = z.gather(-1, torch.where(ok, t, torch.zeros_like(t))[:, None]).squeeze(-1)
            # on a fully masked row every token is impossible: -inf, not (-inf) - (-inf) = NaN
            live_lp = torch.where(dead.squeeze(-1), torch.full_like(lse, float("-inf")), picked - (m_safe + log_s).squeeze(-1))
            lp = torch.where(ok, live_lp, torch.zeros_like(lse))
        else:
            lp = torch.zeros_like(lse)
        outs.append((ent, lp, lse, top1, top1_logit, top2_logit))
    if not outs:  # zero rows
        empty = z_all.new_empty(lead)
        return TokenStatsOutput(empty, empty, empty, empty.long(), empty, empty)
    return TokenStatsOutput(*(torch.cat(parts).reshape(lead) for parts in zip(*outs)))


def token_kl(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """Per-row full-vocabulary KL(p || q) in nats, p = softmax(logits_p / T), q = softmax(logits_q / T).

    Terms with p = 0 contribute 0; p > 0 where q = 0 gives +inf. Differentiable in both inputs.
    """
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits_p and logits_q must have the same shape, got {tuple(logits_p.shape)} and {tuple(logits_q.shape)}")
    lead = logits_p.shape[:-1]
    zp_all = _prepare(logits_p, temperature, vocab_size)
    zq_all = _prepare(logits_q, temperature, vocab_size)
    V = zp_all.shape[-1]
    zp_all, zq_all = zp_all.reshape(-1, V), zq_all.reshape(-1, V)
    parts = []
    rows = _rows_per_chunk(V)
    for start in range(0, zp_all.shape[0], rows):
        stop = start + rows
        lp = torch.log_softmax(zp_all[start:stop], -1)
        lq = torch.log_softmax(zq_all[start:stop], -1)
        p = lp.exp()
        diff = torch.where(p > 0, lp - lq, torch.zeros_like(lp))
        kl = torch.where(p > 0, p * diff, torch.zeros_like(p)).sum(-1)
        # a row of p that is all -inf has no distribution: define KL = 0
        kl = torch.where(torch.isneginf(zp_all[start:stop].amax(-1)), torch.zeros_like(kl), kl)
        parts.append(kl)
    out = torch.cat(parts) if parts else torch.empty(0, device=zp_all.device)
    return out.reshape(lead)
