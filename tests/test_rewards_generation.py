"""Generator reward and its sub-scores (algorithm.md §6.3, §11) on hand-derived numbers."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from asg.rewards import (
    FidelityConfig,
    GenerationCase,
    GenerationConfig,
    apply_overrides,
    builtin_components,
    contradiction,
    cycle_consistency,
    cycle_consistency_from_embeddings,
    diversity,
    generation_rewards,
    image_features,
    polarity,
    qa_fidelity,
    set_diversity,
    soft_match,
)

REFERENCE = ["3", "red", "yes"]  # Solver answers on the real image
GENERATED = [[["3", "3"], ["red", "blue"], ["no", "no"]]]  # one candidate, 2 answers per question


def test_qa_fidelity_exact_is_the_fraction_of_matching_majorities() -> None:
    """Majorities 3 / red (first of a tie) / no vs 3 / red / yes: S_fid = (1 + 1 + 0) / 3 = 0.666667."""
    out = qa_fidelity(GENERATED, REFERENCE)
    assert out.values[0] == pytest.approx(2 / 3)
    assert out.diagnostics[0]["qa_fidelity.agreement"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_qa_fidelity_with_the_reference_codes_agreement_term() -> None:
    """a = 0.3: s = 0.7 match + 0.3 f -> (1.0 + 0.85 + 0.3) / 3 = 0.716667."""
    out = qa_fidelity(GENERATED, REFERENCE, FidelityConfig(agreement_weight=0.3))
    assert out.values[0] == pytest.approx(2.15 / 3)


@pytest.mark.parametrize("match", ["exact", "soft"])
def test_unreadable_reference_answers_never_match(match: str) -> None:
    """Reference "ood" (an answer of no question type) and "" verify nothing, even when the candidate's
    answers are unreadable the same way: (0 + 0 + 1) / 3 with only "yes" = "yes" counting."""
    out = qa_fidelity([[["ood", "ood"], ["", ""], ["yes", "yes"]]], ["ood", "", "yes"], FidelityConfig(match=match))
    assert out.values[0] == pytest.approx(1 / 3)
    assert out.diagnostics[0]["qa_fidelity.match"] == pytest.approx(1 / 3)


def test_qa_fidelity_without_questions_is_neutral() -> None:
    """A spec without QA pairs scores 0.5 per candidate."""
    assert qa_fidelity([[], []], []).values == (0.5, 0.5)


@pytest.mark.parametrize(("answer", "expected", "score"), [
    ("4", "4", 1.0),
    ("four", "4", 1.0),  # number words are numbers
    ("3.9", "4", 0.7),  # relative error 2.5 %
    ("3.5", "4", 0.4),  # 12.5 %
    ("2", "4", 0.0),  # 50 %
    ("12", "2", 0.0),  # numbers are never substrings of each other
    ("Red car", "car", 0.8),  # substring
    ("big red car", "small red truck", 0.2),  # Jaccard {red} / {big, red, car, small, truck} = 1/5
    ("anything", "", 0.5),
])
def test_soft_match(answer, expected, score) -> None:
    """The graded match of §6.3: exact, numeric tolerance, substring, word Jaccard, empty expected."""
    assert soft_match(answer, expected) == pytest.approx(score)


def test_soft_match_mode_in_qa_fidelity() -> None:
    """match='soft': '3.9' vs '4' counts 0.7 instead of 0."""
    assert qa_fidelity([["3.9"]], ["4"], FidelityConfig(match="soft")).values[0] == pytest.approx(0.7)


def test_contradiction_counts_yes_no_flips() -> None:
    """Only the third question flips polarity (no vs yes): contra = 1/3; non-binary answers never flip."""
    assert [polarity(a) for a in ("Yes.", "absent", "red", "")] == [1, -1, 0, 0]
    assert contradiction(GENERATED, REFERENCE).values[0] == pytest.approx(1 / 3)


def test_cycle_consistency_from_similarities() -> None:
    """cycle = clip(0.5 cap + 0.5 img, 0, 1): (0.8, 0.4) -> 0.6; (-0.2, 0.1) -> -0.05 -> 0; (1, 1) -> 1."""
    out = cycle_consistency([0.8, -0.2, 1.0], torch.tensor([0.4, 0.1, 1.0]))
    assert out.values == pytest.approx((0.6, 0.0, 1.0))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_cycle_consistency_from_embeddings(as_tensor) -> None:
    """Prompt (1, 0); captions (1, 0), (0, 1); images (1, 1), (-1, 0):
    cos = (1, 0) and (1/sqrt 2, -1) -> 0.5 + 0.353553 = 0.853553 and clip(0 - 0.5) = 0."""
    prompt, caps, imgs = [1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]
    if as_tensor:
        prompt, caps, imgs = torch.tensor(prompt), torch.tensor(caps), torch.tensor(imgs)
    out = cycle_consistency_from_embeddings(prompt, caps, imgs)
    assert out.values == pytest.approx((0.5 + 0.5 / math.sqrt(2), 0.0), abs=1e-6)


def test_set_diversity_and_leave_one_out_credit() -> None:
    """gray (1,0), (1,1), (0,1); equal histograms. Pair distances 1 - cos: 0.292893, 1, 0.292893.
    D(all) = 0.6 min(1, 0.528595/0.30) + 0 = 0.6. D without 0 or 2 = 0.6 * 0.292893/0.30 = 0.585786
    (gain 0.014214), without 1 = 0.6 (gain 0) -> credit (1, 0, 1)."""
    gray = [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    hist = [[0.5, 0.5]] * 3
    assert set_diversity(gray, hist) == pytest.approx(0.6)
    out = diversity(gray, hist)
    assert out.values == pytest.approx((1.0, 0.0, 1.0))
    assert out.diagnostics[0]["diversity.gain"] == pytest.approx(0.6 - 0.585786, abs=1e-6)


def test_histogram_term_uses_bhattacharyya_distance() -> None:
    """Identical pixels, disjoint histograms: BC 0, distance 1 -> D = 0.4 * min(1, 1/0.25) = 0.4."""
    assert set_diversity([[1.0, 0.0]] * 2, [[1.0, 0.0], [0.0, 1.0]]) == pytest.approx(0.4)


def test_small_sets() -> None:
    """L = 2: both candidates get D(all); L = 1: 0 (and D of a single image is 0.5)."""
    two = diversity([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    assert two.values == pytest.approx((1.0, 1.0))
    assert diversity([[1.0]], [[1.0]]).values == (0.0,)
    assert set_diversity([[1.0]], [[1.0]]) == 0.5


def test_image_features_of_a_solid_red_image() -> None:
    """Pure red: gray L = 299*255/1000 -> 76 -> 76/255; histogram 1/3 in R bin 31 and in G, B bin 0."""
    gray, hist = image_features(Image.new("RGB", (16, 16), (255, 0, 0)))
    assert len(gray) == 96 * 96 and gray[0] == pytest.approx(76 / 255)
    assert len(hist) == 96 and sum(hist) == pytest.approx(1.0)
    assert {i: round(h, 6) for i, h in enumerate(hist) if h} == {31: 0.333333, 32: 0.333333, 64: 0.333333}


CASES = [
    GenerationCase(qa_fidelity=0.8, cycle_consistency=0.6, diversity=1.0, contradiction=0.5, spec_quality=0.9),
    GenerationCase(qa_fidelity=1.0, cycle_consistency=1.0, diversity=1.0, contradiction=0.0, spec_quality=0.9),
    GenerationCase(qa_fidelity=0.0, cycle_consistency=0.0, diversity=0.0, contradiction=1.0, spec_quality=0.9),
]


def test_generation_reward_combines_normalised_weights_and_spec_quality() -> None:
    """base = (0.65*0.8 + 0.20*0.6 + 0.10*1.0)/0.95 - 0.20*0.5 = 0.74/0.95 - 0.10 = 0.678947; x 0.9 = 0.611053.
    All ones: 0.95/0.95 = 1 -> 0.9 (best). All zero with contra 1: -0.20 -> clipped 0."""
    out = generation_rewards(CASES)
    assert out.values == pytest.approx((0.611053, 0.9, 0.0), abs=1e-6)
    assert [d["generator.best"] for d in out.diagnostics] == [0.0, 1.0, 0.0]
    assert out.diagnostics[2]["generator.base_unclipped"] == pytest.approx(-0.2)
    assert out.diagnostics[0]["generator.qa_fidelity.weighted"] == pytest.approx(0.65 / 0.95 * 0.8)


def test_switching_diversity_off_renormalises_the_rest() -> None:
    """Without diversity: (0.65*0.8 + 0.20*0.6)/0.85 - 0.10 = 0.752941 - 0.10 = 0.652941; x 0.9 = 0.587647."""
    comps = apply_overrides(builtin_components("generator"), {"generator.diversity": {"enabled": False}})
    assert generation_rewards(CASES[:1], components=comps).values[0] == pytest.approx(0.587647, abs=1e-6)


def test_unnormalised_weights() -> None:
    """normalize_positive=False: 0.52 + 0.12 + 0.10 - 0.10 = 0.64; x 0.9 = 0.576."""
    out = generation_rewards(CASES[:1], GenerationConfig(normalize_positive=False))
    assert out.values[0] == pytest.approx(0.576)


def test_generation_case_fields_are_unit_interval() -> None:
    """A sub-score outside [0, 1] is rejected naming the field."""
    with pytest.raises(ValueError, match=r"GenerationCase.cycle_consistency must be a number in \[0.0, 1.0\]"):
        GenerationCase(qa_fidelity=0.5, cycle_consistency=1.5, diversity=0.0, contradiction=0.0)
