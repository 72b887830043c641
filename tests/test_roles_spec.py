"""Generation-spec parsing, sanitising and quality (algorithm.md §6.1)."""

from __future__ import annotations

import pytest

from asg.backbones.tiny.templates import TEMPLATES
from asg.roles.spec import compose_prompt, parse_spec, spec_quality
from asg.roles.templates import RoleTemplates

TPL = RoleTemplates.from_mapping(TEMPLATES)


def _qa(q: str, e: str) -> str:
    return f"<qa><question>{q}</question><expected>{e}</expected></qa>"


def test_well_formed_spec_parses_with_full_quality() -> None:
    """3 kept of 3 raw, all distinct: 0.5·min(1, 3/2) + 0.3·3/3 + 0.2·1 = 1.0."""
    text = ("<prompt>a red circle to the left of a blue square</prompt>"
            + _qa("What color is the circle?", "red") + _qa("How many squares are there?", "1")
            + _qa("Is the circle left of the square?", "yes"))
    spec = parse_spec(text, TPL)
    assert spec.prompt == "a red circle to the left of a blue square"
    assert [p.expected for p in spec.qa] == ["red", "1", "yes"]
    assert spec.quality == pytest.approx(1.0) and spec.source == "qa_blocks" and not spec.fallback_prompt


def test_all_yes_no_expected_answers_are_penalised() -> None:
    """2 yes/no pairs: 0.5·1 + 0.3·2/2 + 0.2·1 − 0.2 = 0.8."""
    text = "<prompt>a circle</prompt>" + _qa("Is there a circle?", "yes") + _qa("Is there a square?", "no")
    assert parse_spec(text, TPL).quality == pytest.approx(0.8)


def test_duplicate_questions_lower_quality() -> None:
    """3 raw, 2 distinct (unique = 2/3), 2 kept: 0.5·1 + 0.3·2/3 + 0.2·2/3 = 0.8333."""
    text = ("<prompt>two circles</prompt>" + _qa("How many circles?", "2") + _qa("How many circles?", "2")
            + _qa("What color are the circles?", "red"))
    spec = parse_spec(text, TPL)
    assert len(spec.qa) == 2 and spec.diagnostics["dropped_duplicate"] == 1.0
    assert spec.quality == pytest.approx(0.5 + 0.2 + 0.2 * 2 / 3)


def test_pairs_with_bad_expected_answers_are_dropped() -> None:
    """An expected answer of 9 words is dropped: 1 of 2 kept: 0.5·0.5 + 0.3·0.5 + 0.2·1 = 0.6."""
    text = ("<prompt>a circle</prompt>" + _qa("What color is it?", "red")
            + _qa("What is it?", "one two three four five six seven eight nine"))
    spec = parse_spec(text, TPL)
    assert len(spec.qa) == 1 and spec.quality == pytest.approx(0.6)


def test_at_most_max_pairs_are_kept() -> None:
    """Four good pairs, max 3 kept: 0.5·1 + 0.3·3/4 + 0.2·1 = 0.925."""
    text = "<prompt>x y</prompt>" + "".join(_qa(f"How many {s} are there?", "1") for s in ("a", "b", "c", "d"))
    spec = parse_spec(text, TPL, max_pairs=3)
    assert len(spec.qa) == 3 and spec.quality == pytest.approx(0.925)


def test_spec_without_qa_has_zero_quality() -> None:
    """No QA pair at all: quality 0."""
    spec = parse_spec("<prompt>a circle</prompt>", TPL)
    assert spec.qa == () and spec.quality == 0.0 and spec.source == "none"


def test_missing_prompt_falls_back_to_a_caption_variation() -> None:
    """No <prompt>: 'create an image variation of <caption>' (flagged); without a caption, a generic prompt."""
    text = _qa("How many circles are there?", "2")
    spec = parse_spec(text, TPL, caption="Two red circles.")
    assert spec.prompt == "create an image variation of Two red circles." and spec.fallback_prompt
    assert parse_spec(text, TPL).prompt == "a simple scene with a few objects"


def test_malformed_spec_falls_back_to_bare_tags_and_qa_lines() -> None:
    """Without <qa> blocks, bare question/expected tags are paired; then 'Q: / A:' lines."""
    bare = "<prompt>a circle</prompt><question>How many circles?</question><expected>1</expected>"
    assert parse_spec(bare, TPL).source == "qa_tags"
    lines = "<prompt>a circle</prompt>\nQ: What color is the circle?\nA: red\nQ: How many circles?\nA: 1"
    spec = parse_spec(lines, TPL)
    assert spec.source == "qa_lines" and [p.expected for p in spec.qa] == ["red", "1"]


def test_unclosed_tags_do_not_break_the_parser() -> None:
    """A truncated output (no closing tags) still yields its prompt and pair."""
    spec = parse_spec("<prompt>a blue square<qa><question>What color is the square?<expected>blue", TPL)
    assert spec.prompt == "a blue square" and spec.qa[0].expected == "blue"


def test_compose_prompt_strips_instructions_questions_and_length() -> None:
    """Instruction prefixes go, a question becomes the caption, '?' is removed, 96 words at most."""
    assert compose_prompt("Generate an image of a red circle in this image") == "a red circle"
    assert compose_prompt("What is in the picture?", caption="a green triangle") == "a green triangle"
    assert compose_prompt("a circle?") == "a circle"
    assert len(compose_prompt("word " * 200).split()) == 96


def test_spec_quality_formula() -> None:
    """spec_quality(n, n_raw, unique, yes/no) follows §6.1 and clips to [0, 1]."""
    assert spec_quality(1, 3, 1.0, False) == pytest.approx(0.5 * 0.5 + 0.3 / 3 + 0.2)
    assert spec_quality(0, 0, 0.0, False) == 0.0
