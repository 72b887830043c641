"""The closed vocabulary of ShapesWorld: shapes, colours, sizes, splits, tags.

Everything that names a category lives here so that the sampler, renderer,
captioner, question generator and detector can never disagree about it.
"""

from __future__ import annotations

# Triangles always point up: a fixed orientation lets the detector match a
# single template instead of searching over rotations.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Six saturated hues spread around the colour wheel.  Orange and yellow are the
# closest pair, so their hues were pushed apart (orange ~27 deg, yellow ~57 deg)
# and their brightness differs too, which keeps the detector's nearest-colour
# decision stable under blur, noise and JPEG chroma subsampling.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 50),
    "orange": (245, 125, 20),
    "yellow": (230, 215, 30),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "purple": (150, 60, 200),
}

SIZES: tuple[str, ...] = ("small", "large")

# Width (= height) of an object's bounding box as a fraction of the canvas.
# 0.20 keeps a small object 6.4 px wide at 32 px, enough to tell a circle from
# a square even after blur/JPEG (with 0.18 the detector's 32 px accuracy on
# JPEG / down-up-scaled images was measurably lower); 0.28 still lets four
# large objects fit.
SIZE_FRACTION: dict[str, float] = {"small": 0.2, "large": 0.28}

# Light and unsaturated, so "has chroma" is a reliable foreground cue.
BACKGROUND: tuple[int, int, int] = (245, 245, 245)

# Seed namespaces.  The position in this tuple is part of every RNG key, so
# appending a split is safe but reordering would change every dataset.
SPLITS: tuple[str, ...] = ("pretrain", "pool", "val", "test")

QTYPES: tuple[str, ...] = ("count", "color", "shape", "position", "existence")

# Spatial relations exactly as spelled in GenEval's evaluation metadata.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

GENEVAL_TAGS: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)

# Number words understood in answers and used in counting prompts.
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six",
    "seven", "eight", "nine", "ten", "eleven", "twelve",
)


def plural(shape: str) -> str:
    """All our shape names pluralise regularly ("circle" -> "circles")."""
    return shape + "s"
