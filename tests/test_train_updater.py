"""RoleUpdater: one optimiser per role, the non-finite guard, β adaptation, logged decisions."""

from __future__ import annotations

import math

import torch

from asg.train.updater import RoleUpdater
from asg.updates import KLConfig


def _updater(n: int = 3) -> tuple[RoleUpdater, torch.nn.Parameter]:
    p = torch.nn.Parameter(torch.ones(n))
    return RoleUpdater("solver", [p], lr=0.1, weight_decay=0.0, grad_clip=1.0, kl=KLConfig()), p


def test_finite_loss_steps_and_adapts_beta() -> None:
    """A finite loss steps once; β moves by exp(0.1·(KL − 0.02)/0.02) from its initial 0.01."""
    upd, p = _updater()
    before = p.detach().clone()
    result = upd.apply((p * 2.0).sum(), kl_mean=0.04)
    assert result.stepped and result.skip_reason is None
    assert not torch.equal(p.detach(), before)
    # relative error (0.04 - 0.02) / 0.02 = 1 -> log-step 0.1 -> beta = 0.01 * e^0.1
    assert math.isclose(upd.beta, 0.01 * math.exp(0.1), rel_tol=1e-12)
    assert result.diagnostics["beta"] == 0.01 and result.diagnostics["kl"] == 0.04
    assert upd.steps == 1 and p.grad is None


def test_nonfinite_loss_is_skipped_and_counted() -> None:
    """A NaN loss runs no backward, leaves the weights and β untouched and counts 'nonfinite_loss'."""
    upd, p = _updater()
    before = p.detach().clone()
    result = upd.apply(p.sum() * float("nan"), kl_mean=0.5)
    assert not result.stepped and result.skip_reason == "nonfinite_loss"
    assert torch.equal(p.detach(), before) and upd.beta == 0.01 and upd.skips == {"nonfinite_loss": 1}


def test_nonfinite_gradient_is_skipped() -> None:
    """A finite loss whose gradient is non-finite is caught after backward: no step, grads cleared."""
    upd, p = _updater()
    before = p.detach().clone()
    p.register_hook(lambda g: g * float("inf"))  # the loss stays finite, its gradient does not
    result = upd.apply(p.sum())
    assert not result.stepped and result.skip_reason == "nonfinite_grad"
    assert torch.equal(p.detach(), before) and p.grad is None and upd.skips == {"nonfinite_grad": 1}


def test_gated_skip_is_recorded_without_stepping() -> None:
    """skip() in a single process records the reason and changes nothing."""
    upd, p = _updater()
    before = p.detach().clone()
    result = upd.skip("gate:easy", h_sc=0.0)
    assert not result.stepped and result.skip_reason == "gate:easy" and result.diagnostics == {"h_sc": 0.0}
    assert torch.equal(p.detach(), before) and upd.skips == {"gate:easy": 1}


def test_state_round_trip() -> None:
    """state_dict/load_state_dict carry β, the step count and the skip counts."""
    upd, p = _updater()
    upd.apply(p.sum(), kl_mean=0.0)
    upd.skip("gate:easy")
    other, _ = _updater()
    other.load_state_dict(upd.state_dict())
    assert (other.beta, other.steps, other.skips) == (upd.beta, 1, {"gate:easy": 1})
