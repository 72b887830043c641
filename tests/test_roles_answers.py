"""Answer extraction and typed normalisation (algorithm.md §3.5)."""

from __future__ import annotations

import pytest

from asg.roles.answers import (
    binary_label,
    count_label,
    extract_answer,
    normalize,
    parse_answer,
    question_type,
    soft_match,
    typed_label,
)


@pytest.mark.parametrize(("question", "qtype"), [
    ("How many circles are there?", "count"),
    ("What is the number of red shapes?", "count"),
    ("Count the squares in the image.", "count"),
    ("Is there a red circle?", "binary"),
    ("Is the red circle to the left of the blue square?", "binary"),
    ("Is the circle red or blue?", "other"),  # auxiliary start but a choice -> not binary
    ("Does it look like cat vs dog?", "other"),
    ("What color is the triangle?", "other"),
    ("", "other"),
])
def test_question_type_follows_the_typed_vote_rules(question, qtype) -> None:
    """count by 'how many/number of/count'; binary by an auxiliary start without 'or/vs'; else other."""
    assert question_type(question) == qtype


@pytest.mark.parametrize(("text", "expected"), [
    ("The Red Circle.", "red circle"),
    ('  "Blue",  square!  ', "blue square"),
    ("a t-shirt, an apple", "t-shirt apple"),
    ("3.5 cm", "3.5 cm"),
    ("one two three four five six seven eight nine ten", "one two three four five six seven eight"),
    ("", ""),
])
def test_normalize_lowercases_strips_punctuation_articles_and_keeps_8_words(text, expected) -> None:
    """Lowercase, commas to spaces, loose punctuation and articles removed, first 8 words kept."""
    assert normalize(text) == expected


@pytest.mark.parametrize(("text", "label"), [
    ("3", "3"), ("03", "3"), ("Three.", "3"), ("there are 4 circles", "4"), ("twelve", "12"),
    ("zero", "0"), ("3.0", "3"), ("several", "ood"), ("", "ood"), ("thirteen", "ood"),
])
def test_count_label_maps_number_words_to_digits(text, label) -> None:
    """A count answer becomes the digits of its first integer or number word (zero..twelve), else ood."""
    assert count_label(text) == label


@pytest.mark.parametrize(("text", "label"), [
    ("Yes.", "yes"), ("yeah it is", "yes"), ("True", "yes"), ("visible", "yes"),
    ("No", "no"), ("not visible", "no"), ("absent", "no"), ("None", "no"), ("maybe", "ood"), ("", "ood"),
])
def test_binary_label_reads_yes_no_variants_from_the_first_word(text, label) -> None:
    """A binary answer is yes/no from the first word's variants, else ood."""
    assert binary_label(text) == label


def test_typed_label_dispatches_on_type_and_rejects_unknown_types() -> None:
    """typed_label applies the count/binary/other rule; an unknown type names the valid ones."""
    assert typed_label("Four", "count") == "4"
    assert typed_label("Yes!", "binary") == "yes"
    assert typed_label("The Red one", "other") == "red one"
    with pytest.raises(ValueError, match=r"qtype must be one of \['count', 'binary', 'other'\], got 'color'"):
        typed_label("red", "color")


def test_extract_answer_prefers_the_complete_tag() -> None:
    """The text inside the first complete <answer> pair is the answer; words before it are counted."""
    text = "I see two of them. <answer> 2 </answer> done"
    ext = extract_answer(text)
    assert (ext.text, ext.source) == ("2", "tag")
    assert text[ext.span[0]:ext.span[1]] == "2"
    assert ext.words_before == 5


def test_extract_answer_tag_match_is_case_insensitive() -> None:
    """<ANSWER>..</Answer> is still the tag."""
    assert extract_answer("<ANSWER>Red</Answer>").text == "Red"


def test_extract_answer_falls_back_when_the_closing_tag_is_missing() -> None:
    """An unclosed tag gives the first non-empty line after it, up to the next tag."""
    assert extract_answer("<answer>red circle\nmore text").text == "red circle"
    assert extract_answer("<answer>\n  blue <q>").text == "blue"
    ext = extract_answer("<answer>")
    assert (ext.text, ext.source) == ("", "open_tag")


def test_extract_answer_falls_back_when_the_opening_tag_is_missing() -> None:
    """A lone closing tag gives the text before it on its line."""
    ext = extract_answer("thinking\nit is 4</answer>")
    assert (ext.text, ext.source) == ("it is 4", "close_tag")


def test_extract_answer_uses_the_last_non_empty_line_without_tags() -> None:
    """No tag: the last non-empty line, other tags removed; nothing at all gives source 'empty'."""
    ext = extract_answer("Let me look.\n<b>three</b>\n\n")
    assert (ext.text, ext.source) == ("three", "last_line")
    assert extract_answer("  \n ").source == "empty"


def test_extract_answer_reads_custom_tags() -> None:
    """The tags come from the backbone's answer format."""
    assert extract_answer("[[A]]x[[/A]] <answer>y</answer>", tags=("[[A]]", "[[/A]]")).text == "x"


def test_parse_answer_types_the_label_and_flags_noncanonical_and_low_info() -> None:
    """parse_answer types by the question; missing tags, wrong types and >5 words are non-canonical."""
    good = parse_answer("<answer>Three</answer>", "How many circles are there?")
    assert (good.label, good.qtype, good.non_canonical, good.low_info) == ("3", "count", False, False)
    untagged = parse_answer("3", "How many circles are there?")
    assert untagged.label == "3" and untagged.non_canonical
    vague = parse_answer("<answer>several</answer>", "How many circles are there?")
    assert vague.label == "ood" and vague.non_canonical and vague.low_info
    long = parse_answer("<answer>a big red circle on the far left side</answer>", "What is on the left?")
    assert long.non_canonical and not long.low_info
    yes_to_open = parse_answer("<answer>yes</answer>", "What color is the circle?")
    assert yes_to_open.low_info  # yes/no carries no information for a non-binary question
    yes_to_binary = parse_answer("<answer>yes</answer>", "Is there a red circle?")
    assert not yes_to_binary.low_info and not yes_to_binary.non_canonical
    unknown = parse_answer("<answer>unclear</answer>", "What color is the circle?")
    assert unknown.low_info


@pytest.mark.parametrize(("pred", "expected", "qtype", "score"), [
    ("three", "3", "count", 1.0),
    ("4", "3", "count", 0.0),  # counts are all-or-nothing
    ("yes", "Yes.", "binary", 1.0),
    ("no", "yes", "binary", 0.0),
    ("red", "red", "other", 1.0),
    ("dark red", "red", "other", 0.8),  # one contains the other
    ("red circle", "red square", "other", 1 / 3),  # Jaccard {red} / {red, circle, square}
    ("blue", "red", "other", 0.0),
    ("blue", "", "other", 0.5),  # empty expected answer
])
def test_soft_match_scores_agreement_by_type(pred, expected, qtype, score) -> None:
    """Equal typed labels give 1; count/binary otherwise 0; other: 0.8 containment, else word Jaccard."""
    assert soft_match(pred, expected, qtype) == pytest.approx(score)
