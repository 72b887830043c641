"""Easy-threshold, difficulty buckets and the difficulty hint (algorithm.md §3.1, §3.5)."""

from __future__ import annotations

import json
import random

import pytest

from asg.rewards import DifficultyConfig, DifficultyTarget, EasyThreshold, bucket_of, classify, vote


def _split(*counts: int) -> list[str]:
    return [chr(ord("a") + k) for k, c in enumerate(counts) for _ in range(c)]


def test_threshold_is_the_default_until_32_values() -> None:
    """With fewer than 32 H_sc values the easy-threshold is the default 0.15."""
    thr = EasyThreshold()
    thr.update([i / 10 for i in range(31)])
    assert not thr.active and thr.value == 0.15


def test_threshold_is_q25_plus_quarter_iqr() -> None:
    """On H_sc = 0.0, 0.1, ..., 3.1 (32 values) thr = Q25 + 0.25 IQR = 1.1625."""
    thr = EasyThreshold()
    thr.update([i / 10 for i in range(32)])
    # Q25: position 0.25 * 31 = 7.75 -> 0.7 + 0.75 * 0.1 = 0.775;  Q75: position 23.25 -> 2.3 + 0.025 = 2.325
    # thr = 0.775 + 0.25 * (2.325 - 0.775) = 0.775 + 0.3875 = 1.1625 (inside [0.10, 1.2])
    assert thr.active and thr.value == pytest.approx(1.1625)


@pytest.mark.parametrize(("value", "expected"), [(0.0, 0.10), (2.0, 1.2)])
def test_threshold_is_clipped(value, expected) -> None:
    """A constant window gives thr = that value, clipped to [0.10, 1.2]."""
    thr = EasyThreshold()
    thr.update([value] * 32)
    assert thr.value == expected


def test_threshold_window_rolls_over_256_values() -> None:
    """Only the last 256 H_sc values count: 256 zeros followed by 256 ones give thr = 1.0."""
    thr = EasyThreshold()
    thr.update([0.0] * 256)
    thr.update([1.0] * 256)
    assert len(thr) == 256 and thr.value == pytest.approx(1.0)


def test_threshold_state_round_trips_through_json() -> None:
    """state_dict is plain JSON and restores the same threshold; wrong keys are rejected."""
    thr = EasyThreshold()
    thr.update([i / 10 for i in range(40)])
    again = EasyThreshold()
    again.load_state_dict(json.loads(json.dumps(thr.state_dict())))
    assert again.value == thr.value and len(again) == 40
    with pytest.raises(ValueError, match=r"EasyThreshold.load_state_dict expects keys \['h_sc'\]"):
        again.load_state_dict({"window": []})


@pytest.mark.parametrize(("counts", "bucket", "easy_case", "unsolvable"), [
    ((7,), "easy", True, False),  # H 0 <= 0.15 and margin 1 > 0.9
    ((6, 1), "easy", False, False),  # H 0.410 > 0.15 but maj_frac 6/7 = 0.857 >= 0.85
    ((5, 2), "medium", False, False),  # H 0.598 < 0.90
    ((4, 3), "medium", False, False),  # H 0.683 < 0.90
    ((4, 2, 1), "hard", False, False),  # H 0.956 >= 0.90 and margin 2/7 = 0.286 <= 0.35
    ((3, 2, 2), "hard", False, False),  # H 1.079, margin 1/7
    ((1, 1, 1, 1, 1, 1, 1), "hard", False, True),  # H ln 7, margin 0; maj_frac 1/7 <= 0.20
])
def test_buckets_with_the_default_threshold(counts, bucket, easy_case, unsolvable) -> None:
    """Buckets, easy_case and unsolvable of the reference splits under thr = 0.15 and tau_easy = 0.85."""
    d = bucket_of(vote(_split(*counts)), EasyThreshold())
    assert (d.bucket, d.easy_case, d.unsolvable) == (bucket, easy_case, unsolvable)
    assert d.threshold == 0.15 and not d.threshold_active


def test_tau_easy_one_makes_6_of_7_medium() -> None:
    """With tau_easy = 1.0 (E2-E6) a 6/1 split is medium: H 0.410 > 0.15 and 6/7 < 1."""
    d = bucket_of(vote(_split(6, 1)), 0.15, DifficultyConfig(tau_easy=1.0))
    assert d.bucket == "medium"


def test_float_threshold_and_batch_classification() -> None:
    """A plain float threshold of 0.5 makes 6/1 (H 0.410) easy without being an easy_case (margin 5/7)."""
    out = classify([vote(_split(6, 1)), vote(_split(4, 2, 1))], 0.5)
    assert [d.bucket for d in out] == ["easy", "hard"]
    assert not out[0].easy_case  # margin 0.714 <= 0.9


def test_hint_follows_the_target_mix_before_8_observations() -> None:
    """With < 8 observed buckets the hint distribution is the target mix 0 / 0.7 / 0.3."""
    t = DifficultyTarget()
    t.observe(["hard"] * 7)
    assert t.weights() == {"easy": 0.0, "medium": 0.70, "hard": 0.30}


def test_hint_samples_positive_deficits() -> None:
    """4 easy + 4 medium observed: deficits medium 0.7-0.5 = 0.2, hard 0.3-0 = 0.3 -> 0.4 / 0.6."""
    t = DifficultyTarget()
    t.observe(["easy"] * 4 + ["medium"] * 4)
    w = t.weights()
    assert w["easy"] == 0.0 and w["medium"] == pytest.approx(0.4) and w["hard"] == pytest.approx(0.6)

    class Fixed:
        def __init__(self, u: float) -> None:
            self.u = u

        def random(self) -> float:
            return self.u

    assert t.hint(Fixed(0.39)) == "medium" and t.hint(Fixed(0.41)) == "hard"  # cumulative 0.4, 1.0
    assert t.hint(Fixed(0.0)) == "medium"  # easy has weight 0 and is never drawn


def test_hint_without_deficit_falls_back_to_the_target() -> None:
    """Observed exactly 7 medium + 3 hard: no deficit, so the target mix is sampled."""
    t = DifficultyTarget()
    t.observe(["medium"] * 7 + ["hard"] * 3)
    assert t.weights() == {"easy": 0.0, "medium": 0.70, "hard": 0.30}
    draws = {t.hint(random.Random(s)) for s in range(50)}
    assert draws == {"medium", "hard"}


def test_target_state_round_trips_and_rejects_bad_buckets() -> None:
    """The bucket window checkpoints as JSON; unknown bucket names are errors that list the valid ones."""
    t = DifficultyTarget()
    t.observe(["easy", "hard"] * 5)
    again = DifficultyTarget()
    again.load_state_dict(json.loads(json.dumps(t.state_dict())))
    assert again.weights() == t.weights() and len(again) == 10
    with pytest.raises(ValueError, match="bucket must be one of easy, medium, hard; got 'trivial'"):
        t.observe("trivial")


def test_config_validators_name_the_field() -> None:
    """Invalid difficulty settings are rejected with the class and field in the message."""
    with pytest.raises(ValueError, match=r"DifficultyConfig.target_mix must sum to 1"):
        DifficultyConfig(target_mix=(0.2, 0.7, 0.3))
    with pytest.raises(ValueError, match=r"DifficultyConfig.threshold_max must be >= threshold_min"):
        DifficultyConfig(threshold_min=0.5, threshold_max=0.2)
