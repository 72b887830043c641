"""The Triton kernels of asg.kernels against the PyTorch reference and float64 computations.

On CPU they run under ``TRITON_INTERPRET=1`` (set in conftest.py); with ``TRITON_INTERPRET=0`` on a
machine with a GPU the same tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from asg import kernels  # noqa: E402
from asg.kernels import api, linear_token_stats, token_kl, token_stats  # noqa: E402
from asg.kernels import triton_kernels as tk  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy: -inf arithmetic in masked lanes

INF = float("inf")
DEVICE = "cpu" if tk.INTERPRET else "cuda"
QWEN_V = 152064


def naive64(z: torch.Tensor, t: torch.Tensor | None = None, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Float64 statistics computed the obvious way (independent of both implementations)."""
    x = z.double() / temperature
    lp = torch.log_softmax(x, -1)
    p = lp.exp()
    out = {"entropy": -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1), "logsumexp": torch.logsumexp(x, -1)}
    if t is not None:
        out["logprob"] = lp.gather(-1, t.clamp_min(0)[:, None]).squeeze(-1)
    return out


def both(z: torch.Tensor, t: torch.Tensor | None = None, **kw):
    return token_stats(z, t, backend="triton", **kw), token_stats(z, t, backend="torch", **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_stats_match_reference_and_float64_at_qwen_vocab(dtype: torch.dtype, temperature: float) -> None:
    """Random rows at V = 152064: every field equals the reference; entropy/logprob/lse are within 1e-4 of
    float64 computed on the same (bf16-rounded) values."""
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(6, QWEN_V, generator=g) * 4).to(dtype).to(DEVICE)
    t = torch.randint(0, QWEN_V, (6,), generator=g).to(DEVICE)
    a, b = both(z, t, temperature=temperature)
    assert a.entropy.dtype == torch.float32 and a.top1.dtype == torch.int64
    for f in ("entropy", "logprob", "logsumexp", "top1_logit", "top2_logit"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), atol=2e-5, rtol=2e-6)
    assert torch.equal(a.top1, b.top1)
    want = naive64(z.cpu(), t.cpu(), temperature)
    for f, v in want.items():
        torch.testing.assert_close(getattr(a, f).cpu().double(), v, atol=1e-4, rtol=0)


def test_edge_rows_neg_inf_dead_rows_ties_ignore_index() -> None:
    """-inf entries, an all -inf row, a duplicated maximum, an ignored target, and a target whose
    logit is -inf, against hand values (V = 5000 so several column blocks are crossed)."""
    V = 20000
    z = torch.zeros(5, V)
    z[0, 100:] = -INF  # 100 equal live logits: H = ln 100
    z[1] = -INF  # dead row
    z[2, 7] = 3.0
    z[2, 15000] = 3.0  # tie across blocks: top1 = first index 7, margin 0
    z[3, 12345] = 5.0  # ignored target row
    z[4, :10] = -INF  # target logit -inf on a live row
    t = torch.tensor([5, 0, 7, -100, 3])
    a, b = both(z.to(DEVICE), t.to(DEVICE))
    assert a.entropy[0].item() == pytest.approx(math.log(100), abs=1e-5)
    assert a.logprob[0].item() == pytest.approx(-math.log(100), abs=1e-5)
    assert (a.entropy[1].item(), a.logprob[1].item(), a.logsumexp[1].item(), a.top1[1].item()) == (0.0, -INF, -INF, 0)
    assert a.top1[2].item() == 7 and a.margin[2].item() == 0.0 and a.top1_logit[2].item() == 3.0
    assert a.logprob[3].item() == 0.0 and a.top1[3].item() == 12345 and a.margin[3].item() == 5.0
    assert a.logprob[4].item() == -INF
    assert not torch.isnan(torch.stack([a.entropy, a.logsumexp, a.margin])).any()
    for f in a._fields:
        x, y = getattr(a, f), getattr(b, f)
        assert torch.equal(torch.isinf(x), torch.isinf(y)), f
        torch.testing.assert_close(x.nan_to_num(0, 0, 0), y.nan_to_num(0, 0, 0), atol=2e-5, rtol=0)


def test_padded_vocabulary_columns_are_never_counted() -> None:
    """vocab_size=1000 on 1024 columns: the 24 padding columns (even huge ones) change nothing."""
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3, 1024, generator=g)
    z[:, 1000:] = 80.0
    a = token_stats(z.to(DEVICE), vocab_size=1000, backend="triton")
    want = naive64(z[:, :1000])
    torch.testing.assert_close(a.entropy.cpu().double(), want["entropy"], atol=1e-5, rtol=0)
    assert bool((a.top1 < 1000).all())
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 1000\)"):
        token_stats(z.to(DEVICE), torch.tensor([1010, 0, 0]).to(DEVICE), vocab_size=1000, backend="triton")


def test_peaked_row_entropy_without_cancellation() -> None:
    """One logit 40 above 9999 zeros: H = ln(1+9999e^-40) + 9999·40·e^-40/(1+9999e^-40) ~ 1.7e-12."""
    z = torch.zeros(1, 10000)
    z[0, 4321] = 40.0
    e = math.exp(-40.0)
    want = math.log1p(9999 * e) + 9999 * 40 * e / (1 + 9999 * e)  # 4.2e-14 + 1.70e-12
    got = token_stats(z.to(DEVICE), backend="triton").entropy.item()
    assert got == pytest.approx(want, rel=1e-3, abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kl_matches_reference_and_float64_at_qwen_vocab(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    p = (torch.randn(4, QWEN_V, generator=g) * 3).to(dtype)
    q = (p.float() + torch.randn(4, QWEN_V, generator=g) * 0.5).to(dtype)
    for T in (1.0, 1.5):
        a = token_kl(p.to(DEVICE), q.to(DEVICE), temperature=T, backend="triton")
        b = token_kl(p.to(DEVICE), q.to(DEVICE), temperature=T, backend="torch")
        lp = torch.log_softmax(p.double() / T, -1)
        lq = torch.log_softmax(q.double() / T, -1)
        want = (lp.exp() * (lp - lq)).sum(-1)
        torch.testing.assert_close(a.cpu().double(), want, atol=5e-5, rtol=1e-4)
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_kl_edge_rows() -> None:
    """p = 0 where q = 0 contributes 0; p > 0 where q = 0 is +inf; a dead p row is 0; KL(p||p) = 0."""
    V = 9000
    p = torch.zeros(4, V)
    q = torch.zeros(4, V)
    p[0, 4500:] = -INF
    q[0, 4500:] = -INF  # same support: KL 0
    q[1, 8000] = -INF  # p > 0 there: inf
    p[2] = -INF  # dead p
    p[3, :4500] = -INF  # p uniform on half, q uniform: KL = ln 2
    kl = token_kl(p.to(DEVICE), q.to(DEVICE), backend="triton").cpu()
    assert kl[0].item() == pytest.approx(0.0, abs=1e-6) and kl[1].item() == INF
    assert kl[2].item() == 0.0 and kl[3].item() == pytest.approx(math.log(2), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_stats_match_float64_with_splits_and_padding(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """hidden @ W.T statistics without logits: 3 vocabulary splits merged, 40 padded rows of W left at
    zero (logit 0 that must not count) and a temperature, against float64 on the same values."""
    monkeypatch.setattr(tk, "COLS_PER_SPLIT", 256)
    splits = []
    merge = tk.reference.merge_partials
    monkeypatch.setattr(tk.reference, "merge_partials", lambda *a: splits.append(a[0].shape[1]) or merge(*a))
    g = torch.Generator().manual_seed(4)
    N, D, V, live = 37, 80, 700, 660
    h = torch.randn(N, D, generator=g).to(dtype)
    w = (torch.randn(V, D, generator=g) * 0.4).to(dtype)
    w[live:] = 0
    t = torch.randint(0, live, (N,), generator=g)
    t[3] = -100
    a = linear_token_stats(h.to(DEVICE), w.to(DEVICE), t.to(DEVICE), temperature=0.8, vocab_size=live, backend="triton")
    b = linear_token_stats(h.to(DEVICE), w.to(DEVICE), t.to(DEVICE), temperature=0.8, vocab_size=live, backend="torch")
    assert splits[0] == 3  # 660 live columns in splits of 256
    z = h.double() @ w[:live].double().t()
    want = naive64(z, t, 0.8)
    want["logprob"][3] = 0.0
    for f, v in want.items():
        torch.testing.assert_close(getattr(a, f).cpu().double(), v, atol=2e-4, rtol=0)
        torch.testing.assert_close(getattr(a, f), getattr(b, f), atol=2e-4, rtol=0)
    assert torch.equal(a.top1.cpu(), (z / 0.8).argmax(-1))
    top = (z / 0.8).topk(2, -1).values
    torch.testing.assert_close(a.margin.cpu().double(), top[:, 0] - top[:, 1], atol=2e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stats_gradients_match_reference(dtype: torch.dtype) -> None:
    """d(entropy·a + logprob·b + lse·c)/dz from the backward kernel equals the reference's (bf16
    gradients to one bf16 rounding), with -inf entries, a dead row and an ignored target."""
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(9, 3000, generator=g) * 2).to(dtype)
    z[2, 100:] = -INF
    z[4] = -INF
    t = torch.randint(0, 100, (9,), generator=g)
    t[6] = -100
    w = torch.randn(3, 9, generator=g)
    grads = []
    for backend in ("triton", "torch"):
        x = z.clone().to(DEVICE).requires_grad_(True)
        s = token_stats(x, t.to(DEVICE), temperature=1.3, backend=backend)
        loss = (s.entropy * w[0].to(DEVICE)).sum() + (s.logprob * w[1].to(DEVICE)).sum() + (s.logsumexp * w[2].to(DEVICE)).where(torch.isfinite(s.logsumexp), 0).sum()
        (gx,) = torch.autograd.grad(loss, x)
        grads.append(gx.cpu())
    assert grads[0].dtype == dtype and torch.isfinite(grads[0]).all() and grads[0][4].abs().max() == 0
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-4, rtol=1e-2)
    torch.testing.assert_close(grads[0], grads[1], **tol)


def test_kl_gradients_match_reference() -> None:
    g = torch.Generator().manual_seed(6)
    zp = torch.randn(5, 2500, generator=g)
    zq = torch.randn(5, 2500, generator=g)
    zp[1, 50:] = -INF
    up = torch.randn(5, generator=g)
    out = []
    for backend in ("triton", "torch"):
        p = zp.clone().to(DEVICE).requires_grad_(True)
        q = zq.clone().to(DEVICE).requires_grad_(True)
        (token_kl(p, q, temperature=0.9, backend=backend) * up.to(DEVICE)).sum().backward()
        out.append((p.grad.cpu(), q.grad.cpu()))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-6, rtol=1e-5)


def test_linear_gradients_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tk, "COLS_PER_SPLIT", 128)
    g = torch.Generator().manual_seed(7)
    h0 = torch.randn(21, 48, generator=g)
    w0 = torch.randn(300, 48, generator=g) * 0.3
    t = torch.randint(0, 290, (21,), generator=g)
    out = []
    for backend in ("triton", "torch"):
        h = h0.clone().to(DEVICE).requires_grad_(True)
        w = w0.clone().to(DEVICE).requires_grad_(True)
        s = linear_token_stats(h, w, t.to(DEVICE), vocab_size=290, backend=backend)
        (s.logprob.sum() - 0.3 * s.entropy.sum()).backward()
        out.append((h.grad.cpu(), w.grad.cpu()))
    torch.testing.assert_close(out[0][0], out[1][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[0][1], out[1][1], atol=1e-5, rtol=1e-4)
    assert out[0][1][290:].abs().max() == 0  # padded rows of the head get no gradient


def test_row_offsets_are_int64_where_int32_wraps() -> None:
    """At 16384 x 152064 (2.49e9 elements) an int32 row offset wraps from row 14123 on. The kernels'
    offset helper gives the exact int64 value; the same product in int32 wraps (the interpreter
    reproduces the GPU's wrap), so this check would catch a regression without a 5 GB tensor."""
    import triton
    import triton.language as tl

    @triton.jit
    def probe(ROWS, OUT64, OUT32, stride):
        i = tl.arange(0, 4)
        rows = tl.load(ROWS + i)
        tl.store(OUT64 + i, tk._row_offsets(rows, stride))
        tl.store(OUT32 + i, rows.to(tl.int32) * stride.to(tl.int32))

    rows = torch.tensor([14122, 14123, 16380, 16383], dtype=torch.int32, device=DEVICE)
    o64 = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    o32 = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    probe[(1,)](rows, o64, o32, QWEN_V)
    exact = [r * QWEN_V for r in rows.tolist()]
    assert o64.tolist() == exact
    assert exact[1] > 2**31 - 1 and o32.tolist()[0] == exact[0] and o32.tolist()[1] != exact[1]  # int32 wraps


def test_every_kernel_builds_row_offsets_in_int64() -> None:
    """Source check: each pointer offset that multiplies by a stride goes through _row_offsets, and
    program ids are widened before use."""
    src = Path(tk.__file__).read_text()
    body = src.split("def _row_offsets", 1)[1].split("\n\n\n", 1)[1]
    assert not re.search(r"\*\s*stride", body), "a stride multiply outside _row_offsets"
    assert src.count("tl.program_id(0).to(tl.int64)") == 5


def test_dispatch_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto runs the reference on CPU even when interpreting (and the kernels on CUDA tensors); ASG_KERNELS
    picks; bad values are named."""
    x = torch.zeros(2, 3)
    monkeypatch.delenv("ASG_KERNELS", raising=False)
    assert kernels.select_backend(x) == "torch"
    if torch.cuda.is_available():  # a GPU machine: auto sends CUDA tensors to the kernels
        assert kernels.select_backend(x.cuda()) == "triton"
    monkeypatch.setenv("ASG_KERNELS", "triton")
    if tk.INTERPRET:
        assert kernels.select_backend(x) == "triton"
    else:  # compiled kernels: asking for them on a CPU tensor is an error that says why, not a silent fallback
        with pytest.raises(RuntimeError, match="the tensor is on cpu and no GPU kernel can run there"):
            kernels.select_backend(x)
    assert kernels.select_backend(x, "torch") == "torch"
    with pytest.raises(TypeError, match="fp16, bf16 or fp32, got torch.float64"):
        kernels.select_backend(x.double())
    monkeypatch.setenv("ASG_KERNELS", "cuda")
    with pytest.raises(ValueError, match=r"ASG_KERNELS must be one of auto, triton, torch; got 'cuda'"):
        token_stats(x)
    monkeypatch.setattr(api, "_interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="the tensor is on cpu and no GPU kernel can run there"):
        kernels.select_backend(x, "triton")
