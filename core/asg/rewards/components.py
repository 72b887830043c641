"""Reward components: named, weighted, switchable terms that a role's reward is summed from.

A component scores a batch of cases (one float per case); a role's reward function combines the
enabled components as ``sum_c weight_c * score_c`` and then applies its role's rules (caps, clips,
soft weights). Ablations switch a component off or re-weight it through :class:`ComponentOverride`;
third-party packages add components with the ``register_rewards`` hook::

    @asg.hookimpl
    def register_rewards(register):
        register("proposer.brevity", "my_pkg.rewards:BREVITY", description="shorter questions score higher")

where ``BREVITY = RewardComponent("proposer.brevity", "proposer", fn, weight=0.1, enabled=False)``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from asg._validate import number, one_of, string
from asg.errors import ConfigError, PluginError, UnknownNameError
from asg.rewards._num import as_floats
from asg.types import ROLES

# (cases, role config) -> one score per case; the role config is the role's frozen config class.
ScoreFn = Callable[[Sequence[Any], Any], Sequence[float]]
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def _name(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    string()(inst, attr, value)
    if not _NAME_RE.match(value):
        raise ValueError(f"{type(inst).__name__}.{attr.name} must match {_NAME_RE.pattern}, got {value!r}")


def _callable(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{type(inst).__name__}.{attr.name} must be callable (cases, config) -> scores, got {type(value).__name__}")


def _boolean(inst: Any, attr: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{type(inst).__name__}.{attr.name} must be a bool, got {value!r} ({type(value).__name__})")


@attrs.frozen
class RewardComponent:
    """One named term of a role's reward."""

    name: str = attrs.field(validator=_name)  # registry name, by convention "<role>.<term>"
    role: str = attrs.field(validator=one_of(ROLES))  # whose reward it contributes to
    fn: ScoreFn = attrs.field(validator=_callable, eq=False)  # (cases, role config) -> one score per case
    weight: float = attrs.field(default=1.0, validator=number())  # multiplier in the role's sum
    enabled: bool = attrs.field(default=True, validator=_boolean)  # False = not evaluated at all
    description: str = attrs.field(default="", validator=string())  # one line for `asg plugins`

    def scores(self, cases: Sequence[Any], config: Any) -> list[float]:
        """Run ``fn`` and check it returned one finite float per case (the error names the component)."""
        try:
            out = as_floats(self.fn(cases, config), f"reward component {self.name!r} output")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"reward component {self.name!r} returned invalid scores: {exc}") from exc
        if len(out) != len(cases):
            raise ValueError(f"reward component {self.name!r} returned {len(out)} scores for {len(cases)} cases")
        return out


@attrs.frozen
class ComponentOverride:
    """How a recipe changes one component: leave a field None to keep the registered value."""

    weight: float | None = attrs.field(default=None, validator=attrs.validators.optional(number()))  # new weight
    enabled: bool | None = attrs.field(default=None, validator=attrs.validators.optional(_boolean))  # switch on/off


@attrs.frozen(eq=False)
class RewardOutput:
    """Per-case reward values with per-case named diagnostics (every value a float, ready to log)."""

    values: tuple[float, ...] = attrs.field(converter=tuple)  # (B,)
    diagnostics: tuple[dict[str, float], ...] = attrs.field(converter=tuple)  # B dicts

    def __attrs_post_init__(self) -> None:
        if len(self.values) != len(self.diagnostics):
            raise ValueError(f"RewardOutput: {len(self.values)} values but {len(self.diagnostics)} diagnostics")

    def __len__(self) -> int:
        return len(self.values)

    def argmax(self) -> int:
        """Index of the highest value (the first one on ties)."""
        if not self.values:
            raise ValueError("RewardOutput.argmax of an empty batch")
        return max(range(len(self.values)), key=lambda i: (self.values[i], -i))

    def mean_diagnostics(self) -> dict[str, float]:
        """Batch means of every diagnostic key (keys missing from a case are skipped for that case)."""
        sums: dict[str, list[float]] = {}
        for d in self.diagnostics:
            for k, v in d.items():
                sums.setdefault(k, []).append(v)
        return {k: math.fsum(v) / len(v) for k, v in sums.items()}


def check_cases(cases: Sequence[Any], cls: type, name: str = "cases") -> None:
    """Every entry of a role's batch is of that role's case type; the error names the first one that is not."""
    for i, c in enumerate(cases):
        if not isinstance(c, cls):
            raise TypeError(f"{name}[{i}] must be a {cls.__name__}, got {type(c).__name__}")


def combine(
    components: Sequence[RewardComponent],
    cases: Sequence[Any],
    config: Any,
    weights: Mapping[str, float] | None = None,
) -> tuple[list[float], list[dict[str, float]]]:
    """``sum_c w_c * score_c`` over enabled components, per case, with ``{name}`` = score and
    ``{name}.weighted`` = w * score in each case's diagnostics. ``weights`` overrides w by name."""
    totals = [0.0] * len(cases)
    diags: list[dict[str, float]] = [{} for _ in cases]
    seen: set[str] = set()
    for comp in components:
        if comp.name in seen:
            raise ConfigError(f"reward component {comp.name!r} is listed twice")
        seen.add(comp.name)
        if not comp.enabled:
            continue
        w = comp.weight if weights is None else weights.get(comp.name, comp.weight)
        for i, s in enumerate(comp.scores(cases, config)):
            totals[i] += w * s
            diags[i][comp.name] = s
            diags[i][f"{comp.name}.weighted"] = w * s
    return totals, diags


def apply_overrides(
    components: Sequence[RewardComponent],
    overrides: Mapping[str, ComponentOverride | Mapping[str, Any]] | None,
) -> tuple[RewardComponent, ...]:
    """Components with the recipe's overrides applied; an override for an unknown name is an error."""
    if not overrides:
        return tuple(components)
    by_name = {c.name: c for c in components}
    unknown = sorted(set(overrides) - set(by_name))
    if unknown:
        raise UnknownNameError(
            f"reward override for unknown component(s) {', '.join(map(repr, unknown))}; "
            f"valid choices: {', '.join(sorted(by_name)) or 'none'}"
        )
    out = []
    for comp in components:
        ov = overrides.get(comp.name)
        if ov is None:
            out.append(comp)
            continue
        if not isinstance(ov, ComponentOverride):
            from asg.rewards.config import from_dict

            ov = from_dict(ComponentOverride, ov)
        changes = {k: v for k, v in (("weight", ov.weight), ("enabled", ov.enabled)) if v is not None}
        out.append(attrs.evolve(comp, **changes))
    return tuple(out)


def registered_components(role: str | None = None, host: Any = None) -> tuple[RewardComponent, ...]:
    """Every component registered through ``register_rewards`` (built-ins included), optionally one role's.

    A registration that is not a :class:`RewardComponent`, or whose name differs from the one it was
    registered under, is skipped with a warning (an error under ``ASG_STRICT_PLUGINS=1``).
    """
    if role is not None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(map(repr, ROLES))}; got {role!r}")
    if host is None:
        from asg.plugins import get_host

        host = get_host()
    out = []
    for name in host.names("rewards"):
        reg = host.get("rewards", name)
        target = reg.resolve()
        problem = None
        if not isinstance(target, RewardComponent):
            problem = f"is a {type(target).__name__}, not an asg.rewards.RewardComponent"
        elif target.name != name:
            problem = f"has RewardComponent.name {target.name!r}; register it under that name"
        if problem:
            msg = f"reward {name!r} from plugin {reg.provider!r} {problem}"
            if getattr(host, "strict", False):
                raise PluginError(msg)
            warnings.warn(msg + " (skipped)", stacklevel=2)
            continue
        if role is None or target.role == role:
            out.append(target)
    return tuple(out)


def resolve_components(
    role: str,
    overrides: Mapping[str, ComponentOverride | Mapping[str, Any]] | None = None,
    host: Any = None,
) -> tuple[RewardComponent, ...]:
    """The components a recipe uses for ``role``: registered ones with the recipe's overrides applied.

    Overrides may name components of any role (a recipe keeps one table); names nobody registered
    are errors that list the valid ones.
    """
    every = registered_components(None, host)
    changed = apply_overrides(every, overrides)
    return tuple(c for c in changed if c.role == role)


__all__ = [
    "ComponentOverride",
    "RewardComponent",
    "RewardOutput",
    "ScoreFn",
    "apply_overrides",
    "combine",
    "registered_components",
    "resolve_components",
]
