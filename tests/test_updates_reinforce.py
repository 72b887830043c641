"""REINFORCE with EMA baseline and KL penalty (algorithm.md §3.9, §5.1), on hand-built tensors."""

from __future__ import annotations

import pytest
import torch

from asg.updates.reinforce import EMABaseline, ReinforceConfig, reinforce_loss

# Two completions: 3 real tokens, and 2 real tokens + 1 padding position (which holds -inf / junk).
LOGP = [[-1.0, -2.0, -3.0], [-0.5, -0.5, float("-inf")]]
MASK = [[True, True, True], [True, True, False]]
KL = [[0.1, 0.2, 0.3], [0.4, 0.0, 9.9]]


def test_baseline_is_read_before_each_sample_and_updated_after() -> None:
    """Rewards (1.0, −0.5), μ = 0.6, b_0 = 0:
    A_0 = 1.0 − 0 = 1.0;  b_1 = 0.6·0 + 0.4·1.0 = 0.4;
    A_1 = −0.5 − 0.4 = −0.9;  b_2 = 0.6·0.4 + 0.4·(−0.5) = 0.04."""
    b = EMABaseline(momentum=0.6)
    adv = b.advantages([1.0, -0.5])
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.9]))
    assert b.value == pytest.approx(0.04) and b.count == 2


def test_dry_run_leaves_the_baseline_unchanged() -> None:
    """advantages(update=False) computes the same values without moving the baseline."""
    b = EMABaseline(momentum=0.6, init=0.5)
    adv = b.advantages(torch.tensor([1.0]), update=False)
    torch.testing.assert_close(adv, torch.tensor([0.5]))
    assert b.value == 0.5 and b.count == 0


def test_baseline_state_round_trips_and_checks_momentum() -> None:
    """state_dict/load_state_dict restore value and count; a momentum mismatch is an error."""
    b = EMABaseline.from_config(ReinforceConfig())
    b.update(1.0)
    fresh = EMABaseline(0.6)
    fresh.load_state_dict(b.state_dict())
    assert (fresh.value, fresh.count) == (pytest.approx(0.4), 1)
    with pytest.raises(ValueError, match="momentum 0.6 but this baseline uses 0.9"):
        EMABaseline(0.9).load_state_dict(b.state_dict())
    with pytest.raises(KeyError, match="must have keys"):
        fresh.load_state_dict({"value": 1.0})


def test_loss_value_matches_the_hand_derivation() -> None:
    """mean log-probs: s_0 = (−1−2−3)/3 = −2.0, s_1 = (−0.5−0.5)/2 = −0.5; mean KL: 0.2 and 0.2;
    A = (1.0, −0.9), β = 0.5:
    ℓ_0 = −1.0·(−2.0) + 0.5·0.2 = 2.1;  ℓ_1 = −(−0.9)·(−0.5) + 0.5·0.2 = −0.35;
    loss = (2.1 − 0.35)/2 = 0.875."""
    logp = torch.tensor(LOGP, requires_grad=True)
    loss, diag = reinforce_loss(logp, torch.tensor(MASK), torch.tensor([1.0, -0.9]), kl=torch.tensor(KL), beta=0.5)
    assert loss.item() == pytest.approx(0.875)
    assert diag["pg_loss"] == pytest.approx((2.0 - 0.45) / 2)
    assert diag["kl"] == pytest.approx(0.2) and diag["beta"] == 0.5
    assert diag["logprob_mean"] == pytest.approx(-1.25) and diag["tokens_mean"] == pytest.approx(2.5)
    assert diag["adv_mean"] == pytest.approx(0.05) and diag["adv_max"] == pytest.approx(1.0)


def test_gradient_raises_likelihood_for_positive_advantage_and_ignores_padding() -> None:
    """∂loss/∂logp[0, t] = −A_0/(n_0·B) = −1/(3·2) = −1/6; ∂/∂logp[1, t] = 0.9/(2·2) = 0.225; padding 0."""
    logp = torch.tensor(LOGP, requires_grad=True)
    loss, _ = reinforce_loss(logp, torch.tensor(MASK), torch.tensor([1.0, -0.9]), kl=torch.tensor(KL), beta=0.5)
    loss.backward()
    expected = torch.tensor([[-1 / 6] * 3, [0.225, 0.225, 0.0]])
    torch.testing.assert_close(logp.grad, expected)
    assert torch.isfinite(logp.grad).all()


def test_per_sample_weights_scale_each_term() -> None:
    """Weights (1, 2): loss = (1·2.1 + 2·(−0.35))/2 = 0.7; weight 0 removes a sample."""
    logp, mask, kl = torch.tensor(LOGP), torch.tensor(MASK), torch.tensor(KL)
    loss, diag = reinforce_loss(logp, mask, torch.tensor([1.0, -0.9]), kl=kl, beta=0.5, weights=torch.tensor([1.0, 2.0]))
    assert float(loss) == pytest.approx(0.7) and diag["weight_sum"] == 3.0
    loss, _ = reinforce_loss(logp, mask, torch.tensor([1.0, -0.9]), kl=kl, beta=0.5, weights=torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(2.1 / 2)
    with pytest.raises(ValueError, match="non-negative"):
        reinforce_loss(logp, mask, torch.tensor([1.0, -0.9]), weights=torch.tensor([1.0, -1.0]))


def test_sum_reduction_and_no_kl() -> None:
    """reduction='sum' uses Σ log p: ℓ_0 = −1·(−6) = 6, ℓ_1 = −(−0.9)·(−1) = −0.9; loss = 2.55."""
    loss, diag = reinforce_loss(torch.tensor(LOGP), torch.tensor(MASK), torch.tensor([1.0, -0.9]), reduction="sum")
    assert float(loss) == pytest.approx((6.0 - 0.9) / 2) and diag["kl"] == 0.0


def test_config_fields_are_validated_by_name() -> None:
    """A momentum of 1 would never move: rejected with the field's name."""
    with pytest.raises(ValueError, match=r"ReinforceConfig.momentum must be a number in \[0.0, 1.0\), got 1.0"):
        ReinforceConfig(momentum=1.0)
    with pytest.raises(ValueError, match=r"ReinforceConfig.reduction must be one of 'mean', 'sum'"):
        ReinforceConfig(reduction="max")
