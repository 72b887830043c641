"""Solver rewards, soft weights and the update gate (algorithm.md §3.7, §3.9).

Shared numbers: 5/2 split info = 0.756593; 7 distinct info = 0.526696; 7/0 info = 0.218782;
(5/7)^0.7 = exp(0.7 ln 5/7) = exp(-0.235531) = 0.790152;  (2/7)^0.7 = exp(-0.876934) = 0.416057;
(1/7)^0.7 = exp(-1.362137) = 0.256113.
"""

from __future__ import annotations

import pytest

from asg.rewards import (
    ConsistencyConfig,
    EasyThreshold,
    RewardComponent,
    SolverConfig,
    SolverQuestion,
    bucket_of,
    builtin_components,
    length_penalty,
    solver_rewards,
    vote,
)


def _question(labels: str, threshold=None, consistency=ConsistencyConfig(), **kw) -> SolverQuestion:
    v = vote(list(labels), consistency)
    return SolverQuestion(votes=v, difficulty=bucket_of(v, EasyThreshold() if threshold is None else threshold), **kw)


def test_majority_gets_info_and_minority_a_quarter_penalty_with_soft_weights() -> None:
    """5/2: majority +0.756593 weighted by (5/7)^0.7, minority -0.25 * 0.756593 = -0.189148 by (2/7)^0.7."""
    out = solver_rewards([_question("aaaaabb")])[0]
    assert out.raw == pytest.approx((0.756593,) * 5 + (-0.189148,) * 2, abs=1e-6)
    assert out.weights == pytest.approx((0.790152,) * 5 + (0.416057,) * 2, abs=1e-6)
    # 0.790152 * 0.756593 = 0.597823;  0.416057 * -0.189148 = -0.078696
    assert out.rewards == pytest.approx((0.597823,) * 5 + (-0.078696,) * 2, abs=1e-6)
    assert out.skip_reason is None and not out.skip


def test_length_penalty_scales_the_soft_weight() -> None:
    """12 words before <answer>: pen 1 -> weight x 0.9; 9 words: pen 0.5 -> x 0.95; 6 words: no penalty."""
    assert [length_penalty(w) for w in (3, 6, 9, 12, 30)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    out = solver_rewards([_question("aaaaabb", pre_answer_words=(12, 9, 6, 0, 0, 0, 0))])[0]
    # 0.790152 * 0.9 * 0.756593 = 0.538041;  0.790152 * 0.95 * 0.756593 = 0.567932
    assert out.rewards[:3] == pytest.approx((0.538041, 0.567932, 0.597823), abs=1e-6)


def test_answer_quality_flags_reduce_the_raw_reward() -> None:
    """A non-canonical majority answer: 0.756593 - 0.10 = 0.656593; a low-info one: - 0.08 = 0.676593."""
    flags = (True, False, False, False, False, False, False)
    out = solver_rewards([_question("aaaaabb", non_canonical=flags, low_info=flags[::-1])])[0]
    assert out.raw[0] == pytest.approx(0.656593, abs=1e-6)
    assert out.raw[6] == pytest.approx(-0.189148 - 0.08, abs=1e-6)
    assert out.rewards[0] == pytest.approx(0.790152 * 0.656593, abs=1e-6)  # = 0.518808


def test_unsolvable_question_penalises_every_answer() -> None:
    """7 distinct: every answer gets -0.25 * 0.526696 = -0.131674, weighted by (1/7)^0.7 -> -0.033724."""
    out = solver_rewards([_question("abcdefg")])[0]
    assert out.raw == pytest.approx((-0.131674,) * 7, abs=1e-6)
    assert out.rewards == pytest.approx((-0.033724,) * 7, abs=1e-6)
    assert out.skip_reason is None  # margin 0 keeps it informative


def test_easy_case_reverses_the_reward_and_is_skipped() -> None:
    """7/0 (easy_case): majority -1.0 * 0.218782, x2.5 with a low-info majority = -0.546955; skipped as easy."""
    plain = solver_rewards([_question("aaaaaaa")])[0]
    low = solver_rewards([_question("aaaaaaa", low_info_majority=True)])[0]
    assert plain.raw == pytest.approx((-0.218782,) * 7, abs=1e-6)
    assert low.raw == pytest.approx((-0.546955,) * 7, abs=1e-6)
    assert low.skip_reason == "easy" and low.diagnostics["solver.skip.easy"] == 1.0


def test_iqr_gate_skips_before_the_easy_gate() -> None:
    """6/1 with an active IQR threshold of 0.5: H 0.410 <= 0.5 and maj 0.857 >= 0.80 -> 'iqr_easy';
    with the default inactive threshold it is skipped as 'easy' (maj >= 0.85)."""
    thr = EasyThreshold()
    thr.update([0.5] * 32)
    assert solver_rewards([_question("aaaaaab", thr)])[0].skip_reason == "iqr_easy"
    assert solver_rewards([_question("aaaaaab")])[0].skip_reason == "easy"


def test_rejected_questions_are_skipped_first() -> None:
    """A rejected question is skipped as 'rejected' even when it is informative."""
    assert solver_rewards([_question("aaaaabb", rejected=True)])[0].skip_reason == "rejected"


def test_uninformative_questions_are_skipped() -> None:
    """Band [0.5, 1.2] and margin_max 0.5: 6/1 (H 0.410, margin 0.714) is uninformative; with the easy
    gate at 0.90 it reaches the last gate."""
    q = _question("aaaaaab", threshold=0.15, consistency=ConsistencyConfig(band_low=0.5, margin_max=0.5))
    assert solver_rewards([q], SolverConfig(easy_skip_majority=0.9))[0].skip_reason == "uninformative"


def test_informative_scaling_multiplies_by_info() -> None:
    """With informative_scaling the rewards are x max(0.2, info) = x 0.756593: 0.597823 -> 0.452308."""
    out = solver_rewards([_question("aaaaabb")], SolverConfig(informative_scaling=True))[0]
    assert out.rewards[0] == pytest.approx(0.597823 * 0.756593, abs=1e-6)
    assert out.diagnostics["solver.scale"] == pytest.approx(0.756593, abs=1e-6)


def test_extra_component_adds_to_the_raw_reward() -> None:
    """A format term scoring 0.1 per answer (weight 1) lifts the majority raw reward to 0.856593."""
    fmt = RewardComponent("solver.format", "solver", lambda samples, cfg: [0.1] * len(samples))
    out = solver_rewards([_question("aaaaabb")], components=builtin_components("solver") + (fmt,))[0]
    assert out.raw[0] == pytest.approx(0.856593, abs=1e-6)
    assert out.diagnostics["solver.format.mean"] == pytest.approx(0.1)


def test_batch_of_questions_with_different_n() -> None:
    """Questions of different N are rewarded independently and in order."""
    out = solver_rewards([_question("aaaaabb"), _question("abcdefg"), _question("aab")])
    assert [len(o.rewards) for o in out] == [7, 7, 3]


def test_per_answer_flags_must_match_n() -> None:
    """A flag tuple of the wrong length is rejected naming the field and N."""
    with pytest.raises(ValueError, match=r"SolverQuestion.pre_answer_words must have one entry per answer \(7\), got 2"):
        _question("aaaaabb", pre_answer_words=(1, 2))


def test_weak_majorities_are_skipped_when_asked() -> None:
    """min_majority 0.7: 4/3 (0.571) is skipped as 'weak_majority', 5/2 (0.714) trains; off by default.
    With the easy gates raised to 0.9, 6/1 (0.857) trains too and its majority keeps the plain +sc."""
    cfg = SolverConfig(min_majority=0.7)
    assert solver_rewards([_question("aaaabbb")])[0].skip_reason is None
    weak = solver_rewards([_question("aaaabbb")], cfg)[0]
    assert weak.skip_reason == "weak_majority" and weak.diagnostics["solver.skip.weak_majority"] == 1.0
    assert solver_rewards([_question("aaaaabb")], cfg)[0].skip_reason is None
    six = solver_rewards([_question("aaaaaab")], SolverConfig(min_majority=0.7, easy_skip_majority=0.9,
                                                                iqr_skip_majority=0.9))[0]
    assert six.skip_reason is None and six.raw[0] > 0 > six.raw[6]


def test_question_types_can_be_excluded_from_training() -> None:
    """skip_qtypes ("count",): a 5/2 count question is skipped as 'qtype', a binary one trains, and a
    question of unknown type ("") is never skipped by this gate; an unknown type name is refused."""
    cfg = SolverConfig(skip_qtypes=["count"])
    assert cfg.skip_qtypes == ("count",)
    assert solver_rewards([_question("aaaaabb", qtype="count")], cfg)[0].skip_reason == "qtype"
    assert solver_rewards([_question("aaaaabb", qtype="binary")], cfg)[0].skip_reason is None
    assert solver_rewards([_question("aaaaabb")], cfg)[0].skip_reason is None
    assert solver_rewards([_question("aaaaabb", qtype="count")])[0].skip_reason is None
    with pytest.raises(ValueError, match="question types from"):
        SolverConfig(skip_qtypes=("counting",))
