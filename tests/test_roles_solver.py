"""PPS ladder and locating answer tokens (algorithm.md §3.5, §4)."""

from __future__ import annotations

import re

import pytest

from asg.roles.solver import PPS_QUANTILES, PPSLadder, SolverConfig, answer_token_span, pps_quantile, van_der_corput


def test_ladder_gives_the_reference_pairs_for_samples_1_to_6() -> None:
    """q_i = 1, .2, .8, .4, .6, .1 for i = 1..6; T = 0.5 + 2.0·q, P = 0.3 + 0.7·(1 − q):
    (2.5, 0.30), (0.9, 0.86), (2.1, 0.44), (1.3, 0.72), (1.7, 0.58), (0.7, 0.93)."""
    ladder = PPSLadder()
    pairs = [ladder.temperature_top_p(i) for i in range(1, 7)]
    assert pairs == [(2.5, 0.30), (0.9, 0.86), (2.1, 0.44), (1.3, 0.72), (1.7, 0.58), (0.7, 0.93)]


def test_ladder_is_anti_correlated_and_inside_its_ranges() -> None:
    """The hotter a sample, the smaller its nucleus; every value lies in T ∈ [0.5, 2.5], P ∈ [0.3, 1.0]."""
    ladder = PPSLadder()
    pairs = [ladder.temperature_top_p(i) for i in range(1, 40)]
    assert all(0.5 <= t <= 2.5 and 0.3 <= p <= 1.0 for t, p in pairs)
    by_t = sorted(pairs)
    assert [p for _, p in by_t] == sorted((p for _, p in pairs), reverse=True)


def test_sample_zero_is_greedy_and_carries_max_new_tokens() -> None:
    """Sample 0 decodes greedily; perturbed samples use the ladder; both use the token budget."""
    ladder = PPSLadder()
    greedy, first = ladder.sampling(0, 96), ladder.sampling(1, 96)
    assert greedy.is_greedy and greedy.max_new_tokens == 96
    assert (first.temperature, first.top_p, first.max_new_tokens) == (2.5, 0.3, 96)
    with pytest.raises(ValueError, match="numbered from 1"):
        ladder.temperature_top_p(0)


def test_quantiles_continue_with_unused_van_der_corput_values() -> None:
    """After the 11 fixed quantiles come base-2 van der Corput values not already used (0.5 is)."""
    assert [van_der_corput(k) for k in range(1, 6)] == [0.5, 0.25, 0.75, 0.125, 0.625]
    assert [pps_quantile(i) for i in range(11)] == list(PPS_QUANTILES)
    assert [pps_quantile(i) for i in range(11, 15)] == [0.25, 0.75, 0.125, 0.625]


def test_ladder_and_solver_config_validation_name_the_field() -> None:
    """Bad ranges and counts are rejected with the field's name."""
    with pytest.raises(ValueError, match=r"PPSLadder.t_min must be <= t_max, got t_min=3.0, t_max=2.5"):
        PPSLadder(t_min=3.0)
    with pytest.raises(ValueError, match=r"PPSLadder.p_min must be a number in \(0.0, 1.0\], got 0.0"):
        PPSLadder(p_min=0.0)
    with pytest.raises(ValueError, match=r"SolverConfig.n must be an integer in \[1, 64\], got 0"):
        SolverConfig(n=0)


class _Tok:
    """Whole-tag tokens ('<answer>' is one token) or split tags ('<', 'answer', '>')."""

    def __init__(self, split_tags: bool) -> None:
        self.pattern = re.compile(r"[<>/]|[^\s<>/]+|\s+" if split_tags else r"<[^<>]+>|\s+|[^\s<]+")

    def pieces(self, text: str) -> list[str]:
        return self.pattern.findall(text)


def _span(text: str, split_tags: bool) -> tuple[tuple[int, int] | None, list[str]]:
    pieces = _Tok(split_tags).pieces(text)
    ids = list(range(len(pieces)))
    return answer_token_span(ids, lambda xs: "".join(pieces[i] for i in xs), ("<answer>", "</answer>")), pieces


@pytest.mark.parametrize("split_tags", [False, True])
def test_answer_span_starts_right_after_the_tag_however_it_is_tokenised(split_tags) -> None:
    """start = first token after the opening tag (1 token or 3), end = after the last answer token."""
    span, pieces = _span("I count. <answer>dark red</answer>", split_tags)
    assert span is not None
    start, end = span
    assert pieces[start] == "dark" and "".join(pieces[start:end]) == "dark red"
    assert "".join(pieces[:start]).endswith("<answer>")


def test_answer_span_of_empty_and_unclosed_answers() -> None:
    """An empty answer gives an empty span at the tag's end; an unclosed tag still locates the answer."""
    span, pieces = _span("<answer></answer>", False)
    assert span == (1, 1)
    span, pieces = _span("<answer> 3", False)
    assert span is not None and "".join(pieces[span[0]:span[1]]).strip() == "3"


def test_answer_span_is_none_without_an_opening_tag() -> None:
    """No opening tag, no span (STE then falls back to the first tokens, flagged by None)."""
    assert _span("3", False)[0] is None
    assert _span("it is 3</answer>", False)[0] is None
