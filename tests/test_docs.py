"""Documentation stays true: the README's commands are what CI runs; every hook and command is documented."""

from __future__ import annotations

import os
import re
from pathlib import Path

from asg import hookspecs
from asg.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_commands() -> list[str]:
    block = README.split("## Set-up: two commands on a fresh clone", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one() -> None:
    """The README gives exactly two commands (demo, tests) and .ci/run executes the test command verbatim."""
    demo, test = _readme_commands()
    assert demo.endswith("asg demo") and "pytest" in test
    run = (ROOT / ".ci" / "run").read_text()
    assert test in run.splitlines()
    for script in (".ci/run", ".ci/setup"):
        assert os.access(ROOT / script, os.X_OK), f"{script} is not executable"


def test_every_hook_is_documented_for_plugin_authors() -> None:
    """Each hookspec appears in docs/plugins.md."""
    guide = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert hooks == ["register_backbones", "register_recipes", "register_rewards"]
    for hook in hooks:
        assert f"`{hook}(register)`" in guide, hook


def test_every_command_is_documented() -> None:
    """Each `asg` sub-command has a row in docs/cli.md and a mention in the README."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    cli_doc = (ROOT / "docs" / "cli.md").read_text()
    for name in sub.choices:
        assert re.search(rf"`asg {name}\b", cli_doc), f"asg {name} missing from docs/cli.md"
        assert f"asg {name}" in README or name in ("train",), f"asg {name} missing from README"


def test_top_level_layout_is_what_the_client_asked_for() -> None:
    """The committed top level is exactly pyproject.toml, README.md and the six folders (plus dot-files)."""
    import subprocess

    import pytest

    proc = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout:
        pytest.skip("not a git checkout")
    top = {line.split("/", 1)[0] for line in proc.stdout.splitlines() if not line.startswith(".")}
    assert top == {"pyproject.toml", "README.md", "core", "plugins", "kernels", "benchmarks", "tests", "docs"}
