"""One-sentence ground-truth captions."""

from __future__ import annotations

from .scene import Obj, Scene

# Canvas thirds: a centre below 1/3 is "left"/"top", above 2/3 "right"/"bottom".
_LOW, _HIGH = 1 / 3, 2 / 3


def where(o: Obj) -> str:
    """Coarse location phrase for an object, e.g. "at the top left", "on the left"."""
    horiz = "left" if o.x < _LOW else "right" if o.x > _HIGH else ""
    vert = "top" if o.y < _LOW else "bottom" if o.y > _HIGH else ""
    if vert and horiz:
        return f"at the {vert} {horiz}"
    if vert:
        return f"at the {vert}"
    if horiz:
        return f"on the {horiz}"
    return "in the center"


def phrase(o: Obj) -> str:
    return f"a {o.size} {o.color} {o.shape} {where(o)}"


def describe(scene: Scene) -> str:
    """E.g. "a large red circle on the left and a small blue square at the bottom right."

    Objects are listed left to right (ties top to bottom) so the caption does
    not depend on the arbitrary order of scene.objects.
    """
    if not isinstance(scene, Scene):
        raise TypeError(f"scene must be a Scene, got {type(scene).__name__}")
    parts = [phrase(o) for o in sorted(scene.objects, key=lambda o: (o.x, o.y))]
    if not parts:
        return "an empty canvas."
    if len(parts) == 1:
        return parts[0] + "."
    return ", ".join(parts[:-1]) + " and " + parts[-1] + "."
