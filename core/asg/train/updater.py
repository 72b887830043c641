"""One optimiser per trained role, with its KL coefficient and the non-finite guard (§1, §5.1).

``RoleUpdater.apply(loss)`` is the only place where a role's weights change: backward, (all-reduce
of gradients across ranks), guard, clip, step, β update. Every call returns an ``UpdateResult``
saying whether it stepped and, if not, why; the trainer logs it (recipe: every update decision).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from asg.updates.guards import skip_reason
from asg.updates.kl import AdaptiveKL, KLConfig


@attrs.frozen
class UpdateResult:
    """What one update attempt did."""

    stepped: bool
    skip_reason: str | None = None  # e.g. "nonfinite_grad", "gate:easy", "disabled"
    diagnostics: dict[str, float] = attrs.field(factory=dict)

    @classmethod
    def skipped(cls, reason: str, **diagnostics: float) -> UpdateResult:
        return cls(False, reason, dict(diagnostics))

    def record_into(self, metrics: dict[str, Any], role: str) -> None:
        """Log this decision under ``role.*``: stepped, skip_reason and every diagnostic."""
        metrics[f"{role}.stepped"] = self.stepped
        metrics[f"{role}.skip_reason"] = self.skip_reason
        for k, v in self.diagnostics.items():
            metrics[f"{role}.{k}"] = v


class RoleUpdater:
    """AdamW over one role's trainable parameters + its adaptive β."""

    def __init__(self, role: str, params: list[torch.nn.Parameter], *, lr: float, weight_decay: float,
                 grad_clip: float, kl: KLConfig, dist: Any = None) -> None:
        if not params:
            raise ValueError(f"role {role!r} has no trainable parameters; the backbone must expose its adapters")
        self.role = role
        self.params = params
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.kl = AdaptiveKL(kl)
        self.dist = dist
        self.steps = 0
        self.skips: dict[str, int] = {}

    @property
    def beta(self) -> float:
        return self.kl.value

    @property
    def decisions(self) -> int:
        """Update decisions taken so far: every step and every counted skip (one per update attempt)."""
        return self.steps + sum(self.skips.values())

    def _count(self, reason: str) -> None:
        self.skips[reason] = self.skips.get(reason, 0) + 1

    def skip(self, reason: str, **diagnostics: float) -> UpdateResult:
        """Record a gated-out update (no backward ran on this rank).

        With several ranks this rank still joins the gradient all-reduce with zeros, and if another
        rank did update, it takes the same averaged step, so every rank keeps identical weights (the
        reference's "zero-loss backward" on skipping ranks).
        """
        self._count(reason)
        if self.dist is not None and self.dist.world_size > 1:
            self.optimizer.zero_grad(set_to_none=True)
            synced = self._step_if_any({})
            if synced.stepped:
                return UpdateResult(True, reason, {**diagnostics, **synced.diagnostics, "synced_only": 1.0})
        return UpdateResult.skipped(reason, **diagnostics)

    def apply(self, loss: torch.Tensor, *, kl_mean: float | None = None, diagnostics: dict[str, float] | None = None) -> UpdateResult:
        """Backward ``loss`` and step unless the loss or a gradient is non-finite."""
        diag = dict(diagnostics or {})
        self.optimizer.zero_grad(set_to_none=True)
        reason = skip_reason(loss)
        if reason is None:
            loss.backward()
        else:
            self._count(reason.code)
        result = self._step_if_any({**diag, "loss": _finite(loss)})
        if not result.stepped:
            if reason is None and result.skip_reason is not None:
                self._count(result.skip_reason)
            return UpdateResult(False, reason.code if reason is not None else result.skip_reason, result.diagnostics)
        if kl_mean is not None:
            result.diagnostics["kl"] = kl_mean
            result.diagnostics["beta"] = self.kl.value  # the β this step used
            self.kl.update(kl_mean)
        return result

    def _step_if_any(self, diag: dict[str, float]) -> UpdateResult:
        """(All-reduce the gradients,) check them, clip and step; the decision is the same on every rank."""
        if self.dist is not None and self.dist.world_size > 1:
            self.dist.average_gradients(self.params, key=self.role)
        reason = skip_reason(None, self.params, require_grad=True)
        if reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            return UpdateResult(False, reason.code, diag)
        diag["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return UpdateResult(True, None, diag)

    def state_dict(self) -> dict[str, Any]:
        return {"kl": self.kl.state_dict(), "steps": self.steps, "skips": dict(self.skips)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl.load_state_dict(state["kl"])
        self.steps = int(state["steps"])
        self.skips = {str(k): int(v) for k, v in state["skips"].items()}


def _finite(loss: torch.Tensor) -> float:
    value = float(loss.detach())
    return value if value == value and abs(value) != float("inf") else float("nan")
