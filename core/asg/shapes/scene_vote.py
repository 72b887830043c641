"""Voting across related questions of one image: the scene hypothesis the Solver's answers agree on best.

A ShapesWorld scene is, for every question except position, a table of how many objects of each
(colour, shape) cell it holds. Each question of the *family* below (how many shapes, how many of each
shape and each colour, whether each cell is present, the colour of each unique shape, the shape of each
unique colour) has an answer implied by such a table. Given the Solver's log-probabilities of every
candidate answer to every question of one image, :func:`decode` returns the table whose implied answers
the Solver finds most likely in sum, and those answers. A table under which a question has no answer
(two circles, and "what color is the circle?") pays for it as much as the Solver was sure of an
answer. The answers to different questions then agree with one another ("how many circles" is the
sum of the circle cells, a count of 0 means "no" to the matching existence question), which the
per-question answers need not.

numpy only: the Solver's scores come from outside (``benchmarks scene_vote``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from .qa import RELATION_PHRASES
from .sampling import MAX_OBJECTS
from .vocab import COLORS, SHAPES, plural

CELLS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)
COUNT_ANSWERS: tuple[str, ...] = tuple(str(i) for i in range(MAX_OBJECTS + 1))
YES_NO: tuple[str, ...] = ("yes", "no")
KINDS: tuple[str, ...] = ("count_all", "count_shape", "count_color", "existence", "color", "shape")


def family() -> list[tuple[str, str, tuple[str, ...]]]:
    """The questions asked about every image: (template kind, question, candidate answers), in a fixed
    order (count_all, count_shape per shape, count_color per colour, existence per cell, colour per
    shape, shape per colour); 37 questions."""
    out: list[tuple[str, str, tuple[str, ...]]] = [("count_all", "How many shapes are there?", COUNT_ANSWERS)]
    out += [("count_shape", f"How many {plural(s)} are there?", COUNT_ANSWERS) for s in SHAPES]
    out += [("count_color", f"How many {c} shapes are there?", COUNT_ANSWERS) for c in COLORS]
    out += [("existence", f"Is there a {c} {s}?", YES_NO) for c, s in CELLS]
    out += [("color", f"What color is the {s}?", tuple(COLORS)) for s in SHAPES]
    out += [("shape", f"What shape is the {c} object?", tuple(SHAPES)) for c in COLORS]
    return out


@lru_cache(maxsize=4)
def tables(max_objects: int = MAX_OBJECTS) -> np.ndarray:
    """Every scene table with 1..``max_objects`` objects: (H, len(CELLS)) int8 counts per cell, in the
    order of :data:`CELLS`. 134 595 rows for 6 objects."""
    if not 1 <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"max_objects must be in 1..{MAX_OBJECTS}, got {max_objects}")
    rows = []
    for n in range(1, max_objects + 1):
        for combo in itertools.combinations_with_replacement(range(len(CELLS)), n):
            rows.append(np.bincount(combo, minlength=len(CELLS)))
    out = np.asarray(rows, dtype=np.int8)
    out.setflags(write=False)
    return out


def implied(table: np.ndarray) -> np.ndarray:
    """Index into each family question's candidates of the answer that ``table`` (H, 18) implies,
    (H, 37) int; -1 where the question's premise fails (no unique object to ask about)."""
    t = np.asarray(table, dtype=np.int64).reshape(-1, len(COLORS), len(SHAPES))
    by_shape, by_color = t.sum(1), t.sum(2)
    total = t.sum((1, 2))
    cols = [np.minimum(total, MAX_OBJECTS)[:, None], np.minimum(by_shape, MAX_OBJECTS), np.minimum(by_color, MAX_OBJECTS),
            np.where(t.reshape(len(t), -1) > 0, 0, 1)]
    # colour of the shape s: the colour of its only object when there is exactly one
    cols.append(np.where(by_shape == 1, t.argmax(1), -1))
    cols.append(np.where(by_color == 1, t.argmax(2), -1))
    return np.concatenate(cols, axis=1)


@lru_cache(maxsize=4)
def _implied_tables(max_objects: int) -> np.ndarray:
    """:func:`implied` of every table of :func:`tables` (H, 37), computed once per ``max_objects``."""
    out = implied(tables(max_objects))
    out.setflags(write=False)
    return out


def premise_cost(logprobs: np.ndarray) -> float:
    """What a table pays, relative to the Solver's best answer, for implying that a question has no
    answer (its premise fails): ``min(0, log(1 - p_max) - log p_max)``, with p the Solver's
    probabilities renormalised over the candidates. The Solver's doubt is the chance it gives the
    premise failing: a question answered with p_max = 0.99 costs log(0.01 / 0.99) = -4.6, one it
    cannot decide (p_max <= 1/2) costs nothing."""
    lp = np.asarray(logprobs, dtype=np.float64)
    x = lp - lp.max()
    p_max = 1.0 / np.exp(x).sum()
    return float(min(0.0, np.log(max(1.0 - p_max, 1e-12)) - np.log(p_max)))


def decode(logprobs: Sequence[np.ndarray], *, kinds: Sequence[str] = KINDS,
           max_objects: int = MAX_OBJECTS) -> tuple[np.ndarray, list[str | None], float]:
    """The table whose implied answers have the highest summed log-probability, its answer to every
    family question (None where the premise fails) and that score.

    ``logprobs[q]`` holds the Solver's log-probability of each candidate of family question q. Each
    question contributes ``logprob(implied) - max(logprob)``, i.e. 0 when the table implies the
    Solver's own best answer; a question whose premise fails under the table contributes
    :func:`premise_cost`. Only questions of ``kinds`` take part (the others are still answered from the
    chosen table).
    """
    fam = family()
    if len(logprobs) != len(fam):
        raise ValueError(f"need log-probabilities for all {len(fam)} family questions, got {len(logprobs)}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown question kinds {sorted(unknown)}; known: {list(KINDS)}")
    hyp = tables(max_objects)
    ans = _implied_tables(max_objects)
    score = np.zeros(len(hyp))
    for q, ((kind, question, cands), lp) in enumerate(zip(fam, logprobs)):
        lp = np.asarray(lp, dtype=np.float64)
        if lp.shape != (len(cands),):
            raise ValueError(f"{question!r}: expected {len(cands)} log-probabilities, got shape {lp.shape}")
        if kind not in kinds:
            continue
        rel = np.append(lp - lp.max(), premise_cost(lp))  # index -1: the premise fails
        score += rel[ans[:, q]]
    best = int(np.argmax(score))
    answers = [None if a < 0 else fam[q][2][a] for q, a in enumerate(ans[best])]
    return hyp[best].copy(), answers, float(score[best])


def independent(logprobs: Sequence[np.ndarray]) -> list[str]:
    """Each family question's own most likely candidate (no voting across questions)."""
    return [cands[int(np.argmax(lp))] for (_, _, cands), lp in zip(family(), logprobs)]


def table_of(counts: Mapping[tuple[str, str], int]) -> np.ndarray:
    """A (18,) table from {(colour, shape): count}."""
    out = np.zeros(len(CELLS), dtype=np.int8)
    for cell, n in counts.items():
        out[CELLS.index(cell)] = n
    return out


def unique_objects(table: np.ndarray) -> list[tuple[str, str]]:
    """The (colour, shape) cells of ``table`` that hold exactly one object, in :data:`CELLS` order: the
    objects "the <colour> <shape>" names, which position questions are asked about."""
    t = np.asarray(table).reshape(-1)
    if t.shape != (len(CELLS),):
        raise ValueError(f"a scene table has {len(CELLS)} cells, got shape {np.asarray(table).shape}")
    return [cell for cell, n in zip(CELLS, t) if n == 1]


def position_family(objects: Sequence[tuple[str, str]]) -> list[tuple[int, int, str, bool, str]]:
    """Every position question about ``objects`` (distinct (colour, shape) cells): for each ordered pair
    (i, j) and each relation phrase, ``(i, j, axis, smaller, question)``, where the answer is "yes"
    exactly when ``(coordinate of i < coordinate of j) == smaller`` on ``axis``. Each unordered pair and
    axis has four questions (both orders, both phrases of the axis, e.g. "left of" and "right of"), two of them
    answered "yes" under either order, so a Solver that says "yes" more often favours no order."""
    if len(set(objects)) != len(objects):
        raise ValueError(f"position questions need distinct objects, got {list(objects)}")
    out = []
    for i, (ci, si) in enumerate(objects):
        for j, (cj, sj) in enumerate(objects):
            if i != j:
                out += [(i, j, axis, smaller, f"Is the {ci} {si} {words} the {cj} {sj}?")
                        for words, axis, smaller in RELATION_PHRASES]
    return out


@lru_cache(maxsize=MAX_OBJECTS + 1)
def _ranks(n: int) -> np.ndarray:
    """Rank of each of ``n`` objects under every order of them, (n!, n) int."""
    out = np.asarray([np.argsort(p) for p in itertools.permutations(range(n))], dtype=np.int64).reshape(-1, n)
    out.setflags(write=False)
    return out


def decode_positions(objects: Sequence[tuple[str, str]], logprobs: Sequence[np.ndarray]
                     ) -> tuple[dict[str, tuple[tuple[str, str], ...]], list[str]]:
    """Per axis, the order of ``objects`` (smallest coordinate first: left to right, top to bottom) whose
    implied answers to :func:`position_family` the Solver finds most likely in sum, and those answers.

    ``logprobs[q]`` holds the Solver's log-probabilities of ("yes", "no") for family question q. Every
    order of the objects is scored (at most 6! = 720), so the answers agree with one another: the
    converse question gets the converse answer, and the orders are transitive. Returns ({"x": order,
    "y": order}, the answer of every question)."""
    fam = position_family(objects)
    if len(logprobs) != len(fam):
        raise ValueError(f"need log-probabilities for all {len(fam)} position questions, got {len(logprobs)}")
    lp = np.asarray([np.asarray(v, dtype=np.float64) for v in logprobs]).reshape(len(fam), -1) if fam else np.zeros((0, 2))
    if lp.shape[1] != len(YES_NO):
        raise ValueError(f"each position question needs log-probabilities of {YES_NO}, got {lp.shape[1]}")
    ranks = _ranks(len(objects))
    orders: dict[str, tuple[tuple[str, str], ...]] = {}
    answers: list[str] = [""] * len(fam)
    for axis in ("x", "y"):
        qs = [q for q, f in enumerate(fam) if f[2] == axis]
        score = np.zeros(len(ranks))
        for q in qs:
            i, j, _, smaller, _ = fam[q]
            yes = (ranks[:, i] < ranks[:, j]) == smaller  # (n!,)
            score += np.where(yes, lp[q, 0], lp[q, 1])
        best = ranks[int(np.argmax(score))]
        orders[axis] = tuple(objects[k] for k in np.argsort(best))
        for q in qs:
            i, j, _, smaller, _ = fam[q]
            answers[q] = YES_NO[0] if (best[i] < best[j]) == smaller else YES_NO[1]
    return orders, answers


__all__ = ["CELLS", "COUNT_ANSWERS", "KINDS", "YES_NO", "decode", "decode_positions", "family", "implied", "independent",
           "position_family", "premise_cost", "table_of", "tables", "unique_objects"]
