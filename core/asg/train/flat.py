"""Trainer state as (named tensors, JSON): what a safetensors checkpoint can hold, without pickle.

A state tree (an optimizer ``state_dict()``, the RNG states, the trainer's windows) is split in two:
every tensor goes into a flat ``{name: tensor}`` dict, named ``prefix + dotted path``; the rest becomes
JSON in which each tensor is replaced by ``{"__tensor__": name}``. Tuples, non-string keys (an optimizer
indexes its state by int), non-finite floats and numpy arrays carry markers too, so that
``unflatten_tree(*flatten_tree(x, p))`` rebuilds ``x`` exactly: same types, same bits.

    t1, j1 = optimizer_to_flat(opt.state_dict(), "optimizer.solver.")
    t2, j2 = rng_state()
    save_checkpoint(run, step, tensors=merge_flat(t1, t2, adapters), state={"solver": j1, "rng": j2}, keep_last=3)
    ...
    opt.load_state_dict(optimizer_from_flat(tensors, state["solver"], "optimizer.solver."))
    set_rng_state(tensors, state["rng"])
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from asg.errors import ConfigError, DataError

_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__float__", "__items__")


def flatten_tree(tree: Any, prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """Split ``tree`` into ``{prefix + path: tensor}`` and a JSON value that refers to them by name.

    The tensors are the tree's own (not copies); save them before the tree changes.
    """
    if not isinstance(prefix, str):
        raise TypeError(f"flatten_tree: prefix must be a str, got {type(prefix).__name__}")
    tensors: dict[str, torch.Tensor] = {}

    def put(name: str, t: torch.Tensor) -> str:
        if name in tensors:
            raise ConfigError(f"flatten_tree: two tensors would both be named {name!r} (a key holds a dot?); "
                              "rename one key")
        tensors[name] = t
        return name

    def enc(value: Any, path: str) -> Any:
        name = prefix + path
        if isinstance(value, torch.Tensor):
            return {"__tensor__": put(name, value)}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"flatten_tree: {name} is a numpy array of Python objects; store a list instead")
            return {"__ndarray__": put(name, torch.from_numpy(np.ascontiguousarray(value)))}
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"__float__": repr(value)}
        if isinstance(value, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [enc(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            def sub(k: Any) -> str:
                return f"{path}.{k}" if path else str(k)
            plain = all(isinstance(k, str) and k not in _MARKERS for k in value)
            if plain:
                return {k: enc(v, sub(k)) for k, v in value.items()}
            for k in value:
                if isinstance(k, bool) or not isinstance(k, (int, str)):
                    raise TypeError(f"flatten_tree: {name} has a key {k!r} of type {type(k).__name__}; "
                                    "keys must be str or int")
            return {"__items__": [[k, enc(v, sub(k))] for k, v in value.items()]}
        raise TypeError(f"flatten_tree: {name or '(root)'} is a {type(value).__name__}; state trees hold tensors, "
                        "numpy arrays, numbers, strings, None, lists, tuples and dicts")

    return tensors, enc(tree, "")


def unflatten_tree(tensors: Mapping[str, torch.Tensor], encoded: Any) -> Any:
    """The tree :func:`flatten_tree` split; ``tensors`` may hold more than this tree's tensors."""

    def tensor(name: str) -> torch.Tensor:
        try:
            return tensors[name]
        except KeyError:
            raise DataError(f"the saved state refers to tensor {name!r}, which the checkpoint's tensors lack; "
                            "save every part's tensors (merge_flat) together with its JSON") from None

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, inner), = value.items()
            if key == "__tensor__":
                return tensor(inner)
            if key == "__ndarray__":
                return tensor(inner).numpy().copy()
            if key == "__tuple__":
                return tuple(dec(v) for v in inner)
            if key == "__float__":
                return float(inner)
            if key == "__items__":
                return {k: dec(v) for k, v in inner}
        return {k: dec(v) for k, v in value.items()}

    return dec(encoded)


def merge_flat(*parts: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One tensor dict from several; a name present twice is an error (it would silently lose a tensor)."""
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for name, t in part.items():
            if name in out:
                raise ConfigError(f"merge_flat: tensor name {name!r} appears in two parts; give each part its own prefix")
            out[name] = t
    return out


# -- optimizers -----------------------------------------------------------------------------------
def optimizer_to_flat(state_dict: Mapping[str, Any], prefix: str) -> tuple[dict[str, torch.Tensor], Any]:
    """A torch optimizer's ``state_dict()`` as (tensors named ``prefix``..., JSON)."""
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(state_dict):
        got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
        raise ConfigError(f"optimizer_to_flat expects optimizer.state_dict() (keys 'state', 'param_groups'), got {got}")
    if not prefix:
        raise ConfigError("optimizer_to_flat: give a non-empty prefix such as 'optimizer.solver.' so that "
                          "several optimizers can share one checkpoint")
    return flatten_tree(dict(state_dict), prefix)


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], encoded: Any, prefix: str) -> dict[str, Any]:
    """The ``state_dict`` for ``optimizer.load_state_dict`` from what :func:`optimizer_to_flat` gave."""
    names: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            if set(value) == {"__tensor__"}:
                names.append(value["__tensor__"])
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(encoded)
    foreign = [n for n in names if not n.startswith(prefix)]
    if foreign:
        raise DataError(f"optimizer_from_flat: tensor {foreign[0]!r} does not start with prefix {prefix!r}; "
                        "pass the prefix this optimizer was saved with")
    state = unflatten_tree(tensors, encoded)
    if not isinstance(state, dict) or not {"state", "param_groups"} <= set(state):
        raise DataError("optimizer_from_flat: the saved JSON is not an optimizer state (no 'state'/'param_groups')")
    return state


# -- random number generators ---------------------------------------------------------------------
def rng_state(prefix: str = "rng.") -> tuple[dict[str, torch.Tensor], Any]:
    """Python ``random``, numpy's global generator, torch's CPU generator and every CUDA device's."""
    tree: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tree["cuda"] = torch.cuda.get_rng_state_all()
    return flatten_tree(tree, prefix)


def set_rng_state(tensors: Mapping[str, torch.Tensor], encoded: Any) -> None:
    """Restore what :func:`rng_state` captured, so the next random draws are the ones that would have come."""
    tree = unflatten_tree(tensors, encoded)
    if not isinstance(tree, dict) or not {"python", "numpy", "torch"} <= set(tree):
        raise DataError("set_rng_state: the saved JSON is not an RNG state from rng_state() "
                        f"(keys {sorted(tree) if isinstance(tree, dict) else type(tree).__name__})")
    random.setstate(tree["python"])
    np.random.set_state(tree["numpy"])
    torch.set_rng_state(tree["torch"].to(torch.uint8))
    saved = tree.get("cuda") or []
    if saved and torch.cuda.is_available():
        count = torch.cuda.device_count()
        for i, state in enumerate(saved[:count]):
            torch.cuda.set_rng_state(state.to(torch.uint8), i)
        if count != len(saved):
            warnings.warn(f"RNG state saved for {len(saved)} CUDA devices, restored on {min(count, len(saved))} "
                          f"of {count}; random draws on the others will differ", stacklevel=2)
    elif saved:
        warnings.warn(f"RNG state holds {len(saved)} CUDA generators but CUDA is not available here; "
                      "CUDA random draws are not restored", stacklevel=2)
