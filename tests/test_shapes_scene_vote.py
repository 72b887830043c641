"""``asg.shapes.scene_vote``: the scene table the Solver's answers to related questions agree on, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asg.shapes import COLORS, SHAPES, Obj, Scene, answer_question
from asg.shapes.scene_vote import CELLS, decode, family, implied, independent, table_of, tables


def _index(question: str) -> int:
    return next(k for k, (_, q, _) in enumerate(family()) if q == question)


def test_family_covers_every_count_existence_colour_and_shape_question() -> None:
    fam = family()
    assert len(fam) == 1 + len(SHAPES) + len(COLORS) + len(CELLS) + len(SHAPES) + len(COLORS) == 37
    assert len({q for _, q, _ in fam}) == 37
    assert fam[_index("How many circles are there?")] == ("count_shape", "How many circles are there?",
                                                           ("0", "1", "2", "3", "4", "5", "6"))
    assert fam[_index("Is there a purple triangle?")][2] == ("yes", "no")
    # every family question is a ShapesWorld template question, answerable from a scene
    scene = Scene((Obj("circle", "red", "small", 0.2, 0.2),))
    assert all(answer_question(q, scene) is not None or kind in ("color", "shape") for kind, q, _ in fam)


def test_tables_enumerate_every_multiset_of_cells() -> None:
    t = tables(2)
    assert t.shape == (18 + 18 * 19 // 2, 18)  # one object: 18 cells; two: 171 multisets
    assert set(t.sum(1).tolist()) == {1, 2} and t.min() == 0
    assert len({row.tobytes() for row in t}) == len(t)
    assert len(tables()) == sum(math.comb(18 + n - 1, n) for n in range(1, 7)) == 134_595
    with pytest.raises(ValueError, match="max_objects must be in 1..6, got 7"):
        tables(7)


def test_implied_answers_of_a_table_by_hand() -> None:
    # two red objects (a circle and a square) and a blue circle
    t = table_of({("red", "circle"): 1, ("red", "square"): 1, ("blue", "circle"): 1})
    a = implied(t[None])[0]
    fam = family()
    got = {q: (None if a[k] < 0 else fam[k][2][a[k]]) for k, (_, q, _) in enumerate(fam)}
    assert got["How many shapes are there?"] == "3"
    assert (got["How many circles are there?"], got["How many squares are there?"], got["How many triangles are there?"]) == ("2", "1", "0")
    assert (got["How many red shapes are there?"], got["How many blue shapes are there?"], got["How many green shapes are there?"]) == ("2", "1", "0")
    assert got["Is there a red circle?"] == "yes" and got["Is there a red triangle?"] == "no"
    assert got["What color is the square?"] == "red"
    assert got["What color is the circle?"] is None  # two circles: no answer
    assert got["What shape is the blue object?"] == "circle"
    assert got["What shape is the red object?"] is None  # two red objects
    # the implied answers are the ground truth of the scene the table describes
    scene = Scene((Obj("circle", "red", "small", 0.2, 0.2), Obj("square", "red", "small", 0.5, 0.5),
                   Obj("circle", "blue", "small", 0.8, 0.8)))
    for q, ans in got.items():
        qa = answer_question(q, scene)
        assert (None if qa is None else qa.answer) == ans, q


def _confident_in(counts: dict[tuple[str, str], int], margin: float = 10.0) -> list[np.ndarray]:
    """Log-probabilities that put every question's weight on what ``counts`` implies (0 vs -margin);
    premise-failing questions get a flat distribution."""
    a = implied(table_of(counts)[None])[0]
    out = []
    for k, (_, _, cands) in enumerate(family()):
        lp = np.full(len(cands), -margin)
        if a[k] < 0:
            lp[:] = -1.0
        else:
            lp[a[k]] = 0.0
        out.append(lp)
    return out


def test_decode_keeps_answers_that_already_agree() -> None:
    truth = {("green", "triangle"): 2, ("orange", "square"): 1}
    lps = _confident_in(truth)
    table, answers, score = decode(lps)
    assert np.array_equal(table, table_of(truth)) and score == 0.0
    assert answers[_index("How many triangles are there?")] == "2"
    # the flat colour question of the two triangles stays unanswered; independent picks its first candidate
    assert answers[_index("What color is the triangle?")] is None
    assert [a for a, b in zip(answers, independent(lps)) if a != b] == [None] * sum(a is None for a in answers)


def test_decode_overrules_a_weak_answer_that_contradicts_the_others() -> None:
    """One red square, and every question sure of it except "how many circles", which leans to "1"
    (log p -0.5) over "0" (-1.0). A circle would contradict "how many shapes: 1" (-10) and more, so
    the decoded table keeps one object and answers "0", at a cost of -1.0 - (-0.5) = -0.5."""
    lps = _confident_in({("red", "square"): 1})
    k = _index("How many circles are there?")
    lps[k] = np.array([-1.0, -0.5, -10, -10, -10, -10, -10])
    assert independent(lps)[k] == "1"
    table, answers, score = decode(lps)
    assert np.array_equal(table, table_of({("red", "square"): 1}))
    assert answers[k] == "0" and score == pytest.approx(-0.5)
    # with only the count questions deciding, the circle count alone still loses to "how many shapes"
    assert decode(lps, kinds=("count_all", "count_shape", "count_color"))[1][k] == "0"


def test_decode_rejects_bad_input() -> None:
    lps = _confident_in({("red", "square"): 1})
    with pytest.raises(ValueError, match="all 37 family questions, got 36"):
        decode(lps[:-1])
    with pytest.raises(ValueError, match=r"unknown question kinds \['position'\]"):
        decode(lps, kinds=("count_all", "position"))
    bad = list(lps)
    bad[0] = np.zeros(3)
    with pytest.raises(ValueError, match=r"'How many shapes are there\?': expected 7 log-probabilities"):
        decode(bad)


def test_premise_cost_by_hand() -> None:
    from asg.shapes.scene_vote import premise_cost

    assert premise_cost(np.log([0.9, 0.1])) == pytest.approx(math.log(0.1 / 0.9))
    assert premise_cost(np.log([0.6, 0.3, 0.1]) + 5.0) == pytest.approx(math.log(0.4 / 0.6))  # renormalised
    assert premise_cost(np.log([0.5, 0.5])) == 0.0 and premise_cost(np.log([0.4, 0.35, 0.25])) == 0.0


def test_a_sure_colour_answer_keeps_its_object_unique() -> None:
    """One red circle. The counts of shapes, circles and red shapes all lean to "2" (-0.3 against -0.4
    for "1"), but "what color is the circle" is sure of "red" (p = 0.99). Two red circles would leave
    that question without an answer, at log(0.01/0.99) = -4.6, so one circle wins at 3 x -0.1 = -0.3.
    Without the colour question, two red circles explain the counts best (score 0)."""
    lps = _confident_in({("red", "circle"): 1})
    k_circles, k_all = _index("How many circles are there?"), _index("How many shapes are there?")
    k_red = _index("How many red shapes are there?")
    lps[k_circles] = np.array([-10, -0.4, -0.3, -10, -10, -10, -10])
    lps[k_all] = np.array([-10, -0.4, -0.3, -10, -10, -10, -10])
    lps[k_red] = np.array([-10, -0.4, -0.3, -10, -10, -10, -10])
    k_color = _index("What color is the circle?")
    lps[k_color] = np.log(np.array([0.99] + [0.002] * 5))
    table, answers, score = decode(lps)
    assert np.array_equal(table, table_of({("red", "circle"): 1}))
    assert answers[k_circles] == "1" and score == pytest.approx(-0.3)
    table2, answers2, score2 = decode(lps, kinds=("count_all", "count_shape", "count_color", "existence"))
    assert np.array_equal(table2, table_of({("red", "circle"): 2})) and answers2[k_circles] == "2" and score2 == 0.0
    assert answers2[k_color] is None


def test_pick_labels_spreads_over_types_and_balances_existence() -> None:
    import random

    from asg.roles.scene_vote import pick_labels

    truth = {("red", "circle"): 1, ("blue", "square"): 2}
    lps = _confident_in(truth)
    _, answers, _ = decode(lps)
    indep = independent(lps)
    labels = pick_labels(answers, indep, 8, random.Random(0))
    assert len(labels) == 8 and len({lab.question for lab in labels}) == 8
    groups = {"count_all": "count", "count_shape": "count", "count_color": "count"}
    kinds = [groups.get(lab.kind, lab.kind) for lab in labels]
    # colour has one labelled question (the only unique shape is the circle), shape one (the only
    # unique colour is red): the first round takes each type once, in turn from a random start, and
    # the rest alternate between counts and existence
    order = ["count", "color", "shape", "existence"]
    assert kinds[:4] == [order[(order.index(kinds[0]) + i) % 4] for i in range(4)]
    assert kinds[4:] in (["count", "existence"] * 2, ["existence", "count"] * 2)
    exist = [lab.label for lab in labels if lab.kind == "existence"]
    assert exist in (["yes", "no", "yes"], ["no", "yes", "no"])  # alternating
    for lab in labels:  # every label is what the decoded table implies, here the truth
        assert lab.label == answers[_index(lab.question)] and lab.independent == indep[_index(lab.question)]
    # everything there is, balanced like evaluation: how many shapes, each shape, the two colours
    # present and one absent (7 counts); the one unique shape and colour; existence alternating over
    # the 2 present pairs and as many absent ones (or one more when it starts with "no")
    for seed in range(6):
        many = pick_labels(answers, indep, 100, random.Random(seed))
        kinds = [lab.kind for lab in many]
        assert kinds.count("color") == 1 and kinds.count("shape") == 1
        assert kinds.count("count_all") == 1 and kinds.count("count_shape") == 3
        colours = [lab for lab in many if lab.kind == "count_color"]
        assert len(colours) == 3 and sorted(lab.label for lab in colours) == ["0", "1", "2"]
        exist = [lab.label for lab in many if lab.kind == "existence"]
        assert exist in (["yes", "no", "yes", "no"], ["no", "yes", "no", "yes", "no"])
    assert pick_labels(answers, indep, 0, random.Random(0)) == []


def test_pick_labels_unbalanced_takes_everything_there_is() -> None:
    """``balanced=False`` (the first draw): every colour count, and existence alternating only while
    both sides last, then the remaining "no"s: with k large, every question the table answers."""
    import random

    from asg.roles.scene_vote import pick_labels

    lps = _confident_in({("red", "circle"): 1, ("blue", "square"): 2})
    _, answers, _ = decode(lps)
    many = pick_labels(answers, independent(lps), 100, random.Random(0), balanced=False)
    assert len(many) == sum(a is not None for a in answers) == 10 + 18 + 1 + 1
    exist = [lab.label for lab in many if lab.kind == "existence"]
    assert exist.count("yes") == 2 and exist.count("no") == 16 and set(exist[-12:]) == {"no"}


# -- position: the orders along each axis ------------------------------------------------------------

def test_unique_objects_are_the_cells_holding_exactly_one() -> None:
    from asg.shapes.scene_vote import unique_objects

    table = table_of({("green", "triangle"): 1, ("blue", "square"): 2, ("red", "circle"): 1})
    assert unique_objects(table) == [("red", "circle"), ("green", "triangle")]  # CELLS order: red before green
    assert unique_objects(table_of({("red", "circle"): 3})) == []
    with pytest.raises(ValueError, match="18 cells"):
        unique_objects(np.zeros(5))


def test_position_family_asks_every_phrase_of_every_ordered_pair() -> None:
    from asg.shapes.scene_vote import position_family

    fam = position_family([("red", "circle"), ("blue", "square")])
    assert [(i, j, axis, smaller) for i, j, axis, smaller, _ in fam] == [
        (0, 1, "x", True), (0, 1, "x", False), (0, 1, "y", True), (0, 1, "y", False),
        (1, 0, "x", True), (1, 0, "x", False), (1, 0, "y", True), (1, 0, "y", False)]
    assert fam[0][4] == "Is the red circle to the left of the blue square?"
    assert fam[7][4] == "Is the blue square below the red circle?"
    # ground truth agrees with the family's own rule: "yes" exactly when (i before j) == smaller
    scene = Scene((Obj("circle", "red", "small", 0.2, 0.8), Obj("square", "blue", "small", 0.7, 0.3)))
    for i, j, axis, smaller, question in fam:
        before = getattr(scene.objects[i], axis) < getattr(scene.objects[j], axis)
        assert answer_question(question, scene).answer == ("yes" if before == smaller else "no")
    assert len(position_family([("red", "circle"), ("blue", "square"), ("green", "triangle")])) == 6 * 4
    with pytest.raises(ValueError, match="distinct"):
        position_family([("red", "circle"), ("red", "circle")])


def _position_logprobs(objects, coords, p_yes_if_yes, p_yes_if_no):
    """Log-probabilities of ("yes", "no") of a Solver that says "yes" with one probability where the truth
    (from ``coords``: {object: (x, y)}) is "yes" and another where it is "no"."""
    from asg.shapes.scene_vote import position_family

    out = []
    for i, j, axis, smaller, _ in position_family(objects):
        k = 0 if axis == "x" else 1
        truth = (coords[objects[i]][k] < coords[objects[j]][k]) == smaller
        p = p_yes_if_yes if truth else p_yes_if_no
        out.append(np.log([p, 1 - p]))
    return out


def test_decode_positions_cancels_a_yes_bias_and_recovers_both_orders() -> None:
    from asg.shapes.scene_vote import decode_positions, position_family

    objects = [("red", "circle"), ("blue", "square"), ("green", "triangle")]
    coords = {objects[0]: (0.5, 0.2), objects[1]: (0.1, 0.9), objects[2]: (0.8, 0.5)}
    # a Solver that says "yes" to everything (own answers 50 % right) but a little more surely when it is
    # right: per pair and axis, the true order scores 2 log .85 + 2 log .4 = -2.16 and the reverse
    # 2 log .15 + 2 log .6 = -4.81
    lps = _position_logprobs(objects, coords, 0.85, 0.6)
    assert all(lp[0] > lp[1] for lp in lps)
    orders, answers = decode_positions(objects, lps)
    assert orders == {"x": (objects[1], objects[0], objects[2]), "y": (objects[0], objects[2], objects[1])}
    fam = position_family(objects)
    for (i, j, axis, smaller, _), a in zip(fam, answers):
        k = 0 if axis == "x" else 1
        assert a == ("yes" if (coords[objects[i]][k] < coords[objects[j]][k]) == smaller else "no")
    assert answers.count("yes") == answers.count("no") == len(fam) // 2


def test_decode_positions_orders_are_transitive_by_hand() -> None:
    """Three objects on x, each pair asked once with "left of" (the other phrasings uninformative,
    log 1/2 each). The Solver holds A < B (p 0.9), B < C (0.8) and C < A (0.6): a cycle. Scores, up to
    the shared log 1/2 terms: order ABC = log .9 + log .8 + log .4 = -1.24; CAB = log .9 + log .2 +
    log .6 = -2.22; ACB = -2.63; the rest lower. ABC wins, and "is C left
    of A" is answered "no", against the Solver's own 0.6. (BCA = log .1 + log .8 + log .6 = -3.04.)"""
    from asg.shapes.scene_vote import decode_positions, position_family

    a, b, c = ("red", "circle"), ("blue", "square"), ("green", "triangle")
    fam = position_family([a, b, c])
    held = {(0, 1): 0.9, (1, 2): 0.8, (2, 0): 0.6}
    lps = [np.log([held[(i, j)], 1 - held[(i, j)]]) if (i, j) in held and axis == "x" and smaller
           else np.log([0.5, 0.5]) for i, j, axis, smaller, _ in fam]
    orders, answers = decode_positions([a, b, c], lps)
    assert orders["x"] == (a, b, c)
    q = next(k for k, (i, j, axis, smaller, _) in enumerate(fam) if (i, j, axis, smaller) == (2, 0, "x", True))
    assert answers[q] == "no"
    with pytest.raises(ValueError, match="need log-probabilities for all 24"):
        decode_positions([a, b, c], lps[:-1])
    with pytest.raises(ValueError, match="yes"):
        decode_positions([a, b, c], [np.zeros(3)] * len(fam))
    assert decode_positions([a], []) == ({"x": (a,), "y": (a,)}, [])


def test_position_labels_alternate_and_follow_the_voted_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    import asg.roles.scene_vote as rsv

    objects = [("red", "circle"), ("blue", "square"), ("green", "triangle")]
    coords = {objects[0]: (0.5, 0.2), objects[1]: (0.1, 0.9), objects[2]: (0.8, 0.5)}
    scene = Scene(tuple(Obj(s, c, "small", *coords[(c, s)]) for c, s in objects))  # centres >= 0.3 apart
    asked: list[str] = []

    def fake(backbone, items, exact=False):  # says "yes" to everything, a little more surely when right
        asked.extend(q for _, q, _ in items)
        return [np.log([0.85, 0.15] if answer_question(q, scene).answer == "yes" else [0.6, 0.4]) for _, q, _ in items]

    monkeypatch.setattr(rsv, "question_logprobs", fake)
    table = table_of({**{o: 1 for o in objects}, ("red", "square"): 2})
    labels = rsv.position_labels(None, "image", table, 10, random.Random(0))
    assert len(asked) == 24 and len(labels) == 10 and len({lab.question for lab in labels}) == 10
    sides = [lab.label for lab in labels]
    assert sides in (["yes", "no"] * 5, ["no", "yes"] * 5)
    for lab in labels:
        assert lab.kind == "position" and lab.independent == "yes"  # the Solver's own answer: always "yes"
        assert lab.label == answer_question(lab.question, scene).answer  # the voted orders are the true ones
    everything = rsv.position_labels(None, "image", table, 100, random.Random(1))
    assert len(everything) == 24  # 12 "yes" and 12 "no": both sides run out together
    assert rsv.position_labels(None, "image", table_of({objects[0]: 1, objects[1]: 2}), 10, random.Random(0)) == []
    assert rsv.position_labels(None, "image", table, 0, random.Random(0)) == []


def test_pick_labels_draws_only_the_types_asked_for() -> None:
    import random

    from asg.roles.scene_vote import pick_labels

    lps = _confident_in({("red", "circle"): 1, ("blue", "square"): 2})
    _, answers, _ = decode(lps)
    indep = independent(lps)
    counts = pick_labels(answers, indep, 100, random.Random(0), types=("count",))
    assert {lab.kind for lab in counts} == {"count_all", "count_shape", "count_color"} and len(counts) == 1 + 3 + 3
    two = pick_labels(answers, indep, 4, random.Random(0), types=("existence", "color"))
    assert [lab.kind for lab in two].count("color") == 1 and {lab.kind for lab in two} == {"color", "existence"}
    # the default draws what it drew before the option existed
    assert pick_labels(answers, indep, 9, random.Random(5)) == pick_labels(
        answers, indep, 9, random.Random(5), types=("count", "color", "shape", "existence"))
    for bad in ((), ("count", "size")):
        with pytest.raises(ValueError, match="label types must be among"):
            pick_labels(answers, indep, 4, random.Random(0), types=bad)
