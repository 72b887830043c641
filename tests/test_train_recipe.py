"""Recipes: typed configs, the presets e1-e7, --set overrides, recipe files and the U/G schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asg.errors import ConfigError, UnknownNameError
from asg.train.recipe import Recipe, ScheduleConfig, load_recipe, phase_of


def _phases(schedule: ScheduleConfig, n: int) -> str:
    return "".join(phase_of(s, schedule) for s in range(1, n + 1))


def test_e1_is_all_defaults_and_runs_3u_2g() -> None:
    """e1 equals a default Recipe (name aside) and alternates UUUGG from step 1 (§2)."""
    e1 = load_recipe("e1")
    assert e1 == Recipe(name="e1", description=e1.description)
    assert _phases(e1.schedule, 10) == "UUUGGUUUGG"
    # 10 000 steps -> 6 000 U and 4 000 G, as the reference reports
    assert sum(phase_of(s, e1.schedule) == "U" for s in range(1, 10_001)) == 6000


def test_presets_differ_as_section_8_says() -> None:
    """e2 is U-only, e3/e6 G-only, e5 bootstraps 2 G then runs G-first cycles, e7 switches halfway."""
    assert _phases(load_recipe("e2").schedule, 6) == "UUUUUU"
    assert not load_recipe("e2").generator.update
    e3 = load_recipe("e3")
    assert _phases(e3.schedule, 5) == "GGGGG" and not e3.solver.update and not e3.proposer.update
    assert _phases(load_recipe("e5").schedule, 12) == "GG" + "GGUUU" + "GGUUU"
    e7 = load_recipe("e7", ["schedule.steps=6"])
    assert _phases(e7.schedule, 6) == "UUUGGG"
    for name in ("e2", "e3", "e4", "e5", "e6", "e7"):
        assert load_recipe(name).rewards.difficulty.tau_easy == 1.0
    assert load_recipe("e1").rewards.difficulty.tau_easy == 0.85


def test_shapes_is_demo_plus_the_val_tuned_settings() -> None:
    """`shapes` (the recipe of `asg demo` and the shapes suite) is `demo` with exactly the settings tuned on
    ShapesWorld's val split (docs/results.md), nothing else."""
    tuned = ["schedule.steps=120", "solver.lr=3e-4", "solver.scene_vote_questions=16",
             "solver.scene_vote_balanced=false", "solver.scene_vote_extra_images=3", "solver.scene_vote_position=4",
             "generator.flow.generated=false"]
    shapes, demo = load_recipe("shapes"), load_recipe("demo", tuned)
    assert {**shapes.to_dict(), "name": "", "description": ""} == {**demo.to_dict(), "name": "", "description": ""}
    for i, setting in enumerate(tuned):  # none of them is demo's value already
        assert load_recipe("demo", tuned[:i + 1]) != load_recipe("demo", tuned[:i]), setting


def test_set_overrides_reach_nested_fields_and_components() -> None:
    """--set walks sections (also helper configs and dotted reward-component names) before validation."""
    r = load_recipe("e1", ["solver.sample.n=5", "solver.sample.ladder.t_max=2.0", "proposer.lr=3e-5",
                           "rewards.components.generator.diversity.enabled=false", "schedule.order=GU"])
    assert r.solver.sample.n == 5 and r.solver.sample.ladder.t_max == 2.0
    assert r.proposer.lr == 3e-5 and r.schedule.order == "GU"
    assert r.rewards.components["generator.diversity"].enabled is False


@pytest.mark.parametrize(("item", "message"), [
    ("solver.sample.m=5", r"SolverConfig: unknown key\(s\) 'm'; valid keys: n, "),
    ("solvr.x=1", r"'solvr' is not a section; sections here: schedule, proposer, solver, generator"),
    ("solver.sample.n=1", None),  # n=1 is allowed by SolverConfig (greedy only)
    ("solver.sample.n=0", r"SolverConfig.n must be an integer in \[1, 64\], got 0"),
    ("schedule.order=XY", r"ScheduleConfig.order must be one of 'UG', 'GU'; got 'XY'"),
    ("schedule.steps", r"--set expects KEY.PATH=VALUE"),
    ("schedule.understanding=0", None),
])
def test_bad_overrides_name_the_field(item: str, message: str | None) -> None:
    """A wrong --set is a ConfigError naming the class, the field and what is allowed."""
    if message is None:
        load_recipe("e1", [item])
        return
    with pytest.raises(ConfigError, match=message):
        load_recipe("e1", [item])


def test_empty_cycle_is_rejected() -> None:
    """0U:0G has no step to run and is refused with the reason."""
    with pytest.raises(ConfigError, match="understanding \\+ generation must be at least 1"):
        load_recipe("e1", ["schedule.understanding=0", "schedule.generation=0"])


def test_recipe_files_json_and_toml(tmp_path: Path) -> None:
    """A recipe file is the same mapping over e1; its name is the file stem; errors name the file."""
    j = tmp_path / "short.json"
    j.write_text(json.dumps({"schedule": {"steps": 12}, "solver": {"lr": 2e-5}}))
    r = load_recipe(j)
    assert (r.name, r.schedule.steps, r.solver.lr) == ("short", 12, 2e-5)
    t = tmp_path / "gen.toml"
    t.write_text('[schedule]\nunderstanding = 0\ngeneration = 5\n[generator.flow]\ngenerated = false\n')
    r = load_recipe(t)
    assert _phases(r.schedule, 3) == "GGG" and r.generator.flow.generated is False
    bad = tmp_path / "bad.toml"
    bad.write_text("[schedule\n")
    with pytest.raises(ConfigError, match=r"recipe file .*bad.toml is not valid TOML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.json")


def test_unknown_recipe_lists_choices() -> None:
    """An unknown name lists the registered recipes and mentions recipe files."""
    with pytest.raises(UnknownNameError, match=r"unknown recipe 'e9'; valid choices: demo, e1, .*\.json or \.toml"):
        load_recipe("e9")


def test_round_trip_through_json() -> None:
    """to_dict -> JSON -> from_dict gives an equal recipe (what config.json stores)."""
    r = load_recipe("e5", ["solver.sample.ladder.p_min=0.4"])
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_recipes_register_without_torch() -> None:
    """The built-in recipes are listed by the plugin host without importing torch."""
    code = ("import sys; from asg.plugins import get_host; n = get_host().names('recipes'); "
            "print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'e1'" in out and "'e7'" in out and "'demo'" in out and out.strip().endswith("False")


def test_phase_of_rejects_step_zero() -> None:
    """Steps are 1-based as in the reference."""
    with pytest.raises(ValueError, match="1-based"):
        phase_of(0, ScheduleConfig())
