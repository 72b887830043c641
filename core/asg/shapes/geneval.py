"""GenEval rule checking on detections, and the GenEval-mini benchmark.

Port of `evaluate()` / `relative_position()` from djghosh13/geneval
evaluation/evaluate_images.py, in normalised coordinates.  Where GenEval uses
detector confidence ("colour and position are only evaluated on the most
confidently predicted objects") we use area: larger detections are the
clearer ones, and the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from .detector import Detection, detect
from .geometry import unit_area
from .prompts import GenPrompt
from .scene import Scene
from .vocab import COLORS, GENEVAL_TAGS

# GenEval's default --position_threshold: each centre offset is first reduced
# by this fraction of the two boxes' summed size on that axis.
POSITION_THRESHOLD = 0.1
# GenEval's "no relation" test is |revised offset| < 1e-3 pixels on ~512 px
# images; in normalised units that is ~2e-6.
_EPS = 2e-6


def relative_position(a: Detection, b: Detection,
                      threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A relative to B ("left of", "right of", "above", "below").

    The offset between centres is shrunk by threshold * (size_a + size_b) per
    axis; a relation holds when the shrunk offset along its axis is more than
    half the length of the raw offset (so diagonal placements can hold two).
    """
    offset = np.array([a.x - b.x, a.y - b.y])
    dims = np.array([a.w + b.w, a.h + b.h])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < _EPS):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")  # y grows downwards
    if dy > 0.5:
        rels.add("below")
    return rels


def evaluate(prompt: GenPrompt, detections: Sequence[Detection],
             position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """score_geneval with a tunable position threshold (the oracle uses a stricter one)."""
    by_shape: dict[str, list[Detection]] = {}
    for d in sorted(detections, key=lambda d: (-d.area, d.x, d.y)):
        by_shape.setdefault(d.shape, []).append(d)
    correct = True
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in prompt.include:
        found = by_shape.get(req.shape, [])[:req.count]
        matched = True
        if len(found) < req.count:
            matched = False
            reasons.append(f"expected {req.shape}>={req.count}, found {len(found)}")
        else:
            if req.color is not None:
                colors = [d.color for d in found]
                if colors.count(req.color) < req.count:
                    matched = False
                    reasons.append(
                        f"expected {req.color} {req.shape}>={req.count}, found "
                        f"{colors.count(req.color)} {req.color}; and "
                        + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors))
            if req.position is not None and matched:
                rel, target = req.position
                if groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {req.shape} to be {rel}")
                else:
                    # GenEval: every found object against every target object.
                    for obj in found:
                        for tgt in groups[target]:
                            true_rels = relative_position(obj, tgt, position_threshold)
                            if rel not in true_rels:
                                matched = False
                                found_rel = " and ".join(sorted(true_rels)) or "no relation to"
                                reasons.append(f"expected {req.shape} {rel} target, "
                                               f"found {found_rel} target")
                                break
                        if not matched:
                            break
        correct &= matched
        groups.append(found if matched else None)
    for req in prompt.exclude:
        n = sum(1 for d in detections if d.shape == req.shape
                and (req.color is None or d.color == req.color))
        if n >= req.count:
            correct = False
            reasons.append(f"expected {req.shape}<{req.count}, found {n}")
    return correct, "\n".join(reasons)


def score_geneval(prompt: GenPrompt, detections: Sequence[Detection]) -> tuple[bool, str]:
    """(correct, reason): every include clause satisfied and no exclude clause
    reached; the reason lists each failed check (empty when correct)."""
    if not isinstance(prompt, GenPrompt):
        raise TypeError(f"prompt must be a GenPrompt, got {type(prompt).__name__}")
    for i, d in enumerate(detections):
        if not isinstance(d, Detection):
            raise TypeError(f"detections[{i}] must be a Detection, got {type(d).__name__}")
    return evaluate(prompt, detections)


def scene_detections(scene: Scene) -> list[Detection]:
    """The detections a perfect detector would return for `scene` (area in
    units of a 64 px canvas), e.g. to test the rule checker without pixels."""
    return [Detection(o.shape, o.color, o.x, o.y, o.extent, o.extent,
                      unit_area(o.shape) * (o.extent * 64) ** 2)
            for o in scene.objects]


def geneval_mini(prompts: Sequence[GenPrompt],
                 images: Sequence[Sequence[Image.Image]]) -> dict[str, Any]:
    """Score images[i] (any number of samples) against prompts[i].

    Returns {"overall", "per_tag": {tag: %}, "n_prompts", "n_images",
    "n_correct"} (per-tag dicts for the tags present).  A tag's accuracy is the
    mean correctness over all its images; overall is the unweighted mean over
    tags, as in GenEval's summary_scores.py.
    """
    if len(prompts) != len(images):
        raise ValueError(f"prompts and images must have the same length, "
                         f"got {len(prompts)} and {len(images)}")
    n_prompts: dict[str, int] = {}
    n_images: dict[str, int] = {}
    n_correct: dict[str, int] = {}
    for i, (p, imgs) in enumerate(zip(prompts, images)):
        if isinstance(imgs, Image.Image) or not len(imgs):
            raise ValueError(f"images[{i}] must be a non-empty list of images for prompt {i}")
        n_prompts[p.tag] = n_prompts.get(p.tag, 0) + 1
        for im in imgs:
            ok, _ = score_geneval(p, detect(im))
            n_images[p.tag] = n_images.get(p.tag, 0) + 1
            n_correct[p.tag] = n_correct.get(p.tag, 0) + int(ok)
    if not n_images:
        raise ValueError("prompts is empty: accuracy is undefined")
    tags = [t for t in GENEVAL_TAGS if t in n_images]
    per_tag = {t: 100.0 * n_correct[t] / n_images[t] for t in tags}
    return {
        "overall": sum(per_tag.values()) / len(per_tag),
        "per_tag": per_tag,
        "n_prompts": {t: n_prompts[t] for t in tags},
        "n_images": {t: n_images[t] for t in tags},
        "n_correct": {t: n_correct[t] for t in tags},
    }
