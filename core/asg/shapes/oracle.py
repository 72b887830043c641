"""An oracle "generator": scenes and images that satisfy a GenPrompt by construction.

Scoring its images gives GenEval-mini's upper bound (detector + checker
errors only), and its scenes are ready-made text-to-image training pairs.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .geneval import evaluate, scene_detections
from .prompts import GenPrompt
from .raster import render
from .sampling import place
from .scene import Obj, Scene
from .vocab import COLORS, SIZE_FRACTION, SIZES

# Accept only layouts whose relations hold with a 2.5x wider dead zone than
# the scorer's, so small localisation errors of the detector cannot flip them.
_ORACLE_POSITION_THRESHOLD = 0.25
_TRIES = 1000


def scene_for_prompt(prompt: GenPrompt, rng: np.random.Generator) -> Scene:
    """A random non-overlapping scene containing exactly the prompt's objects.

    Unspecified colours and all sizes are random; layouts are redrawn until the
    GenEval checker (with a stricter position threshold) accepts the scene.
    """
    if not isinstance(prompt, GenPrompt):
        raise TypeError(f"prompt must be a GenPrompt, got {type(prompt).__name__}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    names = tuple(COLORS)
    for _ in range(_TRIES):
        specs = []
        for cl in prompt.include:
            for _ in range(cl.count):
                color = cl.color if cl.color is not None else names[int(rng.integers(len(names)))]
                specs.append((cl.shape, color, SIZES[int(rng.integers(len(SIZES)))]))
        centres = place(rng, [SIZE_FRACTION[size] for _, _, size in specs])
        if centres is None:
            continue
        scene = Scene(tuple(Obj(s, col, size, x, y)
                            for (s, col, size), (x, y) in zip(specs, centres)))
        if evaluate(prompt, scene_detections(scene), _ORACLE_POSITION_THRESHOLD)[0]:
            return scene
    raise RuntimeError(f"no scene satisfying {prompt.prompt!r} found in {_TRIES} tries; "
                       f"the prompt may be contradictory")


def render_prompt(prompt: GenPrompt, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """Render scene_for_prompt(prompt, rng) at size x size."""
    return render(scene_for_prompt(prompt, rng), size)
