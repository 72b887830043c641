"""Group-relative advantages and the clipped GRPO loss (algorithm.md §3.10, §5.2), on hand-built tensors."""

from __future__ import annotations

import math

import pytest
import torch

from asg.errors import ConfigError
from asg.updates.grpo import GRPOConfig, group_advantages, grpo_loss, max_abs_advantages

LN = math.log


def test_advantages_are_z_scores_with_population_std() -> None:
    """r = (1, 0, 0.5): mean 0.5, std = sqrt((0.25 + 0.25 + 0)/3) = sqrt(1/6) = 0.408248;
    A = (0.5, −0.5, 0)/0.408248 = (1.224745, −1.224745, 0)."""
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0, 0.5])), torch.tensor([1.224745, -1.224745, 0.0]))


def test_each_row_is_its_own_group() -> None:
    """(N, G) rewards are normalised per row."""
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.5], [3.0, 3.0, 6.0]]))
    # row 2: mean 4, deviations (−1, −1, 2), std = sqrt(6/3) = 1.414214 → (−0.707107, −0.707107, 1.414214)
    torch.testing.assert_close(adv[1], torch.tensor([-0.707107, -0.707107, 1.414214]))


def test_degenerate_group_uses_the_virtual_max_reward() -> None:
    """r = (0.3, 0.3): std 0 → augmented (0.3, 0.3, 1.0), mean 0.533333, deviations (−0.2333, −0.2333, 0.4667),
    std = sqrt((0.05444 + 0.05444 + 0.21778)/3) = 0.329983; A = −0.233333/0.329983 = −0.707107 each."""
    torch.testing.assert_close(group_advantages(torch.tensor([0.3, 0.3])), torch.tensor([-0.707107, -0.707107]))
    zero = group_advantages(torch.tensor([0.3, 0.3]), GRPOConfig(degenerate="zero"))
    torch.testing.assert_close(zero, torch.zeros(2))
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 1.0])), torch.zeros(2))  # already maximal


def test_max_abs_advantages_for_the_baseline_shifted_path() -> None:
    """r' = (0.2, −0.4, 0.1): A = r'/0.4 = (0.5, −1.0, 0.25); all ≈ 0 gives zeros."""
    torch.testing.assert_close(max_abs_advantages(torch.tensor([0.2, -0.4, 0.1])), torch.tensor([0.5, -1.0, 0.25]))
    torch.testing.assert_close(max_abs_advantages(torch.tensor([0.0, 1e-9])), torch.zeros(2))


def _seq(mean_logps: list[float]) -> torch.Tensor:
    """(B, 2) per-token log-probs whose per-row mean is the given value."""
    return torch.tensor([[m, m] for m in mean_logps])


def test_clipped_branch_wins_outside_the_trust_region() -> None:
    """ρ = (1.5, 0.5), A = (+1, −1), ε = 0.2:
    pg_0 = max(−1.5, −1.2) = −1.2 (clipped); pg_1 = max(0.5, 0.8) = 0.8 (clipped);
    loss = (−1.2 + 0.8)/2 = −0.2; clip fraction 1; mean ratio 1.0."""
    old = _seq([-1.0, -2.0])
    new = (old + torch.tensor([[LN(1.5)], [LN(0.5)]])).requires_grad_()
    loss, diag = grpo_loss(new, old, torch.tensor([1.0, -1.0]))
    assert loss.item() == pytest.approx(-0.2)
    assert diag["clip_fraction"] == 1.0 and diag["ratio_mean"] == pytest.approx(1.0)
    loss.backward()
    torch.testing.assert_close(new.grad, torch.zeros_like(new))  # no gradient through a clipped term


def test_unclipped_branch_inside_or_on_the_safe_side() -> None:
    """ρ = (0.5, 1.5), A = (+1, −1): pg_0 = max(−0.5, −0.8) = −0.5; pg_1 = max(1.5, 1.2) = 1.5;
    loss = 0.5, clip fraction 0; ∂loss/∂ℓ_0 = −A_0·ρ_0/B = −0.25, split over 2 tokens = −0.125 each."""
    old = _seq([-1.0, -2.0])
    new = (old + torch.tensor([[LN(0.5)], [LN(1.5)]])).requires_grad_()
    loss, diag = grpo_loss(new, old, torch.tensor([1.0, -1.0]))
    assert loss.item() == pytest.approx(0.5) and diag["clip_fraction"] == 0.0
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-0.125, -0.125], [0.375, 0.375]]))


def test_ratio_is_against_the_sampling_policy_not_the_reference() -> None:
    """Policy = sampling policy (ρ = 1) but far from the reference: no clipping, pg = −A; the reference
    enters only the KL. k3 = e^δ − δ − 1 per token with δ = ℓ_ref − ℓ: row 0 δ = (0, ln 2) →
    (0, 2 − ln 2 − 1 = 0.306853), mean 0.153426; row 1 δ = 0 → 0. KL = 0.076713;
    loss = mean(−A) + 0.1·KL = 0 + 0.0076713."""
    logp = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]])
    ref = torch.tensor([[-1.0, -1.0 + LN(2.0)], [-2.0, -2.0]])
    loss, diag = grpo_loss(logp, logp.clone(), torch.tensor([1.0, -1.0]), ref_logprobs=ref, beta=0.1)
    assert diag["ratio_mean"] == pytest.approx(1.0) and diag["clip_fraction"] == 0.0
    kl_rows = (0.306853 / 2, 0.0)  # per-sequence mean k3
    assert diag["kl"] == pytest.approx(sum(kl_rows) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.0 + 0.1 * sum(kl_rows) / 2, abs=1e-6)


def test_ratio_is_capped_at_10() -> None:
    """A huge log-ratio is capped at ρ = 10 before clipping: with A = −1, pg = max(10, 1.2) = 10."""
    old = torch.tensor([[-5.0]])
    loss, diag = grpo_loss(torch.tensor([[0.0]]), old, torch.tensor([-1.0]))
    assert loss.item() == pytest.approx(10.0) and diag["ratio_max"] == pytest.approx(10.0)


def test_token_level_ratios_and_padding() -> None:
    """level='token': per-token ρ = (1.5, 1.0 | 1.0, pad); A = (1, 1):
    row 0 pg = mean(max(−1.5, −1.2), −1.0) = −1.1; row 1 pg = −1.0; loss = −1.05;
    clip fraction over the 3 real tokens = 1/3; padding with -inf changes nothing."""
    old = torch.tensor([[-1.0, -1.0], [-1.0, 0.0]])
    new = torch.tensor([[-1.0 + LN(1.5), -1.0], [-1.0, float("-inf")]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    loss, diag = grpo_loss(new, old, torch.tensor([1.0, 1.0]), mask=mask, config=GRPOConfig(level="token"))
    assert loss.item() == pytest.approx(-1.05)
    assert diag["clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    assert torch.isfinite(new.grad).all() and new.grad[1, 1] == 0.0


def test_per_sample_inputs_for_autoregressive_image_tokens() -> None:
    """(B,) per-sample log-probs (no mask) work: ρ = (e^0.1, 1) = (1.105171, 1); A = (1, −1):
    pg = (−1.105171, 1.0), loss = −0.052585."""
    old = torch.tensor([-3.0, -4.0])
    loss, diag = grpo_loss(old + torch.tensor([0.1, 0.0]), old, torch.tensor([1.0, -1.0]))
    assert loss.item() == pytest.approx((-math.exp(0.1) + 1.0) / 2)


def test_kl_penalty_needs_a_reference() -> None:
    """beta > 0 without ref_logprobs or kl is a configuration error."""
    with pytest.raises(ConfigError, match="beta > 0 needs ref_logprobs"):
        grpo_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2), beta=0.1)


def test_full_vocabulary_kl_can_be_passed_per_token() -> None:
    """kl (B, T) = ((0.2, 0.4), (0, 0)) → per-sequence (0.3, 0), mean 0.15; β = 2 adds 0.3."""
    z = torch.zeros(2, 2)
    loss, diag = grpo_loss(z, z, torch.zeros(2), kl=torch.tensor([[0.2, 0.4], [0.0, 0.0]]), beta=2.0)
    assert diag["kl"] == pytest.approx(0.15) and loss.item() == pytest.approx(0.3)


def test_config_validation_names_the_field() -> None:
    """clip ε must lie in (0, 1]; level must be a known one."""
    with pytest.raises(ValueError, match=r"GRPOConfig.clip_eps must be a number in \(0.0, 1.0\], got 0"):
        GRPOConfig(clip_eps=0)
    with pytest.raises(ValueError, match=r"GRPOConfig.level must be one of 'sequence', 'token'"):
        GRPOConfig(level="group")
