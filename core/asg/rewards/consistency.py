"""Self-consistency of N Solver answers to one question (algorithm.md §3.5).

Given the N normalised vote labels (1 greedy + N-1 prompt-perturbed samples):

    a*      = most frequent label (first one in sample order on ties)
    p_c     = count(c) / N,   maj_frac = p(a*)
    H_sc    = -sum_c p_c ln p_c                      (nats; 0 = unanimous, ln N = all distinct)
    m       = p(1) - p(2)                            (top-1 minus top-2 fraction; p(2) = 0 if unanimous)
    band    = exp(-(H_sc - c)^2 / (2 h^2))           c, h = centre, half-width of [0.15, 1.2]
    damp    = max(0, 1 - m / 0.9)
    info    = clip(0.5 band + 0.5 damp, 0, 1)        sc_signal = max(1e-4, info)
    informative = (0.15 <= H_sc <= 1.2) or (m <= 0.9)

Typed answer normalisation (count/binary/other) happens before this, where the answers are parsed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from asg._validate import number
from asg.rewards._num import clip, flag, gauss


def _band_order(inst: Any, attr: attrs.Attribute, value: float) -> None:
    if value <= inst.band_low:
        raise ValueError(f"{type(inst).__name__}.{attr.name} must be greater than band_low={inst.band_low}, got {value!r}")


@attrs.frozen
class ConsistencyConfig:
    """Constants of the informativeness score (§3.5)."""

    band_low: float = attrs.field(default=0.15, validator=number(0.0, None))  # informative H_sc band, lower edge (nats)
    band_high: float = attrs.field(default=1.2, validator=[number(0.0, None), _band_order])  # upper edge (nats)
    margin_max: float = attrs.field(default=0.9, validator=number(0.0, 1.0, lo_open=True))  # margins above it are near-unanimous
    signal_floor: float = attrs.field(default=1e-4, validator=number(0.0, 1.0))  # sc_signal = max(floor, info)

    @property
    def band_centre(self) -> float:
        return 0.5 * (self.band_low + self.band_high)

    @property
    def band_half_width(self) -> float:
        return 0.5 * (self.band_high - self.band_low)


DEFAULT_CONSISTENCY = ConsistencyConfig()


@attrs.frozen
class VoteStats:
    """The vote over one question's N answers."""

    labels: tuple[str, ...]  # (N,) vote labels in sample order
    counts: tuple[tuple[str, int], ...]  # distinct labels with their counts, in first-seen order
    majority: str  # a*
    majority_fraction: float  # count(a*) / N
    h_sc: float  # -sum p ln p, nats
    margin: float  # top-1 minus top-2 fraction
    band: float  # Gaussian band score of H_sc
    info: float  # informativeness in [0, 1]
    sc_signal: float  # max(signal_floor, info): the magnitude of Solver rewards
    informative: bool  # H_sc inside the band, or margin <= margin_max

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def unanimous(self) -> bool:
        return len(self.counts) == 1

    def fraction(self, label: str) -> float:
        """p(label): the fraction of the N answers that carry ``label`` (0 if none)."""
        return dict(self.counts).get(label, 0) / len(self.labels)

    def diagnostics(self) -> dict[str, float]:
        return {
            "sc.h_sc": self.h_sc,
            "sc.majority_fraction": self.majority_fraction,
            "sc.margin": self.margin,
            "sc.band": self.band,
            "sc.info": self.info,
            "sc.informative": flag(self.informative),
            "sc.distinct": float(len(self.counts)),
        }


def entropy_nats(counts: Sequence[int]) -> float:
    """-sum p ln p of the label distribution given by ``counts`` (zero counts contribute 0)."""
    total = sum(counts)
    if total <= 0:
        raise ValueError(f"counts must have a positive total, got {list(counts)}")
    h = -math.fsum((c / total) * math.log(c / total) for c in counts if c > 0)
    return h + 0.0  # turn -0.0 (unanimous) into 0.0


def vote(labels: Sequence[str], config: ConsistencyConfig = DEFAULT_CONSISTENCY) -> VoteStats:
    """Majority, fractions, H_sc, margin and informativeness of one question's N vote labels."""
    if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
        raise ValueError(f"labels must be a non-empty sequence of strings, got {labels!r}")
    counts: dict[str, int] = {}
    for i, lab in enumerate(labels):
        if not isinstance(lab, str):
            raise TypeError(f"labels[{i}] must be a str (a normalised answer), got {lab!r} ({type(lab).__name__})")
        counts[lab] = counts.get(lab, 0) + 1
    n = len(labels)
    majority = max(counts, key=counts.__getitem__)  # max() keeps the first of equal keys: first-seen wins
    ranked = sorted(counts.values(), reverse=True)
    margin = (ranked[0] - (ranked[1] if len(ranked) > 1 else 0)) / n
    h = entropy_nats(list(counts.values()))
    band = gauss(h, config.band_centre, config.band_half_width)
    damp = max(0.0, 1.0 - margin / config.margin_max)
    info = clip(0.5 * band + 0.5 * damp, 0.0, 1.0)
    return VoteStats(
        labels=tuple(labels),
        counts=tuple(counts.items()),
        majority=majority,
        majority_fraction=counts[majority] / n,
        h_sc=h,
        margin=margin,
        band=band,
        info=info,
        sc_signal=max(config.signal_floor, info),
        informative=(config.band_low <= h <= config.band_high) or margin <= config.margin_max,
    )


def self_consistency(
    answers: Sequence[Sequence[str]], config: ConsistencyConfig = DEFAULT_CONSISTENCY
) -> list[VoteStats]:
    """:func:`vote` for a batch of questions: ``answers[b]`` holds question b's N normalised answers."""
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise TypeError(f"answers must be a list of lists of strings, got {type(answers).__name__}")
    out = []
    for b, labels in enumerate(answers):
        try:
            out.append(vote(labels, config))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"answers[{b}]: {exc}") from exc
    return out


__all__ = ["DEFAULT_CONSISTENCY", "ConsistencyConfig", "VoteStats", "entropy_nats", "self_consistency", "vote"]
