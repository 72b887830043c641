"""attrs validators whose errors name the class, the field, what was expected and what was received.

Torch and PIL are imported inside the validators, never at module import (``asg plugins`` must not
import torch).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from typing import Any

import attrs


def _where(inst: Any, attr: attrs.Attribute) -> str:
    return f"{type(inst).__name__}.{attr.name}"


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def number(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> Callable[[Any, attrs.Attribute, Any], None]:
    """A finite real (or integer) in the given interval."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    interval = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
    kind = "an integer" if integer else "a number"

    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            raise TypeError(f"{_where(inst, attr)} must be {kind} in {interval}, got {_fmt(value)} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ValueError(f"{_where(inst, attr)} must be finite ({kind} in {interval}), got {value!r}")
        bad = (
            (lo is not None and (value < lo or (lo_open and value == lo)))
            or (hi is not None and (value > hi or (hi_open and value == hi)))
        )
        if bad:
            raise ValueError(f"{_where(inst, attr)} must be {kind} in {interval}, got {value!r}")

    return check


def one_of(choices: Iterable[Any]) -> Callable[[Any, attrs.Attribute, Any], None]:
    """Membership in a fixed set of choices."""
    allowed = tuple(choices)

    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value not in allowed:
            raise ValueError(f"{_where(inst, attr)} must be one of {', '.join(map(repr, allowed))}; got {_fmt(value)}")

    return check


def string(*, nonempty: bool = False) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{_where(inst, attr)} must be a str, got {_fmt(value)} ({type(value).__name__})")
        if nonempty and not value.strip():
            raise ValueError(f"{_where(inst, attr)} must be a non-empty string, got {value!r}")

    return check


def boolean() -> Callable[[Any, attrs.Attribute, Any], None]:
    """A real ``bool``: ``1`` or ``"yes"`` in a recipe is a typo, not a switch."""

    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{_where(inst, attr)} must be a bool (true or false), got {_fmt(value)} ({type(value).__name__})")

    return check


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to ``word`` (difflib), or None when none is near."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'solver'?"`` for the choice nearest to ``word``, or ``""``."""
    near = closest(word, choices)
    return f"; did you mean {near!r}?" if near else ""


def tensor(
    ndim: int | tuple[int, ...] | None = None,
    *,
    floating: bool | None = None,
    optional: bool = False,
) -> Callable[[Any, attrs.Attribute, Any], None]:
    """A ``torch.Tensor`` with the given rank (and floating/integer dtype if stated)."""
    ranks = (ndim,) if isinstance(ndim, int) else ndim

    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        import torch

        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{_where(inst, attr)} must be a torch.Tensor, got {type(value).__name__}")
        if ranks is not None and value.ndim not in ranks:
            want = " or ".join(str(r) for r in ranks)
            raise ValueError(f"{_where(inst, attr)} must have {want} dimensions, got shape {tuple(value.shape)}")
        if floating is not None and value.is_floating_point() != floating:
            want = "a floating" if floating else "an integer"
            raise TypeError(f"{_where(inst, attr)} must have {want} dtype, got {value.dtype}")

    return check


def pil_image(*, optional: bool = False) -> Callable[[Any, attrs.Attribute, Any], None]:
    def check(inst: Any, attr: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        from PIL import Image

        if not isinstance(value, Image.Image):
            raise TypeError(f"{_where(inst, attr)} must be a PIL.Image.Image, got {type(value).__name__}")

    return check


