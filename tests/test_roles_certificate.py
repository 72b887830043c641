"""Objective-question test and structural certificate of proposed questions (algorithm.md §3.3)."""

from __future__ import annotations

import pytest

from asg.roles.certificate import CertificateConfig, certify, check_objective


@pytest.mark.parametrize("question", [
    "How many circles are there?",
    "What color is the triangle?",
    "What shape is the red object?",
    "Is the red circle to the left of the blue square?",
    "Is there a red circle?",
])
def test_shapesworld_questions_are_objective(question) -> None:
    """The question forms the tiny backbone was pretrained on pass the objective test."""
    assert check_objective(question).objective, check_objective(question).reasons


@pytest.mark.parametrize(("question", "reason"), [
    ("<q>How many circles?</q>", "markup"),
    ("How many {target} are there?", "placeholder"),
    ("What is the (count + attribute) here?", "placeholder"),
    ("How many?", "too_short"),
    ("Tell me how many circles there are?", "bad_start"),
    ("How many circles are there", "no_question_mark"),
    ("Is the pizza still hot on the left?", "latent_yes_no"),
    ("Is the circle red or blue?", "forced_choice"),
    ("Why do people like this place?", "no_objective_keyword"),
])
def test_objective_test_names_the_rule_that_failed(question, reason) -> None:
    """Each §3.3 rule, when broken, is reported by name."""
    check = check_objective(question)
    assert not check.objective and reason in check.reasons


def test_complete_grounded_candidate_scores_one_and_is_valid() -> None:
    """Objective 0.40 + options 0.25 + target 0.20 + grounded 0.15 = 1.00, valid."""
    cert = certify("How many red circles are there?", "red circles", ("2", "3"))
    assert cert.score == pytest.approx(1.0) and cert.valid and cert.flags == ()
    assert cert.components == {"objective": 1.0, "options": 1.0, "target": 1.0, "grounded": 1.0}


def test_ungrounded_target_loses_only_the_grounding_weight() -> None:
    """A target not named in the question: 1.00 − 0.15 = 0.85, still valid."""
    cert = certify("How many circles are there?", "blue square", ("1", "2"))
    assert cert.score == pytest.approx(0.85) and cert.valid


def test_generic_target_is_penalised_and_invalid() -> None:
    """Target 'shapes': objective 0.40 + options 0.25 − generic 0.12 = 0.53; flagged, invalid."""
    cert = certify("How many shapes are there?", "shapes", ("2", "3"))
    assert cert.score == pytest.approx(0.53)
    assert cert.flags == ("generic_target",) and not cert.valid


def test_duplicate_or_placeholder_options_fail_the_two_answer_test() -> None:
    """Identical options: 0.40 + 0.20 + 0.15 = 0.75 but invalid (no two-answer test)."""
    cert = certify("How many circles are there?", "circles", ("3", "3"))
    assert cert.score == pytest.approx(0.75) and not cert.valid
    assert certify("How many circles are there?", "circles", ("x", "3")).components["options"] == 0.0


def test_question_that_offers_its_options_is_flagged() -> None:
    """'red or blue' leaks the options: not objective (forced choice), flag −0.20: 0.25+0.20+0.15−0.20 = 0.40."""
    cert = certify("Is the circle red or blue?", "circle", ("red", "blue"))
    assert cert.flags == ("options_leak",)
    assert cert.score == pytest.approx(0.40) and not cert.valid


def test_certificate_threshold_is_configurable_and_validated() -> None:
    """A stricter threshold rejects a 0.85 candidate; out-of-range values name the field."""
    strict = CertificateConfig(threshold=0.9)
    assert not certify("How many circles are there?", "blue square", ("1", "2"), strict).valid
    with pytest.raises(ValueError, match=r"CertificateConfig.threshold must be a number in \[0.0, 1.0\], got 1.5"):
        CertificateConfig(threshold=1.5)
