"""Bad configuration is refused at start: an unknown key, a wrong type, an out-of-range value or an
inconsistent combination is a ConfigError whose message starts with the field's dotted path and gives
the value and what is allowed — through ``load_recipe`` and through ``asg train`` before any model loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asg.cli import main
from asg.errors import ConfigError, ConfigFieldError
from asg.plugins import registered
from asg.train.recipe import Recipe, SolverRole, load_recipe


def _refused(overrides: list[str], recipe: str | Path = "e1") -> ConfigFieldError:
    with pytest.raises(ConfigFieldError) as err:
        load_recipe(recipe, overrides)
    return err.value


def _check(err: ConfigFieldError, path: str, fragments: list[str]) -> None:
    text = str(err)
    assert isinstance(err, ConfigError) and err.path == path, text
    assert text.startswith(f"{path}: "), text
    for fragment in fragments:
        assert fragment in text, (fragment, text)


UNKNOWN_KEYS = [
    (["solvr=1"], "solvr", ["Recipe: unknown key(s) 'solvr'", "valid keys: name, description, seed, schedule, proposer",
                            "did you mean 'solver'?"]),
    (["solvr.lr=1e-5"], "solvr", ["'solvr' is not a section", "sections here: schedule, proposer, solver, generator",
                                  "did you mean 'solver'?"]),
    (["schedule.step=40"], "schedule.step", ["ScheduleConfig: unknown key(s) 'step'", "valid keys: steps, understanding",
                                             "did you mean 'steps'?"]),
    (["solver.sample.nn=5"], "solver.sample.nn", ["SolverConfig: unknown key(s) 'nn'",
                                                  "valid keys: n, max_new_tokens, ladder, greedy_hint", "did you mean 'n'?"]),
    (["proposer.ask.certificate.treshold=0.5"], "proposer.ask.certificate.treshold",
     ["CertificateConfig: unknown key(s) 'treshold'", "did you mean 'threshold'?"]),
    (["rewards.ste.windw=64"], "rewards.ste.windw", ["valid keys: first_k, aggregation, window", "did you mean 'window'?"]),
    (["rewards.components.generator.diversty.enabled=false"], "rewards.components.generator.diversty",
     ["unknown reward component 'generator.diversty'", "valid choices: generator.contradiction",
      "did you mean 'generator.diversity'?"]),
]

WRONG_TYPES = [
    (["solver.sample.n=five"], "solver.sample.n", ["must be an integer in [1, 64]", "got 'five' (str)"]),
    (["solver.sample.n=2.5"], "solver.sample.n", ["must be an integer in [1, 64]", "got 2.5 (float)"]),
    (["schedule.steps=true"], "schedule.steps", ["must be an integer in [1, inf]", "got True (bool)"]),
    (["solver.lr=[0.1]"], "solver.lr", ["must be a number in (0.0, 1.0]", "got [0.1] (list)"]),
    (["solver.update=1"], "solver.update", ["must be a bool (true or false)", "got 1 (int)"]),
    (["schedule.stagewise=yes"], "schedule.stagewise", ["must be a bool (true or false)", "got 'yes' (str)"]),
    (["solver.sample.greedy_hint=yes"], "solver.sample.greedy_hint", ["must be a bool (true or false)", "got 'yes' (str)"]),
    (["generator.flow.real=null"], "generator.flow.real", ["must be a bool (true or false)", "got None (NoneType)"]),
    (["kl.adaptive=0"], "kl.adaptive", ["must be a bool (true or false)", "got 0 (int)"]),
    (["description=5"], "description", ["must be a str", "got 5 (int)"]),
    (["schedule.order=1"], "schedule.order", ["must be one of 'UG', 'GU'", "got 1"]),
    (["solver=5"], "solver", ["SolverRole is a section", "keys sample, reinforce, questions_per_step", "got 5 (int)"]),
    (["rewards.components.generator.diversity.weight=high"], "rewards.components.generator.diversity.weight",
     ["must be a number", "got 'high' (str)"]),
]

OUT_OF_RANGE = [
    (["solver.sample.n=0"], "solver.sample.n", ["must be an integer in [1, 64]", "got 0"]),
    (["solver.sample.n=65"], "solver.sample.n", ["must be an integer in [1, 64]", "got 65"]),
    (["proposer.lr=0"], "proposer.lr", ["must be a number in (0.0, 1.0]", "got 0"]),
    (["generator.lr=-1e-6"], "generator.lr", ["must be a number in (0.0, 1.0]", "got -1e-06"]),
    (["run.keep_checkpoints=0"], "run.keep_checkpoints", ["must be an integer in [1, inf]", "got 0"]),
    (["schedule.steps=0"], "schedule.steps", ["must be an integer in [1, inf]", "got 0"]),
    (["seed=-1"], "seed", ["must be an integer in [0, inf]", "got -1"]),
    (["proposer.ask.temperature=11"], "proposer.ask.temperature", ["must be a number in [0.0, 10.0]", "got 11"]),
    (["proposer.ask.top_p=1.5"], "proposer.ask.top_p", ["must be a number in (0.0, 1.0]", "got 1.5"]),
    (["solver.sample.ladder.t_min=0"], "solver.sample.ladder.t_min", ["must be a number in (0.0, 100.0]", "got 0"]),
    (["kl.target=0"], "kl.target", ["must be a number in (0.0, inf]", "got 0"]),
    (["kl.init=NaN"], "kl.init", ["must be finite", "(0.0, inf]", "got nan"]),
    (["optim.grad_clip=0"], "optim.grad_clip", ["must be a number in (0.0, inf]", "got 0"]),
    (["rewards.difficulty.target_mix=[0.5, 0.5]"], "rewards.difficulty.target_mix",
     ["must be three non-negative weights", "got (0.5, 0.5)"]),
]

INCONSISTENT = [
    (["solver.questions_per_step=4"], "solver.questions_per_step", ["must be in [1, proposer.ask.k = 3]", "got 4"]),
    (["proposer.extra_samples=0"], "proposer.extra_samples", ["while proposer.update is true", "got 0"]),
    (["generator.min_qa=4"], "generator.min_qa", ["must be in [0, proposer.ask.spec_pairs = 3]", "got 4"]),
    (["generator.gate.min_pairs=4"], "generator.gate.min_pairs", ["must be in [0, proposer.ask.spec_pairs = 3]", "got 4"]),
    (["generator.flow.real=false", "generator.flow.generated=false"], "generator.flow",
     ["must not both be false while generator.update is true", "got real=false, generated=false"]),
    (["generator.flow.real=false", "generator.generate.candidates=1"], "generator.generate.candidates",
     ["must be at least 2", "got 1"]),
    (["schedule.understanding=0", "schedule.generation=0"], "schedule",
     ["understanding + generation must be at least 1"]),
    (["solver.sample.ladder.t_min=3.0"], "solver.sample.ladder.t_min", ["t_min must be <= t_max", "t_min=3.0, t_max=2.5"]),
    (["kl.init=200"], "kl.init", ["must lie in [beta_min, beta_max] = [0.001, 100.0]", "got 200"]),
    (["rewards.consistency.band_low=2.0"], "rewards.consistency.band_high", ["must be greater than band_low"]),
    (["rewards.ste.min_window=200"], "rewards.ste.min_window", ["must be in [1, rewards.ste.window = 128]", "got 200"]),
    (["rewards.ste.spot_easy_below=0.8"], "rewards.ste.spot_hard_above",
     ["must be in [rewards.ste.spot_easy_below = 0.8, 1.0]", "got 0.7"]),
    (["rewards.difficulty.target_min_samples=300"], "rewards.difficulty.target_min_samples",
     ["must be in [1, rewards.difficulty.target_window = 256]", "got 300"]),
]


@pytest.mark.parametrize(("overrides", "path", "fragments"), UNKNOWN_KEYS)
def test_unknown_keys_list_the_valid_ones_and_suggest(overrides, path, fragments) -> None:
    """An unknown key names its dotted path, the valid keys at that level and the closest one."""
    _check(_refused(overrides), path, fragments)


@pytest.mark.parametrize(("overrides", "path", "fragments"), WRONG_TYPES)
def test_wrong_types_name_the_field_the_value_and_its_type(overrides, path, fragments) -> None:
    """A string for an int, a list for a float, a bool for an int (and the reverse) are refused."""
    _check(_refused(overrides), path, fragments)


@pytest.mark.parametrize(("overrides", "path", "fragments"), OUT_OF_RANGE)
def test_out_of_range_values_give_the_range(overrides, path, fragments) -> None:
    """A value outside its interval (learning rates > 0, temperatures, KL target, counts) gives the interval."""
    _check(_refused(overrides), path, fragments)


@pytest.mark.parametrize(("overrides", "path", "fragments"), INCONSISTENT)
def test_inconsistent_combinations_name_the_field_and_the_bound(overrides, path, fragments) -> None:
    """Sizes that must bound each other, switches that leave nothing to train, crossed windows."""
    _check(_refused(overrides), path, fragments)


@pytest.mark.parametrize("overrides", [
    ["proposer.extra_samples=0", "proposer.update=false"],  # the group rule only applies while training
    ["generator.flow.real=false", "generator.flow.generated=false", "generator.update=false"],
    ["generator.flow.real=false", "generator.generate.candidates=1", "generator.update=false"],
    ["solver.questions_per_step=5", "proposer.ask.k=5"],
    ["generator.min_qa=5", "generator.gate.min_pairs=5", "proposer.ask.spec_pairs=5"],
    ["solver.sample.n=1"],  # one greedy answer: allowed (the no_sc ablation)
    ["schedule.steps=6", "proposer.ask.temperature=0"],
])
def test_consistent_edges_are_accepted(overrides) -> None:
    """The rules refuse only what cannot work: the same values with their counterpart moved load fine."""
    load_recipe("e1", overrides)


def test_every_registered_recipe_is_consistent() -> None:
    """The presets themselves satisfy every rule."""
    for name in registered("recipes"):
        assert load_recipe(name).name == name


def test_a_recipe_built_in_code_is_checked_too() -> None:
    """The cross-field rules run in Recipe itself, not only when a mapping is loaded."""
    with pytest.raises(ConfigFieldError, match=r"^solver.questions_per_step: must be in \[1, proposer.ask.k = 3\]"):
        Recipe(solver=SolverRole(questions_per_step=4))


def test_recipe_files_get_the_same_messages(tmp_path: Path) -> None:
    """A TOML or JSON recipe file is checked like --set; several unknown keys are named at their section."""
    toml = tmp_path / "bad.toml"
    toml.write_text("[solver.sample]\nn = \"7\"\n")
    _check(_refused([], toml), "solver.sample.n", ["must be an integer in [1, 64]", "got '7' (str)"])
    js = tmp_path / "bad.json"
    js.write_text(json.dumps({"run": {"keep_checkpoint": 2, "sample_evry": 5}}))
    _check(_refused([], js), "run", ["RunConfig: unknown key(s) 'keep_checkpoint', 'sample_evry'",
                                     "did you mean 'keep_checkpoints' for 'keep_checkpoint', 'sample_every' for 'sample_evry'?"])


def _train(tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--images", str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "run"), *extra]


@pytest.mark.parametrize(("extra", "message"), [
    (["--set", "solver.sample.nn=5"], "solver.sample.nn: SolverConfig: unknown key(s) 'nn'"),
    (["--set", "solver.lr=fast"], "solver.lr: SolverRole.lr must be a number in (0.0, 1.0], got 'fast' (str)"),
    (["--steps", "0"], "schedule.steps: ScheduleConfig.steps must be an integer in [1, inf], got 0"),
    (["--recipe", "demo", "--set", "solver.questions_per_step=4"], "solver.questions_per_step: must be in [1, proposer.ask.k = 3]"),
])
def test_cli_reports_the_config_error_before_loading_anything(extra, message, tmp_path, capsys) -> None:
    """`asg train` with a bad recipe exits 2 with the message on stderr; the bogus --images is never
    reached and no run directory is created."""
    assert main(_train(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"asg train: error: {message}"), err
    assert "Traceback" not in err and "no-such-folder" not in err
    assert not (tmp_path / "run").exists()


def test_cli_in_a_fresh_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    """The same through the real entry point: status 2, the error alone on stderr."""
    code = "import sys; from asg.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *_train(tmp_path, "--set", "kl.target=0")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == (
        "asg train: error: kl.target: KLConfig.target must be a number in (0.0, inf], got 0")
    assert "Traceback" not in proc.stderr
