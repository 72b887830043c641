"""Public functions of ``asg.kernels``: argument checks, backend dispatch and autograd.

Backends: ``torch`` (:mod:`asg.kernels.reference`, any device) and ``triton``
(:mod:`asg.kernels.triton_kernels`, CUDA/ROCm GPUs, or CPU under ``TRITON_INTERPRET=1``). The
choice, per call: the ``backend=`` argument, else the ``ASG_KERNELS`` environment variable
(``auto`` | ``triton`` | ``torch``, default ``auto``). ``auto`` takes Triton for GPU tensors in
fp16/bf16/fp32 when triton imports, and the reference otherwise (CPU, macOS, fp64).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any, NamedTuple

import torch

from asg.kernels import reference

BACKENDS = ("auto", "triton", "torch")


class TokenStatsOutput(NamedTuple):
    """Per-row statistics; every field has the leading shape of the logits without the vocab axis."""

    entropy: torch.Tensor  # nats, fp32 (fp64 for fp64 input); differentiable
    logprob: torch.Tensor  # log p(target); 0 where target is ignore_index or absent; differentiable
    logsumexp: torch.Tensor  # log sum exp(z / temperature); differentiable
    top1: torch.Tensor  # index of the largest logit (first one on ties), int64
    top1_logit: torch.Tensor  # largest temperature-scaled logit (not differentiable)
    top2_logit: torch.Tensor  # second largest; equals top1_logit on ties (not differentiable)

    @property
    def margin(self) -> torch.Tensor:
        """top1 - top2 logit; 0 where either is -inf (fully masked rows, vocabulary of one)."""
        finite = torch.isfinite(self.top1_logit) & torch.isfinite(self.top2_logit)
        return torch.where(finite, self.top1_logit - self.top2_logit, torch.zeros_like(self.top1_logit))


@functools.cache
def _triton_module() -> ModuleType | None:
    try:
        from asg.kernels import triton_kernels
    except ImportError:  # triton not installed (macOS, Windows, minimal installs)
        return None
    return triton_kernels


def triton_available() -> bool:
    """Whether the Triton backend can be imported at all (``triton`` installed)."""
    return _triton_module() is not None


def _interpreting() -> bool:
    mod = _triton_module()
    return bool(mod is not None and mod.INTERPRET)


def select_backend(x: torch.Tensor, backend: str | None = None) -> str:
    """``"triton"`` or ``"torch"`` for a call on ``x`` (see the module docstring for the rules)."""
    source = "backend" if backend is not None else "ASG_KERNELS"
    choice = backend if backend is not None else os.environ.get("ASG_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}; got {choice!r}")
    if choice == "torch":
        return "torch"
    fits = x.dtype in (torch.float16, torch.bfloat16, torch.float32)
    gpu = x.device.type == "cuda"
    if choice == "auto":
        return "triton" if gpu and fits and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError(f"{source}=triton but triton is not installed; pip install triton, or use torch")
    if not fits:
        raise TypeError(f"{source}=triton: the Triton kernels take fp16, bf16 or fp32, got {x.dtype}; use torch")
    if not gpu and not _interpreting():
        raise RuntimeError(f"{source}=triton but the tensor is on {x.device} and no GPU kernel can run there; "
                           "set TRITON_INTERPRET=1 before asg.kernels is first used to run them on CPU (slow), "
                           "or use torch")
    return "triton"


def _impl(name: str) -> Any:
    return _triton_module() if name == "triton" else reference


# -- validation --------------------------------------------------------------------------------------


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0.0) or t == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _check_logits(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"{name} must have a non-empty last (vocabulary) axis, got shape {tuple(x.shape)}")


def _vocab_limit(vocab_size: int | None, V: int) -> int:
    if vocab_size is None:
        return V
    if int(vocab_size) < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return min(int(vocab_size), V)


def _check_target(target: Any, lead: tuple[int, ...], limit: int, ignore_index: int, device: torch.device) -> torch.Tensor | None:
    if target is None:
        return None
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of token ids, got {type(target).__name__}")
    if tuple(target.shape) != lead:
        raise ValueError(f"target must have shape {lead} (the input without its last axis), got {tuple(target.shape)}")
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer token ids, got dtype {target.dtype}")
    t = target.reshape(-1).to(device=device, dtype=torch.long)
    bad = (t != ignore_index) & ((t < 0) | (t >= limit))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"target id {int(t[i])} at row {i} (flattened) is outside the vocabulary [0, {limit}) "
                         f"and is not ignore_index={ignore_index}")
    return t


# -- autograd ----------------------------------------------------------------------------------------


class _TokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, temperature, ignore_index, vocab_limit, backend):  # type: ignore[override]
        impl = _impl(backend)
        h, lp, lse, top1, t1, t2 = impl.stats_forward(logits, target, temperature, ignore_index, vocab_limit)
        ctx.save_for_backward(logits, target if target is not None else lse, lse, h)
        ctx.has_target = target is not None
        ctx.args = (temperature, ignore_index, vocab_limit, backend)
        ctx.mark_non_differentiable(top1, t1, t2)
        return h, lp, lse, top1, t1, t2

    @staticmethod
    def backward(ctx, g_h, g_lp, g_lse, _g_top1, _g_t1, _g_t2):  # type: ignore[override]
        logits, target, lse, h = ctx.saved_tensors
        temperature, ignore_index, vocab_limit, backend = ctx.args
        grad = _impl(backend).stats_backward(
            logits, target if ctx.has_target else None, lse, h, g_h, g_lp if ctx.has_target else None, g_lse,
            temperature, ignore_index, vocab_limit,
        )
        return grad, None, None, None, None, None


class _TokenKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_p, logits_q, temperature, vocab_limit, backend):  # type: ignore[override]
        kl, lse_p, lse_q = _impl(backend).kl_forward(logits_p, logits_q, temperature, vocab_limit)
        ctx.save_for_backward(logits_p, logits_q, lse_p, lse_q, kl)
        ctx.args = (temperature, vocab_limit, backend)
        return kl

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        logits_p, logits_q, lse_p, lse_q, kl = ctx.saved_tensors
        temperature, vocab_limit, backend = ctx.args
        gp, gq = _impl(backend).kl_backward(
            logits_p, logits_q, lse_p, lse_q, kl, g, temperature, vocab_limit,
            need_p=ctx.needs_input_grad[0], need_q=ctx.needs_input_grad[1],
        )
        return gp, gq, None, None, None


class _LinearTokenStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, temperature, ignore_index, vocab_limit, chunk_tokens, backend):  # type: ignore[override]
        impl = _impl(backend)
        h, lp, lse, top1, t1, t2 = impl.linear_stats_forward(
            hidden, weight, target, temperature, ignore_index, vocab_limit, chunk_tokens)
        # only the inputs and fp32 per-token vectors are kept: the backward recomputes the logits
        ctx.save_for_backward(hidden, weight, target if target is not None else lse, lse, h)
        ctx.has_target = target is not None
        ctx.args = (temperature, ignore_index, vocab_limit, chunk_tokens, backend)
        ctx.mark_non_differentiable(top1, t1, t2)
        return h, lp, lse, top1, t1, t2

    @staticmethod
    def backward(ctx, g_h, g_lp, g_lse, _a, _b, _c):  # type: ignore[override]
        hidden, weight, target, lse, h = ctx.saved_tensors
        temperature, ignore_index, vocab_limit, chunk_tokens, backend = ctx.args
        g_hidden, g_weight = _impl(backend).linear_stats_backward(
            hidden, weight, target if ctx.has_target else None, lse, h, g_h, g_lp if ctx.has_target else None,
            g_lse, temperature, ignore_index, vocab_limit, chunk_tokens,
            need_hidden=ctx.needs_input_grad[0], need_weight=ctx.needs_input_grad[1],
        )
        return g_hidden, g_weight, None, None, None, None, None, None


# -- public API --------------------------------------------------------------------------------------


def _reshape_out(out: tuple[torch.Tensor, ...], lead: tuple[int, ...]) -> TokenStatsOutput:
    return TokenStatsOutput(*(o.reshape(lead) for o in out))


def token_stats(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    vocab_size: int | None = None,
    backend: str | None = None,
) -> TokenStatsOutput:
    """Entropy, log-prob of ``target``, log-sum-exp and top-1/top-2 of each row of ``logits`` (..., V).

    One pass over the vocabulary per row; fp32 accumulation whatever the input dtype (fp16, bf16,
    fp32; fp64 stays fp64 on the torch backend). ``vocab_size`` < V treats the trailing (padded)
    columns as -inf. Differentiable in ``logits`` through entropy, log-prob and log-sum-exp.
    """
    _check_logits(logits, "logits")
    T = _check_temperature(temperature)
    lead = tuple(logits.shape[:-1])
    V = logits.shape[-1]
    limit = _vocab_limit(vocab_size, V)
    name = select_backend(logits, backend)
    tgt = _check_target(target, lead, limit, ignore_index, logits.device)
    out = _TokenStats.apply(logits.reshape(-1, V), tgt, T, int(ignore_index), limit, name)
    return _reshape_out(out, lead)


def token_kl(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-row full-vocabulary KL(p || q) in nats, p = softmax(logits_p / T), q = softmax(logits_q / T).

    One fused pass over both inputs. Terms with p = 0 contribute 0; p > 0 where q = 0 gives +inf; a
    row of p that is all -inf gives 0. Differentiable in both inputs (rows with an infinite KL get a
    zero gradient).
    """
    _check_logits(logits_p, "logits_p")
    _check_logits(logits_q, "logits_q")
    if logits_p.shape != logits_q.shape:
        raise ValueError(f"logits_p and logits_q must have the same shape, got {tuple(logits_p.shape)} and {tuple(logits_q.shape)}")
    if torch.float64 in (logits_p.dtype, logits_q.dtype):  # fp64 anywhere: compute both in fp64
        logits_p, logits_q = logits_p.double(), logits_q.double()
    T = _check_temperature(temperature)
    lead = tuple(logits_p.shape[:-1])
    V = logits_p.shape[-1]
    limit = _vocab_limit(vocab_size, V)
    name = select_backend(logits_p, backend)
    out = _TokenKL.apply(logits_p.reshape(-1, V), logits_q.reshape(-1, V), T, limit, name)
    return out.reshape(lead)


def linear_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    vocab_size: int | None = None,
    chunk_tokens: int | None = None,
    backend: str | None = None,
) -> TokenStatsOutput:
    """:func:`token_stats` of ``hidden @ weight.T`` (an LM head without bias) without materialising
    the [tokens x vocab] logits.

    ``hidden`` is (..., D), ``weight`` (V, D). The Triton backend fuses the GEMM with the statistics
    (fp32 logits tiles in registers only); the torch backend computes ``chunk_tokens`` rows of logits at
    a time (default: about 16 M logits per chunk). The backward recomputes the logits chunk by chunk,
    so nothing of size tokens x vocab is saved. Differentiable in ``hidden`` and ``weight``.
    """
    _check_logits(hidden, "hidden")
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point() or weight.ndim != 2:
        raise TypeError(f"weight must be a 2-D floating-point torch.Tensor (vocab, hidden), got "
                        f"{type(weight).__name__}{tuple(weight.shape) if isinstance(weight, torch.Tensor) else ''}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight is {tuple(weight.shape)} but hidden has {hidden.shape[-1]} features on its last axis")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if weight.device != hidden.device:
        raise ValueError(f"hidden is on {hidden.device} but weight is on {weight.device}")
    if chunk_tokens is not None and int(chunk_tokens) < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    T = _check_temperature(temperature)
    lead = tuple(hidden.shape[:-1])
    V = weight.shape[0]
    limit = _vocab_limit(vocab_size, V)
    name = select_backend(hidden, backend)
    tgt = _check_target(target, lead, limit, ignore_index, hidden.device)
    out = _LinearTokenStats.apply(hidden.reshape(-1, hidden.shape[-1]), weight, tgt, T, int(ignore_index), limit,
                                  None if chunk_tokens is None else int(chunk_tokens), name)
    return _reshape_out(out, lead)
