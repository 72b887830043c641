"""Scene value types: an object list with exact ground truth, JSON round-trippable."""

from __future__ import annotations

from typing import Any

import attrs

from . import _checks as c
from .vocab import COLORS, SHAPES, SIZE_FRACTION, SIZES


@attrs.frozen
class Obj:
    """One shape.  (x, y) is the centre of its square bounding box in [0, 1]
    canvas coordinates, x to the right and y DOWN (image convention)."""

    shape: str = attrs.field(validator=c.one_of(SHAPES))
    color: str = attrs.field(validator=c.one_of(COLORS))
    size: str = attrs.field(validator=c.one_of(SIZES))
    x: float = attrs.field(converter=c.to_float, validator=c.real_in(0.0, 1.0))
    y: float = attrs.field(converter=c.to_float, validator=c.real_in(0.0, 1.0))

    @property
    def extent(self) -> float:
        """Bounding-box side as a fraction of the canvas."""
        return SIZE_FRACTION[self.size]

    @property
    def name(self) -> str:
        """Referring expression without article, e.g. "red circle"."""
        return f"{self.color} {self.shape}"

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "x": self.x, "y": self.y}


@attrs.frozen
class Scene:
    """An ordered collection of objects (order carries no meaning)."""

    objects: tuple[Obj, ...] = attrs.field(
        converter=c.to_tuple, validator=[c.is_tuple, c.tuple_of(Obj)]
    )

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: Any) -> Scene:
        if not isinstance(d, dict) or not isinstance(d.get("objects"), list):
            raise ValueError(f"Scene.from_dict expects {{'objects': [...]}}, got {d!r}")
        objs = []
        for i, od in enumerate(d["objects"]):
            keys = {"shape", "color", "size", "x", "y"}
            if not isinstance(od, dict) or set(od) != keys:
                raise ValueError(
                    f"Scene.from_dict: objects[{i}] must be a dict with keys {sorted(keys)}, got {od!r}"
                )
            objs.append(Obj(**od))
        return cls(tuple(objs))

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        """Number of objects matching the given shape and/or colour."""
        return sum(
            1 for o in self.objects
            if (shape is None or o.shape == shape) and (color is None or o.color == color)
        )
