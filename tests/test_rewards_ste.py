"""Solver Token Entropy and its rank-quantile normaliser (algorithm.md §3.6, §4)."""

from __future__ import annotations

import json

import pytest
import torch

from asg.rewards import SteConfig, SteNormalizer, answer_start_index, solver_token_entropies, solver_token_entropy, token_entropy

# A generated sequence "<ans wer> ... </answer>": 3 format-tag steps (ids 10, 11, 12) before the answer.
IDS = [10, 11, 12, 50, 51, 52, 53, 54, 55]
ENT = [0.01, 0.02, 0.03, 1.2, 0.4, 2.5, 0.1, 0.05, 3.0]  # nats per generated step


def test_token_entropy_is_full_vocabulary_nats() -> None:
    """Uniform logits over 4 tokens give ln 4; softmax (1/4, 3/4) gives 0.562335 nats."""
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, float(torch.log(torch.tensor(3.0))), -1e9, -1e9]])
    h = token_entropy(logits)
    # ln 4 = 1.386294;  -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.346574 + 0.215762 = 0.562335
    assert h.tolist() == pytest.approx([1.386294, 0.562335], abs=1e-6)
    assert h.dtype == torch.float32


def test_ste_is_the_max_of_the_first_five_answer_tokens() -> None:
    """From the answer start the window is [1.2, 0.4, 2.5, 0.1, 0.05]: max 2.5; the 6th token (3.0) is ignored."""
    v = solver_token_entropy(ENT, answer_start=3)
    assert v.raw == 2.5 and v.tokens == (1.2, 0.4, 2.5, 0.1, 0.05) and v.tag_found


def test_mean_aggregation_is_selectable() -> None:
    """aggregation='mean' averages the window: (1.2 + 0.4 + 2.5 + 0.1 + 0.05) / 5 = 0.85."""
    v = solver_token_entropy(ENT, answer_start=3, config=SteConfig(aggregation="mean"))
    assert v.raw == pytest.approx(0.85)


def test_answer_start_found_from_token_ids_single_or_multi_token_tag() -> None:
    """The answer starts right after the tag, whether the tag is one id (12) or a run of ids (11, 12)."""
    assert answer_start_index(IDS, 12) == 3 and answer_start_index(IDS, (11, 12)) == 3
    assert answer_start_index(IDS, 99) is None
    v = solver_token_entropy(torch.tensor(ENT), token_ids=torch.tensor(IDS), answer_tag=(11, 12))
    assert v.answer_start == 3 and v.raw == pytest.approx(2.5)


def test_close_tag_and_answer_stop_end_the_window() -> None:
    """A closing tag at index 5 leaves only [1.2, 0.4] in the window: max 1.2."""
    assert solver_token_entropy(ENT, token_ids=IDS, answer_tag=12, close_tag=52).raw == 1.2
    assert solver_token_entropy(ENT, answer_start=3, answer_stop=5).tokens == (1.2, 0.4)


def test_missing_tag_measures_from_the_first_token() -> None:
    """Without an answer tag the whole output is the answer: window [0.01, 0.02, 0.03, 1.2, 0.4], max 1.2."""
    v = solver_token_entropy(ENT, token_ids=IDS, answer_tag=77)
    assert v.answer_start == 0 and not v.tag_found and v.raw == 1.2
    assert v.diagnostics()["ste.tag_found"] == 0.0


def test_empty_answer_has_zero_ste() -> None:
    """An answer start at the end of the sequence measures nothing: STE_raw = 0."""
    assert solver_token_entropy(ENT, answer_start=len(ENT)).raw == 0.0


def test_where_the_answer_starts_must_be_said_once() -> None:
    """Neither or both ways of locating the answer is an error that explains the choice."""
    with pytest.raises(ValueError, match="answer tokens, not format tags"):
        solver_token_entropy(ENT)
    with pytest.raises(ValueError, match="not both"):
        solver_token_entropy(ENT, answer_start=3, token_ids=IDS, answer_tag=12)
    with pytest.raises(ValueError, match=r"answer_start must be an int in \[0, 9\]"):
        solver_token_entropy(ENT, answer_start=10)


def test_batched_ste_names_the_failing_answer() -> None:
    """solver_token_entropies measures each answer and names the index of a bad one."""
    out = solver_token_entropies([ENT, ENT[:5]], answer_starts=[3, 0])
    assert [v.raw for v in out] == [2.5, 1.2]
    with pytest.raises(ValueError, match="answer 1: answer_start must be"):
        solver_token_entropies([ENT, ENT[:2]], answer_starts=[3, 4])


def test_normaliser_uses_the_sigmoid_for_the_first_seven_values_then_the_rank_quantile() -> None:
    """d = sigmoid(1.5 (x - 2)) while the window has < 8 values; the 8th value gets #below / 8."""
    norm = SteNormalizer()
    got = norm.update([2.0, 3.0, 1.0, 0.5, 0.7, 1.5, 2.5])
    # sigmoid(1.5 * (x - 2)) for x = 2, 3, 1, 0.5, 0.7, 1.5, 2.5:
    #   s(0) = 0.5, s(1.5) = 0.817574, s(-1.5) = 0.182426, s(-2.25) = 0.095349, s(-1.95) = 0.124553,
    #   s(-0.75) = 0.320821, s(0.75) = 0.679179
    assert got == pytest.approx([0.5, 0.817574, 0.182426, 0.095349, 0.124553, 0.320821, 0.679179], abs=1e-6)
    # 8th value 1.2 is stored first; strictly below it: 1.0, 0.5, 0.7 -> 3/8
    assert norm.update(1.2) == 0.375 and len(norm) == 8


def test_normaliser_read_only_quantile_and_tiny_values() -> None:
    """quantile() does not store; raw <= 1e-6 gives d_ste = 0 and is not stored."""
    norm = SteNormalizer()
    norm.update([2.0, 3.0, 1.0, 0.5, 0.7, 1.5, 2.5, 1.2])
    assert norm.quantile(0.6) == 0.125 and norm.quantile(10.0) == 1.0  # 1 of 8 below; 8 of 8 below
    assert norm.update(0.0) == 0.0 and norm.update(1e-7) == 0.0
    assert len(norm) == 8


def test_normaliser_window_rolls_and_checkpoints_as_json() -> None:
    """With window 4 only the last 4 raw values are kept, and the state restores them exactly."""
    norm = SteNormalizer(SteConfig(window=4, min_window=2))
    norm.update([0.1, 0.2, 0.3, 0.4, 0.5])
    state = json.loads(json.dumps(norm.state_dict()))
    assert state == {"window": [0.2, 0.3, 0.4, 0.5]}
    again = SteNormalizer(SteConfig(window=4, min_window=2))
    again.load_state_dict(state)
    assert again.quantile(0.45) == 0.75  # 0.2, 0.3, 0.4 below
    with pytest.raises(ValueError, match=r"expects keys \['window'\]"):
        again.load_state_dict({"values": []})


@pytest.mark.parametrize(("q", "bucket"), [(0.29, "easy"), (0.30, "medium"), (0.70, "medium"), (0.71, "hard")])
def test_spot_check_buckets(q, bucket) -> None:
    """Spot-check quantiles below 0.30 are easy, above 0.70 hard, else medium (§3.4)."""
    assert SteNormalizer().spot_bucket(q) == bucket


def test_config_rejects_unknown_aggregation_naming_the_field() -> None:
    """An aggregation other than max/mean is rejected with the field and the valid choices."""
    with pytest.raises(ValueError, match="SteConfig.aggregation must be one of 'max', 'mean'; got 'median'"):
        SteConfig(aggregation="median")
