"""The small labeled ShapesWorld set `tiny` is pretrained on, and the examples drawn from it.

Every example teaches one of the formats the self-evolving loop later asks for: answers (solver, under
all seven PPS framings), captions, proposer question blocks, generation specs, and text-to-image.
Scenes come from the ``pretrain`` split only; the loop's unlabeled pool and the evaluation splits
never overlap with it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from asg.backbones.tiny import templates as T
from asg.shapes import COLORS, QA, SHAPES, Scene, describe, questions, render, scene_for
from asg.shapes.geneval import relative_position, scene_detections
from asg.shapes.prompts import with_article
from asg.shapes.vocab import NUMBER_WORDS, plural
from asg.types import Prompt

TASKS = ("vqa", "caption", "proposer", "spec")
_RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


class LabeledSet:
    """``n`` labeled scenes of the ``pretrain`` split: images, captions, questions (rendered once)."""

    def __init__(self, n: int, seed: int, size: int) -> None:
        if n < 1:
            raise ValueError(f"the labeled set needs at least 1 scene, got {n}")
        self.scenes: list[Scene] = [scene_for("pretrain", seed, i) for i in range(n)]
        self.images: list[Image.Image] = [render(s, size) for s in self.scenes]
        rng = np.random.default_rng([seed, 7])
        self.qas: list[list[QA]] = [questions(s, rng) for s in self.scenes]
        self.prompts: list[list[str]] = [drawing_prompts(s) for s in self.scenes]

    def __len__(self) -> int:
        return len(self.scenes)


def _strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def drawing_prompts(scene: Scene) -> list[str]:
    """Text-to-image prompts that are *true and complete* for ``scene``: its caption (with and
    without sizes) and, where the scene fits one, GenEval-style phrasings ("three triangles",
    "a red circle to the left of a blue square")."""
    objs = sorted(scene.objects, key=lambda o: (o.x, o.y))
    full = _strip_period(describe(scene))
    out = [full, full.replace("a small ", "a ").replace("a large ", "a ")]
    if len(objs) == 1:
        o = objs[0]
        out += [with_article(o.shape), with_article(f"{o.color} {o.shape}")]
    if len(objs) == 2:
        a, b = objs
        out += [f"{with_article(a.shape)} and {with_article(b.shape)}",
                f"{with_article(f'{a.color} {a.shape}')} and {with_article(f'{b.color} {b.shape}')}"]
        da, db = scene_detections(Scene((a,))), scene_detections(Scene((b,)))
        for rel in sorted(relative_position(da[0], db[0])):
            out.append(f"{with_article(a.shape)} {_RELATION_WORDS[rel]} {with_article(b.shape)}")
    shapes = {o.shape for o in objs}
    if len(objs) >= 2 and len(shapes) == 1:
        out.append(f"{NUMBER_WORDS[len(objs)]} {plural(objs[0].shape)}")
    return out


def _target_phrase(qa: QA) -> str:
    """The visual target a proposer names for ``qa`` (the noun phrase the question is about)."""
    q = qa.question.rstrip("?")
    for head in ("How many ", "What color is ", "What shape is ", "Is there "):
        if q.startswith(head):
            rest = q[len(head):]
            return rest.removesuffix(" are there")
    if qa.qtype == "position" and q.startswith("Is "):
        body = q[3:]
        for words in _RELATION_WORDS.values():
            if f" {words} " in body:
                left, right = body.split(f" {words} ", 1)
                return f"{left} and {right}"
    return q


def _options(qa: QA, rng: np.random.Generator) -> tuple[str, str]:
    """Two distinct plausible answers (the proposer's 'two-answer test'), in random order."""
    if qa.qtype in ("position", "existence"):
        pair = ["yes", "no"]
    elif qa.qtype == "count":
        n = int(qa.answer)
        other = n + 1 if n == 0 or rng.random() < 0.5 else n - 1
        pair = [qa.answer, str(other)]
    else:
        vocab = list(COLORS) if qa.qtype == "color" else list(SHAPES)
        others = [v for v in vocab if v != qa.answer]
        pair = [qa.answer, others[int(rng.integers(len(others)))]]
    if rng.random() < 0.5:
        pair.reverse()
    return pair[0], pair[1]


def _balanced_question(qas: list[QA], rng: np.random.Generator) -> QA:
    """A question of a uniformly drawn type (among the types the scene has), then uniform within it.

    Drawing uniformly over all questions would make ~half of them counts (a scene has one count
    question per shape and colour) and starve colour, shape and existence questions.
    """
    by_type: dict[str, list[QA]] = {}
    for qa in qas:
        by_type.setdefault(qa.qtype, []).append(qa)
    types = sorted(by_type)
    pool = by_type[types[int(rng.integers(len(types)))]]
    return pool[int(rng.integers(len(pool)))]


def _distinct(qas: list[QA], k: int, rng: np.random.Generator) -> list[QA]:
    order = rng.permutation(len(qas))[:k]
    return [qas[i] for i in order]


def task_mix(vqa_share: float = 0.6) -> list[float]:
    """Probabilities of TASKS: ``vqa_share`` for answers, the rest split 15:15:10 (caption, proposer, spec)."""
    if not 0.0 <= vqa_share <= 1.0:
        raise ValueError(f"vqa_share must be in [0, 1], got {vqa_share}")
    if vqa_share == 0.6:  # the shipped weights' mix, written as it was so their draws stay bit-exact
        return [0.6, 0.15, 0.15, 0.10]
    rest = 1.0 - vqa_share
    return [vqa_share, rest * 0.375, rest * 0.375, rest * 0.25]


def understanding_example(data: LabeledSet, rng: np.random.Generator, task: str | None = None,
                          vqa_share: float = 0.6, position_share: float = 0.0) -> tuple[Prompt, str, str]:
    """(prompt with image, target completion, task) for one random scene. With ``position_share`` > 0, a
    VQA example is a position question with that probability where the scene has one (the rest as
    without it); at 0 the draws are exactly those of the shipped weights."""
    i = int(rng.integers(len(data)))
    scene, image, qas = data.scenes[i], data.images[i], data.qas[i]
    task = task or TASKS[int(rng.choice(len(TASKS), p=task_mix(vqa_share)))]
    if task == "vqa":
        position = [q for q in qas if q.qtype == "position"] if position_share else []
        if position and rng.random() < position_share:
            qa = position[int(rng.integers(len(position)))]
        else:
            qa = _balanced_question(qas, rng)
        framing = 0 if rng.random() < 0.5 else int(rng.integers(1, len(T.SOLVER_FRAMINGS)))
        hint = None if rng.random() < 0.3 else int(rng.integers(len(T.FOCUS_HINTS)))
        return Prompt(T.solver_prompt(qa.question, framing, hint), image=image), T.ANSWER.format(answer=qa.answer), task
    if task == "caption":
        return Prompt(T.CAPTION, image=image), describe(scene), task
    if task == "proposer":
        k = int(rng.integers(1, 4))
        chosen = _distinct(qas, k, rng)
        blocks = []
        for qa in chosen:
            a, b = _options(qa, rng)
            blocks.append(T.PROPOSER_ITEM.format(target=_target_phrase(qa), question=qa.question, a=a, b=b))
        difficulty = T.DIFFICULTIES[int(rng.integers(len(T.DIFFICULTIES)))]
        return Prompt(T.PROPOSER.format(k=len(chosen), difficulty=difficulty), image=image), "".join(blocks), task
    if task == "spec":
        n = int(rng.integers(2, 4))
        chosen = _distinct(qas, n, rng)
        prompts = data.prompts[i]
        text = T.SPEC_PROMPT.format(prompt=prompts[int(rng.integers(len(prompts)))])
        text += "".join(T.SPEC_QA.format(question=qa.question, expected=qa.answer) for qa in chosen)
        return Prompt(T.SPEC.format(n=len(chosen)), image=image), text, task
    raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def generation_example(data: LabeledSet, rng: np.random.Generator) -> tuple[str, Image.Image]:
    """(drawing prompt, image) for one random scene."""
    i = int(rng.integers(len(data)))
    prompts = data.prompts[i]
    return prompts[int(rng.integers(len(prompts)))], data.images[i]


def tokenizer_corpus(seed: int, n_scenes: int = 3000) -> Iterator[str]:
    """Text the BPE is trained on: every template and the language of many (unlabeled-split-free)
    pretrain scenes. Only words matter here, so it may see more scenes than the labeled set."""
    yield from (t for t in T.TEMPLATES.values() if isinstance(t, str))
    for tup in (T.SOLVER_FRAMINGS, T.FOCUS_HINTS, T.DIFFICULTIES, T.TAGS):
        yield from tup
    rng = np.random.default_rng([seed, 11])
    for i in range(n_scenes):
        scene = scene_for("pretrain", seed, i)
        yield describe(scene)
        yield from drawing_prompts(scene)
        for qa in questions(scene, rng):
            yield f"{qa.question} {T.ANSWER.format(answer=qa.answer)}"
    for words in (NUMBER_WORDS, tuple(COLORS), SHAPES):
        yield " ".join(words)
