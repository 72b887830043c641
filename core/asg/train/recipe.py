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
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from asg._validate import _fmt, boolean, closest, did_you_mean, number, one_of, string
from asg.errors import ConfigError, ConfigFieldError, UnknownNameError
from asg.train.presets import merge as _merge
from asg.config import nested_config, sections, to_plain
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
    return attrs.field(default=1e-6, validator=number(0.0, 1.0, lo_open=True))


def _pos(default: int, lo: int = 1) -> Any:
    return attrs.field(default=default, validator=number(lo, None, integer=True))


def _split_types(value: str) -> tuple[str, ...]:
    """``"count, existence"`` -> ("count", "existence")."""
    return tuple(t.strip() for t in value.split(","))


def _label_types(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A comma-separated, non-empty list of scene-vote label types, each known, none twice."""
    from asg.roles.scene_vote import LABEL_TYPES

    parts = _split_types(value) if isinstance(value, str) else None
    if not parts or not all(parts) or len(set(parts)) != len(parts) or not set(parts) <= set(LABEL_TYPES):
        raise ConfigError(f"{attribute.name} must be a comma-separated list of distinct types among "
                          f"{', '.join(LABEL_TYPES)}; got {value!r}")


@attrs.frozen(kw_only=True)
class ScheduleConfig:
    """Which phase each global step runs (§2): U = understanding, G = generation."""

    steps: int = _pos(10_000)  # total global steps of the run
    understanding: int = _pos(3, 0)  # U-steps per cycle
    generation: int = _pos(2, 0)  # G-steps per cycle
    bootstrap: int = _pos(0, 0)  # G-steps before the first cycle (E5: 2)
    order: str = attrs.field(default="UG", validator=one_of(("UG", "GU")))  # which phase opens a cycle
    stagewise: bool = attrs.field(default=False, validator=boolean())  # E7: U-only first half, then G-only

    def __attrs_post_init__(self) -> None:
        if self.understanding + self.generation == 0 and not self.stagewise:
            raise ConfigError("ScheduleConfig: understanding + generation must be at least 1 unless stagewise "
                              f"(a cycle needs a step), got {self.understanding} + {self.generation}")


@attrs.frozen(kw_only=True)
class ProposerRole:
    """The Proposer: how it asks (K candidates, sampling, certificate) and its GRPO update (§3.2–3.4, §3.10)."""

    ask: ProposerConfig = _nested(ProposerConfig)  # K, temperature, certificate, spec sampling
    grpo: GRPOConfig = _nested(GRPOConfig)  # clip ε 0.2, advantage normalisation
    extra_samples: int = _pos(2, 0)  # group members besides the chosen output (§3.10: 2)
    update: bool = attrs.field(default=True, validator=boolean())  # train its adapter
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
    # ShapesWorld pools only (an asg extension; 0 = off, as the reference): per U-step, this many
    # questions about the image are labelled by the scene vote, the one scene table the Solver's answers
    # to 37 related questions agree on best (asg.roles.scene_vote), and their cross-entropy under the
    # canonical prompt joins the Solver's update. See docs/training.md.
    scene_vote_questions: int = _pos(0, 0)
    # draw those questions balanced like ShapesWorld's generator (colour counts of present colours plus
    # one absent, existence strictly alternating yes/no); false = the first, unbalanced draw
    scene_vote_balanced: bool = attrs.field(default=True, validator=boolean())
    # more pool images per U-step (0 = none): each is labelled by the scene vote like the step's own
    # image and makes one more Solver update of its own (scene labels alone), before the step's main
    # Solver update; needs scene_vote_questions > 0. See docs/training.md.
    scene_vote_extra_images: int = _pos(0, 0)
    # position labels per labelled image on top of scene_vote_questions (0 = none): questions about the
    # objects the decoded table names once, answered by the orders along each axis that the Solver's
    # answers to every phrasing agree on best, "yes" and "no" alternating; needs scene_vote_questions > 0.
    scene_vote_position: int = _pos(0, 0)
    # the question types scene_vote_questions are drawn from, comma-separated, among count, color,
    # shape, existence (all by default); types left out still shape the decoded table
    scene_vote_types: str = attrs.field(default="count,color,shape,existence", validator=_label_types)
    update: bool = attrs.field(default=True, validator=boolean())  # train its adapter
    lr: float = _lr()

    @property
    def scene_vote_type_list(self) -> tuple[str, ...]:
        return _split_types(self.scene_vote_types)

    def __attrs_post_init__(self) -> None:
        if self.scene_vote_extra_images and not self.scene_vote_questions:
            raise ConfigError(f"SolverRole: scene_vote_extra_images = {self.scene_vote_extra_images} needs "
                              "scene_vote_questions > 0 (the labels each extra image gets), got 0")
        if self.scene_vote_position and not self.scene_vote_questions:
            raise ConfigError(f"SolverRole: scene_vote_position = {self.scene_vote_position} needs "
                              "scene_vote_questions > 0 (the decoded scene names the objects), got 0")


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
    update: bool = attrs.field(default=True, validator=boolean())  # train adapter + head
    lr: float = attrs.field(default=5e-7, validator=number(0.0, 1.0, lo_open=True))


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
    # stop the run (with a checkpoint, state "failed") after this many consecutive steps whose update was
    # skipped for a non-finite loss, gradient or model output (0 = never stop)
    max_consecutive_skips: int = _pos(20, 0)
    # out of memory in a batched backbone call: halve the batch and retry down to this many items (asg.oom);
    # 0 = the ASG_OOM_FLOOR environment variable, else 1
    oom_floor: int = _pos(0, 0)


@attrs.frozen(kw_only=True)
class Recipe:
    """A named training configuration; ``e1`` (all defaults) is the paper's main run."""

    name: str = attrs.field(default="custom", validator=string(nonempty=True))
    description: str = attrs.field(default="", validator=string())
    seed: int = attrs.field(default=42, validator=number(0, None, integer=True))
    schedule: ScheduleConfig = _nested(ScheduleConfig)
    proposer: ProposerRole = _nested(ProposerRole)
    solver: SolverRole = _nested(SolverRole)
    generator: GeneratorRole = _nested(GeneratorRole)
    kl: KLConfig = _nested(KLConfig)  # adaptive β of every KL term (§5.1)
    optim: OptimConfig = _nested(OptimConfig)
    run: RunConfig = _nested(RunConfig)
    rewards: RewardsConfig = _nested(RewardsConfig)

    def __attrs_post_init__(self) -> None:
        check_recipe(self)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """A validated recipe from a plain mapping; any error is a ConfigFieldError naming the field's dotted path."""
        return _build(cls, data)


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
                where = ".".join(path[: depth + 1])
                raise _field_error(where, f"--set {item!r}: {where!r} is not a section; sections here: "
                                          f"{', '.join(sections(cls))}{did_you_mean(part, sections(cls))}")
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
    recipe = Recipe.from_dict(apply_overrides(recipe_mapping(name_or_path), overrides))
    check_components(recipe)
    return recipe


# -- strict loading: every error names the field by its dotted path ---------------------------------
# Message shape, for every kind of mistake:  "<dotted.path>: <what is wrong and what is allowed>, got <value>"
_SIMPLE_TYPES = {"bool": ((bool,), "a bool (true or false)"), "str": ((str,), "a string"),
                 "int": ((int,), "an integer"), "float": ((int, float), "a number")}
_FIELD_IN_MESSAGE = re.compile(r"^(?:(?P<cls>\w+)\.(?P<dotted>\w+)|'(?P<quoted>\w+)')")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _field_error(path: str, message: str) -> ConfigFieldError:
    err = ConfigFieldError(f"{path or 'recipe'}: {message}")
    err.path = path
    return err


def _check_type(cls: type, field: attrs.Attribute, value: Any, path: str) -> None:
    """Fields declared without a validator (in role and update modules) still get their annotated type."""
    simple = _SIMPLE_TYPES.get(field.type if isinstance(field.type, str) else getattr(field.type, "__name__", ""))
    if simple is None:
        return
    types, kind = simple
    if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
        raise _field_error(path, f"{cls.__name__}.{field.name} must be {kind}, got {_fmt(value)} ({type(value).__name__})")


def _locate(cls: type, path: str, exc: Exception) -> ConfigFieldError:
    """A validator's or ``__attrs_post_init__``'s error, prefixed by the dotted path of the field it names."""
    message = str(exc)
    m = _FIELD_IN_MESSAGE.match(message)
    name = m and (m["quoted"] or (m["dotted"] if m["cls"] == cls.__name__ else None))
    return _field_error(_join(path, name) if name in attrs.fields_dict(cls) else path, message)


def _build(cls: type, data: Any, path: str = "") -> Any:
    """An instance of the attrs config ``cls`` from a mapping, every error a ConfigFieldError with its path."""
    if isinstance(data, cls):
        return data
    fields = attrs.fields_dict(cls)
    if not isinstance(data, Mapping):
        raise _field_error(path, f"{cls.__name__} is a section: give a mapping with keys {', '.join(fields)}, "
                                 f"got {_fmt(data)} ({type(data).__name__})")
    unknown = [str(k) for k in data if str(k) not in fields]
    if unknown:
        if len(unknown) == 1:
            hint = did_you_mean(unknown[0], fields)
        else:
            near = [(k, c) for k in unknown if (c := closest(k, fields))]
            hint = "; did you mean " + ", ".join(f"{c!r} for {k!r}" for k, c in near) + "?" if near else ""
        raise _field_error(_join(path, unknown[0]) if len(unknown) == 1 else path,
                           f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; "
                           f"valid keys: {', '.join(fields)}{hint}")
    kwargs = {}
    for key, value in data.items():
        field, here = fields[key], _join(path, key)
        sub = nested_config(field)
        if sub is not None:
            value = _build(sub, value, here)
        elif "config_map" in field.metadata:
            if not isinstance(value, Mapping):
                raise _field_error(here, f"{cls.__name__}.{key} must map names to settings, got {_fmt(value)} ({type(value).__name__})")
            value = {str(n): _build(field.metadata["config_map"], v, _join(here, str(n))) for n, v in value.items()}
        elif field.validator is None:
            _check_type(cls, field, value, here)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigFieldError:
        raise
    except (TypeError, ValueError) as exc:
        raise _locate(cls, path, exc) from exc


def _consistency(r: Recipe) -> list[tuple[str, bool, str]]:
    """(field, holds, what is allowed) for every rule that spans fields; the first broken one is raised."""
    p, s, g = r.proposer, r.solver, r.generator
    ste, diff = r.rewards.ste, r.rewards.difficulty
    return [
        ("solver.questions_per_step", s.questions_per_step <= p.ask.k,
         (f"must be in [1, proposer.ask.k = {p.ask.k}] (the Solver trains on questions the Proposer asked), "
          f"got {s.questions_per_step}")),
        ("proposer.extra_samples", not p.update or p.extra_samples >= 1,
         ("must be at least 1 while proposer.update is true (GRPO compares 1 + extra_samples outputs; a group "
          f"of one never updates), got {p.extra_samples}; or set proposer.update=false")),
        ("generator.min_qa", g.min_qa <= p.ask.spec_pairs,
         (f"must be in [0, proposer.ask.spec_pairs = {p.ask.spec_pairs}] (a spec holds at most spec_pairs QA "
          f"pairs, so no spec would ever train), got {g.min_qa}")),
        ("generator.gate.min_pairs", g.gate.min_pairs <= p.ask.spec_pairs,
         (f"must be in [0, proposer.ask.spec_pairs = {p.ask.spec_pairs}] (a spec holds at most spec_pairs QA "
          f"pairs, so the gate would never accept one), got {g.gate.min_pairs}")),
        ("generator.flow", not g.update or g.flow.real or g.flow.generated,
         ("flow.real and flow.generated must not both be false while generator.update is true (a flow or "
          "diffusion generator would have no training pair), got real=false, generated=false")),
        ("generator.generate.candidates", not g.update or g.flow.real or g.generate.candidates >= 2,
         ("must be at least 2 while generator.update is true and generator.flow.real is false (advantages are "
          f"relative to the group of candidates; one candidate has none), got {g.generate.candidates}")),
        ("rewards.ste.min_window", ste.min_window <= ste.window,
         (f"must be in [1, rewards.ste.window = {ste.window}] (the STE normaliser would never leave its sigmoid "
          f"fallback), got {ste.min_window}")),
        ("rewards.ste.spot_hard_above", ste.spot_hard_above >= ste.spot_easy_below,
         f"must be in [rewards.ste.spot_easy_below = {ste.spot_easy_below}, 1.0], got {ste.spot_hard_above}"),
        ("rewards.difficulty.target_min_samples", diff.target_min_samples <= diff.target_window,
         (f"must be in [1, rewards.difficulty.target_window = {diff.target_window}] (the difficulty target would "
          f"never adapt), got {diff.target_min_samples}")),
    ]


def check_recipe(recipe: Recipe) -> None:
    """Rules that span fields (run by ``Recipe`` itself); a broken one is a ConfigFieldError naming its field."""
    for path, holds, allowed in _consistency(recipe):
        if not holds:
            raise _field_error(path, allowed)


def check_components(recipe: Recipe) -> None:
    """Every ``rewards.components`` name must be a registered reward component (``asg plugins`` lists them)."""
    from asg.plugins import registered

    valid = registered("rewards")
    names = [n for n in recipe.rewards.components if n not in valid]
    if names:
        raise _field_error(f"rewards.components.{names[0]}",
                           f"unknown reward component {names[0]!r}; valid choices: {', '.join(valid)}"
                           f"{did_you_mean(names[0], valid)}")


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
