"""Random scenes: non-overlapping objects fully inside the canvas, seeded by split."""

from __future__ import annotations

import numpy as np

from ._checks import require_int
from .scene import Obj, Scene
from .seeding import SCENE, rng_for
from .vocab import COLORS, SHAPES, SIZE_FRACTION, SIZES

# Empty border between any object's box and the canvas edge, so anti-aliased
# edges never touch the border (a clipped shape would fool the shape classifier).
EDGE_MARGIN = 0.03
# Minimum gap between two bounding boxes.  0.06 is ~2 px at 32 px: enough that
# blur or JPEG ringing does not bridge two objects into one component.
GAP = 0.06
MAX_OBJECTS = 6

_TRIES_PER_OBJECT = 60
_RESTARTS = 40
_SIZE_REDRAWS = 50


def separated(ax: float, ay: float, ea: float, bx: float, by: float, eb: float,
              gap: float = GAP) -> bool:
    """True when two square boxes (centre, side) are at least `gap` apart along some axis."""
    need = (ea + eb) / 2 + gap
    return abs(ax - bx) >= need or abs(ay - by) >= need


def place(rng: np.random.Generator, extents: list[float]) -> list[tuple[float, float]] | None:
    """Rejection-sample centres for boxes of the given sides, or None when stuck.

    Placing greedily can paint itself into a corner (e.g. the first large object
    in the middle), hence whole-scene restarts instead of endless retries.
    Four large boxes fit with lots of slack (a 2x2 grid needs
    2 * 0.28 + 0.06 gap + 2 * 0.03 margin = 0.68 of the canvas side), so up
    to four objects are placed at the first attempt in practice; None only
    happens for crowded 5-6 object scenes.
    """
    for _ in range(_RESTARTS):
        placed: list[tuple[float, float, float]] = []
        for e in extents:
            lo, hi = e / 2 + EDGE_MARGIN, 1 - e / 2 - EDGE_MARGIN
            for _ in range(_TRIES_PER_OBJECT):
                x, y = (float(v) for v in rng.uniform(lo, hi, size=2))
                if all(separated(x, y, e, px, py, pe) for px, py, pe in placed):
                    placed.append((x, y, e))
                    break
            else:
                break  # stuck: restart the whole scene
        else:
            return [(x, y) for x, y, _ in placed]
    return None


def sample_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 4) -> Scene:
    """Draw a scene with a uniform number of objects in [min_objects, max_objects].

    Shapes, colours and sizes are uniform and independent, except that a
    crowded scene (5-6 objects) whose sizes cannot be packed redraws its sizes,
    which makes such scenes slightly biased towards small objects.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    lo = require_int("min_objects", min_objects, 0, MAX_OBJECTS)
    hi = require_int("max_objects", max_objects, max(lo, 1), MAX_OBJECTS)
    n = int(rng.integers(lo, hi, endpoint=True))
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n)]
    colors = [tuple(COLORS)[i] for i in rng.integers(len(COLORS), size=n)]
    for _ in range(_SIZE_REDRAWS):
        sizes = [SIZES[i] for i in rng.integers(len(SIZES), size=n)]
        centres = place(rng, [SIZE_FRACTION[s] for s in sizes])
        if centres is not None:
            return Scene(tuple(
                Obj(shape, color, size, x, y)
                for shape, color, size, (x, y) in zip(shapes, colors, sizes, centres)
            ))
    raise RuntimeError(f"could not place {n} objects without overlap")  # pragma: no cover


def scene_for(split: str, seed: int, index: int, **kw: int) -> Scene:
    """The scene number `index` of (split, seed); identical on every call and machine."""
    return sample_scene(rng_for(SCENE, split, seed, index), **kw)
