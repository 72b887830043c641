"""GenEval-mini: prompts, the GenEval rule checker, and benchmark aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from asg.shapes import (
    BACKGROUND, GENEVAL_TAGS, Clause, Detection, GenPrompt, Obj, Scene, geneval_mini,
    geneval_prompts, relative_position, render, render_prompt, score_geneval,
)


def det(shape: str, color: str = "red", x: float = 0.5, y: float = 0.5,
        s: float = 0.2, area: float = 100.0) -> Detection:
    return Detection(shape, color, x, y, s, s, area)


def prompt_by_text(text: str) -> GenPrompt:
    # 180 covers every distinct prompt of every tag (color_attr has the most: 180).
    return next(p for p in geneval_prompts("val", 0, 180) if p.prompt == text)


# --- prompts -----------------------------------------------------------------

def test_prompts_are_deterministic_grouped_by_tag_and_prefix_stable():
    """n_per_tag prompts per tag in GENEVAL_TAGS order; fewer is a prefix of more."""
    five = geneval_prompts("test", 2, 5)
    assert [p.tag for p in five] == [t for t in GENEVAL_TAGS for _ in range(5)]
    assert five == geneval_prompts("test", 2, 5)
    ten = geneval_prompts("test", 2, 10)
    assert [p for p in ten if p.tag == "counting"][:5] == [p for p in five if p.tag == "counting"]
    assert geneval_prompts("val", 2, 10) != ten


def test_a_full_cycle_covers_every_distinct_prompt():
    """3 single-object prompts requested -> all three shapes once each."""
    singles = [p.prompt for p in geneval_prompts("val", 0, 3) if p.tag == "single_object"]
    assert sorted(singles) == ["a circle", "a square", "a triangle"]


def test_counting_prompt_matches_geneval_metadata_layout():
    """"three triangles" includes 3 and excludes 4 triangles, GenEval-style."""
    p = prompt_by_text("three triangles")
    assert p.to_dict() == {"tag": "counting", "include": [{"class": "triangle", "count": 3}],
                           "exclude": [{"class": "triangle", "count": 4}],
                           "prompt": "three triangles"}
    assert GenPrompt.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_position_prompt_lists_reference_first_like_geneval():
    """"A to the left of B": include[0] is B, include[1] is A with ("left of", 0)."""
    p = prompt_by_text("a circle to the left of a square")
    assert p.include == (Clause("square", 1), Clause("circle", 1, position=("left of", 0)))
    assert p.exclude == ()


def test_colour_prompts_use_correct_articles_and_distinct_attributes():
    """"an orange ..." gets "an"; colour attribution binds two colours to two shapes."""
    assert prompt_by_text("an orange square").include == (Clause("square", 1, "orange"),)
    for p in geneval_prompts("val", 0, 40):
        if p.tag == "color_attr":
            a, b = p.include
            assert a.shape != b.shape and a.color != b.color and a.color and b.color


def test_clause_and_prompt_validation_name_the_problem():
    """Bad counts, relations and forward position references are refused clearly."""
    with pytest.raises(ValueError, match=r"Clause\.count must be an int >= 1, got 0"):
        Clause("circle", 0)
    with pytest.raises(ValueError, match=r"Clause\.position must be None or \(relation, index\)"):
        Clause("circle", 1, position=("near", 0))
    with pytest.raises(ValueError, match=r"include\[0\]\.position index must point to an earlier"):
        GenPrompt("position", "x", (Clause("circle", 1, position=("above", 0)),))
    with pytest.raises(ValueError, match=r"GenPrompt\.tag must be one of"):
        GenPrompt("spatial", "x", (Clause("circle", 1),))
    with pytest.raises(ValueError, match=r"n_per_tag must be an int >= 1, got 0"):
        geneval_prompts("val", 0, 0)


# --- relative position --------------------------------------------------------

def test_relative_position_threshold_arithmetic():
    """Centre offsets are shrunk by 0.1 * (w_a + w_b) before the 0.5 direction test."""
    b = det("square", x=0.55)
    # dx = -0.10; shrink 0.1 * 0.4 = 0.04 -> -0.06; -0.06 / 0.10 = -0.6 < -0.5: left of
    assert relative_position(det("circle", x=0.45), b) == {"left of"}
    # dx = -0.07; shrink -> -0.03; -0.03 / 0.07 = -0.43: no relation
    assert relative_position(det("circle", x=0.48), b) == set()


def test_relative_position_diagonal_gives_two_relations_with_y_down():
    """A up-left of B is both "left of" and "above" (y grows downwards)."""
    # offset (-0.6, -0.6): each shrinks to -0.56; / |offset| 0.8485 = -0.66 on both axes
    a, b = det("circle", x=0.2, y=0.2), det("square", x=0.8, y=0.8)
    assert relative_position(a, b) == {"left of", "above"}
    assert relative_position(b, a) == {"right of", "below"}


# --- rule checker -------------------------------------------------------------

def test_single_and_two_object_rules():
    """Required shapes must be present (any colour); missing ones are reported."""
    single = prompt_by_text("a circle")
    assert score_geneval(single, [det("circle", "blue")]) == (True, "")
    ok, reason = score_geneval(single, [det("square")])
    assert not ok and reason == "expected circle>=1, found 0"
    two = prompt_by_text("a circle and a square")
    assert score_geneval(two, [det("square", x=0.2), det("circle", x=0.8)])[0]
    assert score_geneval(two, [det("circle")]) == (False, "expected square>=1, found 0")


def test_counting_rule_enforces_exact_count_via_exclude():
    """Three triangles: 3 pass, 2 fail the include, 4 fail the exclude."""
    p = prompt_by_text("three triangles")
    tri = [det("triangle", x=0.1 + 0.2 * i) for i in range(4)]
    assert score_geneval(p, tri[:3] + [det("circle")]) == (True, "")
    assert score_geneval(p, tri[:2]) == (False, "expected triangle>=3, found 2")
    assert score_geneval(p, tri) == (False, "expected triangle<4, found 4")


def test_colour_rule_checks_the_most_prominent_object():
    """"a blue square": the largest square must be blue (GenEval's most-confident object)."""
    p = prompt_by_text("a blue square")
    assert score_geneval(p, [det("square", "blue")])[0]
    ok, reason = score_geneval(p, [det("square", "red")])
    assert not ok and reason.startswith("expected blue square>=1, found 0 blue; and 1 red")
    big_red_small_blue = [det("square", "red", area=300.0), det("square", "blue", x=0.1, area=50.0)]
    assert not score_geneval(p, big_red_small_blue)[0]
    big_blue_small_red = [det("square", "blue", area=300.0), det("square", "red", x=0.1, area=50.0)]
    assert score_geneval(p, big_blue_small_red)[0]


def test_position_rule_correct_wrong_relation_and_missing_target():
    """A circle left of a square passes; swapped or too close fails; no square means no target."""
    p = prompt_by_text("a circle to the left of a square")
    assert score_geneval(p, [det("circle", x=0.2), det("square", x=0.8)]) == (True, "")
    ok, reason = score_geneval(p, [det("circle", x=0.8), det("square", x=0.2)])
    assert not ok and reason == "expected circle left of target, found right of target"
    ok, reason = score_geneval(p, [det("circle", x=0.52), det("square", x=0.5)])
    assert not ok and reason == "expected circle left of target, found no relation to target"
    ok, reason = score_geneval(p, [det("circle", x=0.2)])
    assert not ok and reason == "expected square>=1, found 0\nno target for circle to be left of"


def test_color_attribution_rule_requires_binding():
    """Red circle + green square passes; swapped colours or a missing object fail."""
    p = prompt_by_text("a red circle and a green square")
    assert score_geneval(p, [det("circle", "red", x=0.2), det("square", "green", x=0.8)])[0]
    assert not score_geneval(p, [det("circle", "green", x=0.2), det("square", "red", x=0.8)])[0]
    assert not score_geneval(p, [det("circle", "red")])[0]


def test_score_geneval_validates_arguments():
    """Non-prompts and non-detections are type errors naming the argument."""
    with pytest.raises(TypeError, match="prompt must be a GenPrompt"):
        score_geneval("a circle", [])
    with pytest.raises(TypeError, match=r"detections\[0\] must be a Detection"):
        score_geneval(prompt_by_text("a circle"), [("circle", "red")])


# --- benchmark ----------------------------------------------------------------

def test_oracle_images_score_near_perfect_and_blank_images_zero():
    """Images drawn from each prompt's own ground truth score >= 95; blank ones 0."""
    prompts = geneval_prompts("test", 0, 12)
    rng = np.random.default_rng(0)
    for size in (64, 32):
        images = [[render_prompt(p, rng, size) for _ in range(2)] for p in prompts]
        res = geneval_mini(prompts, images)
        assert res["overall"] >= 95.0, res  # measured: 100.0 at both sizes
        assert res["n_images"] == {t: 24 for t in GENEVAL_TAGS}
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    res = geneval_mini(prompts, [[blank]] * len(prompts))
    assert res["overall"] == 0.0 and res["per_tag"] == {t: 0.0 for t in GENEVAL_TAGS}


def test_geneval_mini_aggregates_per_image_and_per_tag():
    """2 of 3 single-object images correct -> 66.7% for the tag and overall (one tag)."""
    circle = render(Scene((Obj("circle", "red", "large", 0.5, 0.5),)))
    square = render(Scene((Obj("square", "blue", "large", 0.5, 0.5),)))
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    prompts = [prompt_by_text("a circle"), prompt_by_text("a square")]
    res = geneval_mini(prompts, [[circle, blank], [square]])
    assert res["per_tag"] == {"single_object": pytest.approx(200 / 3)}
    assert res["overall"] == pytest.approx(200 / 3)
    assert res["n_images"] == {"single_object": 3} and res["n_correct"] == {"single_object": 2}
    assert res["n_prompts"] == {"single_object": 2}


def test_evaluation_counts_the_shapes_each_image_holds():
    """asg.evaluation's scorer records the shapes the detector finds per image: a two-object scene and a
    blank image under "a circle" hold 2 and 0 (1.0 per image), and only the first is correct."""
    from asg.evaluation import _score_geneval

    two = render(Scene((Obj("circle", "red", "large", 0.3, 0.3), Obj("square", "blue", "large", 0.7, 0.7))))
    blank = Image.new("RGB", (64, 64), BACKGROUND)
    res = _score_geneval([prompt_by_text("a circle")], [two, blank], 2)
    assert [s["shapes"] for s in res["samples"]] == [2, 0] and res["shapes_per_image"] == 1.0
    assert [s["correct"] for s in res["samples"]] == [True, False]


def test_overall_is_unweighted_mean_of_tags():
    """Tag A 100% on 1 image and tag B 0% on 3 images average to 50%, not 25%."""
    circle = render(Scene((Obj("circle", "red", "large", 0.5, 0.5),)))
    prompts = [prompt_by_text("a circle"), prompt_by_text("three triangles")]
    res = geneval_mini(prompts, [[circle], [circle, circle, circle]])
    assert res["per_tag"] == {"single_object": 100.0, "counting": 0.0}
    assert res["overall"] == 50.0


def test_geneval_mini_validates_shapes_of_inputs():
    """Mismatched lengths and empty image lists are refused."""
    p = prompt_by_text("a circle")
    with pytest.raises(ValueError, match="same length, got 1 and 0"):
        geneval_mini([p], [])
    with pytest.raises(ValueError, match=r"images\[0\] must be a non-empty list"):
        geneval_mini([p], [[]])
