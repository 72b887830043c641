"""Triton kernels for the per-token statistics (same semantics and signatures as ``reference``).

Design (see docs/kernels.md and the research notes in kernels.md of the shared reference):

- tokens on grid axis 0 (axes 1/2 are capped at 65535), ``BLOCK_T`` rows per program;
- one pass over the vocabulary in ``BLOCK_V`` column blocks with an online softmax: per row, fp32
  running max ``m``, ``r = sum e^(z-m)`` without the first maximum (s = 1 + r, log s = log1p(r)),
  the *shifted* entropy accumulator ``a = sum e^(z-m)(z-m)`` (no cancellation for peaked rows),
  top-1 index, top-2 value and the target logit (gathered by a column compare, which cannot read out
  of bounds); ``token_kl``'s forward and the fused linear fold each tile into that per-row state
  (``_online_block``), while ``token_stats``' forward keeps the state per column slot, updated
  elementwise with one exp2 per logit, and merges the slots once per row (2.4-2.6x faster on an H200
  than seven row reductions per tile; its target logit is one masked load per row);
- inputs are loaded in their own dtype (bf16/fp16/fp32) and upcast per block; the temperature divides
  the fp32 values; columns at or beyond ``vocab_limit`` are never read and count as -inf;
- row offsets are built in int64 (``_row_offsets``): at 16384 x 152064 an int32 offset wraps from row
  14123 onwards;
- backward kernels recompute p from the saved log-sum-exp in one pass (no [tokens x vocab] buffer is
  saved by the forward);
- ``linear_stats_forward`` computes logits tiles with ``tl.dot`` and folds them into per-(token,
  vocab-split) partial states that a small epilogue merges (``reference.merge_partials``); its
  backward recomputes the logits one tile of tokens x columns at a time.

Importing this module imports triton. Under ``TRITON_INTERPRET=1`` (read by ``triton.jit`` when this
module is imported) the kernels run on CPU tensors: that is how CI tests them. The interpreter cannot
multiply bf16 operands in ``tl.dot`` nor run multi-config autotuning, so both are avoided there.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from asg.kernels import reference

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(options: list[dict], warps: list[int], stages: int = 2) -> list[triton.Config]:
    return [triton.Config(o, num_warps=w, num_stages=stages) for o in options for w in warps]


# One config under the interpreter (the autotuner would try to benchmark on a GPU driver).
if INTERPRET:
    _STATS_CONFIGS = [triton.Config({"BLOCK_T": 16, "BLOCK_V": 8192}, num_warps=1)]
    _LINEAR_CONFIGS = [triton.Config({"BLOCK_T": 16, "BLOCK_V": 128, "BLOCK_D": 64}, num_warps=1)]
else:
    _STATS_CONFIGS = _configs([{"BLOCK_T": 1, "BLOCK_V": 4096}, {"BLOCK_T": 2, "BLOCK_V": 4096},
                               {"BLOCK_T": 4, "BLOCK_V": 2048}, {"BLOCK_T": 1, "BLOCK_V": 8192}], [8, 16])
    _LINEAR_CONFIGS = _configs([{"BLOCK_T": 128, "BLOCK_V": 128, "BLOCK_D": 64},
                                {"BLOCK_T": 64, "BLOCK_V": 128, "BLOCK_D": 64},
                                {"BLOCK_T": 128, "BLOCK_V": 256, "BLOCK_D": 32}], [8], stages=3)

# The forward of token_stats keeps a state per column slot (5 registers per slot), so its blocks are narrower.
if INTERPRET:
    _STATS_FWD_CONFIGS = [triton.Config({"BLOCK_T": 16, "BLOCK_V": 1024}, num_warps=1)]
else:
    _STATS_FWD_CONFIGS = _configs([{"BLOCK_T": 1, "BLOCK_V": 1024}, {"BLOCK_T": 1, "BLOCK_V": 2048},
                                   {"BLOCK_T": 2, "BLOCK_V": 1024}], [4, 8])

# token_kl's forward: the list above plus the two fastest of the sweep at 16k x 152k on an H200
# (benchmarks/results/kernel-configs-cuda.md: 2.78 ms with 2 warps against 3.13 ms for the list's pick).
_KL_FWD_CONFIGS = _STATS_CONFIGS if INTERPRET else _STATS_CONFIGS + _configs(
    [{"BLOCK_T": 1, "BLOCK_V": 2048}], [2]) + _configs([{"BLOCK_T": 1, "BLOCK_V": 4096}], [4])

_SENT = tl.constexpr(-3.4028234663852886e38)  # -FLT_MAX: "no finite logit yet" in a slot (see _stats_fwd_kernel)

COLS_PER_SPLIT = 4096  # vocabulary columns per program of the fused-linear kernel (a multiple of BLOCK_V)


@triton.jit
def _row_offsets(rows, stride):
    """Element offset of each row: int64 before the multiply (int32 wraps past 2**31 elements)."""
    return rows.to(tl.int64) * stride


@triton.jit
def _load_target(TGT, rows, rmask, ignore_index, HAS_TGT: tl.constexpr, BLOCK_T: tl.constexpr):
    """Target ids of the rows as int64 (-1, matching no column, when there is no target)."""
    if HAS_TGT:
        tgt = tl.load(TGT + rows, mask=rmask, other=ignore_index).to(tl.int64)
    else:
        tgt = tl.full([BLOCK_T], -1, tl.int64)
    return tgt


@triton.jit
def _initial_state(BLOCK_T: tl.constexpr):
    """(m, r, a, top2, top1 index, target logit) of rows that have seen no column yet."""
    return (tl.full([BLOCK_T], float("-inf"), tl.float32), tl.zeros([BLOCK_T], tl.float32),
            tl.zeros([BLOCK_T], tl.float32), tl.full([BLOCK_T], float("-inf"), tl.float32),
            tl.zeros([BLOCK_T], tl.int64), tl.zeros([BLOCK_T], tl.float32))


@triton.jit
def _online_block(z, cols, tgt, m, r, a, t2, i1, zt):
    """Fold one [BLOCK_T, BLOCK_V] tile of scaled fp32 logits (masked entries -inf) into the row state.

    State per row: max ``m`` (-inf until a finite logit is seen), ``r = sum e^(z-m)`` over every column
    but the first maximum (so s = 1 + r exactly and log s = log1p(r) keeps its precision on peaked
    rows), ``a = sum e^(z-m)(z-m)``, top-2 ``t2``, first argmax ``i1`` and the target logit ``zt``.
    """
    bm = tl.max(z, 1)
    bi = tl.min(tl.where(z == bm[:, None], cols[None, :], 2**62), 1)  # first index of the block max
    new_max = bm > m
    m_new = tl.maximum(m, bm)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2((m - m_safe) * 1.4426950408889634)  # 0 while m is still -inf
    s_old = tl.where(m > float("-inf"), 1.0 + r, 0.0)
    d = tl.where(m > float("-inf"), m - m_safe, 0.0)
    shifted = z - m_safe[:, None]
    e = tl.exp2(shifted * 1.4426950408889634)
    es = tl.where(e > 0, e * shifted, 0.0)  # 0 * (-inf) guarded
    at_max = cols[None, :] == bi[:, None]
    rest = tl.sum(tl.where(at_max, 0.0, e), 1)
    r = tl.where(new_max, alpha * s_old + rest, r + tl.sum(e, 1))
    a = alpha * (a + s_old * d) + tl.sum(es, 1)
    # top-2 with ties kept: only the first maximum's column is removed
    b2 = tl.max(tl.where(at_max, float("-inf"), z), 1)
    t2 = tl.maximum(tl.minimum(m, bm), tl.maximum(t2, b2))
    i1 = tl.where(new_max, bi, i1)
    zt += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)
    return m_new, r, a, t2, i1, zt


@triton.jit
def _finish(m, r, a, zt, tgt, ignore_index):
    """(entropy, logprob, logsumexp) from a row state; rows with no finite logit are defined."""
    live = m > float("-inf")
    log_s = tl.log(1.0 + r)
    log_s = tl.where(r < 1e-4, r - 0.5 * r * r + r * r * r / 3.0, log_s)  # log1p for small r
    h = tl.where(live, log_s - a / (1.0 + r), 0.0)
    lse = tl.where(live, m + log_s, float("-inf"))
    lp = tl.where(live, zt - lse, float("-inf"))
    lp = tl.where(tgt == ignore_index, 0.0, lp)
    return h, lp, lse


@triton.autotune(configs=_STATS_FWD_CONFIGS, key=["n_cols"])
@triton.jit
def _stats_fwd_kernel(
    X, stride_x, TGT, H, LP, LSE, TOP1, T1, T2,
    n_rows, n_cols, vocab_limit, temperature, ignore_index,
    HAS_TGT: tl.constexpr, SCALE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Per-lane online softmax: each of the BLOCK_V column slots of a row keeps its own state over the
    columns it sees (v0 + j for every block v0), with elementwise updates only and one exp2 per logit;
    the slots are merged once per row after the loop. (A reduction per state field per block, as in
    ``_online_block``, made this kernel compute-bound at 14 % of an H200's bandwidth: docs/kernels.md.)

    Slot state: max ``m`` (_SENT until a finite logit is seen: a finite stand-in for -inf, so that no
    0 * inf can arise), ``r = sum e^(z-m)`` without the slot's first maximum, ``a = sum e^(z-m)(z-m)``,
    the slot's second largest ``t2`` (ties kept) and first argmax ``i1``. The update is exact: with
    d = z - m, a new maximum (d > 0) rescales the slot by e^-d, any other logit adds e^d; d is clamped to
    [-128, 128], beyond which both weights underflow to 0 in fp32 as they should.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < n_rows
    base = _row_offsets(rows, stride_x)
    tgt = _load_target(TGT, rows, rmask, ignore_index, HAS_TGT, BLOCK_T)
    lane = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_T, BLOCK_V], _SENT, tl.float32)
    r = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
    a = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
    t2 = tl.full([BLOCK_T, BLOCK_V], _SENT, tl.float32)
    i1 = tl.full([BLOCK_T, BLOCK_V], -1, tl.int32)
    for v0 in range(0, vocab_limit, BLOCK_V):
        cols = v0 + lane
        mask = rmask[:, None] & (cols < vocab_limit)[None, :]
        z = tl.load(X + base[:, None] + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32)
        if SCALE:
            z = z / temperature
        d = tl.minimum(tl.maximum(z - m, -128.0), 128.0)
        new = d > 0
        t = tl.exp2(tl.abs(d) * -1.4426950408889634)  # e^-d for a new maximum, e^d otherwise
        s_old = 1.0 + r
        r = tl.where(new, t * s_old, r + t)
        a = tl.where(new, t * (a - s_old * d), a + t * d)
        t2 = tl.where(new, m, tl.maximum(t2, z))
        i1 = tl.where(new, cols[None, :], i1)
        m = tl.where(new, z, m)
    # merge the slots: the first maximum's slot keeps its r; every other slot joins it as c * (1 + r)
    M = tl.max(m, 1)
    row_live = M > _SENT
    slot_live = m > _SENT
    I1 = tl.min(tl.where(m == M[:, None], i1, 2**31 - 1), 1)
    star = i1 == I1[:, None]
    c = tl.exp2((m - M[:, None]) * 1.4426950408889634)
    s = tl.where(slot_live, 1.0 + r, 0.0)
    R = tl.sum(tl.where(star, r, c * s), 1)
    A = tl.sum(tl.where(slot_live, c * (a + s * (m - M[:, None])), 0.0), 1)
    top2 = tl.maximum(tl.max(tl.where(star | (~slot_live), _SENT, m), 1), tl.max(tl.where(star, t2, _SENT), 1))
    m_out = tl.where(row_live, M, float("-inf"))
    zt = tl.zeros([BLOCK_T], tl.float32)
    if HAS_TGT:
        tmask = rmask & (tgt >= 0) & (tgt < vocab_limit)
        zt = tl.load(X + base + tl.where(tmask, tgt, 0), mask=tmask, other=0.0).to(tl.float32)
        if SCALE:
            zt = zt / temperature
    h, lp, lse = _finish(m_out, R, A, zt, tgt, ignore_index)
    tl.store(H + rows, h, mask=rmask)
    tl.store(LP + rows, lp, mask=rmask)
    tl.store(LSE + rows, lse, mask=rmask)
    tl.store(TOP1 + rows, tl.where(row_live, I1, 0).to(tl.int64), mask=rmask)
    tl.store(T1 + rows, m_out, mask=rmask)
    tl.store(T2 + rows, tl.where(top2 > _SENT, top2, float("-inf")), mask=rmask)


@triton.autotune(configs=_STATS_CONFIGS, key=["n_cols"])
@triton.jit
def _stats_bwd_kernel(
    X, stride_x, G, stride_g, TGT, LSE, H, GH, GLP, GLSE,
    n_rows, n_cols, vocab_limit, temperature, ignore_index,
    HAS_TGT: tl.constexpr, HAS_GH: tl.constexpr, HAS_GLP: tl.constexpr, HAS_GLSE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < n_rows
    xbase = _row_offsets(rows, stride_x)
    gbase = _row_offsets(rows, stride_g)
    lse = tl.load(LSE + rows, mask=rmask, other=float("-inf"))
    dead = lse == float("-inf")
    lse = tl.where(dead, 0.0, lse)
    h = tl.load(H + rows, mask=rmask, other=0.0)
    gh = tl.zeros([BLOCK_T], tl.float32)
    glp = tl.zeros([BLOCK_T], tl.float32)
    glse = tl.zeros([BLOCK_T], tl.float32)
    if HAS_GH:
        gh = tl.load(GH + rows, mask=rmask, other=0.0).to(tl.float32)
    if HAS_GLSE:
        glse = tl.load(GLSE + rows, mask=rmask, other=0.0).to(tl.float32)
    tgt = tl.full([BLOCK_T], -1, tl.int64)
    if HAS_TGT:
        tgt = tl.load(TGT + rows, mask=rmask, other=ignore_index).to(tl.int64)
        if HAS_GLP:
            glp = tl.load(GLP + rows, mask=rmask, other=0.0).to(tl.float32)
            glp = tl.where((tgt != ignore_index) & (~dead), glp, 0.0)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        live = (cols < vocab_limit)[None, :]
        x = tl.load(X + xbase[:, None] + cols[None, :], mask=rmask[:, None] & live, other=float("-inf"))
        z = x.to(tl.float32) / temperature
        logp = z - lse[:, None]
        p = tl.where(dead[:, None], 0.0, tl.exp2(logp * 1.4426950408889634))
        ent = tl.where(p > 0, p * (logp + h[:, None]), 0.0)
        g = (glse - glp)[:, None] * p - gh[:, None] * ent
        g += tl.where(cols[None, :] == tgt[:, None], glp[:, None], 0.0)
        g = g / temperature
        tl.store(G + gbase[:, None] + cols[None, :], g.to(G.dtype.element_ty),
                 mask=rmask[:, None] & (cols < n_cols)[None, :])


@triton.autotune(configs=_KL_FWD_CONFIGS, key=["n_cols"])
@triton.jit
def _kl_fwd_kernel(
    P, stride_p, Q, stride_q, KL, LSE_P, LSE_Q,
    n_rows, n_cols, vocab_limit, temperature,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < n_rows
    pbase = _row_offsets(rows, stride_p)
    qbase = _row_offsets(rows, stride_q)
    mp = tl.full([BLOCK_T], float("-inf"), tl.float32)
    sp = tl.zeros([BLOCK_T], tl.float32)
    b = tl.zeros([BLOCK_T], tl.float32)  # sum e^(zp - mp) (zp - zq)
    mq = tl.full([BLOCK_T], float("-inf"), tl.float32)
    sq = tl.zeros([BLOCK_T], tl.float32)
    for v0 in range(0, vocab_limit, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        mask = rmask[:, None] & (cols < vocab_limit)[None, :]
        zp = tl.load(P + pbase[:, None] + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32) / temperature
        zq = tl.load(Q + qbase[:, None] + cols[None, :], mask=mask, other=float("-inf")).to(tl.float32) / temperature
        # p: online max / sum and the p-weighted logit difference
        mp_new = tl.maximum(mp, tl.max(zp, 1))
        mp_safe = tl.where(mp_new == float("-inf"), 0.0, mp_new)
        ap = tl.exp2((mp - mp_safe) * 1.4426950408889634)
        ep = tl.exp2((zp - mp_safe[:, None]) * 1.4426950408889634)
        sp = ap * sp + tl.sum(ep, 1)
        b = ap * b + tl.sum(tl.where(ep > 0, ep * (zp - zq), 0.0), 1)
        mp = mp_new
        # q: online max / sum
        mq_new = tl.maximum(mq, tl.max(zq, 1))
        mq_safe = tl.where(mq_new == float("-inf"), 0.0, mq_new)
        aq = tl.exp2((mq - mq_safe) * 1.4426950408889634)
        sq = aq * sq + tl.sum(tl.exp2((zq - mq_safe[:, None]) * 1.4426950408889634), 1)
        mq = mq_new
    live_p = sp > 0
    live_q = sq > 0
    log_sp = tl.log(tl.where(live_p, sp, 1.0))
    log_sq = tl.log(tl.where(live_q, sq, 1.0))
    dm = tl.where(live_p & live_q, mp - mq, 0.0)
    kl = b / tl.where(live_p, sp, 1.0) - dm - log_sp + log_sq
    kl = tl.where(live_q, kl, float("inf"))
    kl = tl.where(live_p, kl, 0.0)
    tl.store(KL + rows, kl, mask=rmask)
    tl.store(LSE_P + rows, tl.where(live_p, mp + log_sp, float("-inf")), mask=rmask)
    tl.store(LSE_Q + rows, tl.where(live_q, mq + log_sq, float("-inf")), mask=rmask)


@triton.autotune(configs=_STATS_CONFIGS, key=["n_cols"])
@triton.jit
def _kl_bwd_kernel(
    P, stride_p, Q, stride_q, GP, stride_gp, GQ, stride_gq, LSE_P, LSE_Q, KL, G,
    n_rows, n_cols, vocab_limit, temperature,
    NEED_P: tl.constexpr, NEED_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    rmask = rows < n_rows
    pbase = _row_offsets(rows, stride_p)
    qbase = _row_offsets(rows, stride_q)
    lp = tl.load(LSE_P + rows, mask=rmask, other=float("-inf"))
    lq = tl.load(LSE_Q + rows, mask=rmask, other=float("-inf"))
    k = tl.load(KL + rows, mask=rmask, other=0.0)
    g = tl.load(G + rows, mask=rmask, other=0.0).to(tl.float32)
    ok = (lp > float("-inf")) & (lq > float("-inf")) & (k < float("inf"))
    g = tl.where(ok, g, 0.0) / temperature
    lp = tl.where(ok, lp, 0.0)
    lq = tl.where(ok, lq, 0.0)
    k = tl.where(ok, k, 0.0)
    for v0 in range(0, n_cols, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        live = rmask[:, None] & (cols < vocab_limit)[None, :]
        inb = rmask[:, None] & (cols < n_cols)[None, :]
        zp = tl.load(P + pbase[:, None] + cols[None, :], mask=live, other=float("-inf")).to(tl.float32) / temperature
        zq = tl.load(Q + qbase[:, None] + cols[None, :], mask=live, other=float("-inf")).to(tl.float32) / temperature
        logp = zp - lp[:, None]
        logq = zq - lq[:, None]
        p = tl.exp2(logp * 1.4426950408889634)
        q = tl.exp2(logq * 1.4426950408889634)
        if NEED_P:
            gp = g[:, None] * tl.where(p > 0, p * (logp - logq - k[:, None]), 0.0)
            tl.store(GP + _row_offsets(rows, stride_gp)[:, None] + cols[None, :], gp.to(GP.dtype.element_ty), mask=inb)
        if NEED_Q:
            gq = g[:, None] * (q - p)
            tl.store(GQ + _row_offsets(rows, stride_gq)[:, None] + cols[None, :], gq.to(GQ.dtype.element_ty), mask=inb)


@triton.autotune(configs=_LINEAR_CONFIGS, key=["D", "vocab_limit"])
@triton.jit
def _linear_fwd_kernel(
    HID, stride_h, W, stride_w, TGT,
    PM, PR, PA, PT2, PI1, PZT, n_split,
    n_rows, D, vocab_limit, cols_per_split, temperature, ignore_index,
    HAS_TGT: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    split = tl.program_id(1)
    rmask = rows < n_rows
    hbase = _row_offsets(rows, stride_h)
    tgt = _load_target(TGT, rows, rmask, ignore_index, HAS_TGT, BLOCK_T)
    m, r, a, t2, i1, zt = _initial_state(BLOCK_T)
    v_start = split.to(tl.int64) * cols_per_split
    v_end = tl.minimum(v_start + cols_per_split, vocab_limit)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        cmask = cols < v_end
        wbase = _row_offsets(cols, stride_w)
        acc = tl.zeros([BLOCK_T, BLOCK_V], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + tl.arange(0, BLOCK_D)
            dmask = dd < D
            h = tl.load(HID + hbase[:, None] + dd[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0)
            w = tl.load(W + wbase[:, None] + dd[None, :], mask=cmask[:, None] & dmask[None, :], other=0.0)
            if DOT_F32:  # the interpreter multiplies bf16 bit patterns in tl.dot: upcast first
                h = h.to(tl.float32)
                w = w.to(tl.float32)
            if IEEE:
                acc = tl.dot(h, tl.trans(w), acc, input_precision="ieee")
            else:
                acc = tl.dot(h, tl.trans(w), acc)
        # padded / out-of-split columns are -inf *after* the GEMM (a zero weight row would give logit 0)
        z = tl.where(cmask[None, :], acc / temperature, float("-inf"))
        m, r, a, t2, i1, zt = _online_block(z, cols, tgt, m, r, a, t2, i1, zt)
    out = rows * n_split + split
    tl.store(PM + out, m, mask=rmask)
    tl.store(PR + out, r, mask=rmask)
    tl.store(PA + out, a, mask=rmask)
    tl.store(PT2 + out, t2, mask=rmask)
    tl.store(PI1 + out, i1, mask=rmask)
    tl.store(PZT + out, zt, mask=rmask)


# ---------------------------------------------------------------------------------------------------
# launchers (same signatures as asg.kernels.reference)


def _check(t: torch.Tensor, name: str) -> None:
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"the Triton kernels take fp16, bf16 or fp32 {name}, got {t.dtype}")
    if not INTERPRET and t.device.type != "cuda":
        raise RuntimeError(f"the Triton kernels need a GPU tensor ({name} is on {t.device}); "
                           "set ASG_KERNELS=torch, or TRITON_INTERPRET=1 before importing asg.kernels to run them on CPU")


def _rowmajor(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _grid(n_rows: int):
    return lambda meta: (triton.cdiv(n_rows, meta["BLOCK_T"]),)


def stats_forward(logits, target, temperature, ignore_index, vocab_limit):
    _check(logits, "logits")
    logits = _rowmajor(logits)
    N, V = logits.shape
    f = dict(device=logits.device, dtype=torch.float32)
    h, lp, lse, t1, t2 = (torch.empty(N, **f) for _ in range(5))
    top1 = torch.empty(N, device=logits.device, dtype=torch.int64)
    if N:
        tgt = target.contiguous() if target is not None else h  # unused pointer when HAS_TGT is False
        _stats_fwd_kernel[_grid(N)](
            logits, logits.stride(0), tgt, h, lp, lse, top1, t1, t2,
            N, V, vocab_limit, float(temperature), int(ignore_index), HAS_TGT=target is not None,
            SCALE=float(temperature) != 1.0,
        )
    return h, lp, lse, top1, t1, t2


def stats_backward(logits, target, lse, entropy, g_entropy, g_logprob, g_lse, temperature, ignore_index, vocab_limit):
    _check(logits, "logits")
    logits = _rowmajor(logits)
    N, V = logits.shape
    grad = torch.empty_like(logits)
    if N:
        dummy = lse
        _stats_bwd_kernel[_grid(N)](
            logits, logits.stride(0), grad, grad.stride(0),
            target.contiguous() if target is not None else dummy, lse.contiguous(), entropy.contiguous(),
            g_entropy.contiguous() if g_entropy is not None else dummy,
            g_logprob.contiguous() if g_logprob is not None else dummy,
            g_lse.contiguous() if g_lse is not None else dummy,
            N, V, vocab_limit, float(temperature), int(ignore_index),
            HAS_TGT=target is not None, HAS_GH=g_entropy is not None,
            HAS_GLP=g_logprob is not None, HAS_GLSE=g_lse is not None,
        )
    return grad


def kl_forward(logits_p, logits_q, temperature, vocab_limit):
    _check(logits_p, "logits_p")
    _check(logits_q, "logits_q")
    logits_p, logits_q = _rowmajor(logits_p), _rowmajor(logits_q)
    N, V = logits_p.shape
    f = dict(device=logits_p.device, dtype=torch.float32)
    kl, lse_p, lse_q = (torch.empty(N, **f) for _ in range(3))
    if N:
        _kl_fwd_kernel[_grid(N)](
            logits_p, logits_p.stride(0), logits_q, logits_q.stride(0), kl, lse_p, lse_q,
            N, V, vocab_limit, float(temperature),
        )
    return kl, lse_p, lse_q


def kl_backward(logits_p, logits_q, lse_p, lse_q, kl, g, temperature, vocab_limit, need_p=True, need_q=True):
    logits_p, logits_q = _rowmajor(logits_p), _rowmajor(logits_q)
    N, V = logits_p.shape
    gp = torch.empty_like(logits_p) if need_p else None
    gq = torch.empty_like(logits_q) if need_q else None
    if N and (need_p or need_q):
        a = gp if gp is not None else gq
        b = gq if gq is not None else gp
        _kl_bwd_kernel[_grid(N)](
            logits_p, logits_p.stride(0), logits_q, logits_q.stride(0), a, a.stride(0), b, b.stride(0),
            lse_p, lse_q, kl, g.contiguous(), N, V, vocab_limit, float(temperature),
            NEED_P=need_p, NEED_Q=need_q,
        )
    return gp, gq


def linear_stats_forward(hidden, weight, target, temperature, ignore_index, vocab_limit, chunk_tokens=None,
                         cols_per_split: int | None = None):
    """Statistics of ``hidden @ weight.T`` without materialising the logits (``chunk_tokens`` unused:
    the kernel never holds more than one [BLOCK_T, BLOCK_V] tile)."""
    _check(hidden, "hidden")
    _check(weight, "weight")
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    hidden, weight = _rowmajor(hidden), _rowmajor(weight)
    N, D = hidden.shape
    cols_per_split = cols_per_split or COLS_PER_SPLIT
    n_split = triton.cdiv(vocab_limit, cols_per_split)
    f = dict(device=hidden.device, dtype=torch.float32)
    parts = [torch.empty(N, n_split, **f) for _ in range(6)]  # m, r, a, top2, top1 index, target logit
    parts[4] = torch.empty(N, n_split, device=hidden.device, dtype=torch.int64)
    if N:
        tgt = target.contiguous() if target is not None else parts[0]
        _linear_fwd_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_T"]), n_split)](
            hidden, hidden.stride(0), weight, weight.stride(0), tgt, *parts, n_split,
            N, D, vocab_limit, cols_per_split, float(temperature), int(ignore_index),
            HAS_TGT=target is not None, DOT_F32=INTERPRET or hidden.dtype == torch.float32,
            IEEE=hidden.dtype == torch.float32 or INTERPRET,
        )
    return reference.merge_partials(*parts, target, ignore_index)


def linear_stats_backward(hidden, weight, target, lse, entropy, g_entropy, g_logprob, g_lse, temperature,
                          ignore_index, vocab_limit, chunk_tokens=None, need_hidden=True, need_weight=True):
    """Recomputes the logits tile by tile with GEMMs in the input dtype (tensor cores; the forward
    kernel kept fp32 logits, so p differs from the forward by the input dtype's rounding of the
    logits), accumulating d hidden / d weight in fp32; no tokens x vocab buffer outlives a tile."""
    return reference.linear_stats_backward(
        hidden, weight, target, lse, entropy, g_entropy, g_logprob, g_lse, temperature, ignore_index,
        vocab_limit, chunk_tokens, need_hidden, need_weight, gemm_dtype=hidden.dtype,
    )
