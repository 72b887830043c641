"""BLIP3o checkpoint names <-> our module names, and strict loading of the (sharded) safetensors files.

The public checkpoint was saved by transformers 4.51 from upstream's ``blip3oQwenForInferenceLM``, whose
text decoder also owns ``latent_queries`` and the DiT. Our ``Blip3oModel`` keeps the library's v5 layout
(``vlm.model.visual``, ``vlm.model.language_model``, ``vlm.lm_head``) with ``latent_queries`` and ``dit`` as
siblings, so every name is translated by the explicit table below, both ways. A name no rule covers is an
error: guessing would load a tensor into the wrong place or drop one silently.

EVA-CLIP keys (``model.gen_vision_tower.*``, the generation-target encoder) hold nothing the inference model
uses; if a checkpoint carries them they are reported as ignored, never loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from asg.errors import DataError

T = TypeVar("T")

# (checkpoint prefix, module prefix). Prefixes end in "." so "model.norm." never matches "model.normx".
PREFIX_RULES: tuple[tuple[str, str], ...] = (
    ("visual.", "vlm.model.visual."),
    ("model.embed_tokens.", "vlm.model.language_model.embed_tokens."),
    ("model.layers.", "vlm.model.language_model.layers."),
    ("model.norm.", "vlm.model.language_model.norm."),
    ("lm_head.", "vlm.lm_head."),
    ("model.dit.", "dit."),
)
EXACT_RULES: tuple[tuple[str, str], ...] = (("model.latent_queries", "latent_queries"),)
IGNORED_PREFIXES: tuple[str, ...] = ("model.gen_vision_tower.",)
"""Checkpoint prefixes that are skipped with a report: EVA-CLIP, used only to make DiT training targets."""

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_SHOW = 8  # how many offending keys an error lists


class CheckpointError(DataError):
    """A checkpoint file, index or key does not fit the model; the message names file and key."""


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def is_ignored(checkpoint_key: str) -> bool:
    """True for checkpoint keys that are skipped on purpose (EVA-CLIP generation tower)."""
    return checkpoint_key.startswith(IGNORED_PREFIXES)


def _rename(name: str, rules_from: int) -> str | None:
    src, dst = rules_from, 1 - rules_from
    for rule in EXACT_RULES:
        if name == rule[src]:
            return rule[dst]
    for rule in PREFIX_RULES:
        if name.startswith(rule[src]):
            return rule[dst] + name[len(rule[src]):]
    return None


def from_checkpoint_name(checkpoint_key: str) -> str:
    """Module name of one checkpoint key; an unknown or ignored key is an error naming it."""
    if is_ignored(checkpoint_key):
        raise CheckpointError(f"checkpoint key {checkpoint_key} belongs to the ignored EVA-CLIP tower "
                              "(filter it with is_ignored first)")
    name = _rename(checkpoint_key, 0)
    if name is None:
        raise CheckpointError(f"checkpoint key {checkpoint_key} matches no BLIP3o name rule")
    return name


def to_checkpoint_name(module_name: str) -> str:
    """Checkpoint key of one module parameter/buffer name; an unknown name is an error naming it."""
    key = _rename(module_name, 1)
    if key is None:
        raise CheckpointError(f"module name {module_name} matches no BLIP3o name rule "
                              f"(expected prefixes {', '.join(r[1] for r in PREFIX_RULES + EXACT_RULES)})")
    return key


def _rename_all(items: Mapping[str, T], one: object, what: str) -> dict[str, T]:
    out: dict[str, T] = {}
    bad: list[str] = []
    for name, value in items.items():
        try:
            out[one(name)] = value  # type: ignore[operator]
        except CheckpointError:
            bad.append(name)
    if bad:
        raise CheckpointError(f"{len(bad)} {what} match no BLIP3o name rule: {_listing(bad)}")
    return out


def from_checkpoint_names(items: Mapping[str, T]) -> dict[str, T]:
    """Re-key a mapping (e.g. a state dict) from checkpoint names to module names; unknown keys are an error
    naming all of them."""
    return _rename_all(items, from_checkpoint_name, "checkpoint key(s)")


def to_checkpoint_names(items: Mapping[str, T]) -> dict[str, T]:
    """Re-key a mapping from module names to checkpoint names; unknown names are an error naming them."""
    return _rename_all(items, to_checkpoint_name, "module name(s)")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def checkpoint_manifest(model: nn.Module) -> dict[str, dict[str, object]]:
    """``{checkpoint_key: {shape, dtype, kind}}`` of everything ``model`` saves (meta-built models cost nothing).

    Same format as the fixture manifest of the public checkpoint, so the two compare with ``==``.
    """
    params = {name for name, _ in model.named_parameters()}
    manifest = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        manifest[to_checkpoint_name(name)] = {"shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype),
                                              "kind": "parameter" if name in params else "buffer"}
    return manifest


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """Where a checkpoint tensor lives, read from the safetensors header only."""

    file: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class LoadReport:
    """What ``load_checkpoint`` did: files read, tensors loaded, keys ignored on purpose."""

    folder: Path
    files: tuple[str, ...]
    loaded: int
    ignored: tuple[str, ...]


def checkpoint_files(folder: str | Path) -> tuple[Path, ...]:
    """The safetensors files of a checkpoint folder: the shards the HF index names, or ``model.safetensors``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} is not an HF index with a weight_map: {err}") from err
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has an empty or malformed weight_map")
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard file(s) missing from {folder}: {_listing(missing)}")
        return tuple(folder / n for n in names)
    single = folder / SINGLE_FILE
    if single.is_file():
        return (single,)
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    raise CheckpointError(f"checkpoint folder {folder} has neither {INDEX_FILE} nor {SINGLE_FILE} "
                          f"(safetensors files present: {', '.join(found) or 'none'})")


def read_checkpoint_header(folder: str | Path) -> dict[str, TensorEntry]:
    """Every tensor of the checkpoint, by checkpoint key, from file headers only (nothing is loaded).

    With an index, each shard must hold exactly the keys the index assigns to it; a key in two files is an
    error naming both.
    """
    from safetensors import safe_open

    folder = Path(folder)
    files = checkpoint_files(folder)
    index = folder / INDEX_FILE
    weight_map: dict[str, str] | None = json.loads(index.read_text())["weight_map"] if index.is_file() else None
    entries: dict[str, TensorEntry] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            for key in keys:
                if key in entries:
                    raise CheckpointError(f"checkpoint key {key} is in both {entries[key].file} and {path.name}")
                piece = handle.get_slice(key)
                entries[key] = TensorEntry(path.name, tuple(piece.get_shape()), str(piece.get_dtype()))
        if weight_map is not None:
            listed = {k for k, f in weight_map.items() if f == path.name}
            absent, unlisted = listed - set(keys), set(keys) - listed
            if absent:
                raise CheckpointError(f"{INDEX_FILE} assigns key(s) to {path.name} that it lacks: {_listing(absent)}")
            if unlisted:
                raise CheckpointError(f"{path.name} holds key(s) {INDEX_FILE} does not list for it: {_listing(unlisted)}")
    return entries


def load_checkpoint(folder: str | Path, model: nn.Module) -> LoadReport:
    """Load a BLIP3o checkpoint folder into ``model`` strictly, converting dtypes to the model's.

    All checks run on file headers before any tensor is copied, so a failing load leaves ``model`` untouched:
    every model tensor must be present, every (non-ignored) checkpoint key must map to a model tensor, and
    shapes must match. Errors name the file and key. The model must be materialised (not on ``meta``): its
    non-persistent rotary buffers are not in the checkpoint and would stay empty.
    """
    from safetensors import safe_open

    folder = Path(folder)
    state = model.state_dict(keep_vars=True)
    on_meta = [n for n, t in state.items() if t.is_meta]
    on_meta += [n for n, b in model.named_buffers() if b.is_meta and n not in state]
    if on_meta:
        raise CheckpointError(f"model has {len(on_meta)} tensor(s) on the meta device (e.g. {on_meta[0]}); build it "
                              "on a real device before load_checkpoint")
    expected = {to_checkpoint_name(name): name for name in state}
    entries = read_checkpoint_header(folder)
    ignored = tuple(sorted(k for k in entries if is_ignored(k)))
    present = {k: e for k, e in entries.items() if not is_ignored(k)}

    unknown = [f"{e.file}:{k}" for k, e in present.items() if _rename(k, 0) is None]
    if unknown:
        raise CheckpointError(f"{folder}: {len(unknown)} checkpoint key(s) match no BLIP3o name rule: {_listing(unknown)}")
    unexpected = [f"{e.file}:{k}" for k, e in present.items() if k not in expected]
    if unexpected:
        raise CheckpointError(f"{folder}: {len(unexpected)} checkpoint key(s) have no place in the model "
                              f"(is the DiT attached?): {_listing(unexpected)}")
    missing = [k for k in expected if k not in present]
    if missing:
        files = ", ".join(sorted({e.file for e in entries.values()}))
        raise CheckpointError(f"{folder}: {len(missing)} model tensor(s) missing from {files}: {_listing(missing)}")
    wrong = [f"{present[k].file}:{k} expected {list(state[n].shape)} found {list(present[k].shape)}"
             for k, n in expected.items() if tuple(state[n].shape) != present[k].shape]
    if wrong:
        raise CheckpointError(f"{folder}: {len(wrong)} shape mismatch(es): {'; '.join(sorted(wrong)[:_SHOW])}")

    files = sorted({e.file for e in present.values()})
    with torch.no_grad():
        for name in files:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    if key in expected:
                        state[expected[key]].copy_(handle.get_tensor(key))
    return LoadReport(folder=folder, files=tuple(files), loaded=len(expected), ignored=ignored)


def save_checkpoint(model: nn.Module, folder: str | Path, *, shards: int = 1) -> tuple[Path, ...]:
    """Write ``model`` under checkpoint names, as ``model.safetensors`` or ``shards`` HF shards + index.

    Keys are split into ``shards`` contiguous groups of roughly equal bytes, named
    ``model-0000i-of-0000n.safetensors`` as ``save_pretrained`` does.
    """
    from safetensors.torch import save_file

    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in to_checkpoint_names(model.state_dict()).items()}
    if shards == 1:
        path = folder / SINGLE_FILE
        save_file(tensors, str(path), metadata={"format": "pt"})
        return (path,)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    running = 0
    for key, tensor in tensors.items():
        groups[min(shards - 1, running * shards // max(total, 1))][key] = tensor
        running += tensor.numel() * tensor.element_size()
    if any(not g for g in groups):
        raise ValueError(f"cannot split {len(tensors)} tensors into {shards} non-empty shards")
    weight_map, paths = {}, []
    for i, group in enumerate(groups, 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        save_file(group, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in group})
        paths.append(folder / name)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return tuple(paths)
