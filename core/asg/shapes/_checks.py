"""attrs validators/converters whose errors name the field, the expectation and the value.

Kept private: they exist so every value type reports bad input the same way.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

Validator = Callable[[Any, Any, Any], None]


def _where(inst: Any, attr: Any) -> str:
    return f"{type(inst).__name__}.{attr.name}"


def one_of(choices: Iterable[str]) -> Validator:
    """Value must be one of a fixed set of strings."""
    allowed = tuple(choices)

    def check(inst: Any, attr: Any, value: Any) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(
                f"{_where(inst, attr)} must be one of {allowed}, got {value!r}"
            )

    return check


def optional_one_of(choices: Iterable[str]) -> Validator:
    inner = one_of(choices)

    def check(inst: Any, attr: Any, value: Any) -> None:
        if value is not None:
            inner(inst, attr, value)

    return check


def to_float(value: Any) -> Any:
    """Convert real numbers (incl. numpy scalars) to float; leave the rest for the validator.

    Converting here means equality and JSON round trips see plain floats, while
    a wrong type still reaches the validator and gets a named error.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def real_in(lo: float, hi: float, *, lo_open: bool = False) -> Validator:
    """Finite float within [lo, hi] (or (lo, hi] when lo_open)."""
    interval = f"{'(' if lo_open else '['}{lo}, {hi}]"

    def check(inst: Any, attr: Any, value: Any) -> None:
        if not isinstance(value, float) or not math.isfinite(value):
            raise TypeError(
                f"{_where(inst, attr)} must be a finite real number in {interval}, got {value!r}"
            )
        if value < lo or value > hi or (lo_open and value == lo):
            raise ValueError(f"{_where(inst, attr)} must be in {interval}, got {value!r}")

    return check


def nonneg_float(inst: Any, attr: Any, value: Any) -> None:
    if not isinstance(value, float) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{_where(inst, attr)} must be a finite real number >= 0, got {value!r}"
        )


def int_at_least(lo: int) -> Validator:
    def check(inst: Any, attr: Any, value: Any) -> None:
        if not is_int(value) or value < lo:
            raise ValueError(f"{_where(inst, attr)} must be an int >= {lo}, got {value!r}")

    return check


def nonempty_str(inst: Any, attr: Any, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{_where(inst, attr)} must be a non-empty string, got {value!r}")


def tuple_of(kind: type) -> Validator:
    def check(inst: Any, attr: Any, value: Any) -> None:
        for i, item in enumerate(value):
            if not isinstance(item, kind):
                raise TypeError(
                    f"{_where(inst, attr)}[{i}] must be a {kind.__name__}, "
                    f"got {type(item).__name__}: {item!r}"
                )

    return check


def to_tuple(value: Any) -> Any:
    """Accept any list/tuple-like sequence; strings and mappings are left to fail validation."""
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def is_tuple(inst: Any, attr: Any, value: Any) -> None:
    if not isinstance(value, tuple):
        raise TypeError(
            f"{_where(inst, attr)} must be a list or tuple, got {type(value).__name__}: {value!r}"
        )


def is_int(value: Any) -> bool:
    """True for Python/numpy integers but not bools (True is not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def require_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """Validate a plain function argument; returns it as a Python int."""
    if not is_int(value) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return int(value)


def require_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    allowed = tuple(choices)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
