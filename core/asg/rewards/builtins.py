"""The built-in reward components, in one place (registered by :mod:`asg.rewards.plugin`)."""

from __future__ import annotations

from asg.rewards.components import RewardComponent
from asg.rewards.generation import GENERATOR_COMPONENTS
from asg.rewards.proposer import PROPOSER_COMPONENTS
from asg.rewards.solver import SOLVER_COMPONENTS

BUILTIN_COMPONENTS: tuple[RewardComponent, ...] = PROPOSER_COMPONENTS + SOLVER_COMPONENTS + GENERATOR_COMPONENTS


def builtin_components(role: str | None = None) -> tuple[RewardComponent, ...]:
    """The built-in components (of one role), independent of which plugins are installed."""
    return tuple(c for c in BUILTIN_COMPONENTS if role is None or c.role == role)


__all__ = ["BUILTIN_COMPONENTS", "builtin_components"]
