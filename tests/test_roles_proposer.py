"""Proposer prompt and robust candidate parsing; role templates (algorithm.md §3.2)."""

from __future__ import annotations

import pytest

from asg.backbones.tiny.templates import PROPOSER_ITEM, TEMPLATES
from asg.errors import ConfigError
from asg.roles.proposer import ProposerConfig, parse_candidates
from asg.roles.templates import RoleTemplates

TPL = RoleTemplates.from_mapping(TEMPLATES)
FALLBACK = "How many objects are in the image?"


def _item(target: str, question: str, a: str, b: str) -> str:
    return PROPOSER_ITEM.format(target=target, question=question, a=a, b=b)


def _parse(text: str, k: int = 3):
    return parse_candidates(text, TPL, k, fallback_question=FALLBACK)


def test_templates_derive_the_tags_from_the_output_formats() -> None:
    """The tags the parsers read come from the backbone's format templates, not from code."""
    assert TPL.answer_tags == ("<answer>", "</answer>")
    assert TPL.item_tags == ("<q>", "</q>") and TPL.options_sep == "|"
    assert TPL.qa_tags == ("<qa>", "</qa>") and TPL.expected_tags == ("<expected>", "</expected>")
    custom = dict(TEMPLATES, answer="Final: [ans]{answer}[/ans]")
    with pytest.raises(ConfigError, match=r"prompt_templates\['answer'\] must put \{answer\} between"):
        RoleTemplates.from_mapping(custom)
    custom = dict(TEMPLATES, answer="Final: <ans>{answer}</ans>")
    assert RoleTemplates.from_mapping(custom).answer_tags == ("<ans>", "</ans>")


def test_missing_template_keys_are_named() -> None:
    """A backbone without the role templates gets an error listing what is missing."""
    broken = {k: v for k, v in TEMPLATES.items() if k not in ("proposer", "spec_qa")}
    with pytest.raises(ConfigError, match=r"missing \['proposer', 'spec_qa'\]"):
        RoleTemplates.from_mapping(broken)


def test_proposer_prompt_uses_k_and_a_valid_difficulty() -> None:
    """The prompt asks for k questions at the hinted difficulty; an unknown difficulty names the choices."""
    assert TPL.proposer_prompt(3, "hard") == "Ask 3 hard questions about the image."
    with pytest.raises(ConfigError, match=r"difficulty must be one of \['easy', 'medium', 'hard'\], got 'brutal'"):
        TPL.proposer_prompt(3, "brutal")


def test_well_formed_blocks_parse_into_complete_candidates() -> None:
    """K well-formed blocks give K complete candidates with target, question and options."""
    text = (_item("red circles", "How many red circles are there?", "2", "3")
            + _item("triangle", "What color is the triangle?", "green", "red")
            + _item("blue square", "Is there a blue square?", "yes", "no"))
    parsed = _parse(text)
    assert parsed.source == "blocks" and len(parsed.candidates) == 3
    first = parsed.candidates[0]
    assert (first.question, first.target, first.options, first.complete) == (
        "How many red circles are there?", "red circles", ("2", "3"), True)
    assert parsed.diagnostics["n_blocks"] == 3.0 and parsed.diagnostics["n_unterminated"] == 0.0


def test_malformed_blocks_are_parsed_and_counted() -> None:
    """Unclosed blocks/fields and missing options still give candidates, flagged incomplete."""
    text = ("<q><target>circles<question>How many circles are there?</question><options>1|2</options>"
            "<q><target>square</target><question>What color is the square?"
            "<q><question>Is there a red circle?</question></q>")
    parsed = _parse(text)
    assert [c.question for c in parsed.candidates] == [
        "How many circles are there?", "What color is the square?", "Is there a red circle?"]
    assert [c.complete for c in parsed.candidates] == [False, False, False]
    assert parsed.candidates[0].target == "circles" and parsed.candidates[0].options == ("1", "2")
    d = parsed.diagnostics
    assert (d["n_unterminated"], d["n_missing_options"], d["n_missing_target"]) == (2.0, 2.0, 1.0)


def test_block_without_question_field_uses_its_question_sentence() -> None:
    """A block whose question tag is missing falls back to its first '...?' sentence."""
    parsed = _parse("<q><target>circle</target> What color is the circle? <options>red|blue</options></q>")
    assert parsed.candidates[0].question == "What color is the circle?"


def test_fallbacks_question_tags_then_question_marks_then_first_line_then_generic() -> None:
    """Without blocks: bare <question> tags, then '?' sentences, then the first line, then the generic question."""
    assert _parse("<question>How many circles are there?</question>").source == "question_tags"
    marks = _parse("Here: How many circles are there? And what color is the square?")
    assert marks.source == "question_marks"
    assert [c.question for c in marks.candidates] == ["How many circles are there?", "what color is the square?"]
    first = _parse("describe the circles\nsecond line")
    assert first.source == "first_line" and first.candidates[0].question == "describe the circles"
    empty = _parse("   ")
    assert empty.fallback and empty.candidates[0].question == FALLBACK


@pytest.mark.parametrize("garbage", ["<q>", "</q></q><q>", "<options>|</options>", "?" * 50, "<q><question></question></q>", "\x00<q>\n"])
def test_parser_never_raises_on_garbage(garbage) -> None:
    """Any text gives at least one candidate and no exception."""
    assert len(_parse(garbage).candidates) >= 1


def test_duplicates_are_removed_and_extras_dropped() -> None:
    """Duplicate questions (case/punctuation-insensitive) are removed; only the first k are kept."""
    text = "".join(_item("c", q, "1", "2") for q in (
        "How many circles?", "how many circles", "What color is the circle?", "Is there a square?", "Where is it?"))
    parsed = _parse(text, k=3)
    assert [c.question for c in parsed.candidates] == ["How many circles?", "What color is the circle?", "Is there a square?"]
    assert parsed.diagnostics["n_duplicates"] == 1.0 and parsed.diagnostics["n_dropped"] == 1.0


def test_proposer_config_validates_fields_and_derives_extra_temperature() -> None:
    """Out-of-range K names the field; GRPO extras sample at min(3.0, 2·T)."""
    with pytest.raises(ValueError, match=r"ProposerConfig.k must be an integer in \[1, 32\], got 0"):
        ProposerConfig(k=0)
    assert ProposerConfig().extra_temperature == pytest.approx(2.6)
    assert ProposerConfig(temperature=2.0).extra_temperature == pytest.approx(3.0)
