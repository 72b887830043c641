"""Question difficulty: the IQR easy-threshold on H_sc, the easy/medium/hard bucket, and the
difficulty hint the Proposer is given (algorithm.md §3.1 items 1-2, §3.5).

    thr     = clip(Q25 + 0.25 (Q75 - Q25), 0.10, 1.2) over the last <= 256 H_sc, once >= 32 exist;
              0.15 before (quantiles linear-interpolated)
    easy    if H_sc <= thr  or  maj_frac >= tau_easy (0.85: 6 of 7 agreeing is easy)
    hard    if H_sc >= 0.90 and m <= 0.35
    medium  otherwise
    easy_case   = H_sc < thr and m > 0.9          unsolvable = not easy_case and maj_frac <= 0.20

The threshold is read *before* a step and the step's H_sc appended *after* it is bucketed. The hint
samples a bucket in proportion to the positive deficits of the target mix (0, 0.70, 0.30) against
the buckets observed in the last 256 steps (once >= 8 exist), else from the target mix itself.
:class:`EasyThreshold` and :class:`DifficultyTarget` carry that state; both checkpoint as plain JSON.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from asg._validate import number, one_of
from asg.rewards._num import as_floats, clip, quantile
from asg.rewards.consistency import VoteStats

BUCKETS: tuple[str, ...] = ("easy", "medium", "hard")


def _mix(inst: Any, attr: attrs.Attribute, value: tuple[float, ...]) -> None:
    where = f"{type(inst).__name__}.{attr.name}"
    if len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in value):
        raise ValueError(f"{where} must be three non-negative weights (easy, medium, hard), got {value!r}")
    if not math.isclose(sum(value), 1.0, abs_tol=1e-6):
        raise ValueError(f"{where} must sum to 1, got {value!r} (sum {sum(value)})")


def _above(lower: str):  # type: ignore[no-untyped-def]
    def check(inst: Any, attr: attrs.Attribute, value: float) -> None:
        if value < getattr(inst, lower):
            raise ValueError(f"{type(inst).__name__}.{attr.name} must be >= {lower}={getattr(inst, lower)}, got {value!r}")

    return check


@attrs.frozen
class DifficultyConfig:
    """Constants of the easy-threshold, the buckets and the difficulty hint (§3.1, §3.5)."""

    iqr_window: int = attrs.field(default=256, validator=number(1, None, integer=True))  # H_sc values kept
    iqr_min_samples: int = attrs.field(default=32, validator=number(1, None, integer=True))  # below: default threshold
    iqr_quantile: float = attrs.field(default=0.25, validator=number(0.0, 0.5))  # Q_q and Q_(1-q) bound the IQR
    iqr_coef: float = attrs.field(default=0.25, validator=number(0.0, None))  # thr = Q_q + coef * IQR
    threshold_min: float = attrs.field(default=0.10, validator=number(0.0, None))  # clip of thr, nats
    threshold_max: float = attrs.field(default=1.2, validator=[number(0.0, None), _above("threshold_min")])
    threshold_default: float = attrs.field(default=0.15, validator=number(0.0, None))  # thr while the window is short
    tau_easy: float = attrs.field(default=0.85, validator=number(0.0, 1.0))  # maj_frac at or above it is easy
    hard_min_entropy: float = attrs.field(default=0.90, validator=number(0.0, None))  # hard needs H_sc >= this
    hard_max_margin: float = attrs.field(default=0.35, validator=number(0.0, 1.0))  # ... and margin <= this
    easy_case_margin: float = attrs.field(default=0.9, validator=number(0.0, 1.0))  # easy_case needs margin > this
    unsolvable_max_fraction: float = attrs.field(default=0.20, validator=number(0.0, 1.0))  # maj_frac <= it: unsolvable
    target_mix: tuple[float, ...] = attrs.field(default=(0.0, 0.70, 0.30), converter=tuple, validator=_mix)  # easy/medium/hard
    target_window: int = attrs.field(default=256, validator=number(1, None, integer=True))  # observed buckets kept
    target_min_samples: int = attrs.field(default=8, validator=number(1, None, integer=True))  # deficits used from here


DEFAULT_DIFFICULTY = DifficultyConfig()


@attrs.frozen
class Difficulty:
    """How hard one question was for the Solver, judged from its vote."""

    bucket: str = attrs.field(validator=one_of(BUCKETS))
    easy_case: bool  # near-unanimous: H_sc < thr and margin > 0.9
    unsolvable: bool  # not easy_case and maj_frac <= 0.20 (for N = 7: all answers distinct)
    threshold: float  # the easy-threshold used
    threshold_active: bool  # whether it came from the IQR window (else the default)

    def diagnostics(self) -> dict[str, float]:
        return {
            "difficulty.bucket": float(BUCKETS.index(self.bucket)),  # 0 easy, 1 medium, 2 hard
            "difficulty.easy_case": float(self.easy_case),
            "difficulty.unsolvable": float(self.unsolvable),
            "difficulty.threshold": self.threshold,
            "difficulty.threshold_active": float(self.threshold_active),
        }


class EasyThreshold:
    """Rolling IQR easy-threshold over past H_sc values (§3.1 item 1)."""

    def __init__(self, config: DifficultyConfig = DEFAULT_DIFFICULTY) -> None:
        self.config = config
        self._window: deque[float] = deque(maxlen=config.iqr_window)

    def __len__(self) -> int:
        return len(self._window)

    @property
    def active(self) -> bool:
        """True once the window holds ``iqr_min_samples`` values."""
        return len(self._window) >= self.config.iqr_min_samples

    @property
    def value(self) -> float:
        c = self.config
        if not self.active:
            return c.threshold_default
        ordered = sorted(self._window)
        q_lo = quantile(ordered, c.iqr_quantile)
        q_hi = quantile(ordered, 1.0 - c.iqr_quantile)
        return clip(q_lo + c.iqr_coef * (q_hi - q_lo), c.threshold_min, c.threshold_max)

    def update(self, h_sc: float | Iterable[float]) -> None:
        """Append one H_sc value (or several, in order) after the step that produced it."""
        values = [h_sc] if isinstance(h_sc, (int, float)) else list(h_sc)
        for v in as_floats(values, "EasyThreshold.update(h_sc)"):
            if v < 0:
                raise ValueError(f"EasyThreshold.update: H_sc must be >= 0, got {v!r}")
            self._window.append(v)

    def state_dict(self) -> dict[str, Any]:
        return {"h_sc": list(self._window)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _expect_keys(state, {"h_sc"}, "EasyThreshold")
        values = as_floats(list(state["h_sc"]), "EasyThreshold state 'h_sc'")
        self._window = deque(values, maxlen=self.config.iqr_window)


def bucket_of(
    votes: VoteStats,
    threshold: EasyThreshold | float,
    config: DifficultyConfig = DEFAULT_DIFFICULTY,
) -> Difficulty:
    """The difficulty of one question given the current easy-threshold (read, not updated)."""
    if not isinstance(votes, VoteStats):
        raise TypeError(f"votes must be a VoteStats (from asg.rewards.vote), got {type(votes).__name__}")
    if isinstance(threshold, EasyThreshold):
        thr, active = threshold.value, threshold.active
    else:
        thr, active = as_floats([threshold], "threshold")[0], False
    h, m, f = votes.h_sc, votes.margin, votes.majority_fraction
    easy_case = h < thr and m > config.easy_case_margin
    if h <= thr or f >= config.tau_easy:
        bucket = "easy"
    elif h >= config.hard_min_entropy and m <= config.hard_max_margin:
        bucket = "hard"
    else:
        bucket = "medium"
    return Difficulty(
        bucket=bucket,
        easy_case=easy_case,
        unsolvable=(not easy_case) and f <= config.unsolvable_max_fraction,
        threshold=thr,
        threshold_active=active,
    )


def classify(
    votes: Sequence[VoteStats],
    threshold: EasyThreshold | float,
    config: DifficultyConfig = DEFAULT_DIFFICULTY,
) -> list[Difficulty]:
    """:func:`bucket_of` for a batch, all against the same (pre-step) threshold."""
    return [bucket_of(v, threshold, config) for v in votes]


class DifficultyTarget:
    """Which bucket to ask the Proposer for next: the difficulty hint (§3.1 item 2, without the
    hardness-debt controller, which is reference shaping)."""

    def __init__(self, config: DifficultyConfig = DEFAULT_DIFFICULTY) -> None:
        self.config = config
        self._window: deque[str] = deque(maxlen=config.target_window)

    def __len__(self) -> int:
        return len(self._window)

    @property
    def active(self) -> bool:
        return len(self._window) >= self.config.target_min_samples

    def observe(self, bucket: str | Iterable[str]) -> None:
        """Record the bucket(s) of the questions just solved."""
        for b in [bucket] if isinstance(bucket, str) else list(bucket):
            if b not in BUCKETS:
                raise ValueError(f"DifficultyTarget.observe: bucket must be one of {', '.join(BUCKETS)}; got {b!r}")
            self._window.append(b)

    def observed(self) -> dict[str, float]:
        """Fraction of each bucket in the window (zeros while empty)."""
        n = len(self._window)
        return {b: (self._window.count(b) / n if n else 0.0) for b in BUCKETS}

    def weights(self) -> dict[str, float]:
        """The distribution the next hint is drawn from: positive deficits, normalised; else the target."""
        target = dict(zip(BUCKETS, self.config.target_mix))
        if not self.active:
            return target
        seen = self.observed()
        deficit = {b: max(0.0, target[b] - seen[b]) for b in BUCKETS}
        total = sum(deficit.values())
        return {b: d / total for b, d in deficit.items()} if total > 0 else target

    def hint(self, rng: random.Random) -> str:
        """Draw the desired bucket with ``rng`` (pass a seeded ``random.Random`` for reproducibility)."""
        u = rng.random()
        cum = 0.0
        last = BUCKETS[0]
        for b, w in self.weights().items():
            if w <= 0:
                continue
            cum += w
            last = b
            if u < cum:
                return b
        return last  # u within rounding of 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"buckets": list(self._window)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _expect_keys(state, {"buckets"}, "DifficultyTarget")
        self._window = deque(maxlen=self.config.target_window)
        self.observe(list(state["buckets"]))


def _expect_keys(state: Any, keys: set[str], owner: str) -> None:
    if not isinstance(state, Mapping) or set(state) != keys:
        got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{owner}.load_state_dict expects keys {sorted(keys)}, got {got}")


__all__ = [
    "BUCKETS",
    "DEFAULT_DIFFICULTY",
    "Difficulty",
    "DifficultyConfig",
    "DifficultyTarget",
    "EasyThreshold",
    "bucket_of",
    "classify",
]
