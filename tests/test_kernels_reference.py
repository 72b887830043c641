"""The PyTorch reference of asg.kernels against hand-derived values and the edge cases of kernels.md §4."""

from __future__ import annotations

import math

import pytest
import torch

from asg.kernels import token_kl, token_stats

INF = float("inf")


def test_uniform_row_has_entropy_log_v() -> None:
    """Four equal logits: H = ln 4 = 1.3863, log p(any) = -ln 4, lse = 0 + ln 4."""
    out = token_stats(torch.zeros(1, 4), torch.tensor([2]))
    assert out.entropy.item() == pytest.approx(math.log(4), abs=1e-6)
    assert out.logprob.item() == pytest.approx(-math.log(4), abs=1e-6)
    assert out.logsumexp.item() == pytest.approx(math.log(4), abs=1e-6)
    assert out.margin.item() == 0.0  # all tied


def test_two_way_split_by_hand() -> None:
    """Logits (ln 3, 0): p = (3/4, 1/4); H = -(.75 ln .75 + .25 ln .25) = 0.5623; margin ln 3 = 1.0986."""
    z = torch.tensor([[math.log(3.0), 0.0]])
    out = token_stats(z, torch.tensor([1]))
    assert out.entropy.item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-6)
    assert out.logprob.item() == pytest.approx(math.log(0.25), abs=1e-6)
    assert out.top1.item() == 0 and out.margin.item() == pytest.approx(math.log(3.0), abs=1e-6)


def test_temperature_is_applied_after_upcast() -> None:
    """Temperature 2 on logits (2 ln 3, 0) equals temperature 1 on (ln 3, 0); bf16 input gives fp32 output."""
    z = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.bfloat16)
    out = token_stats(z, torch.tensor([0]), temperature=2.0)
    assert out.entropy.dtype == torch.float32
    assert out.logprob.item() == pytest.approx(math.log(0.75), abs=1e-2)  # bf16 rounding of the input only


def test_neg_inf_logits_and_fully_masked_rows_are_defined() -> None:
    """-inf entries contribute nothing; an all -inf row gives H 0, logp -inf, margin 0 and no NaN."""
    z = torch.tensor([[0.0, 0.0, -INF], [-INF, -INF, -INF]])
    out = token_stats(z, torch.tensor([1, 0]))
    assert out.entropy[0].item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.entropy[1].item() == 0.0 and out.logprob[1].item() == -INF and out.logsumexp[1].item() == -INF
    assert out.margin.tolist() == [0.0, 0.0]
    assert not torch.isnan(torch.stack([out.entropy, out.margin])).any()


def test_ignore_index_and_out_of_range_targets() -> None:
    """Ignored rows get log-prob 0; a target outside [0, V) that is not ignore_index is an error."""
    out = token_stats(torch.zeros(2, 3), torch.tensor([-100, 1]))
    assert out.logprob[0].item() == 0.0 and out.logprob[1].item() == pytest.approx(-math.log(3), abs=1e-6)
    with pytest.raises(ValueError, match=r"target id 3 at row 0 \(flattened\) is outside the vocabulary"):
        token_stats(torch.zeros(1, 3), torch.tensor([3]))


def test_padded_vocabulary_columns_are_masked() -> None:
    """With vocab_size=2, columns 2.. are -inf: two zeros give H = ln 2 whatever the padding holds."""
    z = torch.tensor([[0.0, 0.0, 50.0, 50.0]])
    out = token_stats(z, torch.tensor([0]), vocab_size=2)
    assert out.entropy.item() == pytest.approx(math.log(2), abs=1e-6) and out.top1.item() in (0, 1)


def test_peaked_rows_have_no_cancellation() -> None:
    """One logit 40 above 9 others: H = ln(1+9e^-40) + 9·40·e^-40/(1+9e^-40) ~ 1.53e-15, not ~1e-6 noise."""
    z = torch.zeros(1, 10)
    z[0, 0] = 40.0
    e = math.exp(-40.0)
    expected = math.log1p(9 * e) + 9 * 40 * e / (1 + 9 * e)  # 3.8e-17 + 1.53e-15 (log(1 + x) would drop the first)
    assert token_stats(z).entropy.item() == pytest.approx(expected, rel=1e-4, abs=0)


def test_matches_log_softmax_on_random_logits_and_chunks() -> None:
    """On random fp32 logits spread over several chunks, every field equals the plain torch formulae."""
    import asg.kernels.reference as ref

    torch.manual_seed(0)
    z = torch.randn(7, 5, 11) * 3
    t = torch.randint(0, 11, (7, 5))
    old = ref._CHUNK_ELEMENTS
    ref._CHUNK_ELEMENTS = 30  # forces 2 rows per chunk
    try:
        out = token_stats(z, t)
    finally:
        ref._CHUNK_ELEMENTS = old
    lp = torch.log_softmax(z, -1)
    torch.testing.assert_close(out.entropy, -(lp.exp() * lp).sum(-1))
    torch.testing.assert_close(out.logprob, lp.gather(-1, t[..., None]).squeeze(-1))
    torch.testing.assert_close(out.logsumexp, torch.logsumexp(z, -1))
    top = z.topk(2, -1).values
    torch.testing.assert_close(out.margin, top[..., 0] - top[..., 1])


def test_gradients_of_logprob_and_entropy() -> None:
    """d logp(y)/dz = onehot(y) - p and dH/dz = -p (ln p + H), checked on (ln 3, 0)."""
    z = torch.tensor([[math.log(3.0), 0.0]], requires_grad=True)
    out = token_stats(z, torch.tensor([1]))
    (g_lp,) = torch.autograd.grad(out.logprob.sum(), z, retain_graph=True)
    p = torch.tensor([0.75, 0.25])
    torch.testing.assert_close(g_lp[0], torch.tensor([0.0, 1.0]) - p)
    (g_h,) = torch.autograd.grad(out.entropy.sum(), z)
    H = -(p * p.log()).sum()
    torch.testing.assert_close(g_h[0], -p * (p.log() + H))


def test_kl_by_hand() -> None:
    """KL((3/4, 1/4) || (1/2, 1/2)) = .75 ln 1.5 + .25 ln .5 = 0.1308; KL(p || p) = 0."""
    p = torch.tensor([[math.log(3.0), 0.0]])
    q = torch.zeros(1, 2)
    assert token_kl(p, q).item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    assert token_kl(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_with_zero_probabilities() -> None:
    """p = 0 terms contribute 0; p > 0 where q = 0 gives +inf."""
    p = torch.tensor([[0.0, -INF], [0.0, 0.0]])
    q = torch.tensor([[0.0, 0.0], [0.0, -INF]])
    kl = token_kl(p, q)
    assert kl[0].item() == pytest.approx(math.log(2), abs=1e-6) and kl[1].item() == INF


def test_bad_inputs_are_named() -> None:
    """Integer logits, mismatched shapes and non-positive temperatures are rejected with the reason."""
    with pytest.raises(TypeError, match="logits must be a floating-point torch.Tensor"):
        token_stats(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target must have shape \(2,\)"):
        token_stats(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        token_stats(torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        token_kl(torch.zeros(2, 3), torch.zeros(2, 4))


# -- autograd of the reference (hand-written backward) -----------------------------------------------


def test_gradcheck_token_stats_float64() -> None:
    """float64 gradcheck of entropy, log-prob and log-sum-exp through the hand-written backward, with a
    temperature, a -inf entry (held fixed: it has no finite perturbation), an ignored row, and padded
    vocabulary columns."""
    torch.manual_seed(0)
    z = torch.randn(4, 7, dtype=torch.float64)
    z[1, 3] = -INF
    finite = torch.isfinite(z)
    x = z.clone().requires_grad_(True)

    def stats(t: torch.Tensor, **kw: object):
        def f(y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            s = token_stats(torch.where(finite, y, z), t, **kw)
            return s.entropy, s.logprob, s.logsumexp
        return f

    assert torch.autograd.gradcheck(stats(torch.tensor([2, 0, -100, 6]), temperature=1.7), (x,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(stats(torch.tensor([2, 0, -100, 4]), vocab_size=5), (x,), eps=1e-6, atol=1e-6)


def test_gradcheck_token_kl_float64() -> None:
    torch.manual_seed(1)
    p = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    q = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: token_kl(a, b, temperature=0.8), (p, q), eps=1e-6, atol=1e-6)


def test_gradcheck_linear_token_stats_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of 2 tokens x 4 vocabulary columns, so the recomputing backward crosses tile borders."""
    import asg.kernels.reference as ref
    from asg.kernels import linear_token_stats

    monkeypatch.setattr(ref, "LINEAR_VOCAB_TILE", 4)
    torch.manual_seed(2)
    h = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 9, -100, 4, 7])

    def f(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        s = linear_token_stats(a, b, t, temperature=1.3, vocab_size=10, chunk_tokens=2)
        return s.entropy, s.logprob, s.logsumexp

    assert torch.autograd.gradcheck(f, (h, w), eps=1e-6, atol=1e-6)


def test_linear_equals_stats_of_the_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiled over tokens and vocabulary, linear_token_stats gives token_stats(h @ W.T) field by field."""
    import asg.kernels.reference as ref
    from asg.kernels import linear_token_stats

    monkeypatch.setattr(ref, "LINEAR_VOCAB_TILE", 16)
    torch.manual_seed(3)
    h = torch.randn(2, 9, 8)
    w = torch.randn(50, 8)
    w[17] = w[3]  # a duplicated row: tied logits in different tiles
    t = torch.randint(0, 50, (2, 9))
    a = linear_token_stats(h, w, t, chunk_tokens=4)
    b = token_stats(h @ w.t(), t)
    for f in ("entropy", "logprob", "logsumexp", "top1_logit", "top2_logit"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f), atol=1e-5, rtol=1e-5)
    assert torch.equal(a.top1, b.top1)


def test_nothing_of_size_tokens_x_vocab_is_saved_for_backward() -> None:
    """The graph of linear_token_stats holds hidden, weight and per-token vectors only; token_stats
    holds its input logits and per-token vectors (no softmax or log-prob copies)."""
    from asg.kernels import linear_token_stats

    N, D, V = 12, 8, 300
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    h = torch.randn(N, D, requires_grad=True)
    w = torch.randn(V, D, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s = linear_token_stats(h, w, torch.zeros(N, dtype=torch.long))
    assert max(saved) == V * D and saved.count(V * D) == 1 and all(n in (N, N * D, V * D) for n in saved)
    (s.entropy.sum() + s.logprob.sum()).backward()
    assert h.grad is not None and w.grad is not None
    saved.clear()
    z = torch.randn(N, V, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_stats(z, torch.zeros(N, dtype=torch.long))
    assert sorted(saved) == [N, N, N, N * V]
