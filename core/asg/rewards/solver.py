"""Solver rewards for the N answers to one question, and whether to train on them
(algorithm.md §3.7, the reward-side gate of §3.9).

Raw reward of answer i (sc = sc_signal = max(1e-4, info), a* = majority label):

    normal       r_i = +sc if label_i = a*, else -0.25 sc
    unsolvable   r_i = -0.25 sc for every i
    easy_case    r_i = -1.0 sc (x2.5 if the majority is low-info) if label_i = a*, else +0.25 sc
    then         r_i -= 0.10 [answer i non-canonical] + 0.08 [answer i low-info]

Soft weight and effective reward:

    w_i     = p(label_i)^0.7 (1 - 0.10 pen_i),   pen_i = clip((words before <answer> - 6) / 6, 0, 1)
    reward_i = w_i r_i scale,                     scale = 1 (or max(0.2, info) with informative_scaling)

Skip (checked in order; rewards are still computed and logged):
rejected -> "rejected"; IQR threshold active and H_sc <= thr and maj_frac >= 0.80 -> "iqr_easy";
easy_case or maj_frac >= 0.85 -> "easy"; not informative -> "uninformative". Two asg extensions, off by
default: a question type listed in ``skip_qtypes`` -> "qtype" (checked right after "rejected"); a
majority fraction below ``min_majority`` -> "weak_majority" (checked last).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from asg._validate import number
from asg.rewards._num import clip, flag
from asg.rewards.components import RewardComponent, check_cases, combine
from asg.rewards.consistency import VoteStats
from asg.rewards.difficulty import Difficulty

SKIP_REASONS: tuple[str, ...] = ("rejected", "iqr_easy", "easy", "uninformative", "weak_majority", "qtype")
_QUESTION_TYPES = ("count", "binary", "other")  # asg.roles.answers.QTYPES (no import: rewards stay role-free)


def _qtypes(inst: Any, attr: Any, value: tuple[str, ...]) -> None:
    bad = [v for v in value if v not in _QUESTION_TYPES]
    if bad:
        raise ValueError(f"SolverConfig.{attr.name} must hold question types from {_QUESTION_TYPES}, got {bad}")


@attrs.frozen
class SolverConfig:
    """Constants of the Solver reward and its update gate (§3.7, §3.9)."""

    minority_weight: float = attrs.field(default=0.25, validator=number(0.0, None))  # minority: -w sc (also unsolvable)
    easy_majority_weight: float = attrs.field(default=1.0, validator=number(0.0, None))  # easy case, majority: -w sc
    easy_low_info_multiplier: float = attrs.field(default=2.5, validator=number(0.0, None))  # ... x this if low-info
    easy_dissent_weight: float = attrs.field(default=0.25, validator=number(0.0, None))  # easy case, dissenters: +w sc
    non_canonical_penalty: float = attrs.field(default=0.10, validator=number(0.0, None))  # per non-canonical answer
    low_info_penalty: float = attrs.field(default=0.08, validator=number(0.0, None))  # per low-info answer
    soft_gamma: float = attrs.field(default=0.7, validator=number(0.0, None))  # weight p(label)^gamma
    length_penalty_weight: float = attrs.field(default=0.10, validator=number(0.0, 1.0))  # weight (1 - this pen)
    length_target_words: int = attrs.field(default=6, validator=number(1, None, integer=True))  # words before <answer>
    informative_scaling: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))  # scale by info
    min_scale: float = attrs.field(default=0.2, validator=number(0.0, 1.0))  # floor of that scale
    skip_rejected: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))  # gate 1
    iqr_skip_majority: float = attrs.field(default=0.80, validator=number(0.0, 1.0))  # gate 2: maj_frac at/above
    easy_skip_majority: float = attrs.field(default=0.85, validator=number(0.0, 1.0))  # gate 3: maj_frac at/above
    skip_uninformative: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))  # gate 4
    # gate 5 (asg extension, 0 = off as in the reference): skip questions whose majority fraction is below
    # this. A weak majority (4 of 7) of a small model is often a coin flip; see docs/results.md.
    min_majority: float = attrs.field(default=0.0, validator=number(0.0, 1.0))
    # gate 6 (asg extension, empty = off): question types (count / binary / other, as the answer parser
    # types them) the Solver never trains on, e.g. where its votes are measured to carry no information.
    skip_qtypes: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_qtypes)


DEFAULT_SOLVER = SolverConfig()


@attrs.frozen
class SolverQuestion:
    """One question's N Solver answers, voted and bucketed, with per-answer quality flags."""

    votes: VoteStats = attrs.field(validator=attrs.validators.instance_of(VoteStats))
    difficulty: Difficulty = attrs.field(validator=attrs.validators.instance_of(Difficulty))
    pre_answer_words: tuple[int, ...] = attrs.field(factory=tuple, converter=tuple)  # (N,) words before <answer>; () = all 0
    non_canonical: tuple[bool, ...] = attrs.field(factory=tuple, converter=tuple)  # (N,) answer not in canonical form; () = none
    low_info: tuple[bool, ...] = attrs.field(factory=tuple, converter=tuple)  # (N,) answer is yes/no/unknown/vague; () = none
    low_info_majority: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    rejected: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))  # question rejected
    qtype: str = attrs.field(default="", validator=attrs.validators.in_(("", *_QUESTION_TYPES)))  # "" = unknown

    def __attrs_post_init__(self) -> None:
        n = self.votes.n
        for name in ("pre_answer_words", "non_canonical", "low_info"):
            value = getattr(self, name)
            if value and len(value) != n:
                raise ValueError(f"SolverQuestion.{name} must have one entry per answer ({n}), got {len(value)}")
        for i, w in enumerate(self.pre_answer_words):
            if isinstance(w, bool) or not isinstance(w, int) or w < 0:
                raise ValueError(f"SolverQuestion.pre_answer_words[{i}] must be an int >= 0, got {w!r}")
        for name in ("non_canonical", "low_info"):
            for i, v in enumerate(getattr(self, name)):
                if not isinstance(v, bool):
                    raise TypeError(f"SolverQuestion.{name}[{i}] must be a bool, got {v!r}")

    def flag_at(self, name: str, i: int) -> bool:
        value = getattr(self, name)
        return bool(value[i]) if value else False


@attrs.frozen
class SolverSample:
    """Answer ``index`` of ``question``: the case a Solver reward component scores."""

    question: SolverQuestion
    index: int

    @property
    def label(self) -> str:
        return self.question.votes.labels[self.index]


@attrs.frozen(eq=False)
class SolverReward:
    """Per-answer rewards of one question and whether the update should skip it."""

    rewards: tuple[float, ...]  # (N,) effective reward w_i r_i scale: what the update uses
    raw: tuple[float, ...]  # (N,) r_i before soft weighting
    weights: tuple[float, ...]  # (N,) soft weights p(label_i)^0.7 (1 - 0.10 pen_i)
    skip_reason: str | None  # None = train on it; else one of SKIP_REASONS
    diagnostics: dict[str, float]  # question-level, for logging

    @property
    def skip(self) -> bool:
        return self.skip_reason is not None


def length_penalty(words: int, target: int = 6) -> float:
    """pen = clip((words - target) / target, 0, 1): 0 up to ``target`` words, 1 from twice that."""
    return clip((words - target) / target, 0.0, 1.0)


def _consistency_score(samples: Sequence[SolverSample], config: SolverConfig) -> list[float]:
    out = []
    for s in samples:
        q = s.question
        sc = q.votes.sc_signal
        in_majority = s.label == q.votes.majority
        if q.difficulty.easy_case:
            if in_majority:
                mult = config.easy_low_info_multiplier if q.low_info_majority else 1.0
                out.append(-config.easy_majority_weight * mult * sc)
            else:
                out.append(config.easy_dissent_weight * sc)
        elif q.difficulty.unsolvable or not in_majority:
            out.append(-config.minority_weight * sc)
        else:
            out.append(sc)
    return out


CONSISTENCY_COMPONENT = RewardComponent(
    "solver.consistency", "solver", _consistency_score, weight=1.0,
    description="+info for majority answers, -0.25 info for the rest; reversed on near-unanimous questions (§3.7)",
)
SOLVER_COMPONENTS: tuple[RewardComponent, ...] = (CONSISTENCY_COMPONENT,)


def skip_reason(question: SolverQuestion, config: SolverConfig = DEFAULT_SOLVER) -> str | None:
    """Why the Solver update should skip this question (§3.9 gate), or None."""
    v, d = question.votes, question.difficulty
    if config.skip_rejected and question.rejected:
        return "rejected"
    if question.qtype and question.qtype in config.skip_qtypes:
        return "qtype"
    if d.threshold_active and v.h_sc <= d.threshold and v.majority_fraction >= config.iqr_skip_majority:
        return "iqr_easy"
    if d.easy_case or v.majority_fraction >= config.easy_skip_majority:
        return "easy"
    if config.skip_uninformative and not v.informative:
        return "uninformative"
    if v.majority_fraction < config.min_majority:
        return "weak_majority"
    return None


def solver_rewards(
    questions: Sequence[SolverQuestion],
    config: SolverConfig = DEFAULT_SOLVER,
    components: Sequence[RewardComponent] = SOLVER_COMPONENTS,
) -> list[SolverReward]:
    """Per-answer rewards, soft weights and skip decision for each question of the batch."""
    check_cases(questions, SolverQuestion, "questions")
    samples = [SolverSample(q, i) for q in questions for i in range(q.votes.n)]
    totals, comp_diags = combine(components, samples, config)
    out, k = [], 0
    for q in questions:
        n, v = q.votes.n, q.votes
        scale = max(config.min_scale, v.info) if config.informative_scaling else 1.0
        raw, weights, rewards = [], [], []
        for i in range(n):
            r = totals[k + i]
            r -= config.non_canonical_penalty * flag(q.flag_at("non_canonical", i))
            r -= config.low_info_penalty * flag(q.flag_at("low_info", i))
            words = q.pre_answer_words[i] if q.pre_answer_words else 0
            w = v.fraction(v.labels[i]) ** config.soft_gamma
            w *= 1.0 - config.length_penalty_weight * length_penalty(words, config.length_target_words)
            raw.append(r)
            weights.append(w)
            rewards.append(w * r * scale)
        reason = skip_reason(q, config)
        diag: dict[str, float] = {**v.diagnostics(), **q.difficulty.diagnostics()}
        for name in sorted({key for d in comp_diags[k : k + n] for key in d}):
            diag[f"{name}.mean"] = sum(d.get(name, 0.0) for d in comp_diags[k : k + n]) / n
        diag.update({
            "solver.reward.mean": sum(rewards) / n,
            "solver.raw.mean": sum(raw) / n,
            "solver.weight.mean": sum(weights) / n,
            "solver.scale": scale,
            "solver.skip": flag(reason is not None),
        })
        for r_name in SKIP_REASONS:
            diag[f"solver.skip.{r_name}"] = flag(reason == r_name)
        out.append(SolverReward(tuple(rewards), tuple(raw), tuple(weights), reason, diag))
        k += n
    return out


__all__ = [
    "CONSISTENCY_COMPONENT",
    "DEFAULT_SOLVER",
    "SKIP_REASONS",
    "SOLVER_COMPONENTS",
    "SolverConfig",
    "SolverQuestion",
    "SolverReward",
    "SolverSample",
    "length_penalty",
    "skip_reason",
    "solver_rewards",
]
