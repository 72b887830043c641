"""All reward settings of a recipe as one typed value, and the strict loader for it.

``from_dict(RewardsConfig, {...})`` builds nested configs from plain mappings (a recipe file) and
rejects unknown keys with the list of valid ones, e.g.::

    from_dict(RewardsConfig, {"proposer": {"ste_mode": "complementary"},
                              "components": {"generator.diversity": {"enabled": False}}})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from asg.config import from_dict
from asg.rewards.components import ComponentOverride
from asg.rewards.consistency import ConsistencyConfig
from asg.rewards.cycle import CycleConfig
from asg.rewards.difficulty import DifficultyConfig
from asg.rewards.diversity import DiversityConfig
from asg.rewards.fidelity import FidelityConfig
from asg.rewards.generation import GenerationConfig
from asg.rewards.proposer import ProposerConfig
from asg.rewards.solver import SolverConfig
from asg.rewards.ste import SteConfig


def _nested(cls: type) -> Any:
    return attrs.field(factory=cls, validator=attrs.validators.instance_of(cls), metadata={"config": cls})


def _overrides(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{type(inst).__name__}.{attr.name} must map component names to ComponentOverride, got {type(value).__name__}")
    for name, ov in value.items():
        if not isinstance(name, str) or not isinstance(ov, ComponentOverride):
            raise TypeError(f"{type(inst).__name__}.{attr.name}[{name!r}] must be a ComponentOverride, got {type(ov).__name__}")


@attrs.frozen
class RewardsConfig:
    """Every reward setting; each field defaults to algorithm.md's values."""

    consistency: ConsistencyConfig = _nested(ConsistencyConfig)  # vote statistics, info score (§3.5)
    difficulty: DifficultyConfig = _nested(DifficultyConfig)  # easy-threshold, buckets, hint (§3.1, §3.5)
    ste: SteConfig = _nested(SteConfig)  # Solver Token Entropy and its normaliser (§4)
    proposer: ProposerConfig = _nested(ProposerConfig)  # Proposer reward (§3.8)
    solver: SolverConfig = _nested(SolverConfig)  # Solver rewards and update gate (§3.7, §3.9)
    fidelity: FidelityConfig = _nested(FidelityConfig)  # QA fidelity in reference-answer mode (§6.3, §11)
    cycle: CycleConfig = _nested(CycleConfig)  # cycle consistency (§6.3)
    diversity: DiversityConfig = _nested(DiversityConfig)  # set diversity (§6.3)
    generation: GenerationConfig = _nested(GenerationConfig)  # combination of the generator terms (§6.3)
    components: dict[str, ComponentOverride] = attrs.field(  # per-component weight / on-off, by registry name
        factory=dict, validator=_overrides, hash=False, metadata={"config_map": ComponentOverride}
    )


__all__ = ["RewardsConfig", "from_dict"]
