"""Self-consistency vote statistics (algorithm.md §3.5) against hand-derived numbers."""

from __future__ import annotations

import pytest

from asg.rewards import ConsistencyConfig, entropy_nats, self_consistency, vote


def _split(*counts: int) -> list[str]:
    """Vote labels for a split, e.g. (5, 2) -> five 'a' then two 'b'."""
    return [chr(ord("a") + k) for k, c in enumerate(counts) for _ in range(c)]


@pytest.mark.parametrize(("counts", "expected"), [
    # -(6/7 ln 6/7 + 1/7 ln 1/7) = 6/7 * 0.154151 + 1/7 * 1.945910 = 0.132129 + 0.277987 = 0.410116
    ((6, 1), 0.410116),
    # -(5/7 ln 5/7 + 2/7 ln 2/7) = 5/7 * 0.336472 + 2/7 * 1.252763 = 0.240337 + 0.357932 = 0.598270
    ((5, 2), 0.598270),
    # -(4/7 ln 4/7 + 3/7 ln 3/7) = 4/7 * 0.559616 + 3/7 * 0.847298 = 0.319780 + 0.363128 = 0.682908
    ((4, 3), 0.682908),
    # -(4/7 ln 4/7 + 2/7 ln 2/7 + 1/7 ln 1/7) = 0.319780 + 0.357932 + 0.277987 = 0.955699
    ((4, 2, 1), 0.955699),
    # 7 distinct: -7 * (1/7 ln 1/7) = ln 7 = 1.945910
    ((1, 1, 1, 1, 1, 1, 1), 1.945910),
    # unanimous: -(1 ln 1) = 0
    ((7,), 0.0),
])
def test_h_sc_of_vote_splits_matches_hand_values(counts, expected) -> None:
    """H_sc = -sum p ln p in nats for the reference vote splits of N = 7 answers."""
    stats = vote(_split(*counts))
    assert stats.h_sc == pytest.approx(expected, abs=2e-6)
    assert entropy_nats(list(counts)) == pytest.approx(expected, abs=2e-6)


def test_majority_fraction_margin_and_info_of_a_5_2_split() -> None:
    """A 5/2 split has maj_frac 5/7, margin 3/7 and info 0.756593 (band 0.989377, damp 0.523810)."""
    s = vote(_split(5, 2))
    assert s.majority == "a" and s.majority_fraction == pytest.approx(5 / 7)
    assert s.margin == pytest.approx(3 / 7)  # 5/7 - 2/7
    # band = exp(-(0.598270 - 0.675)^2 / (2 * 0.525^2)) = exp(-0.0058875 / 0.55125) = exp(-0.010680) = 0.989377
    assert s.band == pytest.approx(0.989377, abs=1e-6)
    # damp = 1 - (3/7) / 0.9 = 1 - 0.476190 = 0.523810;  info = 0.5 * (0.989377 + 0.523810) = 0.756593
    assert s.info == pytest.approx(0.756593, abs=1e-6)
    assert s.sc_signal == s.info and s.informative


def test_unanimous_vote_is_uninformative_with_low_info() -> None:
    """7/0: margin 1 (no runner-up), damp 0, info = 0.5 * exp(-0.675^2 / 0.55125) = 0.218782."""
    s = vote(["3"] * 7)
    assert s.unanimous and s.margin == 1.0 and s.h_sc == 0.0
    # band = exp(-0.455625 / 0.55125) = exp(-0.826531) = 0.437565; info = 0.5 * 0.437565 + 0.5 * 0 = 0.218782
    assert s.info == pytest.approx(0.218782, abs=1e-6)
    assert not s.informative  # H_sc = 0 is below the band and margin 1 > 0.9


def test_all_distinct_answers_are_informative_by_margin() -> None:
    """7 distinct answers: H_sc = ln 7 is above the band but margin 0 <= 0.9 keeps it informative."""
    s = vote(list("abcdefg"))
    assert s.margin == 0.0 and s.majority == "a" and s.informative
    # band = exp(-(1.945910 - 0.675)^2 / 0.55125) = exp(-2.930522) = 0.053392; info = 0.5*0.053392 + 0.5*1 = 0.526696
    assert s.info == pytest.approx(0.526696, abs=1e-6)


def test_ties_go_to_the_label_seen_first() -> None:
    """With a 2/2/1 tie the majority is the first label in sample order, and the margin is 0."""
    s = vote(["b", "a", "a", "b", "c"])
    assert s.majority == "b" and s.margin == 0.0 and s.majority_fraction == pytest.approx(0.4)
    assert s.counts == (("b", 2), ("a", 2), ("c", 1))
    assert s.fraction("c") == pytest.approx(0.2) and s.fraction("zzz") == 0.0


def test_batch_returns_one_vote_per_question_and_names_bad_entries() -> None:
    """self_consistency votes each question of the batch and names the index of an invalid one."""
    out = self_consistency([_split(6, 1), _split(4, 3)])
    assert [round(v.h_sc, 3) for v in out] == [0.410, 0.683]
    with pytest.raises(ValueError, match=r"answers\[1\]: labels must be a non-empty"):
        self_consistency([_split(6, 1), []])
    with pytest.raises(TypeError, match=r"answers\[0\]: labels\[1\] must be a str"):
        self_consistency([["a", 3]])


def test_band_constants_are_configurable_and_validated() -> None:
    """The band edges move the centre/half-width; an inverted band is rejected naming the field."""
    cfg = ConsistencyConfig(band_low=0.5, band_high=1.5)
    assert (cfg.band_centre, cfg.band_half_width) == (1.0, 0.5)
    # 4/3 split with band [0.5, 1.5]: band = exp(-(0.682908 - 1)^2 / (2 * 0.5^2)) = exp(-0.100547 / 0.5)
    #                                      = exp(-0.201095) = 0.817835
    assert vote(_split(4, 3), cfg).band == pytest.approx(0.817835, abs=1e-6)
    with pytest.raises(ValueError, match="ConsistencyConfig.band_high must be greater than band_low"):
        ConsistencyConfig(band_low=1.0, band_high=0.5)
