"""Adaptive KL coefficient (algorithm.md §5.1; fed the mean KL, recipe quirk 4)."""

from __future__ import annotations

import math

import pytest
import torch

from asg.updates.kl import AdaptiveKL, KLConfig


def test_beta_rises_when_kl_is_above_target() -> None:
    """KL 0.04, target 0.02: e = (0.04 − 0.02)/0.02 = 1 → β = 0.01·exp(0.10·1) = 0.0110517."""
    kl = AdaptiveKL()
    assert kl.value == 0.01
    assert kl.update(0.04) == pytest.approx(0.011051709)


def test_beta_falls_when_kl_is_below_target() -> None:
    """KL 0: e = −1 → β = 0.01·exp(−0.10) = 0.0090484."""
    assert AdaptiveKL().update(0.0) == pytest.approx(0.009048374)


def test_relative_error_is_clipped_at_50() -> None:
    """KL 10: e = 499 → clipped to 50 → β = 0.01·exp(5) = 1.4841316."""
    assert AdaptiveKL().update(10.0) == pytest.approx(1.484131591)


def test_beta_stays_within_its_bounds() -> None:
    """β never leaves [0.001, 100]: 100 steps at KL 0 end at the floor, 100 at KL 10 at the ceiling."""
    low, high = AdaptiveKL(), AdaptiveKL()
    for _ in range(100):
        low.update(0.0)
        high.update(10.0)
    assert low.value == 0.001 and high.value == 100.0


def test_a_group_of_kls_is_reduced_by_its_mean_not_its_sum() -> None:
    """KLs (0.01, 0.03, 0.05): mean 0.03 → e = 0.5 → β = 0.01·exp(0.05) = 0.0105127
    (the summed 0.09 would give e = 3.5 → 0.0141907, the reference quirk)."""
    expected = 0.01 * math.exp(0.05)
    assert AdaptiveKL().update([0.01, 0.03, 0.05]) == pytest.approx(expected)
    assert AdaptiveKL().update(torch.tensor([0.01, 0.03, 0.05])) == pytest.approx(expected)


def test_non_finite_kl_and_fixed_mode_leave_beta_unchanged() -> None:
    """A NaN KL does not move β; adaptive=False keeps β at init."""
    kl = AdaptiveKL()
    assert kl.update(float("nan")) == 0.01 and kl.steps == 0
    assert AdaptiveKL(KLConfig(adaptive=False)).update(5.0) == 0.01


def test_state_round_trip() -> None:
    """state_dict/load_state_dict restore β and the step count."""
    a = AdaptiveKL()
    a.update(0.04)
    b = AdaptiveKL()
    b.load_state_dict(a.state_dict())
    assert (b.value, b.steps) == (a.value, 1)
    with pytest.raises(KeyError, match="must have keys"):
        b.load_state_dict({"beta": 1.0})


def test_config_validation_names_the_field() -> None:
    """A non-positive target, or an init outside [β_min, β_max], is rejected by name."""
    with pytest.raises(ValueError, match=r"KLConfig.target must be a number in \(0.0, inf\], got 0.0"):
        KLConfig(target=0.0)
    with pytest.raises(ValueError, match=r"KLConfig.init must lie in \[beta_min, beta_max\]"):
        KLConfig(init=1000.0)
