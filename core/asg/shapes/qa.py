"""Templated visual questions with answers computed from the scene's ground truth."""

from __future__ import annotations

import re
from typing import Any

import attrs
import numpy as np

from . import _checks as c
from .sampling import scene_for
from .scene import Scene
from .seeding import QUESTIONS, rng_for
from .vocab import COLORS, QTYPES, SHAPES, plural

# A position question is only asked when the centres differ by more than this
# along the asked axis, so the answer is obvious to a human looking at 32 px.
POSITION_MARGIN = 0.15

# (question phrase, axis, True when the first object's coordinate is smaller); the scene vote
# (asg.shapes.scene_vote.position_family) asks every phrase
RELATION_PHRASES = (
    ("to the left of", "x", True),
    ("to the right of", "x", False),
    ("above", "y", True),  # y grows downwards, so "above" means a smaller y
    ("below", "y", False),
)


@attrs.frozen
class QA:
    """A question, its canonical lowercase answer and its question type."""

    question: str = attrs.field(validator=c.nonempty_str)
    answer: str = attrs.field(validator=c.nonempty_str)
    qtype: str = attrs.field(validator=c.one_of(QTYPES))

    def to_dict(self) -> dict[str, Any]:
        return {"question": self.question, "answer": self.answer, "qtype": self.qtype}

    @classmethod
    def from_dict(cls, d: Any) -> QA:
        if not isinstance(d, dict) or set(d) != {"question", "answer", "qtype"}:
            raise ValueError(
                f"QA.from_dict expects keys ['answer', 'qtype', 'question'], got {d!r}"
            )
        return cls(**d)


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _count_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    out = [QA("How many shapes are there?", str(len(scene.objects)), "count")]
    out += [QA(f"How many {plural(s)} are there?", str(scene.count(shape=s)), "count")
            for s in SHAPES]
    present = [col for col in COLORS if scene.count(color=col)]
    absent = [col for col in COLORS if col not in present]
    # Every present colour plus one absent one, so "0" is a possible answer
    # without flooding the list with zero-count questions.
    asked = present + ([absent[int(rng.integers(len(absent)))]] if absent else [])
    out += [QA(f"How many {col} shapes are there?", str(scene.count(color=col)), "count")
            for col in asked]
    return out


def _attribute_questions(scene: Scene) -> list[QA]:
    out = []
    # "the triangle" only refers to something when there is exactly one.
    for s in SHAPES:
        if scene.count(shape=s) == 1:
            o = next(o for o in scene.objects if o.shape == s)
            out.append(QA(f"What color is the {s}?", o.color, "color"))
    for col in COLORS:
        if scene.count(color=col) == 1:
            o = next(o for o in scene.objects if o.color == col)
            out.append(QA(f"What shape is the {col} object?", o.shape, "shape"))
    return out


def _position_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    # Only objects nameable unambiguously by "the <colour> <shape>".
    unique = [o for o in scene.objects if scene.count(o.shape, o.color) == 1]
    out = []
    for i, a in enumerate(unique):
        for b in unique[i + 1:]:
            for axis in ("x", "y"):
                if abs(getattr(a, axis) - getattr(b, axis)) <= POSITION_MARGIN:
                    continue
                # A random order and a random relation of this axis make the
                # answer a fair coin, so "yes" and "no" are balanced.
                first, second = (a, b) if rng.integers(2) else (b, a)
                options = [r for r in RELATION_PHRASES if r[1] == axis]
                words, _, smaller = options[int(rng.integers(len(options)))]
                truth = (getattr(first, axis) < getattr(second, axis)) == smaller
                out.append(QA(f"Is the {first.name} {words} the {second.name}?",
                              _yes_no(truth), "position"))
    return out


def _existence_questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    combos = [(col, s) for col in COLORS for s in SHAPES]
    present = sorted({(o.color, o.shape) for o in scene.objects}, key=combos.index)
    absent = [k for k in combos if k not in present]
    # Prefer "near miss" negatives (right colour or right shape, wrong pairing):
    # they test binding of colour to shape rather than mere colour presence.
    near = [k for k in absent if any(k[0] == p[0] or k[1] == p[1] for p in present)]
    out = []
    if present:  # exactly one yes and one no keeps existence answers balanced
        col, s = present[int(rng.integers(len(present)))]
        out.append(QA(f"Is there a {col} {s}?", "yes", "existence"))
    pool = near or absent
    col, s = pool[int(rng.integers(len(pool)))]
    out.append(QA(f"Is there a {col} {s}?", "no", "existence"))
    return out


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """All templated questions for `scene`, grouped by qtype in QTYPES order."""
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    qs = (_count_questions(scene, rng) + _attribute_questions(scene)
          + _position_questions(scene, rng) + _existence_questions(scene, rng))
    return sorted(qs, key=lambda q: QTYPES.index(q.qtype))  # stable: keeps template order


def sample_qa(scene: Scene, rng: np.random.Generator, qtype: str | None = None) -> QA:
    """One question; qtype uniform over the types this scene supports unless given."""
    if qtype is not None:
        c.require_choice("qtype", qtype, QTYPES)
    by_type: dict[str, list[QA]] = {}
    for q in questions(scene, rng):
        by_type.setdefault(q.qtype, []).append(q)
    if qtype is None:
        available = [t for t in QTYPES if t in by_type]
        qtype = available[int(rng.integers(len(available)))]
    elif qtype not in by_type:
        raise ValueError(
            f"scene has no {qtype!r} question (e.g. no uniquely named object); "
            f"available qtypes: {sorted(by_type, key=QTYPES.index)}"
        )
    pool = by_type[qtype]
    return pool[int(rng.integers(len(pool)))]


def qa_for(split: str, seed: int, index: int) -> list[QA]:
    """The questions for scene_for(split, seed, index), from their own RNG stream."""
    return questions(scene_for(split, seed, index), rng_for(QUESTIONS, split, seed, index))




_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_REL_RE = "|".join(p[0] for p in RELATION_PHRASES)
_TEMPLATES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((kind, re.compile(pattern)) for kind, pattern in (
    ("count_all", r"how many shapes are there"),
    ("count_shape", rf"how many (?P<shape>{_SHAPE_RE})s are there"),
    ("count_color", rf"how many (?P<color>{_COLOR_RE}) shapes are there"),
    ("color", rf"what colou?r is the (?P<shape>{_SHAPE_RE})"),
    ("shape", rf"what shape is the (?P<color>{_COLOR_RE}) object"),
    ("existence", rf"is there an? (?P<color>{_COLOR_RE}) (?P<shape>{_SHAPE_RE})"),
    ("position", rf"is the (?P<c1>{_COLOR_RE}) (?P<s1>{_SHAPE_RE}) (?P<rel>{_REL_RE}) the (?P<c2>{_COLOR_RE}) (?P<s2>{_SHAPE_RE})"),
))


def question_template(question: str) -> tuple[str, dict[str, str]] | None:
    """Which of ShapesWorld's question templates ``question`` is (any case, trailing "?" optional), with
    the named colours, shapes and relation; None for anything else. Kinds: count_all, count_shape,
    count_color, color, shape, existence, position."""
    text = " ".join(str(question).lower().strip().rstrip("?").split())
    for kind, pattern in _TEMPLATES:
        m = pattern.fullmatch(text)
        if m is not None:
            return kind, {k: v for k, v in m.groupdict().items() if v is not None}
    return None


_POSITION_IN_TEXT = re.compile(
    rf"\b(?P<is>is) the (?P<c1>{_COLOR_RE}) (?P<s1>{_SHAPE_RE}) (?P<rel>{_REL_RE}) the (?P<c2>{_COLOR_RE}) (?P<s2>{_SHAPE_RE})\b",
    re.IGNORECASE)


def _one_phrase_match(m: re.Match[str]) -> str:
    _, axis, smaller = next(r for r in RELATION_PHRASES if r[0] == m["rel"].lower())
    words = next(r[0] for r in RELATION_PHRASES if r[1] == axis and r[2])
    a, b = f"{m['c1']} {m['s1']}", f"{m['c2']} {m['s2']}"
    first, second = (a, b) if smaller else (b, a)
    return f"{m['is']} the {first} {words} the {second}"


def one_phrase(text: str) -> str:
    """``text`` with every ShapesWorld position question in it said in one phrase per axis: "Is the A to
    the right of the B" becomes "Is the B to the left of the A", "below" becomes "above" with the two
    objects swapped; "to the left of" and "above" stay. The answer of each question is unchanged. Any
    other text, and a question in another wording, is left as it is.

    ShapesWorld draws both the order of the two objects and the relation at random, so "yes" is the
    XOR of "the first object is further left (up)" and "the relation is 'to the left of' ('above')"; a
    language model can learn the comparison when the relation is fixed (docs/results.md, "Why position
    is not learned even from correct labels"). `tiny` models with ``TinyConfig.one_phrase_position``
    read every prompt through this function."""
    return _POSITION_IN_TEXT.sub(_one_phrase_match, text)


def answer_question(question: str, scene: Scene) -> QA | None:
    """Ground truth for a question in one of ShapesWorld's templates (any case, trailing "?" optional).

    Returns None when the question is not a template question, or when its premise fails: "the
    triangle" when there is not exactly one triangle, "the red object" when there is not exactly one
    red object, a position question about objects that are missing or not unique. Position answers
    follow the asked relation's axis; centres closer than ``POSITION_MARGIN`` on that axis have no
    answer (None), as the generator never asks them. Used to audit what a loop trained toward.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    match = question_template(question)
    if match is None:
        return None
    kind, g = match
    if kind == "count_all":
        return QA(question, str(len(scene.objects)), "count")
    if kind == "count_shape":
        return QA(question, str(scene.count(shape=g["shape"])), "count")
    if kind == "count_color":
        return QA(question, str(scene.count(color=g["color"])), "count")
    if kind == "color":
        hits = [o for o in scene.objects if o.shape == g["shape"]]
        return QA(question, hits[0].color, "color") if len(hits) == 1 else None
    if kind == "shape":
        hits = [o for o in scene.objects if o.color == g["color"]]
        return QA(question, hits[0].shape, "shape") if len(hits) == 1 else None
    if kind == "existence":
        return QA(question, _yes_no(scene.count(g["shape"], g["color"]) > 0), "existence")
    a = [o for o in scene.objects if (o.color, o.shape) == (g["c1"], g["s1"])]
    b = [o for o in scene.objects if (o.color, o.shape) == (g["c2"], g["s2"])]
    if len(a) != 1 or len(b) != 1 or a[0] is b[0]:
        return None
    _, axis, smaller = next(p for p in RELATION_PHRASES if p[0] == g["rel"])
    first, second = getattr(a[0], axis), getattr(b[0], axis)
    if abs(first - second) <= POSITION_MARGIN:
        return None
    return QA(question, _yes_no((first < second) == smaller), "position")
