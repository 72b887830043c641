"""ShapesWorld VQA: templated questions, answer normalisation, accuracy."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from asg.shapes import (
    QA, QTYPES, Obj, Scene, answer_correct, normalize_answer, qa_for, questions,
    sample_qa, scene_for, vqa_accuracy,
)

# Hand-built scene: every object unique by (colour, shape).
RED_CIRCLE = Obj("circle", "red", "large", 0.20, 0.25)
BLUE_SQUARE = Obj("square", "blue", "small", 0.75, 0.70)
GREEN_CIRCLE = Obj("circle", "green", "small", 0.50, 0.75)
SCENE = Scene((RED_CIRCLE, BLUE_SQUARE, GREEN_CIRCLE))


def _by_question(scene: Scene, seed: int = 0) -> dict[str, QA]:
    qs = questions(scene, np.random.default_rng(seed))
    assert len({q.question for q in qs}) == len(qs)  # no duplicate questions
    return {q.question: q for q in qs}


def test_count_answers_match_the_hand_built_scene():
    """Counts of all shapes, each shape (0 included) and present colours are exact."""
    qs = _by_question(SCENE)
    expected = {
        "How many shapes are there?": "3",
        "How many circles are there?": "2",
        "How many squares are there?": "1",
        "How many triangles are there?": "0",
        "How many red shapes are there?": "1",
        "How many blue shapes are there?": "1",
        "How many green shapes are there?": "1",
    }
    for question, answer in expected.items():
        assert qs[question].answer == answer and qs[question].qtype == "count"
    # plus exactly one colour that is absent, answered 0
    absent = [q for q in qs.values() if q.qtype == "count" and q.question not in expected]
    assert len(absent) == 1 and absent[0].answer == "0"
    assert re.fullmatch(r"How many (orange|yellow|purple) shapes are there\?", absent[0].question)


def test_color_questions_only_for_unique_shapes():
    """"What color is the square?" is asked (one square); circles (two) are not asked about."""
    qs = _by_question(SCENE)
    color_qs = {q.question: q.answer for q in qs.values() if q.qtype == "color"}
    assert color_qs == {"What color is the square?": "blue"}


def test_shape_questions_only_for_unique_colours():
    """Each colour present once gets "What shape is the <colour> object?"."""
    qs = _by_question(SCENE)
    shape_qs = {q.question: q.answer for q in qs.values() if q.qtype == "shape"}
    assert shape_qs == {
        "What shape is the red object?": "circle",
        "What shape is the blue object?": "square",
        "What shape is the green object?": "circle",
    }


_POS = re.compile(r"Is the (\w+ \w+) (to the left of|to the right of|above|below) the (\w+ \w+)\?")


def test_position_answers_are_correct_and_skip_ambiguous_axes():
    """Position answers follow the centres (y down); near-equal axes are never asked."""
    coords = {"red circle": (0.20, 0.25), "blue square": (0.75, 0.70), "green circle": (0.50, 0.75)}
    # Offsets: red/blue dx .55 dy .45; red/green dx .30 dy .50; blue/green dx .25 dy .05
    # (<= 0.15, so no above/below question for blue vs green): 5 questions.
    for seed in range(20):
        pos = [q for q in _by_question(SCENE, seed).values() if q.qtype == "position"]
        assert len(pos) == 5
        for q in pos:
            a, rel, b = _POS.fullmatch(q.question).groups()
            (ax, ay), (bx, by) = coords[a], coords[b]
            truth = {"to the left of": ax < bx, "to the right of": ax > bx,
                     "above": ay < by, "below": ay > by}[rel]
            assert q.answer == ("yes" if truth else "no"), q
            if {a, b} == {"blue square", "green circle"}:
                assert rel in ("to the left of", "to the right of")


def test_duplicate_objects_are_not_referred_to():
    """With two red circles, no question says "the red object" or "the red circle"."""
    scene = Scene((Obj("circle", "red", "small", 0.2, 0.2), Obj("circle", "red", "small", 0.8, 0.8),
                   Obj("triangle", "yellow", "large", 0.2, 0.8)))
    qs = _by_question(scene)
    assert qs["How many red shapes are there?"].answer == "2"
    assert qs["What color is the triangle?"].answer == "yellow"
    assert not any("the red" in q for q in qs)
    assert [q for q in qs.values() if q.qtype == "position"] == []  # only one nameable object


def test_existence_asks_one_present_and_one_absent_combination():
    """Exactly one "yes" (a present colour+shape) and one "no" (an absent one)."""
    present = {("red", "circle"), ("blue", "square"), ("green", "circle")}
    for seed in range(20):
        ex = [q for q in _by_question(SCENE, seed).values() if q.qtype == "existence"]
        assert sorted(q.answer for q in ex) == ["no", "yes"]
        for q in ex:
            color, shape = re.fullmatch(r"Is there a (\w+) (\w+)\?", q.question).groups()
            assert ((color, shape) in present) == (q.answer == "yes")


def test_yes_no_answers_are_balanced_over_many_scenes():
    """Position answers are ~50% yes; existence answers are exactly 50% yes."""
    pos, ex = Counter(), Counter()
    for i in range(300):
        for q in qa_for("val", 0, i):
            if q.qtype == "position":
                pos[q.answer] += 1
            elif q.qtype == "existence":
                ex[q.answer] += 1
    assert ex["yes"] == ex["no"] == 300
    assert 0.4 <= pos["yes"] / (pos["yes"] + pos["no"]) <= 0.6
    assert pos["yes"] + pos["no"] > 300  # position questions are common, not a corner case


def test_qa_for_is_deterministic():
    """qa_for returns the same questions for the same key, different ones otherwise."""
    assert qa_for("test", 1, 7) == qa_for("test", 1, 7)
    assert qa_for("test", 1, 7) != qa_for("test", 1, 8)


def test_sample_qa_is_roughly_balanced_over_qtypes():
    """Without a qtype, each of the five types is drawn 10-30% of the time."""
    rng = np.random.default_rng(0)
    drawn = Counter(sample_qa(scene_for("pretrain", 0, i), rng).qtype for i in range(1000))
    assert set(drawn) == set(QTYPES)
    for t in QTYPES:
        assert 0.10 <= drawn[t] / 1000 <= 0.30, drawn


def test_sample_qa_honours_and_validates_qtype():
    """A requested qtype is returned, a bad one or an unavailable one is refused."""
    rng = np.random.default_rng(0)
    assert sample_qa(SCENE, rng, "shape").qtype == "shape"
    with pytest.raises(ValueError, match=r"qtype must be one of \('count', 'color', 'shape', 'position', 'existence'\), got 'size'"):
        sample_qa(SCENE, rng, "size")
    two_red_circles = Scene((Obj("circle", "red", "small", 0.2, 0.2), Obj("circle", "red", "small", 0.8, 0.8)))
    with pytest.raises(ValueError, match=r"scene has no 'position' question"):
        sample_qa(two_red_circles, rng, "position")


def test_qa_validates_qtype():
    """QA refuses unknown question types, naming the field and the choices."""
    with pytest.raises(ValueError, match=r"QA\.qtype must be one of"):
        QA("How big?", "large", "size")


@pytest.mark.parametrize("text, qtype, expected", [
    ("Three", "count", "3"),
    ("<answer>3</answer>", "count", "3"),
    ("There are 2 circles.", "count", "2"),
    ("twelve", "count", "12"),
    ("zero", "count", "0"),
    ("Yes, it is.", "existence", "yes"),
    ("NO", "position", "no"),
    ("<answer> no </answer>", "position", "no"),
    ("Red.", "color", "red"),
    ("It is a light blue", "color", "blue"),
    ("circles", "shape", "circle"),
    ("A Triangle!", "shape", "triangle"),
    ("<think>red</think><answer>blue</answer>", "color", "blue"),
    ("maybe", "existence", "maybe"),
])
def test_normalize_answer(text, qtype, expected):
    """Answers are reduced to the first valid token of their type."""
    assert normalize_answer(text, qtype) == expected


def test_normalize_answer_rejects_unknown_qtype():
    """An unknown qtype is an error listing the valid ones."""
    with pytest.raises(ValueError, match=r"qtype must be one of .*got 'colour'"):
        normalize_answer("red", "colour")


def test_answer_correct_compares_normalised_prediction():
    """"two" matches the canonical "2"; "3" does not."""
    qa = QA("How many circles are there?", "2", "count")
    assert answer_correct("two", qa)
    assert not answer_correct("3", qa)


def test_vqa_accuracy_per_qtype_and_overall():
    """3 of 4 right -> 75% overall; count 1/2 -> 50%, colour and existence 100%."""
    records = [
        (QA("How many shapes are there?", "2", "count"), "2"),
        (QA("How many circles are there?", "1", "count"), "two"),
        (QA("What color is the square?", "blue", "color"), "Blue."),
        (QA("Is there a red circle?", "no", "existence"), "no"),
    ]
    acc = vqa_accuracy(records)
    assert acc["overall"] == 75.0
    assert acc["per_qtype"] == {"count": 50.0, "color": 100.0, "existence": 100.0}
    assert acc["n"] == 4 and acc["n_per_qtype"] == {"count": 2, "color": 1, "existence": 1}


def test_vqa_accuracy_rejects_empty_and_malformed_records():
    """No records, or records that are not pairs, are errors."""
    with pytest.raises(ValueError, match="records is empty"):
        vqa_accuracy([])
    with pytest.raises(ValueError, match=r"records\[0\] must be a \(QA, prediction\) pair"):
        vqa_accuracy([("only one",)])


def test_answer_question_agrees_with_every_generated_question() -> None:
    """Every templated question the generator asks about a scene is answered by ``answer_question``
    with the generator's own answer and type (300 scenes of the val split)."""
    from asg.shapes import answer_question, qa_for, scene_for

    n = 0
    for i in range(300):
        scene = scene_for("val", 0, i)
        for qa in qa_for("val", 0, i):
            assert answer_question(qa.question, scene) == qa, qa
            n += 1
    assert n > 2000


def test_answer_question_by_hand() -> None:
    """Premise failures and non-template questions give None; case, spacing and '?' do not matter."""
    from asg.shapes import QA, Obj, Scene, answer_question

    scene = Scene([Obj("circle", "red", "small", 0.2, 0.5), Obj("circle", "blue", "large", 0.8, 0.55),
                   Obj("square", "red", "small", 0.5, 0.1)])
    assert answer_question("how many  circles are there", scene) == QA("how many  circles are there", "2", "count")
    assert answer_question("How many green shapes are there?", scene).answer == "0"
    assert answer_question("What color is the square?", scene).answer == "red"
    assert answer_question("What color is the circle?", scene) is None  # two circles
    assert answer_question("What color is the triangle?", scene) is None  # none
    assert answer_question("What shape is the blue object?", scene).answer == "circle"
    assert answer_question("What shape is the red object?", scene) is None  # two red objects
    assert answer_question("Is there a blue square?", scene).answer == "no"
    assert answer_question("Is the red circle to the left of the blue circle?", scene).answer == "yes"
    assert answer_question("Is the blue circle above the red square?", scene).answer == "no"  # y 0.55 vs 0.1
    assert answer_question("Is the red circle above the blue circle?", scene) is None  # y differs by 0.05
    assert answer_question("Is the red circle left of the red circle?", scene) is None  # not a template
    assert answer_question("Is the red circle above the red circle?", scene) is None  # the same object
    assert answer_question("Is the green circle above the red square?", scene) is None  # no green circle
    assert answer_question("Describe the image.", scene) is None


def test_answer_words_are_what_right_answers_normalise_to():
    from asg.shapes import answer_words, normalize_answer

    assert answer_words("count") == tuple(str(i) for i in range(13))
    assert answer_words("shape") == ("circle", "square", "triangle")
    assert answer_words("existence") == answer_words("position") == ("no", "yes")
    assert set(answer_words("color")) == {"red", "blue", "green", "orange", "purple", "yellow"}
    assert all(normalize_answer(f"<answer>{w}</answer>", t) == w for t in ("count", "shape", "color") for w in answer_words(t))
    with pytest.raises(ValueError, match="qtype"):
        answer_words("size")


def test_one_phrase_by_hand() -> None:
    """"to the right of" and "below" become "to the left of" and "above" with the objects swapped; the two
    canonical phrases, other questions, other text and capitals stay as they are."""
    from asg.shapes import one_phrase

    assert one_phrase("Is the red circle to the right of the blue square?") == \
        "Is the blue square to the left of the red circle?"
    assert one_phrase("is the green triangle below the red circle") == "is the red circle above the green triangle"
    for same in ("Is the red circle to the left of the blue square?", "Is the red circle above the blue square?",
                 "Is there a red circle?", "What colour is the square?", "a red circle to the right of a blue square",
                 "Is the circle to the right of the square?"):  # no colours: not a ShapesWorld position question
        assert one_phrase(same) == same
    prompt = ("Look closely. Is the red circle below the blue square? Also: Is the green circle to the right of "
              "the red circle? Answer.")
    assert one_phrase(prompt) == ("Look closely. Is the blue square above the red circle? Also: Is the red circle "
                                  "to the left of the green circle? Answer.")
    assert one_phrase(one_phrase(prompt)) == one_phrase(prompt)


def test_one_phrase_keeps_every_answer_on_generated_scenes() -> None:
    """Over many scenes, every rewritten position question has the answer of the question as asked, and only
    the two canonical relations are left."""
    from asg.shapes import answer_question, one_phrase

    seen = Counter()
    for i in range(300):
        scene = scene_for("val", 5, i)
        for qa in qa_for("val", 5, i):
            new = one_phrase(qa.question)
            if qa.qtype != "position":
                assert new == qa.question
                continue
            seen[re.search(r"(to the left of|to the right of|above|below)", qa.question)[1]] += 1
            assert "right of" not in new and " below " not in new
            assert answer_question(new, scene).answer == qa.answer
    assert set(seen) == {"to the left of", "to the right of", "above", "below"}
