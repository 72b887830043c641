"""Non-finite guard: decide whether an optimiser step must be skipped, and say why (§1, §5.1).

The trainer calls :func:`skip_reason` after ``backward()`` and before ``step()``; on a reason it zeros
the gradients, skips the step and counts the reason's ``code`` (recipe: every update decision logged).
Samplers call :func:`check_finite` on what they sample from; its :class:`~asg.errors.NonFiniteError`
makes the trainer abandon the step (code ``nonfinite_output``) instead of failing the run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import attrs
import torch

from asg.errors import NonFiniteError

SKIP_CODES: tuple[str, ...] = ("nonfinite_loss", "nonfinite_grad", "no_grad")
# the code of a role whose update a step never reached because a model output was non-finite
NONFINITE_OUTPUT = "nonfinite_output"


@attrs.frozen
class SkipReason:
    """Why a step is skipped: a stable ``code`` to count and a ``detail`` naming the culprit."""

    code: str = attrs.field(validator=attrs.validators.in_(SKIP_CODES))
    detail: str

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


def _named(parameters: Mapping[str, torch.Tensor] | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]]):
    if isinstance(parameters, Mapping):
        return list(parameters.items())
    out = []
    for k, p in enumerate(parameters):
        out.append(p if isinstance(p, tuple) else (f"param[{k}]", p))
    return out


def skip_reason(
    loss: torch.Tensor | float | None = None,
    parameters: Mapping[str, torch.Tensor] | Iterable[torch.Tensor] | Iterable[tuple[str, torch.Tensor]] = (),
    *,
    require_grad: bool = False,
) -> SkipReason | None:
    """``None`` when the step may go ahead; otherwise the first reason found:

    - ``nonfinite_loss``: the loss is NaN/±inf;
    - ``nonfinite_grad``: some gradient holds NaN/±inf (names the first such parameter and counts values);
    - ``no_grad`` (only with ``require_grad``): no parameter received a gradient at all.
    """
    if loss is not None:
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            return SkipReason("nonfinite_loss", f"loss is {value}")
    seen = False
    for name, p in _named(parameters):
        g = p.grad
        if g is None:
            continue
        seen = True
        bad = ~torch.isfinite(g)
        if bool(bad.any()):
            return SkipReason("nonfinite_grad", f"{name} has {int(bad.sum())} non-finite of {g.numel()} gradient values")
    if require_grad and not seen:
        return SkipReason("no_grad", "no trainable parameter received a gradient")
    return None


def check_finite(values: torch.Tensor, what: str, *, allow_neg_inf: bool = False) -> None:
    """Raise :class:`~asg.errors.NonFiniteError` naming ``what`` when ``values`` holds NaN or +inf (or -inf,
    unless ``allow_neg_inf``: masked logits are -inf on purpose). For a batch (first dimension), the
    message lists the affected rows."""
    bad = torch.isnan(values) | (values == float("inf"))
    if not allow_neg_inf:
        bad |= values == float("-inf")
    if not bool(bad.any()):
        return
    where = ""
    if values.dim() >= 2:
        rows = bad.reshape(bad.shape[0], -1).any(-1).nonzero()[:, 0].tolist()
        shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
        where = f" in row(s) {shown} of {values.shape[0]}"
    kinds = [k for k, hit in (("NaN", torch.isnan(values).any()), ("+inf", (values == float("inf")).any()),
                              ("-inf", (not allow_neg_inf) and (values == float("-inf")).any())) if bool(hit)]
    raise NonFiniteError(f"{what} hold {int(bad.sum())} non-finite value(s) ({'/'.join(kinds)}){where}")


__all__ = ["NONFINITE_OUTPUT", "SKIP_CODES", "SkipReason", "check_finite", "skip_reason"]
