"""Role adapters: one named peft LoRA adapter per role, injected into one module tree.

``use(role)`` activates exactly that role's adapters; ``use(None)`` disables every adapter, which is
the reference policy. Every adapter parameter stays ``requires_grad=True`` at all times: a role's
isolation is a property of the forward graph (inactive adapters take no part), which the conformance
kit checks, not of flags that a later switch could flip.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import warnings
from contextlib import contextmanager

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from asg.errors import ConfigError


class RoleAdapters:
    """LoRA adapters named after roles, with a context manager to switch between them."""

    def __init__(self, root: torch.nn.Module, configs: Mapping[str, LoraConfig]) -> None:
        if not configs:
            raise ConfigError("RoleAdapters needs at least one role configuration")
        self.root = root
        self.roles = tuple(configs)
        with warnings.catch_warnings():
            # peft warns that a second adapter meets the first one's peft_config: several named
            # adapters in one model is exactly what the roles are
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            for role, cfg in configs.items():
                inject_adapter_in_model(cfg, root, adapter_name=role)
        self._layers = [m for m in root.modules() if isinstance(m, BaseTunerLayer)]
        self._params: dict[str, list[tuple[str, torch.nn.Parameter]]] = {r: [] for r in self.roles}
        for name, p in root.named_parameters():
            parts = name.split(".")
            for i, part in enumerate(parts[:-1]):
                if part.startswith("lora_") and parts[i + 1] in self._params:
                    self._params[parts[i + 1]].append((name, p))
                    break
        for role, params in self._params.items():
            if not params:
                raise ConfigError(f"the LoRA configuration of role {role!r} matched no module of the model")
        self._active: str | None = None
        self._apply(None)

    @property
    def active(self) -> str | None:
        return self._active

    def _apply(self, role: str | None) -> None:
        for layer in self._layers:
            if role is None:
                layer.enable_adapters(False)
            else:
                layer.set_adapter(role)
                layer.enable_adapters(True)
        for params in self._params.values():
            for _, p in params:
                p.requires_grad_(True)
        self._active = role

    def check_role(self, role: str | None) -> None:
        if role is not None and role not in self.roles:
            raise ConfigError(f"unknown role {role!r}; this backbone has roles: {', '.join(self.roles)} (or None for the reference)")

    @contextmanager
    def use(self, role: str | None) -> Iterator[None]:
        """Activate ``role`` (None = adapters off) for the duration of a ``with`` block."""
        self.check_role(role)
        previous = self._active
        self._apply(role)
        try:
            yield
        finally:
            self._apply(previous)

    def parameters(self, role: str) -> list[torch.nn.Parameter]:
        self.check_role(role)
        return [p for _, p in self._params[role]]

    def named_parameters(self, role: str) -> list[tuple[str, torch.nn.Parameter]]:
        self.check_role(role)
        return list(self._params[role])


def lora_role_adapters(root: torch.nn.Module, understanding: str, generator: str, *, seed: int,
                       r: int = 16, alpha: int = 32, dropout: float = 0.05) -> RoleAdapters:
    """The recipe's role adapters on a frozen ``root``: proposer and solver LoRA on the ``understanding``
    target regex, the generator's on ``generator``; LoRA r 16, alpha 32, dropout 0.05 by default (the
    reference's). Initialised from ``seed + 1`` without touching the global RNG; ``root`` is left in eval mode."""
    root.requires_grad_(False)
    kw = {"r": r, "lora_alpha": alpha, "lora_dropout": dropout}
    und, gen = LoraConfig(target_modules=understanding, **kw), LoraConfig(target_modules=generator, **kw)
    device = next(root.parameters()).device
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed + 1)
        adapters = RoleAdapters(root, {"proposer": und, "solver": und, "generator": gen})
    root.eval()
    return adapters
