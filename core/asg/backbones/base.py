"""State handling shared by backbones whose trainable state is a set of role adapters.

A class using :class:`AdapterBackbone` sets ``self.net`` (the root module, whose parameter names are
the checkpoint's) and ``self.adapters`` (a :class:`RoleAdapters`, or None when the whole model trains,
as in pretraining). Everything about roles and trainable state then comes from here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from asg.backbones.roles import RoleAdapters
from asg.errors import CapabilityError, ConfigError


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | None) -> torch.dtype:
    """The torch dtype named by ``--dtype`` (None = float32); an unknown name lists the valid ones."""
    if name is None:
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def check_image_prompts(prompts: Sequence[str]) -> None:
    """Text-to-image prompts must be non-empty strings; the error names the first bad one."""
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompts[{i}] must be a non-empty string, got {p!r}")


def sample_weights(weights: torch.Tensor | Sequence[float] | None, n: int, device: torch.device | str) -> torch.Tensor:
    """Per-sample loss weights as a float32 (n,) tensor (ones when None); any other shape is an error."""
    w = torch.ones(n, device=device) if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(w.shape)}")
    return w


class AdapterBackbone:
    """Roles, trainable parameters and trainable-state I/O for adapter-based backbones."""

    name: str
    net: nn.Module
    adapters: RoleAdapters | None
    roles: tuple[str, ...]
    # Tensors that are tied to others and not stored (e.g. an LM head tied to the input embeddings).
    tied_keys: tuple[str, ...] = ()

    def root_module(self) -> nn.Module:
        return self.net

    @contextmanager
    def use_role(self, role: str | None) -> Iterator[None]:
        if self.adapters is None:
            if role is not None:
                raise CapabilityError(f"this {self.name} instance has no role adapters (built with adapters=False)")
            yield
            return
        with self.adapters.use(role):
            yield

    def trainable_parameters(self, role: str) -> list[nn.Parameter]:
        if self.adapters is None:
            raise CapabilityError(f"this {self.name} instance has no role adapters (built with adapters=False)")
        return self.adapters.parameters(role)

    def _trainable_named(self) -> dict[str, torch.Tensor]:
        if self.adapters is None:
            return {k: v for k, v in self.net.state_dict().items() if k not in self.tied_keys}
        return {name: p for role in self.adapters.roles for name, p in self.adapters.named_parameters(role)}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._trainable_named().items()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        own = self._trainable_named()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ConfigError(
                f"trainable state does not match this {self.name} backbone: missing {len(missing)} key(s) "
                f"{missing[:3]}, unexpected {len(unexpected)} key(s) {unexpected[:3]}"
            )
        for name, value in state.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ConfigError(f"trainable tensor {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value.to(own[name].dtype))

    def save_trainable(self, path: str | Path) -> Path:
        """Write the trainable state to ``path`` (safetensors; a temp file renamed into place)."""
        from asg.backbones.checkpoint_io import save_safetensors

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous().cpu() for k, v in self.trainable_state_dict().items()}
        return save_safetensors(state, path, {"backbone": self.name, "roles": ",".join(self.roles)}, atomic=True)

    def load_trainable(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no trainable-state file at {path}")
        device = next(self.net.parameters()).device
        self.load_trainable_state_dict(load_file(str(path), device=str(device)))

    def _param_dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        return f"<{type(self).__name__} {self.name!r}: {n:,} parameters, roles={self.roles}>"
