"""Non-finite guard: skip reasons for the optimiser step (algorithm.md §1, §5.1)."""

from __future__ import annotations

import torch

from asg.updates.guards import SkipReason, skip_reason


def _param(grad: list[float] | None) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = None if grad is None else torch.tensor(grad)
    return p


def test_finite_loss_and_grads_allow_the_step() -> None:
    """Finite loss and gradients: no reason."""
    assert skip_reason(torch.tensor(1.0), {"w": _param([0.1, 0.2, 0.3])}) is None


def test_non_finite_loss_is_reported_first() -> None:
    """A NaN or inf loss gives code nonfinite_loss."""
    reason = skip_reason(torch.tensor(float("nan")), {"w": _param([float("nan")] * 3)})
    assert reason == SkipReason("nonfinite_loss", "loss is nan")
    assert skip_reason(float("inf")).code == "nonfinite_loss"


def test_non_finite_gradient_names_the_parameter() -> None:
    """An inf gradient names the parameter and how many values are bad."""
    params = {"ok": _param([1.0, 1.0, 1.0]), "lora_B": _param([float("inf"), 0.0, float("nan")])}
    reason = skip_reason(torch.tensor(0.5), params)
    assert reason is not None and reason.code == "nonfinite_grad"
    assert str(reason) == "nonfinite_grad: lora_B has 2 non-finite of 3 gradient values"


def test_unnamed_parameters_get_positional_names() -> None:
    """A plain iterable of parameters is accepted; the culprit is named by position."""
    reason = skip_reason(None, [_param([0.0] * 3), _param([float("nan"), 0.0, 0.0])])
    assert reason is not None and "param[1]" in reason.detail


def test_missing_gradients_are_a_reason_only_when_required() -> None:
    """No parameter with a gradient: fine by default, code no_grad with require_grad."""
    params = {"w": _param(None)}
    assert skip_reason(torch.tensor(1.0), params) is None
    assert skip_reason(torch.tensor(1.0), params, require_grad=True).code == "no_grad"
