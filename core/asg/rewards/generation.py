"""The Generator's reward for each of the L candidates of one spec (algorithm.md §6.3 item 4, §11).

    base  = clip(w_fid S_fid + w_cyc S_cyc + w_div S_div - 0.20 S_ctr, 0, 1)
    total = spec_quality x base

with (w_fid, w_cyc, w_div) = (0.65, 0.20, 0.10) / 0.95 — the positive weights of the enabled
components are normalised to sum to 1, as the reference does; negative weights (the contradiction
penalty) are used as they are. The four terms are :class:`~asg.rewards.RewardComponent` s scoring
precomputed sub-scores (``qa_fidelity``, ``cycle_consistency``, ``diversity``, ``contradiction``).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from asg._validate import number
from asg.rewards._num import clip, flag
from asg.rewards.components import RewardComponent, RewardOutput, check_cases, combine


@attrs.frozen
class GenerationConfig:
    """How the Generator's reward terms are combined."""

    normalize_positive: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))  # scale w > 0 to sum 1


DEFAULT_GENERATION = GenerationConfig()


def _unit(inst: object, attr: attrs.Attribute, value: float) -> None:
    number(0.0, 1.0)(inst, attr, value)


@attrs.frozen
class GenerationCase:
    """The sub-scores of one generated candidate, each in [0, 1]."""

    qa_fidelity: float = attrs.field(validator=_unit)  # S_fid: answers on x̂ vs on the real image
    cycle_consistency: float = attrs.field(validator=_unit)  # S_cyc: caption/prompt and image/prompt cosines
    diversity: float = attrs.field(validator=_unit)  # S_div: leave-one-out contribution to the set
    contradiction: float = attrs.field(validator=_unit)  # S_ctr: fraction of yes/no answers flipped
    spec_quality: float = attrs.field(default=1.0, validator=_unit)  # quality of the spec it was generated from


def _field(name: str):  # type: ignore[no-untyped-def]
    def score(cases: Sequence[GenerationCase], config: GenerationConfig) -> list[float]:
        return [getattr(c, name) for c in cases]

    score.__name__ = f"score_{name}"
    return score


QA_FIDELITY_COMPONENT = RewardComponent(
    "generator.qa_fidelity", "generator", _field("qa_fidelity"), weight=0.65,
    description="S_fid: Solver answers on the generated image agree with its answers on the real image",
)
CYCLE_COMPONENT = RewardComponent(
    "generator.cycle_consistency", "generator", _field("cycle_consistency"), weight=0.20,
    description="S_cyc: caption of the image and the image itself stay close to the prompt (backbone embeddings)",
)
DIVERSITY_COMPONENT = RewardComponent(
    "generator.diversity", "generator", _field("diversity"), weight=0.10,
    description="S_div: what the candidate adds to the diversity of its set of L images",
)
CONTRADICTION_COMPONENT = RewardComponent(
    "generator.contradiction", "generator", _field("contradiction"), weight=-0.20,
    description="S_ctr: penalty for yes/no answers that flip between real and generated image",
)
GENERATOR_COMPONENTS: tuple[RewardComponent, ...] = (
    QA_FIDELITY_COMPONENT, CYCLE_COMPONENT, DIVERSITY_COMPONENT, CONTRADICTION_COMPONENT,
)


def generation_rewards(
    cases: Sequence[GenerationCase],
    config: GenerationConfig = DEFAULT_GENERATION,
    components: Sequence[RewardComponent] = GENERATOR_COMPONENTS,
) -> RewardOutput:
    """total = spec_quality x clip(sum_c w_c s_c, 0, 1) per candidate; ``generator.best`` flags the argmax."""
    check_cases(cases, GenerationCase)
    weights = {c.name: c.weight for c in components}
    positive = sum(c.weight for c in components if c.enabled and c.weight > 0)
    if config.normalize_positive and positive > 0:
        weights = {name: (w / positive if w > 0 else w) for name, w in weights.items()}
    base, diags = combine(components, cases, config, weights)
    values = []
    for case, b, d in zip(cases, base, diags):
        clipped = clip(b, 0.0, 1.0)
        values.append(case.spec_quality * clipped)
        d.update({
            "generator.base_unclipped": b,
            "generator.base": clipped,
            "generator.spec_quality": case.spec_quality,
        })
    best = max(range(len(values)), key=lambda i: (values[i], -i)) if values else -1
    for i, (v, d) in enumerate(zip(values, diags)):
        d["generator.reward"] = v
        d["generator.best"] = flag(i == best)
    return RewardOutput(values, diags)


__all__ = [
    "CONTRADICTION_COMPONENT",
    "CYCLE_COMPONENT",
    "DEFAULT_GENERATION",
    "DIVERSITY_COMPONENT",
    "GENERATOR_COMPONENTS",
    "QA_FIDELITY_COMPONENT",
    "GenerationCase",
    "GenerationConfig",
    "generation_rewards",
]
