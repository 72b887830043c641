"""Reward components: registration through the plugin host, recipe overrides, strict config loading."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asg.errors import ConfigError, PluginError, UnknownNameError
from asg.plugins import PluginHost
from asg.rewards import (
    BUILTIN_COMPONENTS,
    ComponentOverride,
    ProposerConfig,
    RewardComponent,
    RewardOutput,
    RewardsConfig,
    combine,
    from_dict,
    registered_components,
    resolve_components,
)
from asg.rewards.plugin import BUILTIN_REWARDS

THIRD_PARTY = """
    import asg
    from asg.rewards import RewardComponent

    BREVITY = RewardComponent("proposer.brevity", "proposer", lambda cases, cfg: [1.0] * len(cases),
                              weight=0.1, enabled=False, description="shorter questions")

    @asg.hookimpl
    def register_rewards(register):
        register("proposer.brevity", "asg_brevity:BREVITY", description="shorter questions")
"""


def _host(**env: str) -> PluginHost:
    return PluginHost(env=dict(env)).load()


def test_builtins_are_registered_by_a_builtin_plugin() -> None:
    """asg.rewards.plugin registers every built-in component under its own name and description."""
    host = _host()
    rec = host.records["asg.rewards.plugin"]
    assert rec.builtin and rec.error is None and rec.hooks == ["register_rewards"]
    assert sorted(rec.registered["rewards"]) == sorted(c.name for c in BUILTIN_COMPONENTS)
    by_name = {c.name: c for c in BUILTIN_COMPONENTS}
    for name, _target, description in BUILTIN_REWARDS:
        assert host.get("rewards", name).resolve() is by_name[name]
        assert description == by_name[name].description


def test_builtin_weights_are_the_papers() -> None:
    """Default weights: d_ste 0.70, R_sc 0.30; fidelity 0.65, cycle 0.20, diversity 0.10, contradiction -0.20."""
    weights = {c.name: c.weight for c in registered_components(host=_host(ASG_LOAD_PLUGINS=""))}  # built-ins only
    assert weights == {
        "proposer.ste": 0.70, "proposer.self_consistency": 0.30, "solver.consistency": 1.0,
        "generator.qa_fidelity": 0.65, "generator.cycle_consistency": 0.20,
        "generator.diversity": 0.10, "generator.contradiction": -0.20,
    }


def test_third_party_component_joins_its_role(make_dist) -> None:
    """A component registered by an installed plugin is resolved for its role and can be enabled by a recipe."""
    make_dist("asg-brevity", "1.0", {"brevity": "asg_brevity"}, {"asg_brevity": THIRD_PARTY})
    host = _host()
    names = [c.name for c in resolve_components("proposer", host=host)]
    assert "proposer.brevity" in names and "proposer.ste" in names
    on = {c.name: c for c in resolve_components("proposer", {"proposer.brevity": {"enabled": True}}, host=host)}
    assert on["proposer.brevity"].enabled and on["proposer.brevity"].weight == 0.1
    assert all(c.role == "generator" for c in resolve_components("generator", host=host))


def test_non_component_registration_is_skipped_or_fatal_in_strict_mode(make_dist) -> None:
    """A reward that is not a RewardComponent is skipped with a warning naming it, or raises under strict mode."""
    src = 'import asg\n\n@asg.hookimpl\ndef register_rewards(register):\n    register("toy-reward", lambda b: [0.0])\n'
    make_dist("asg-toy", "1.0", {"toy": "asg_toy"}, {"asg_toy": src})
    with pytest.warns(UserWarning, match="reward 'toy-reward' from plugin 'toy' is a function"):
        comps = registered_components(host=_host())
    assert "toy-reward" not in {c.name for c in comps}
    with pytest.raises(PluginError, match="not an asg.rewards.RewardComponent"):
        registered_components(host=_host(ASG_STRICT_PLUGINS="1"))


def test_override_of_an_unknown_component_lists_the_valid_names() -> None:
    """An override naming no registered component is an error listing the valid ones."""
    with pytest.raises(UnknownNameError, match=r"unknown component\(s\) 'proposer.stee'; valid choices: .*proposer.ste"):
        resolve_components("proposer", {"proposer.stee": {"weight": 0.5}}, host=_host())
    with pytest.raises(ConfigError, match="ComponentOverride: unknown key\\(s\\) 'wieght'"):
        resolve_components("proposer", {"proposer.ste": {"wieght": 0.5}}, host=_host())


def test_component_validators_name_the_field() -> None:
    """Bad names, roles, weights and functions are rejected with the field named."""
    ok = lambda cases, cfg: [0.0] * len(cases)  # noqa: E731
    with pytest.raises(ValueError, match=r"RewardComponent.name must match"):
        RewardComponent("Bad Name", "solver", ok)
    with pytest.raises(ValueError, match="RewardComponent.role must be one of 'proposer', 'solver', 'generator'; got 'critic'"):
        RewardComponent("x", "critic", ok)
    with pytest.raises(TypeError, match="RewardComponent.fn must be callable"):
        RewardComponent("x", "solver", 3)
    with pytest.raises(ValueError, match="RewardComponent.weight must be finite"):
        RewardComponent("x", "solver", ok, weight=float("nan"))


def test_combine_checks_each_components_output() -> None:
    """combine sums w * score and names a component that returns the wrong number of scores or NaN."""
    a = RewardComponent("a", "solver", lambda c, cfg: [1.0, 2.0], weight=0.5)
    b = RewardComponent("b", "solver", lambda c, cfg: [4.0, 0.0], weight=-0.25)
    totals, diags = combine([a, b], ["x", "y"], None)
    assert totals == [0.5 - 1.0, 1.0]  # 0.5*1 - 0.25*4, 0.5*2 - 0
    assert diags[0] == {"a": 1.0, "a.weighted": 0.5, "b": 4.0, "b.weighted": -1.0}
    short = RewardComponent("short", "solver", lambda c, cfg: [1.0])
    with pytest.raises(ValueError, match="reward component 'short' returned 1 scores for 2 cases"):
        combine([short], ["x", "y"], None)
    bad = RewardComponent("bad", "solver", lambda c, cfg: [float("nan")])
    with pytest.raises(ValueError, match="reward component 'bad' returned invalid scores"):
        combine([bad], ["x"], None)
    with pytest.raises(ConfigError, match="listed twice"):
        combine([a, a], ["x", "y"], None)


def test_reward_output_helpers() -> None:
    """argmax takes the first of equal maxima; mean_diagnostics averages each key over the batch."""
    out = RewardOutput([0.2, 0.7, 0.7], [{"k": 1.0}, {"k": 3.0}, {}])
    assert out.argmax() == 1 and out.mean_diagnostics() == {"k": 2.0}


def test_rewards_config_loads_nested_mappings_and_rejects_unknown_keys() -> None:
    """from_dict builds nested configs and overrides; an unknown key anywhere names the class and valid keys."""
    cfg = from_dict(RewardsConfig, {
        "proposer": {"ste_mode": "complementary"},
        "ste": {"aggregation": "mean"},
        "components": {"generator.diversity": {"enabled": False}},
    })
    assert cfg.proposer == ProposerConfig(ste_mode="complementary") and cfg.ste.aggregation == "mean"
    assert cfg.components == {"generator.diversity": ComponentOverride(enabled=False)}
    assert cfg.difficulty.target_mix == (0.0, 0.70, 0.30) and cfg.ste.window == 128
    with pytest.raises(ConfigError, match=r"RewardsConfig: unknown key\(s\) 'propser'; valid keys: consistency, "):
        from_dict(RewardsConfig, {"propser": {}})
    with pytest.raises(ConfigError, match=r"ProposerConfig: unknown key\(s\) 'mu_adaptive'"):
        from_dict(RewardsConfig, {"proposer": {"mu_adaptive": True}})
    with pytest.raises(ConfigError, match="ProposerConfig.collapse_cap must be a number"):
        from_dict(RewardsConfig, {"proposer": {"collapse_cap": "high"}})


def test_importing_rewards_and_listing_plugins_does_not_import_torch() -> None:
    """`import asg.rewards` and loading the built-in reward plugin stay torch-free (asg plugins stays fast)."""
    code = (
        "import sys, asg.rewards\n"
        "from asg.plugins import PluginHost\n"
        "PluginHost(env={}).load()\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
