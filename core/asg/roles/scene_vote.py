"""The Solver's vote across related questions of one ShapesWorld image (an asg extension).

:mod:`asg.shapes.scene_vote` decodes, from the Solver's log-probabilities of every candidate answer to
the 37 family questions about one image, the scene table its answers agree on best. This module gets
those log-probabilities from a backbone (:func:`family_logprobs`) and picks, from the decoded answers,
the labels a Solver update trains on (:func:`scene_vote_labels`). Position questions about the objects
that table names are voted apart (:func:`position_labels`): the orders along each axis that the Solver's
answers to every phrasing agree on best. It only makes sense on ShapesWorld images, whose questions the
family is made of: recipe options ``solver.scene_vote_questions`` and ``solver.scene_vote_position``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np

from asg.roles.templates import RoleTemplates
from asg.types import Prompt

# the question types evaluation asks (position aside, which the family has no answer for), and the
# template kinds of each; existence labels alternate between "yes" and "no", as evaluation balances them
_TYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("count", ("count_all", "count_shape", "count_color")), ("color", ("color",)), ("shape", ("shape",)),
    ("existence", ("existence",)))


@attrs.frozen
class SceneLabel:
    """One family question of an image with its scene-vote label and the Solver's own best answer."""

    question: str
    kind: str  # template kind (asg.shapes.scene_vote.KINDS, or "position")
    label: str  # the answer the decoded scene table implies
    independent: str  # the question's own most likely candidate (stand-in for the greedy answer)

    def to_dict(self) -> dict[str, str]:
        return {"question": self.question, "kind": self.kind, "label": self.label, "independent": self.independent}


def greedy_prompt(templates: RoleTemplates, question: str, image: Any) -> Prompt:
    """The prompt of the Solver's greedy answer (PPS sample 0: framing 0 with its focus hint), the one
    the U-step's spot-check answers under."""
    return Prompt(templates.solver_prompt(question, 0, hint=True), image=image)


def _answer_token_ids(backbone: Any, open_tag: str, candidates: Sequence[str]) -> dict[str, tuple[int, int]] | None:
    """(position, token id) of each candidate's token in ``open_tag + candidate`` when every candidate is
    one token after the tag's own tokens, so that one forward pass per question reads them all; None
    otherwise, or for a backbone without an HF-style tokenizer."""
    encode = getattr(getattr(backbone, "tokenizer", None), "encode", None)
    if not callable(encode):
        return None
    head = list(encode(open_tag, add_special_tokens=False))
    out = {}
    for c in candidates:
        ids = list(encode(open_tag + c, add_special_tokens=False))
        if len(ids) != len(head) + 1 or ids[:len(head)] != head:
            return None
        out[c] = (len(head), ids[-1])
    return out


def question_logprobs(backbone: Any, items: Sequence[tuple[Any, str, Sequence[str]]], *, exact: bool = False) -> list[np.ndarray]:
    """The Solver role's log-probability of every candidate answer of each ``(image, question,
    candidates)`` item, under the greedy prompt (:func:`greedy_prompt`), without gradients.

    When every candidate is a single token after the answer tag, one teacher-forced pass per question
    reads them all from the distribution over that token (the closing tag and end of turn, which follow
    almost surely, are left out). Otherwise, or with ``exact``, each candidate is scored in full
    (``<answer>c</answer>`` and the end of turn), one sequence per candidate."""
    import torch

    if not items:
        return []
    tpl = RoleTemplates.of(backbone)
    open_tag, close_tag = tpl.answer_tags
    single = None if exact else _answer_token_ids(backbone, open_tag, sorted({c for _, _, cs in items for c in cs}))
    prompts, completions = [], []
    for im, question, cands in items:
        p = greedy_prompt(tpl, question, im)
        for c in cands[:1] if single else cands:
            prompts.append(p)
            completions.append(f"{open_tag}{c}" if single else f"{open_tag}{c}{close_tag}")
    with torch.no_grad(), backbone.use_role("solver"):
        if single:
            out = backbone.score(prompts, completions, append_eos=False, return_logits=True)
            if out.logits is None:
                raise RuntimeError("backbone.score(return_logits=True) returned no logits")
            dist = torch.log_softmax(out.logits.float(), dim=-1)
        else:
            lp = backbone.score(prompts, completions).sequence_logprob("sum").float().cpu().numpy()
    result, k = [], 0
    for _, _, cands in items:
        if single:
            result.append(np.asarray([float(dist[k, single[c][0], single[c][1]]) for c in cands], dtype=np.float64))
            k += 1
        else:
            result.append(np.asarray(lp[k:k + len(cands)], dtype=np.float64))
            k += len(cands)
    return result


def family_logprobs(backbone: Any, images: Sequence[Any], *, exact: bool = False) -> list[list[np.ndarray]]:
    """Per image, :func:`question_logprobs` of every family question (:func:`asg.shapes.scene_vote.family`)."""
    from asg.shapes.scene_vote import family

    fam = family()
    flat = question_logprobs(backbone, [(im, question, cands) for im in images for _, question, cands in fam], exact=exact)
    return [flat[i * len(fam):(i + 1) * len(fam)] for i in range(len(images))]


def position_labels(backbone: Any, image: Any, table: np.ndarray, n: int, rng: random.Random) -> list[SceneLabel]:
    """Up to ``n`` labelled position questions about ``image``, whose decoded scene ``table`` names the
    objects: the Solver's log-probabilities of "yes" and "no" to every position question about the
    table's uniquely named objects (:func:`asg.shapes.scene_vote.position_family`), the per-axis orders
    they agree on best (:func:`asg.shapes.scene_vote.decode_positions`), and questions drawn from its
    answers with "yes" and "no" strictly alternating (from a random side), none twice. Fewer than two
    uniquely named objects: no labels."""
    from asg.shapes.scene_vote import YES_NO, decode_positions, position_family, unique_objects

    objects = unique_objects(table)
    if n < 1 or len(objects) < 2:
        return []
    fam = position_family(objects)
    lps = question_logprobs(backbone, [(image, question, YES_NO) for *_, question in fam])
    _, answers = decode_positions(objects, lps)
    own = [YES_NO[int(np.argmax(lp))] for lp in lps]
    sides = {a: [q for q in range(len(fam)) if answers[q] == a] for a in YES_NO}
    want = YES_NO[rng.randrange(2)]
    out: list[SceneLabel] = []
    while len(out) < n and sides[want]:
        q = sides[want].pop(rng.randrange(len(sides[want])))
        out.append(SceneLabel(fam[q][4], "position", answers[q], own[q]))
        want = YES_NO[1] if want == YES_NO[0] else YES_NO[0]
    return out


LABEL_TYPES: tuple[str, ...] = tuple(name for name, _ in _TYPES)


def pick_labels(answers: Sequence[str | None], independent: Sequence[str], k: int, rng: random.Random, *,
                balanced: bool = True, types: Sequence[str] = LABEL_TYPES) -> list[SceneLabel]:
    """Up to ``k`` labelled family questions of one image, drawn to look like evaluation's questions.

    Types come in turn (count, colour, shape, existence, from a random start), each question drawn
    uniformly among those of its type that the decoded table answers, none twice; a type with nothing
    left is passed over. ``balanced`` (the default) does as ShapesWorld's question generator does:
    colour counts are asked only for the colours the table holds plus one absent colour, and existence
    labels strictly alternate between "yes" and "no" (from a random side), ending when the side due
    is used up. Without it, every colour count may be asked, and existence alternates only while both
    sides last, then takes what is left. A large ``k`` then labels mostly "no" and "0" (15 of the 18
    colour-shape pairs are absent from a typical scene), and the Solver learns that prior instead of
    the image (docs/results.md). Only question types in ``types`` (of :data:`LABEL_TYPES`) are drawn;
    the others still shape the decoded table."""
    from asg.shapes.scene_vote import family

    unknown = sorted(set(types) - set(LABEL_TYPES))
    if unknown or not types:
        raise ValueError(f"scene-vote label types must be among {list(LABEL_TYPES)}, got {list(types)}")
    kept_types = tuple(t for t in _TYPES if t[0] in types)
    fam = family()
    absent = [q for q, (kind, _, _) in enumerate(fam) if kind == "count_color" and answers[q] == "0"]
    keep_absent = {absent[rng.randrange(len(absent))]} if absent and balanced else set(absent)
    free = {name: [q for q, (kind, _, _) in enumerate(fam) if kind in kinds and answers[q] is not None
                   and (kind != "count_color" or answers[q] != "0" or q in keep_absent)]
            for name, kinds in kept_types}
    out: list[SceneLabel] = []
    start = rng.randrange(len(kept_types))
    want_yes = rng.random() < 0.5
    turn = 0
    while len(out) < k and any(free.values()):
        name = kept_types[(start + turn) % len(kept_types)][0]
        turn += 1
        pool = free[name]
        if name == "existence" and pool:
            side = [q for q in pool if (answers[q] == "yes") == want_yes]
            if not side and balanced:
                free[name] = []  # the side due is used up: no more existence labels
                continue
            pool = side or pool
            want_yes = not want_yes
        if not pool:
            continue
        q = pool[rng.randrange(len(pool))]
        free[name].remove(q)
        out.append(SceneLabel(fam[q][1], fam[q][0], str(answers[q]), independent[q]))
    return out


def scene_vote_labels(backbone: Any, image: Any, k: int, rng: random.Random, *, balanced: bool = True,
                      position: int = 0, types: Sequence[str] = LABEL_TYPES) -> list[SceneLabel]:
    """``k`` scene-vote labels of ``types`` for ``image`` (:func:`pick_labels` of its decoded family
    answers), then up to ``position`` position labels about the objects the decoded table names
    (:func:`position_labels`)."""
    from asg.shapes.scene_vote import decode, independent

    if k < 1:
        return []
    lps = family_logprobs(backbone, [image])[0]
    table, answers, _ = decode(lps)
    out = pick_labels(answers, independent(lps), k, rng, balanced=balanced, types=types)
    return out + position_labels(backbone, image, table, position, rng) if position else out


__all__ = ["LABEL_TYPES", "SceneLabel", "family_logprobs", "greedy_prompt", "pick_labels", "position_labels", "question_logprobs",
           "scene_vote_labels"]
