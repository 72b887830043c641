"""PyTorch reference of the per-token statistics (semantics in ``asg.kernels``).

Forward and backward are written out by hand (no autograd graph through [rows x vocab]
temporaries) and chunked over rows, so the fp32 temporaries stay near ``_CHUNK_ELEMENTS`` elements
whatever the number of tokens. The Triton kernels in :mod:`asg.kernels.triton_kernels` implement
the same forward and backward formulas; :mod:`asg.kernels.api` wraps either in autograd.

All functions take 2-D inputs (rows, vocab) and return per-row tensors in the compute dtype (fp32,
or fp64 for fp64 inputs so that ``gradcheck`` can run on them).
"""

from __future__ import annotations

import torch

# Rows per chunk are chosen so one chunk of logits stays near this many elements (16 MiB in fp32);
# a forward chunk needs two such buffers (the upcast logits and their exponentials).
_CHUNK_ELEMENTS = 1 << 22
NEG_INF = float("-inf")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def rows_per_chunk(vocab: int, budget: int | None = None) -> int:
    return max(1, (budget or _CHUNK_ELEMENTS) // max(1, vocab))


def _view(flat: torch.Tensor | None, n: int, w: int) -> torch.Tensor | None:
    """A contiguous (n, w) view of the start of a flat scratch buffer (None: allocate)."""
    return None if flat is None else flat[: n * w].view(n, w)


def _scratch(elements: int, dtype: torch.dtype, device: torch.device, count: int) -> list[torch.Tensor]:
    """Scratch buffers reused by every chunk of one call (no allocation per chunk)."""
    return [torch.empty(elements, dtype=dtype, device=device) for _ in range(count)]


def _scaled(z: torch.Tensor, temperature: float, vocab_limit: int, dtype: torch.dtype,
            buf: torch.Tensor | None = None) -> torch.Tensor:
    """A copy we own (into ``buf`` if given): upcast, divided by the temperature (after the upcast),
    columns >= vocab_limit set to -inf."""
    out = _view(buf, *z.shape)
    out = z.to(dtype, copy=True) if out is None else out.copy_(z)
    if temperature != 1.0:
        out.div_(temperature)
    if vocab_limit < out.shape[-1]:
        out[:, vocab_limit:] = NEG_INF
    return out


def _tile_state(z: torch.Tensor, col0: int, target: torch.Tensor | None,
                e_buf: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Online-softmax state of one tile of scaled logits ``z`` (n, w) whose columns start at ``col0``:
    (m, r, a, top2, top1 index, target logit) -- what one program of the fused kernels holds.

    ``m`` is the row max (-inf if none is finite; it doubles as the top-1 logit), ``r`` the sum of
    e^(z-m) over every column but the first maximum (so s = 1 + r exactly and log s = log1p(r) keeps
    its precision on peaked rows), ``a = sum e^(z-m) (z-m)`` (entropy accumulated on z - max: no
    cancellation). ``z`` is consumed (overwritten); one more buffer of its size is used (``e_buf``).
    """
    n = z.shape[0]
    m, i1 = z.max(-1)  # first index of the maximum
    dead = torch.isneginf(m)
    m_safe = torch.where(dead, torch.zeros_like(m), m)
    rows = torch.arange(n, device=z.device)
    if target is not None:
        local = target - col0
        here = (local >= 0) & (local < z.shape[1])
        picked = z.gather(-1, torch.where(here, local, torch.zeros_like(local))[:, None]).squeeze(-1)
        zt = torch.where(here, picked, torch.zeros_like(picked))
    else:
        zt = torch.zeros_like(m)
    if z.shape[1] > 1:  # second largest with ties kept: only the first maximum is removed
        z[rows, i1] = NEG_INF
        t2 = z.amax(-1)
        z[rows, i1] = m
    else:
        t2 = torch.full_like(m, NEG_INF)
    z.sub_(m_safe[:, None])  # z - max: <= 0 where finite, -inf where masked
    e = torch.exp(z, out=_view(e_buf, *z.shape)) if e_buf is not None else torch.exp(z)
    e[rows, i1] = 0.0
    r = e.sum(-1)
    z.clamp_min_(torch.finfo(z.dtype).min)  # so that 0 * (-inf) cannot make a NaN below
    a = e.mul_(z).sum(-1)
    return m, r, a, t2, i1 + col0, zt


def merge_partials(m, r, a, t2, i1, zt, target, ignore_index):
    """Combine per-(row, vocabulary split) states (N, S), splits in column order, into the outputs
    (entropy, logprob, logsumexp, top1, top1_logit, top2_logit). Rows with no finite logit give
    entropy 0, logprob and logsumexp -inf, top-1 index 0."""
    M = m.amax(1)
    live = ~torch.isneginf(M)
    M_safe = torch.where(live, M, torch.zeros_like(M))
    split_live = ~torch.isneginf(m)
    alpha = torch.exp(m - M_safe[:, None])  # 0 for splits with no finite logit
    s_k = torch.where(split_live, 1.0 + r, torch.zeros_like(r))  # each split's sum relative to its own max
    d = torch.where(split_live, m - M_safe[:, None], torch.zeros_like(m))
    A = (alpha * (a + s_k * d)).sum(1)
    win = (m == M[:, None]).to(torch.int8).argmax(1)  # first split holding the maximum
    if m.shape[1] > 1:
        R = r.gather(1, win[:, None]).squeeze(1) + (alpha * s_k).scatter(1, win[:, None], 0.0).sum(1)
        top1 = i1.gather(1, win[:, None]).squeeze(1)
        T2 = torch.maximum(t2.amax(1), m.scatter(1, win[:, None], NEG_INF).amax(1))
    else:
        R, top1, T2 = r[:, 0], i1[:, 0], t2[:, 0]
    log_s = torch.log1p(R)  # s = 1 + R relative to the global max
    h = torch.where(live, log_s - A / (1.0 + R), torch.zeros_like(R))
    lse = torch.where(live, M_safe + log_s, torch.full_like(R, NEG_INF))
    if target is not None:
        lp = torch.where(live, zt.sum(1) - lse, torch.full_like(R, NEG_INF))
        lp = torch.where(target == ignore_index, torch.zeros_like(lp), lp)
    else:
        lp = torch.zeros_like(h)
    return h, lp, lse, top1, M, T2


def stats_forward(
    logits: torch.Tensor, target: torch.Tensor | None, temperature: float, ignore_index: int, vocab_limit: int
) -> tuple[torch.Tensor, ...]:
    """(entropy, logprob, logsumexp, top1, top1_logit, top2_logit) of each row of ``logits`` (N, V)."""
    N, V = logits.shape
    dtype = compute_dtype(logits)
    step = rows_per_chunk(V)
    zbuf, ebuf = _scratch(min(N, step) * V, dtype, logits.device, 2)
    outs: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, N, step):
        z = _scaled(logits[start:start + step], temperature, vocab_limit, dtype, zbuf)
        t = target[start:start + step] if target is not None else None
        state = _tile_state(z, 0, t, ebuf)
        outs.append(merge_partials(*(x[:, None] for x in state), t, ignore_index))
    if not outs:
        e = logits.new_empty(0, dtype=dtype)
        return e, e, e, e.long(), e, e
    return tuple(torch.cat(parts) for parts in zip(*outs))


def _rows(sl: slice, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Each per-row tensor restricted to the rows ``sl`` (None stays None)."""
    return tuple(None if t is None else t[sl] for t in tensors)


def _grad_tile(
    z: torch.Tensor,
    col0: int,
    target: torch.Tensor | None,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    g_entropy: torch.Tensor | None,
    g_logprob: torch.Tensor | None,
    g_lse: torch.Tensor | None,
    ignore_index: int,
    temperature: float,
) -> torch.Tensor:
    """d(stats)/d logits for a tile of scaled logits ``z`` (n, w) whose columns start at ``col0``
    (the chain rule through z = logits / T included)."""
    dtype = z.dtype
    l = lse.to(dtype)
    dead = torch.isneginf(l)
    l_safe = torch.where(dead, torch.zeros_like(l), l)
    logp = z - l_safe[:, None]
    p = torch.where(dead[:, None], torch.zeros_like(z), logp.exp())
    g = torch.zeros_like(z)
    if g_lse is not None:
        g = g + g_lse[:, None].to(dtype) * p
    if g_entropy is not None:
        term = torch.where(p > 0, p * (logp + entropy[:, None].to(dtype)), torch.zeros_like(p))
        g = g - g_entropy[:, None].to(dtype) * term
    if g_logprob is not None and target is not None:
        ok = (target != ignore_index) & ~dead
        gl = torch.where(ok, g_logprob.to(dtype), torch.zeros_like(l))
        g = g - gl[:, None] * p
        local = target - col0
        here = ok & (local >= 0) & (local < z.shape[1])
        g = g.scatter_add(-1, torch.where(here, local, torch.zeros_like(local))[:, None],
                          torch.where(here, gl, torch.zeros_like(gl))[:, None])
    return g / temperature if temperature != 1.0 else g


def stats_backward(
    logits: torch.Tensor,
    target: torch.Tensor | None,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    g_entropy: torch.Tensor | None,
    g_logprob: torch.Tensor | None,
    g_lse: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
    vocab_limit: int,
) -> torch.Tensor:
    """Gradient w.r.t. ``logits`` (N, V), in the dtype of ``logits``.

    With p = softmax(z), z = logits / T:  d lse/dz = p;  d log p_t/dz = onehot(t) - p;
    dH/dz = -p (log p + H).  Each is divided by T; columns with p = 0 (masked) get 0.
    """
    N, V = logits.shape
    dtype = compute_dtype(logits)
    grad = torch.empty_like(logits)
    step = rows_per_chunk(V)
    for start in range(0, N, step):
        sl = slice(start, min(N, start + step))
        z = _scaled(logits[sl], temperature, vocab_limit, dtype)
        g = _grad_tile(z, 0, *_rows(sl, target, lse, entropy, g_entropy, g_logprob, g_lse), ignore_index, temperature)
        grad[sl] = g.to(grad.dtype)
    return grad


def kl_forward(
    logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float, vocab_limit: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(KL(p || q), lse_p, lse_q) per row. Terms with p = 0 contribute 0; p > 0 where q = 0 gives +inf;
    a row of p that is all -inf has no distribution and gets KL 0."""
    N, V = logits_p.shape
    dtype = compute_dtype(logits_p)
    kls, lps, lqs = [], [], []
    step = rows_per_chunk(V)
    pbuf, qbuf, ebuf = _scratch(min(N, step) * V, dtype, logits_p.device, 3)
    for start in range(0, N, step):
        zp = _scaled(logits_p[start:start + step], temperature, vocab_limit, dtype, pbuf)
        zq = _scaled(logits_q[start:start + step], temperature, vocab_limit, dtype, qbuf)
        lse_p = torch.logsumexp(zp, -1)
        lse_q = torch.logsumexp(zq, -1)
        dead_p, dead_q = torch.isneginf(lse_p), torch.isneginf(lse_q)
        zp.sub_(torch.where(dead_p, torch.zeros_like(lse_p), lse_p)[:, None])  # log p
        zq.sub_(torch.where(dead_q, torch.zeros_like(lse_q), lse_q)[:, None])  # log q
        p = torch.exp(zp, out=_view(ebuf, *zp.shape))
        diff = zq.neg_().add_(zp)  # log p - log q (NaN where both are -inf; p = 0 there)
        diff.masked_fill_(p == 0, 0.0)
        kl = p.mul_(diff).sum(-1)
        kl = torch.where(dead_p, torch.zeros_like(kl), kl)
        kl = torch.where(dead_q & ~dead_p, torch.full_like(kl, float("inf")), kl)
        kls.append(kl)
        lps.append(lse_p)
        lqs.append(lse_q)
    if not kls:
        e = logits_p.new_empty(0, dtype=dtype)
        return e, e, e
    return torch.cat(kls), torch.cat(lps), torch.cat(lqs)


def kl_backward(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    lse_p: torch.Tensor,
    lse_q: torch.Tensor,
    kl: torch.Tensor,
    g: torch.Tensor,
    temperature: float,
    vocab_limit: int,
    need_p: bool = True,
    need_q: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of KL(p || q) w.r.t. both logits: dKL/dz_p = p (log p - log q - KL), dKL/dz_q = q - p,
    each divided by T. Rows with an infinite or undefined KL get zero gradient."""
    N, V = logits_p.shape
    dtype = compute_dtype(logits_p)
    gp = torch.empty_like(logits_p) if need_p else None
    gq = torch.empty_like(logits_q) if need_q else None
    step = rows_per_chunk(2 * V)
    for start in range(0, N, step):
        stop = min(N, start + step)
        zp = _scaled(logits_p[start:stop], temperature, vocab_limit, dtype)
        zq = _scaled(logits_q[start:stop], temperature, vocab_limit, dtype)
        k = kl[start:stop].to(dtype)
        ok = torch.isfinite(k) & torch.isfinite(lse_p[start:stop]) & torch.isfinite(lse_q[start:stop])
        gg = torch.where(ok, g[start:stop].to(dtype), torch.zeros_like(k))[:, None] / temperature
        lp_, lq_ = lse_p[start:stop].to(dtype), lse_q[start:stop].to(dtype)
        lp_ = torch.where(ok, lp_, torch.zeros_like(lp_))
        lq_ = torch.where(ok, lq_, torch.zeros_like(lq_))
        k = torch.where(ok, k, torch.zeros_like(k))
        logp = zp - lp_[:, None]
        logq = zq - lq_[:, None]
        p = logp.exp()
        q = logq.exp()
        if gp is not None:
            term = torch.where(p > 0, p * (logp - logq - k[:, None]), torch.zeros_like(p))
            gp[start:stop] = (gg * term).to(gp.dtype)
        if gq is not None:
            gq[start:stop] = (gg * (q - p)).to(gq.dtype)
    return gp, gq


# Most vocabulary columns per tile of the torch fused-linear path.
LINEAR_VOCAB_TILE = 32768


def linear_tiles(n_tokens: int, vocab_limit: int, hidden: int, chunk_tokens: int | None) -> tuple[int, int]:
    """(tokens per chunk, vocabulary columns per tile) of the torch fused-linear path: the fp32 copy
    of a weight tile (columns x hidden) and a tile of logits (tokens x columns) each hold about
    ``_CHUNK_ELEMENTS`` elements."""
    width = max(1, min(vocab_limit, LINEAR_VOCAB_TILE, max(256, _CHUNK_ELEMENTS // max(1, hidden))))
    rows = chunk_tokens or max(1, _CHUNK_ELEMENTS // width)
    return max(1, min(rows, max(1, n_tokens))), width


def linear_stats_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
    vocab_limit: int,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """The statistics of ``hidden @ weight.T`` tile by tile (tokens x vocabulary columns): each tile's
    logits are an fp32 GEMM, folded into online-softmax partials and merged; at most one tile of
    logits exists at a time. Columns >= ``vocab_limit`` are never computed."""
    N = hidden.shape[0]
    dtype = compute_dtype(hidden)
    step, width = linear_tiles(N, vocab_limit, hidden.shape[1], chunk_tokens)
    zbuf, ebuf = _scratch(min(N, step) * width, dtype, hidden.device, 2)
    outs = []
    for start in range(0, N, step):
        h = hidden[start:start + step].to(dtype)
        t = target[start:start + step] if target is not None else None
        parts = []
        for col0 in range(0, vocab_limit, width):
            w = weight[col0:min(vocab_limit, col0 + width)].to(dtype)
            z = torch.matmul(h, w.t(), out=_view(zbuf, h.shape[0], w.shape[0]))
            if temperature != 1.0:
                z.div_(temperature)
            parts.append(_tile_state(z, col0, t, ebuf))
        outs.append(merge_partials(*(torch.stack(p, 1) for p in zip(*parts)), t, ignore_index))
    if not outs:
        e = hidden.new_empty(0, dtype=dtype)
        return e, e, e, e.long(), e, e
    return tuple(torch.cat(parts) for parts in zip(*outs))


def linear_stats_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor | None,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    g_entropy: torch.Tensor | None,
    g_logprob: torch.Tensor | None,
    g_lse: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
    vocab_limit: int,
    chunk_tokens: int | None = None,
    need_hidden: bool = True,
    need_weight: bool = True,
    gemm_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(d hidden, d weight), recomputing each tile's logits from the saved log-sum-exp (p needs no other
    column of its row), so nothing of size tokens x vocab is kept. ``gemm_dtype`` is the dtype of the
    recomputing GEMMs (default: the compute dtype, fp32; the Triton path passes the input dtype)."""
    N, D = hidden.shape
    dtype = compute_dtype(hidden)
    gd = gemm_dtype or dtype
    step, width = linear_tiles(N, vocab_limit, D, chunk_tokens)
    g_h = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_hidden else None
    g_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_weight else None
    for start in range(0, N, step):
        sl = slice(start, min(N, start + step))
        h = hidden[sl].to(gd)
        for col0 in range(0, vocab_limit, width):
            w = weight[col0:min(vocab_limit, col0 + width)].to(gd)
            z = (h @ w.t()).to(dtype)
            if temperature != 1.0:
                z = z / temperature
            g = _grad_tile(z, col0, *_rows(sl, target, lse, entropy, g_entropy, g_logprob, g_lse), ignore_index,
                           temperature).to(gd)
            if g_h is not None:
                g_h[sl] += (g @ w).to(dtype)
            if g_w is not None:
                g_w[col0:col0 + w.shape[0]] += (g.t() @ h).to(dtype)
    return (g_h.to(hidden.dtype) if g_h is not None else None,
            g_w.to(weight.dtype) if g_w is not None else None)
