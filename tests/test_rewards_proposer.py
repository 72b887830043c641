"""Proposer reward (algorithm.md §3.8, §4) on hand-built cases with the arithmetic written out.

Shared numbers (from test_rewards_consistency):
  5/2 split: H 0.598270, info 0.756593;  R_hyb = 0.9 (2*0.756593 - 1) + 0.1 exp(-(0.598270-0.9)^2 / 0.125)
           = 0.9 * 0.513186 + 0.1 * exp(-0.728329) = 0.461867 + 0.1 * 0.482714 = 0.510139
  4/2/1:     H 0.955699, info 0.774675;  R_hyb = 0.9 * 0.549350 + 0.1 * 0.975486 = 0.494415 + 0.097549 = 0.591964
  7/0:       H 0, info 0.218782;          R_hyb = 0.9 * (-0.562436) + 0.1 * exp(-6.48) = -0.506192 + 0.000153 = -0.506039
"""

from __future__ import annotations

import attrs
import pytest

from asg.rewards import (
    EasyThreshold,
    ProposerCase,
    ProposerConfig,
    RewardComponent,
    apply_overrides,
    bucket_of,
    builtin_components,
    proposer_rewards,
    self_consistency_reward,
    vote,
)


def _case(counts: tuple[int, ...], d_ste: float, **kw) -> ProposerCase:
    labels = [chr(ord("a") + k) for k, c in enumerate(counts) for _ in range(c)]
    v = vote(labels)
    return ProposerCase(d_ste=d_ste, votes=v, difficulty=bucket_of(v, EasyThreshold()), **kw)


def _reward(case: ProposerCase, config: ProposerConfig = ProposerConfig(), **kw) -> tuple[float, dict]:
    out = proposer_rewards([case], config, **kw)
    return out.values[0], out.diagnostics[0]


def test_r_hyb_of_a_5_2_split() -> None:
    """R_hyb = 0.9 (2 info - 1) + 0.1 Gauss(H_sc; 0.9, 0.25) = 0.510139 for a 5/2 split."""
    assert self_consistency_reward(vote(list("aaaaabb"))) == pytest.approx(0.510139, abs=1e-6)


def test_primary_mix_on_a_medium_question() -> None:
    """R = 0.70 d_ste + 0.30 R_hyb = 0.70 * 0.5 + 0.30 * 0.510139 = 0.35 + 0.153042 = 0.503042."""
    r, d = _reward(_case((5, 2), 0.5))
    assert r == pytest.approx(0.503042, abs=1e-6)
    assert d["proposer.ste.weighted"] == pytest.approx(0.35) and d["proposer.capped"] == 0.0
    assert d["difficulty.bucket"] == 1.0  # medium


def test_unanimous_question_is_capped() -> None:
    """7/0 with d_ste 0.9: 0.70 * 0.9 + 0.30 * 0 (H_sc = 0) = 0.63, no rejection penalty (easy + STE
    primary -> s = 0), then the collapse cap: min(0.63, 0.20) = 0.20."""
    r, d = _reward(_case((7,), 0.9))
    assert r == pytest.approx(0.20)
    assert d["proposer.core"] == pytest.approx(0.63) and d["proposer.penalty.rejection"] == 0.0
    assert d["proposer.collapsed"] == 1.0 and d["proposer.capped"] == 1.0


def test_unparseable_question_is_penalised() -> None:
    """An unparsed output: 0.70 * 0 - 0.10 (invalid) - 0.20 (non-objective) - 0.35 * (1 - 0/0.9) = -0.65."""
    r, d = _reward(ProposerCase.unparsed())
    assert r == pytest.approx(-0.65)
    assert d["proposer.penalty.invalid"] == pytest.approx(0.10)
    assert d["proposer.penalty.rejection"] == pytest.approx(0.35)


def test_low_info_majority_is_penalised_and_capped() -> None:
    """4/2/1 (hard), d_ste 0.8, low-info majority: 0.56 + 0.30 * 0.591964 = 0.737589; - 0.50 = 0.237589;
    rejection penalty 0.35 * max(0, 1 - 0.955699/0.9) = 0; rejected -> cap 0.20."""
    r, d = _reward(_case((4, 2, 1), 0.8, low_info_majority=True))
    assert d["proposer.core"] == pytest.approx(0.737589, abs=1e-6)
    assert d["proposer.penalty.rejection"] == 0.0
    assert r == pytest.approx(0.20)


def test_complementary_mode_is_reachable() -> None:
    """Complementary (recipe quirk 1): R = 0.30 d_ste + 0.70 R_vz = 0.15 + 0.70 * 0.510139 = 0.507097."""
    r, d = _reward(_case((5, 2), 0.5), ProposerConfig(ste_mode="complementary"))
    assert r == pytest.approx(0.507097, abs=1e-6)
    assert d["proposer.ste_primary"] == 0.0


def test_complementary_weight_is_configurable() -> None:
    """ste_complementary_weight 0.5: R = 0.5 * 0.5 + 0.5 * 0.510139 = 0.505070."""
    r, _ = _reward(_case((5, 2), 0.5), ProposerConfig(ste_mode="complementary", ste_complementary_weight=0.5))
    assert r == pytest.approx(0.505070, abs=1e-6)


def test_off_mode_unsolvable_question_scores_zero() -> None:
    """STE off, 7 distinct answers (hard, unsolvable): R_vz = 0 and nothing else applies, so R = 0."""
    r, d = _reward(_case((1,) * 7, 0.9), ProposerConfig(ste_mode="off"))
    assert r == 0.0 and d["proposer.ste.weighted"] == 0.0


def test_off_mode_unanimous_with_disagreeing_tracks() -> None:
    """STE off, 7/0, tracks disagree: R_vz = 0.5 * 1.0 = 0.5; easy rejection without STE primary has
    s = 1: 0.35 * (1 - 0/0.9) = 0.35 -> 0.15 (below the 0.20 cap)."""
    r, _ = _reward(_case((7,), 0.0, tracks_disagree=True), ProposerConfig(ste_mode="off"))
    assert r == pytest.approx(0.15)


def test_reward_is_clipped_to_minus_one() -> None:
    """Complementary, 7/0, d_ste 0, invalid, non-objective, low-info: 0.70 * -0.506039 = -0.354227;
    -0.10 - 0.20 - 0.50 - 0.35 -> -1.504227, clipped to -1 (and flagged)."""
    case = _case((7,), 0.0, valid=False, objective=False, low_info_majority=True)
    r, d = _reward(case, ProposerConfig(ste_mode="complementary"))
    assert r == -1.0 and d["proposer.clipped"] == 1.0
    assert d["proposer.core"] == pytest.approx(-0.354227, abs=1e-6)


def test_disabling_the_ste_component_gives_the_self_consistency_reward_full_weight() -> None:
    """Ablation 'no STE': the self-consistency term is rescaled to weight 1, so R = R_vz = 0.510139."""
    comps = apply_overrides(builtin_components("proposer"), {"proposer.ste": {"enabled": False}})
    r, d = _reward(_case((5, 2), 0.5), components=comps)
    assert r == pytest.approx(0.510139, abs=1e-6) and "proposer.ste" not in d


def test_reweighting_the_ste_component() -> None:
    """ste weight 0.5 (primary): R = 0.5 * 0.5 + 0.30 * 0.510139 = 0.403042."""
    comps = apply_overrides(builtin_components("proposer"), {"proposer.ste": {"weight": 0.5}})
    r, _ = _reward(_case((5, 2), 0.5), components=comps)
    assert r == pytest.approx(0.403042, abs=1e-6)


def test_extra_component_adds_its_weighted_score() -> None:
    """A third-party term of weight 0.1 scoring 1.0 adds 0.1: 0.503042 + 0.1 = 0.603042."""
    extra = RewardComponent("proposer.brevity", "proposer", lambda cases, cfg: [1.0] * len(cases), weight=0.1)
    r, d = _reward(_case((5, 2), 0.5), components=builtin_components("proposer") + (extra,))
    assert r == pytest.approx(0.603042, abs=1e-6) and d["proposer.brevity"] == 1.0


def test_batch_keeps_case_order() -> None:
    """A batch returns one reward per case in order."""
    out = proposer_rewards([_case((5, 2), 0.5), ProposerCase.unparsed()])
    assert out.values == pytest.approx((0.503042, -0.65), abs=1e-6)
    assert out.argmax() == 0


def test_cases_are_validated_naming_the_field() -> None:
    """d_ste outside [0, 1] and votes without a difficulty are rejected with the field named."""
    with pytest.raises(ValueError, match=r"ProposerCase.d_ste must be a number in \[0.0, 1.0\]"):
        ProposerCase(d_ste=1.5)
    v = vote(list("aaaaabb"))
    with pytest.raises(ValueError, match="ProposerCase.difficulty is required"):
        ProposerCase(d_ste=0.5, votes=v)
    with pytest.raises(ValueError, match="ProposerConfig.ste_mode must be one of"):
        ProposerConfig(ste_mode="secondary")
    assert attrs.evolve(ProposerConfig(), collapse_cap=0.45).collapse_cap == 0.45
