"""A recipe: every setting of a self-evolving run as one typed, frozen value (algorithm.md §1, §2, §8).

A recipe is data, not a code path: the presets ``e1`` … ``e7`` differ only in field values, a file
(JSON or TOML) holds the same mapping, and ``--set solver.sample.n=5`` style overrides are applied
to that mapping before it is validated, so a typo or an out-of-range value is an error naming the
field and the valid choices. Nothing here imports torch.

    recipe = load_recipe("e2", overrides=["solver.sample.n=5", "schedule.steps=40"])
"""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from asg._validate import number, one_of, string
from asg.errors import ConfigError, UnknownNameError
from asg.config import from_dict, nested_config, sections, to_plain
from asg.rewards.config import RewardsConfig
from asg.roles.generator import GateConfig, GeneratorConfig
from asg.roles.proposer import ProposerConfig
from asg.roles.solver import SolverConfig
from asg.updates.flow import FlowConfig
from asg.updates.grpo import GRPOConfig
from asg.updates.kl import KLConfig
from asg.updates.reinforce import ReinforceConfig


def _nested(cls: type) -> Any:
    return attrs.field(factory=cls, validator=attrs.validators.instance_of(cls), metadata={"config": cls})


def _lr() -> Any:
    return attrs.field(default=1e-6, validator=number(0.0, 1.0))


def _pos(default: int, lo: int = 1) -> Any:
    return attrs.field(default=default, validator=number(lo, None, integer=True))


@attrs.frozen(kw_only=True)
class ScheduleConfig:
    """Which phase each global step runs (§2): U = understanding, G = generation."""

    steps: int = _pos(10_000)  # total global steps of the run
    understanding: int = _pos(3, 0)  # U-steps per cycle
    generation: int = _pos(2, 0)  # G-steps per cycle
    bootstrap: int = _pos(0, 0)  # G-steps before the first cycle (E5: 2)
    order: str = attrs.field(default="UG", validator=one_of(("UG", "GU")))  # which phase opens a cycle
    stagewise: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))  # E7: U-only first half, then G-only

    def __attrs_post_init__(self) -> None:
        if self.understanding + self.generation == 0 and not self.stagewise:
            raise ConfigError("ScheduleConfig: understanding + generation must be at least 1 (a cycle needs a step)")


@attrs.frozen(kw_only=True)
class ProposerRole:
    """The Proposer: how it asks (K candidates, sampling, certificate) and its GRPO update (§3.2–3.4, §3.10)."""

    ask: ProposerConfig = _nested(ProposerConfig)  # K, temperature, certificate, spec sampling
    grpo: GRPOConfig = _nested(GRPOConfig)  # clip ε 0.2, advantage normalisation
    extra_samples: int = _pos(2, 0)  # group members besides the chosen output (§3.10: 2)
    update: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))  # train its adapter
    lr: float = _lr()


@attrs.frozen(kw_only=True)
class SolverRole:
    """The Solver: N answers under the PPS ladder, and its REINFORCE update (§3.5, §3.9, §5.1)."""

    sample: SolverConfig = _nested(SolverConfig)  # n = 7, PPS ladder T in [0.5, 2.5], top-p in [0.3, 1]
    reinforce: ReinforceConfig = _nested(ReinforceConfig)  # EMA baseline momentum 0.6
    # questions of one U-step the Solver trains on: the pick (1, as the reference) plus the next-ranked
    # valid, objective candidates of the same Proposer output (an asg extension; see docs/training.md)
    questions_per_step: int = _pos(1)
    # weight of a cross-entropy term that teaches each trained question's majority answer under the
    # canonical prompt (PPS sample 0's), the prompt evaluation asks with; 0 = off, as the reference.
    # An asg extension: REINFORCE trains every sample under its own perturbed prompt (see training.md).
    distill_weight: float = attrs.field(default=0.0, validator=number(0.0, None))
    update: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))  # train its adapter
    lr: float = _lr()


@attrs.frozen(kw_only=True)
class GeneratorRole:
    """Generation specs, candidates, the Solver's gate and the generator update (§6)."""

    generate: GeneratorConfig = _nested(GeneratorConfig)  # L = 3 candidates, steps, guidance
    gate: GateConfig = _nested(GateConfig)  # spec acceptance on the real image (§6.1.6)
    flow: FlowConfig = _nested(FlowConfig)  # reward-weighted flow matching: real image and/or candidates
    spec_attempts: int = _pos(3)  # rejection sampling of the spec (§6.1.6)
    min_spec_quality: float = attrs.field(default=0.35, validator=number(0.0, 1.0))  # below: no update (§8)
    min_qa: int = _pos(2, 0)  # QA pairs a spec needs to be trained on (§8: >= 2)
    caption_max_new_tokens: int = _pos(64)  # source and cycle captions (§6.1.1)
    update: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))  # train adapter + head
    lr: float = attrs.field(default=5e-7, validator=number(0.0, 1.0))


@attrs.frozen(kw_only=True)
class OptimConfig:
    """AdamW settings shared by every updater (§1)."""

    weight_decay: float = attrs.field(default=0.01, validator=number(0.0, 1.0))
    grad_clip: float = attrs.field(default=1.0, validator=number(0.0, None, lo_open=True))  # max grad norm per updater


@attrs.frozen(kw_only=True)
class RunConfig:
    """Logging, samples and checkpoints (§9)."""

    checkpoint_every: int = _pos(50, 0)  # 0 = only at the end
    keep_checkpoints: int = _pos(3)  # newest K kept
    sample_every: int = _pos(50, 0)  # write G-step images every this many steps (0 = never)


@attrs.frozen(kw_only=True)
class Recipe:
    """A named training configuration; ``e1`` (all defaults) is the paper's main run."""

    name: str = attrs.field(default="custom", validator=string(nonempty=True))
    description: str = ""
    seed: int = attrs.field(default=42, validator=number(0, None, integer=True))
    schedule: ScheduleConfig = _nested(ScheduleConfig)
    proposer: ProposerRole = _nested(ProposerRole)
    solver: SolverRole = _nested(SolverRole)
    generator: GeneratorRole = _nested(GeneratorRole)
    kl: KLConfig = _nested(KLConfig)  # adaptive β of every KL term (§5.1)
    optim: OptimConfig = _nested(OptimConfig)
    run: RunConfig = _nested(RunConfig)
    rewards: RewardsConfig = _nested(RewardsConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        return from_dict(cls, data)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _parse_value(text: str) -> Any:
    """``--set`` values are JSON where they parse (numbers, true/false, null, lists), else strings."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"solver.num_samples=5"`` -> (["solver", "num_samples"], 5)."""
    key, sep, value = item.partition("=")
    path = [p for p in key.strip().split(".")]
    if not sep or not all(path):
        raise ConfigError(f"--set expects KEY.PATH=VALUE (e.g. solver.sample.n=5), got {item!r}")
    return path, _parse_value(value.strip())


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` items to a recipe mapping; a path through a non-section is an error naming it.

    Field names are checked when the mapping is validated; this walk only checks that every part
    before the last names a section (or, under ``rewards.components``, a component name).
    """
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: dict[str, Any] = out
        cls: type = Recipe
        for depth, part in enumerate(path[:-1]):
            field = attrs.fields_dict(cls).get(part)
            if field is None or (nested_config(field) is None and "config_map" not in field.metadata):
                raise ConfigError(f"--set {item!r}: {'.'.join(path[: depth + 1])!r} is not a section; "
                                  f"sections here: {', '.join(sections(cls))}")
            node = node.setdefault(part, {})
            if "config_map" in field.metadata:  # name -> settings: names may hold dots, the last part is the field
                name = ".".join(path[depth + 1:-1])
                if not name:
                    raise ConfigError(f"--set {item!r}: expected {'.'.join(path[: depth + 1])}.NAME.FIELD=VALUE")
                node = node.setdefault(name, {})
                break
            nxt = nested_config(field)
            assert nxt is not None  # checked above
            cls = nxt
        node[path[-1]] = value
    return out


def recipe_mapping(name_or_path: str | Path) -> dict[str, Any]:
    """The mapping of a registered recipe name, or of a recipe file (.json / .toml) over E1."""
    path = Path(name_or_path)
    if path.suffix in (".json", ".toml"):
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"recipe file {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
        return _merge({"name": path.stem}, data)
    from asg.plugins import get_host

    try:
        registered = get_host().get("recipes", str(name_or_path))
    except UnknownNameError as exc:
        raise UnknownNameError(f"{exc}; or pass a recipe file ending in .json or .toml") from None
    recipe = registered.resolve()
    recipe = recipe() if callable(recipe) else recipe
    return _merge({"name": str(name_or_path)}, recipe if isinstance(recipe, Mapping) else to_plain(recipe))


def load_recipe(name_or_path: str | Path = "e1", overrides: Sequence[str] = ()) -> Recipe:
    """A validated :class:`Recipe` from a registered name or a file, with ``--set`` overrides applied."""
    return Recipe.from_dict(apply_overrides(recipe_mapping(name_or_path), overrides))


# -- schedule (§2) ---------------------------------------------------------------------------------
def phase_of(step: int, schedule: ScheduleConfig) -> str:
    """``"U"`` or ``"G"`` for 1-based global ``step``. E1: steps 1–3 U, 4–5 G, 6–8 U, …"""
    if step < 1:
        raise ValueError(f"steps are 1-based, got {step}")
    if schedule.stagewise:
        return "U" if step <= schedule.steps // 2 else "G"
    if step <= schedule.bootstrap:
        return "G"
    first, second = (schedule.understanding, schedule.generation) if schedule.order == "UG" else (schedule.generation, schedule.understanding)
    p = (step - schedule.bootstrap - 1) % (first + second)
    opener, closer = ("U", "G") if schedule.order == "UG" else ("G", "U")
    return opener if p < first else closer
