"""The Proposer's reward for one asked question (algorithm.md §3.8 core, §4, §11).

    R_hyb  = clip(0.90 (2 info - 1) + 0.10 exp(-(H_sc - 0.9)^2 / (2 0.25^2)), -1, 1)
    primary (default):  R = 0.70 d_ste + 0.30 R_hyb 1[H_sc > 1e-6]               (paper: R_p = 0.70 d_ste + 0.30 r_sc)
    complementary:      R = 0.30 d_ste + 0.70 R_vz      (recipe quirk 1: the reference's dead branch, reachable here)
    off / STE disabled: R = R_vz
    R_vz   = 0 if unsolvable; 0.5 maj_frac if unanimous and the dual tracks disagree; else R_hyb   (V-Zero, §3.8.2)

then, in this order (§3.8 items 4-8, validity terms only):

    - 0.10 if the certificate is invalid    - 0.20 if non-objective    - 0.50 if the majority is low-info
    - 0.35 s max(0, 1 - H'/0.9)   if rejected (non-objective, easy, all candidates easy, low-info majority);
                                  H' = 0 if non-objective else H_sc; s = 0 when STE is primary and the only
                                  reasons are easy ones, else 1
    R <- min(R, 0.20)  if collapsed (rejected, easy bucket, easy_case, unanimous, or not solved at all)
    R <- clip(R, -1, 1)

An unparseable question (``ProposerCase.unparsed()``) thus gets 0.70 d_ste - 0.10 - 0.20 - 0.35.
The reference's history-based shaping terms (template cool-downs, answer families, curriculum,
anchors, certificate bonus, easy-constraint multiplier) are not part of this reward.
The STE and self-consistency terms are :class:`~asg.rewards.RewardComponent` s; weights come from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from asg._validate import number, one_of
from asg.rewards._num import clip, flag, gauss
from asg.rewards.components import RewardComponent, RewardOutput, check_cases, combine
from asg.rewards.consistency import VoteStats
from asg.rewards.difficulty import Difficulty

STE_MODES: tuple[str, ...] = ("primary", "complementary", "off")
STE_NAME = "proposer.ste"
SC_NAME = "proposer.self_consistency"
_EASY_REASONS = frozenset({"easy", "all_candidates_easy"})


@attrs.frozen
class ProposerConfig:
    """Constants of the Proposer reward (§3.8)."""

    ste_mode: str = attrs.field(default="primary", validator=one_of(STE_MODES))  # how d_ste enters (module docstring)
    ste_complementary_weight: float = attrs.field(default=0.30, validator=number(0.0, 1.0))  # d_ste weight, complementary mode
    band_weight: float = attrs.field(default=0.90, validator=number(0.0, 1.0))  # R_hyb mix; 1 = "band", 0 = "gaussian" mode
    mu: float = attrs.field(default=0.90, validator=number(0.0, None, lo_open=True))  # Gaussian centre on H_sc, nats
    sigma: float = attrs.field(default=0.25, validator=number(0.0, None, lo_open=True))  # Gaussian width, nats
    unanimous_eps: float = attrs.field(default=1e-6, validator=number(0.0, None))  # H_sc <= eps counts as unanimous
    collapse_cap: float = attrs.field(default=0.20, validator=number(-1.0, 1.0))  # R <= cap for collapsed questions
    invalid_penalty: float = attrs.field(default=0.10, validator=number(0.0, None))  # certificate invalid / unparseable
    non_objective_penalty: float = attrs.field(default=0.20, validator=number(0.0, None))  # not an objective question
    low_info_majority_penalty: float = attrs.field(default=0.50, validator=number(0.0, None))  # majority yes/no/unknown/...
    rejection_penalty: float = attrs.field(default=0.35, validator=number(0.0, None))  # x s x max(0, 1 - H'/mu)


DEFAULT_PROPOSER = ProposerConfig()


def _is(kind: type):  # type: ignore[no-untyped-def]
    return attrs.validators.optional(attrs.validators.instance_of(kind))


def _bool(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{type(inst).__name__}.{attr.name} must be a bool, got {value!r} ({type(value).__name__})")


@attrs.frozen
class ProposerCase:
    """Everything the Proposer reward needs about one asked question."""

    d_ste: float = attrs.field(validator=number(0.0, 1.0))  # normalised STE of the question (0 if not measured)
    votes: VoteStats | None = attrs.field(default=None, validator=_is(VoteStats))  # None: never answered
    difficulty: Difficulty | None = attrs.field(default=None, validator=_is(Difficulty))  # required with votes
    valid: bool = attrs.field(default=True, validator=_bool)  # parsed and passed the structural certificate
    objective: bool = attrs.field(default=True, validator=_bool)  # passed the objective-question test
    low_info_majority: bool = attrs.field(default=False, validator=_bool)  # majority answer is yes/no/unknown/vague
    tracks_disagree: bool = attrs.field(default=False, validator=_bool)  # dual track: intuitive answer != majority
    all_candidates_easy: bool = attrs.field(default=False, validator=_bool)  # every spot-checked candidate was easy

    def __attrs_post_init__(self) -> None:
        if self.votes is not None and self.difficulty is None:
            raise ValueError("ProposerCase.difficulty is required when votes are given (asg.rewards.bucket_of)")

    @classmethod
    def unparsed(cls, d_ste: float = 0.0) -> ProposerCase:
        """A Proposer output no question could be parsed from: invalid, non-objective, unanswered."""
        return cls(d_ste=d_ste, valid=False, objective=False)


def self_consistency_reward(votes: VoteStats, config: ProposerConfig = DEFAULT_PROPOSER) -> float:
    """R_hyb = clip(b (2 info - 1) + (1 - b) Gauss(H_sc; mu, sigma), -1, 1) with b = band_weight (§3.8.1)."""
    r_band = 2.0 * votes.info - 1.0
    r_gauss = gauss(votes.h_sc, config.mu, config.sigma)
    return clip(config.band_weight * r_band + (1.0 - config.band_weight) * r_gauss, -1.0, 1.0)


def _unanimous(votes: VoteStats, config: ProposerConfig) -> bool:
    return votes.h_sc <= config.unanimous_eps or votes.majority_fraction >= 1.0


def vzero_reward(case: ProposerCase, config: ProposerConfig = DEFAULT_PROPOSER) -> float:
    """R_vz (§3.8.2): 0 if unsolvable, 0.5 maj_frac if unanimous with disagreeing tracks, else R_hyb."""
    if case.votes is None or case.difficulty is None:
        return 0.0
    if case.difficulty.unsolvable:
        return 0.0
    if _unanimous(case.votes, config) and case.tracks_disagree:
        return 0.5 * case.votes.majority_fraction
    return self_consistency_reward(case.votes, config)


def _ste_score(cases: Sequence[ProposerCase], config: ProposerConfig) -> list[float]:
    return [c.d_ste for c in cases]


def _sc_score(cases: Sequence[ProposerCase], config: ProposerConfig) -> list[float]:
    out = []
    for c in cases:
        if config.ste_mode != "primary":
            out.append(vzero_reward(c, config))
        elif c.votes is None or c.votes.h_sc <= config.unanimous_eps:
            out.append(0.0)
        else:
            out.append(self_consistency_reward(c.votes, config))
    return out


STE_COMPONENT = RewardComponent(
    STE_NAME, "proposer", _ste_score, weight=0.70,
    description="d_ste: rank quantile of the Solver's first-answer-token entropy (§4)",
)
SELF_CONSISTENCY_COMPONENT = RewardComponent(
    SC_NAME, "proposer", _sc_score, weight=0.30,
    description="R_hyb: informativeness band + Gaussian on H_sc of the N Solver answers (§3.8)",
)
PROPOSER_COMPONENTS: tuple[RewardComponent, ...] = (STE_COMPONENT, SELF_CONSISTENCY_COMPONENT)


def _weights(components: Sequence[RewardComponent], mode: str, config: ProposerConfig) -> dict[str, float]:
    """Primary: as registered. Otherwise d_ste gets the complementary weight (or 0) and the other
    positive-weight components are rescaled to share the rest, keeping their ratios."""
    weights = {c.name: c.weight for c in components}
    if mode == "primary":
        return weights
    ste_w = config.ste_complementary_weight if mode == "complementary" else 0.0
    if STE_NAME in weights:
        weights[STE_NAME] = ste_w
    rest = [c for c in components if c.enabled and c.name != STE_NAME and c.weight > 0]
    total = sum(c.weight for c in rest)
    for c in rest:
        weights[c.name] = c.weight * (1.0 - ste_w) / total
    return weights


def proposer_rewards(
    cases: Sequence[ProposerCase],
    config: ProposerConfig = DEFAULT_PROPOSER,
    components: Sequence[RewardComponent] = PROPOSER_COMPONENTS,
) -> RewardOutput:
    """The Proposer reward of each case in [-1, 1], with every term in the diagnostics."""
    check_cases(cases, ProposerCase)
    ste_on = any(c.name == STE_NAME and c.enabled for c in components)
    mode = config.ste_mode if ste_on else "off"
    run_config = config if mode == config.ste_mode else attrs.evolve(config, ste_mode=mode)
    weights = _weights(components, mode, config)
    core, diags = combine(components, cases, run_config, weights)
    values = []
    for case, r, d in zip(cases, core, diags):
        votes, diff = case.votes, case.difficulty
        h = votes.h_sc if votes is not None else 0.0
        reasons = set()
        if not case.objective:
            reasons.add("non_objective")
        if diff is not None and diff.bucket == "easy":
            reasons.add("easy")
        if case.all_candidates_easy:
            reasons.add("all_candidates_easy")
        if case.low_info_majority:
            reasons.add("low_info_majority")
        s = 0.0 if (mode == "primary" and reasons and reasons <= _EASY_REASONS) else 1.0
        h_eff = 0.0 if not case.objective else h
        penalties = {
            "invalid": config.invalid_penalty * flag(not case.valid),
            "non_objective": config.non_objective_penalty * flag(not case.objective),
            "low_info_majority": config.low_info_majority_penalty * flag(case.low_info_majority),
            "rejection": config.rejection_penalty * s * max(0.0, 1.0 - h_eff / config.mu) * flag(bool(reasons)),
        }
        reward = r - sum(penalties.values())
        collapsed = (
            bool(reasons)
            or votes is None
            or (diff is not None and (diff.bucket == "easy" or diff.easy_case))
            or (votes is not None and _unanimous(votes, config))
        )
        capped = collapsed and reward > config.collapse_cap
        if capped:
            reward = config.collapse_cap
        clipped = not -1.0 <= reward <= 1.0
        reward = clip(reward, -1.0, 1.0)
        d.update({f"proposer.penalty.{k}": v for k, v in penalties.items()})
        d.update({
            "proposer.core": r,
            "proposer.ste_primary": flag(mode == "primary"),
            "proposer.rejected": flag(bool(reasons)),
            "proposer.collapsed": flag(collapsed),
            "proposer.capped": flag(capped),
            "proposer.clipped": flag(clipped),
            "proposer.reward": reward,
        })
        if votes is not None:
            d.update(votes.diagnostics())
        if diff is not None:
            d.update(diff.diagnostics())
        values.append(reward)
    return RewardOutput(values, diags)


__all__ = [
    "DEFAULT_PROPOSER",
    "PROPOSER_COMPONENTS",
    "SELF_CONSISTENCY_COMPONENT",
    "STE_COMPONENT",
    "STE_MODES",
    "ProposerCase",
    "ProposerConfig",
    "proposer_rewards",
    "self_consistency_reward",
    "vzero_reward",
]
