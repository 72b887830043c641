"""The plugin host: real entry points, isolation of broken plugins, strict mode, limits, duplicates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asg.errors import DuplicateNameError, PluginError, UnknownNameError
from asg.plugins import PluginHost

GOOD = """
    import asg

    class ToyBackbone:
        pass

    @asg.hookimpl
    def register_backbones(register):
        register("toy", "asg_toy_plugin:ToyBackbone", description="a toy")

    @asg.hookimpl
    def register_rewards(register):
        register("toy-reward", lambda batch: [0.0])
"""


def _host(**env: str) -> PluginHost:
    return PluginHost(env={k: v for k, v in env.items()}).load()


def test_builtin_tiny_is_registered_like_a_plugin() -> None:
    """The built-in `tiny` backbone comes from a plugin record with its hooks and registrations."""
    host = _host()
    rec = host.records["asg.backbones.tiny.plugin"]
    assert rec.builtin and rec.distribution == "asg-core" and rec.error is None
    assert rec.hooks == ["register_backbones"]
    assert rec.registered["backbones"] == ["tiny"]
    assert "tiny" in host.names("backbones")


def test_third_party_entry_point_registers_lazily(make_dist) -> None:
    """A real distribution's entry point registers a backbone that resolves only when asked for."""
    make_dist("asg-toy", "1.2.3", {"toy": "asg_toy_plugin"}, {"asg_toy_plugin": GOOD})
    host = _host()
    rec = host.records["toy"]
    assert (rec.distribution, rec.version, rec.error) == ("asg-toy", "1.2.3", None)
    assert rec.hooks == ["register_backbones", "register_rewards"]
    assert rec.registered == {"backbones": ["toy"], "rewards": ["toy-reward"], "recipes": []}
    assert host.get("backbones", "toy").resolve().__name__ == "ToyBackbone"


def test_broken_plugin_is_recorded_and_skipped(make_dist) -> None:
    """A plugin that fails to import is reported with its distribution and error; others still load."""
    make_dist("asg-broken", "0.1", {"broken": "asg_broken_plugin"}, {"asg_broken_plugin": "import no_such_module_xyz\n"})
    make_dist("asg-toy", "1.0", {"toy": "asg_toy_plugin"}, {"asg_toy_plugin": GOOD})
    host = _host()
    rec = host.records["broken"]
    assert rec.error_phase == "import"
    assert rec.distribution == "asg-broken" and rec.version == "0.1"
    assert "No module named 'no_such_module_xyz'" in rec.error
    assert "toy" in host.names("backbones") and "tiny" in host.names("backbones")


def test_strict_mode_makes_a_broken_plugin_fatal(make_dist) -> None:
    """ASG_STRICT_PLUGINS=1 turns an import failure into a PluginError that names the plugin."""
    make_dist("asg-broken", "0.1", {"broken": "asg_broken_plugin"}, {"asg_broken_plugin": "raise RuntimeError('boom')\n"})
    with pytest.raises(PluginError, match=r"plugin 'broken' \(asg-broken 0.1\) failed during import: RuntimeError: boom"):
        _host(ASG_STRICT_PLUGINS="1")


def test_load_plugins_limits_what_loads(make_dist) -> None:
    """ASG_LOAD_PLUGINS loads only the named plugins (by entry-point or distribution name)."""
    make_dist("asg-toy", "1.0", {"toy": "asg_toy_plugin"}, {"asg_toy_plugin": GOOD})
    make_dist("asg-broken", "0.1", {"broken": "asg_broken_plugin"}, {"asg_broken_plugin": "raise RuntimeError\n"})
    host = _host(ASG_LOAD_PLUGINS="asg-toy")
    assert "broken" not in host.records and host.records["toy"].error is None
    none = _host(ASG_LOAD_PLUGINS="")
    assert "toy" not in none.records and "tiny" in none.names("backbones")  # built-ins always load


def test_load_plugins_reports_names_that_match_nothing() -> None:
    """A name in ASG_LOAD_PLUGINS that no installed plugin has is reported, not silently ignored."""
    host = _host(ASG_LOAD_PLUGINS="nope")
    assert host.records["nope"].error_phase == "not-found"


def test_duplicate_backbone_names_both_providers(make_dist) -> None:
    """Two plugins registering the same name make that name an error naming both providers."""
    src = GOOD.replace('"toy-reward"', '"other"')
    make_dist("asg-toy", "1.0", {"toy": "asg_toy_plugin"}, {"asg_toy_plugin": GOOD})
    make_dist("asg-toy2", "2.0", {"toy2": "asg_toy2_plugin"}, {"asg_toy2_plugin": src})
    host = _host()
    with pytest.raises(DuplicateNameError) as err:
        host.get("backbones", "toy")
    assert "plugin 'toy' (asg-toy 1.0)" in str(err.value) and "plugin 'toy2' (asg-toy2 2.0)" in str(err.value)
    assert "duplicate backbone name 'toy'" in host.records["toy2"].error
    with pytest.raises(DuplicateNameError):
        _host(ASG_STRICT_PLUGINS="1")


def test_duplicate_of_a_builtin_is_an_error(make_dist) -> None:
    """A third-party plugin cannot silently shadow the built-in `tiny`."""
    src = GOOD.replace('register("toy"', 'register("tiny"')
    make_dist("asg-shadow", "1.0", {"shadow": "asg_shadow_plugin"}, {"asg_shadow_plugin": src})
    with pytest.raises(DuplicateNameError, match="asg-shadow 1.0.*asg-core|asg-core.*asg-shadow 1.0"):
        _host().get("backbones", "tiny")


def test_failing_hook_rolls_back_its_partial_registration(make_dist) -> None:
    """A hook that raises midway leaves nothing of that plugin registered for that kind."""
    src = """
        import asg

        @asg.hookimpl
        def register_backbones(register):
            register("half", "x:y")
            raise ValueError("second registration failed")
    """
    make_dist("asg-half", "1.0", {"half": "asg_half_plugin"}, {"asg_half_plugin": src})
    host = _host()
    assert "half" not in host.names("backbones")
    assert host.records["half"].error_phase == "register_backbones"
    assert host.records["half"].registered["backbones"] == []


def test_unknown_hook_is_a_validation_error(make_dist) -> None:
    """A misspelled hook name is reported with the list of known hooks."""
    src = """
        import asg

        @asg.hookimpl
        def register_backbone(register):
            register("x", "x:y")
    """
    make_dist("asg-typo", "1.0", {"typo": "asg_typo_plugin"}, {"asg_typo_plugin": src})
    rec = _host().records["typo"]
    assert rec.error_phase == "validate"
    assert "register_backbone" in rec.error and "register_backbones" in rec.error


@pytest.mark.parametrize(("name", "target", "message"), [
    ("Bad Name", "x:y", "must match"),
    ("ok", None, "target None"),
    ("ok", "no_colon", "module:attr"),
])
def test_invalid_registrations_are_rejected(make_dist, name, target, message) -> None:
    """Registrations with a bad name or target fail that plugin's hook with a precise message."""
    src = f"""
        import asg

        @asg.hookimpl
        def register_backbones(register):
            register({name!r}, {target!r})
    """
    make_dist("asg-bad", "1.0", {"bad": "asg_bad_plugin"}, {"asg_bad_plugin": src})
    rec = _host().records["bad"]
    assert message in rec.error


def test_unknown_backbone_lists_valid_choices() -> None:
    """Asking for an unregistered backbone names the valid ones."""
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'nope'; valid choices: .*tiny"):
        _host().get("backbones", "nope")


def test_unimportable_lazy_target_names_the_plugin(make_dist) -> None:
    """A lazy target that cannot be imported raises a PluginError naming backbone, plugin and target."""
    src = GOOD.replace("asg_toy_plugin:ToyBackbone", "asg_toy_plugin:Missing")
    make_dist("asg-toy", "1.0", {"toy": "asg_toy_plugin"}, {"asg_toy_plugin": src})
    with pytest.raises(PluginError, match=r"backbone 'toy' from plugin 'toy' points at 'asg_toy_plugin:Missing'"):
        _host().get("backbones", "toy").resolve()


def _run_cli(*args: str, env_extra: dict[str, str] | None = None, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """Run `asg` in a fresh interpreter and report whether torch got imported."""
    code = (  # atexit, because argparse's --help exits from inside main()
        "import atexit, sys\n"
        "atexit.register(lambda: print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_NOT_IMPORTED', file=sys.stderr))\n"
        "from asg.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, **(env_extra or {})}
    if pythonpath:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def test_plugins_command_prints_json_without_torch(make_dist) -> None:
    """`asg plugins` prints each plugin's name, version, hooks, registrations and errors, without importing torch."""
    site = make_dist("asg-toy", "1.0", {"toy": "asg_toy_plugin"}, {"asg_toy_plugin": GOOD})
    make_dist("asg-broken", "0.1", {"broken": "asg_broken_plugin"}, {"asg_broken_plugin": "import no_such_mod\n"})
    proc = _run_cli("plugins", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert "TORCH_NOT_IMPORTED" in proc.stderr
    data = {r["name"]: r for r in json.loads(proc.stdout)}
    assert data["toy"]["version"] == "1.0" and data["toy"]["registered"]["backbones"] == ["toy"]
    assert data["broken"]["error"].startswith("ModuleNotFoundError")
    assert data["asg.backbones.tiny.plugin"]["registered"]["backbones"] == ["tiny"]


def test_help_does_not_import_torch() -> None:
    """`asg --help` stays fast: no torch import."""
    proc = _run_cli("--help")
    assert proc.returncode == 0 and "plugins" in proc.stdout and "inspect" in proc.stdout
    assert "TORCH_NOT_IMPORTED" in proc.stderr


def test_strict_mode_from_the_cli_exits_with_a_clear_error(make_dist) -> None:
    """With ASG_STRICT_PLUGINS=1 a broken plugin makes `asg plugins` exit 2 naming the plugin."""
    site = make_dist("asg-broken", "0.1", {"broken": "asg_broken_plugin"}, {"asg_broken_plugin": "import no_such_mod\n"})
    proc = _run_cli("plugins", env_extra={"ASG_STRICT_PLUGINS": "1"}, pythonpath=site)
    assert proc.returncode == 2
    assert "plugin 'broken' (asg-broken 0.1) failed during import" in proc.stderr
