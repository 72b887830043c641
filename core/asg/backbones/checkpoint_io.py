"""Strict reading and writing of (sharded) safetensors checkpoints whose key names differ from the model's.

Backbone plugins load public releases saved by older library layouts (BLIP3o and VARGPT: transformers 4.4x
Qwen-VL names), so every tensor name goes through the plugin's explicit rename. What is generic lives here:
finding the shard files (HF ``model.safetensors.index.json`` or one ``model.safetensors``), checking file
headers against the index, loading strictly, writing ``save_pretrained``-style shards and listing a
manifest. The plugin supplies only its name rules: ``to_checkpoint_name`` (module name -> checkpoint key,
raising :class:`CheckpointError` for a name no rule covers), optionally ``from_checkpoint_name`` (the
inverse, used to tell a key no rule covers from one the model has no place for) and ``is_ignored`` (keys
skipped on purpose, reported in :class:`LoadReport`).

Every check runs on file headers before any tensor is copied, so a failing load leaves the model untouched,
and every error names the folder, file and key (and shapes, expected vs found).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from asg.errors import DataError

T = TypeVar("T")

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHOW = 8
"""How many offending keys an error lists (then ``... (+N more)``)."""


class CheckpointError(DataError):
    """A checkpoint file, index or key does not fit the model; the message names file and key."""


def _umask() -> int:
    """The process's file-creation mask, read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | Path,
                     metadata: Mapping[str, str] | None = None, *, atomic: bool = False) -> Path:
    """Write ``tensors`` to ``path`` with ``safetensors.torch.save_file``, mode ``0o666`` less the umask.

    safetensors (0.8) creates its files owner-only (``0o600``), so weights written for a shared cluster
    or a container volume could be read by nobody else; every asg writer of safetensors goes through here.
    With ``atomic`` the file is written as ``<name>.tmp`` beside ``path`` and renamed into place, so a
    crash while writing leaves any earlier ``path`` whole.
    """
    from safetensors.torch import save_file

    path = Path(path)
    target = path.with_name(path.name + ".tmp") if atomic else path
    save_file(dict(tensors), str(target), metadata=dict(metadata) if metadata is not None else None)
    os.chmod(target, 0o666 & ~_umask())
    if atomic:
        target.replace(path)
    return path


def share_safetensors(folder: str | Path) -> None:
    """Give every ``*.safetensors`` file under ``folder`` mode ``0o666`` less the umask: for folders that a
    library (diffusers' ``save_pretrained``) wrote through safetensors' owner-only files."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*.safetensors"):
        os.chmod(path, mode)


def listing(keys: Iterable[str]) -> str:
    """The first :data:`SHOW` of ``keys`` in sorted order, comma-separated, with a count of the rest."""
    keys = sorted(keys)
    more = f" ... (+{len(keys) - SHOW} more)" if len(keys) > SHOW else ""
    return ", ".join(keys[:SHOW]) + more


def _nothing_ignored(checkpoint_key: str) -> bool:
    return False


def _no_hint(checkpoint_keys: Sequence[str]) -> str:
    return ""


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


def rename_keys(items: Mapping[str, T], rename: Callable[[str], str], *, what: str,
                family: str = "checkpoint") -> dict[str, T]:
    """Re-key ``items`` with ``rename``; every name it refuses (:class:`CheckpointError`) is collected into one
    error listing them all, and two names mapping to the same key are an error naming both.

    ``what`` names the input keys in errors ("checkpoint key(s)", "module name(s)"), ``family`` the rules
    ("BLIP3o" gives "match no BLIP3o name rule").
    """
    out: dict[str, T] = {}
    bad: list[str] = []
    for name, value in items.items():
        try:
            renamed = rename(name)
        except CheckpointError:
            bad.append(name)
            continue
        if renamed in out:
            raise CheckpointError(f"two {what} map to {renamed} (one is {name})")
        out[renamed] = value
    if bad:
        raise CheckpointError(f"{len(bad)} {what} match no {family} name rule: {listing(bad)}")
    return out


def checkpoint_manifest(model: nn.Module, to_checkpoint_name: Callable[[str], str]) -> dict[str, dict[str, object]]:
    """``{checkpoint_key: {shape, dtype, kind}}`` of everything ``model`` saves (meta-built models cost nothing).

    Same format as the fixture manifests of the public checkpoints, so the two compare with ``==``.
    """
    params = {name for name, _ in model.named_parameters()}
    manifest = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        manifest[to_checkpoint_name(name)] = {"shape": list(tensor.shape),
                                              "dtype": str(tensor.dtype).removeprefix("torch."),
                                              "kind": "parameter" if name in params else "buffer"}
    return manifest


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """Where a checkpoint tensor lives, read from the safetensors header only."""

    file: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_checkpoint` did: files read, tensors loaded, keys skipped on purpose (``is_ignored``)."""

    folder: Path
    files: tuple[str, ...]
    loaded: int
    ignored: tuple[str, ...]


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not an HF index with a weight_map: {err}") from err
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has an empty or malformed weight_map")
    return weight_map


def checkpoint_files(folder: str | Path) -> tuple[Path, ...]:
    """The safetensors files of a checkpoint folder: the shards the HF index names, or ``model.safetensors``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    index = folder / INDEX_FILE
    if index.is_file():
        names = sorted(set(_weight_map(index).values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard file(s) missing from {folder}: {listing(missing)}")
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
    weight_map = _weight_map(index) if index.is_file() else None
    entries: dict[str, TensorEntry] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            for key in names:
                if key in entries:
                    raise CheckpointError(f"checkpoint key {key} is in both {entries[key].file} and {path.name}")
                piece = handle.get_slice(key)
                entries[key] = TensorEntry(path.name, tuple(piece.get_shape()), str(piece.get_dtype()))
        if weight_map is not None:
            listed = {k for k, f in weight_map.items() if f == path.name}
            absent, unlisted = listed - set(names), set(names) - listed
            if absent:
                raise CheckpointError(f"{INDEX_FILE} assigns key(s) to {path.name} that it lacks: {listing(absent)}")
            if unlisted:
                raise CheckpointError(f"{path.name} holds key(s) {INDEX_FILE} does not list for it: "
                                      f"{listing(unlisted)}")
    return entries


def _known(key: str, from_checkpoint_name: Callable[[str], str]) -> bool:
    try:
        from_checkpoint_name(key)
    except CheckpointError:
        return False
    return True


def load_checkpoint(folder: str | Path, model: nn.Module, *, to_checkpoint_name: Callable[[str], str],
                    from_checkpoint_name: Callable[[str], str] | None = None,
                    is_ignored: Callable[[str], bool] = _nothing_ignored,
                    unexpected_hint: Callable[[Sequence[str]], str] = _no_hint,
                    family: str = "checkpoint") -> LoadReport:
    """Load a checkpoint folder into ``model`` strictly, converting dtypes to the model's.

    All checks run on file headers before any tensor is copied, so a failing load leaves ``model`` untouched:
    every model tensor must be present, every checkpoint key must map to a model tensor, shapes must match.
    Errors name the file and key. Checkpoint keys the model does not expect and ``is_ignored`` accepts are
    skipped and listed in the report. With ``from_checkpoint_name``, a key it refuses is reported as matching
    no ``family`` name rule, apart from keys that map to a name the model lacks (for which
    ``unexpected_hint(keys)`` may add a likely cause, e.g. a component not attached). The model must be
    materialised (not on ``meta``): non-persistent buffers such as rotary tables are not in the checkpoint
    and would stay empty.
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
    ignored = tuple(sorted(k for k in entries if k not in expected and is_ignored(k)))
    present = {k: e for k, e in entries.items() if k not in ignored}

    if from_checkpoint_name is not None:
        unknown = [f"{e.file}:{k}" for k, e in present.items() if not _known(k, from_checkpoint_name)]
        if unknown:
            raise CheckpointError(f"{folder}: {len(unknown)} checkpoint key(s) match no {family} name rule: "
                                  f"{listing(unknown)}")
    stray = [k for k in present if k not in expected]
    if stray:
        unexpected = [f"{present[k].file}:{k}" for k in stray]
        raise CheckpointError(f"{folder}: {len(stray)} checkpoint key(s) have no place in the model"
                              f"{unexpected_hint(stray)}: {listing(unexpected)}")
    missing = [k for k in expected if k not in present]
    if missing:
        files = ", ".join(sorted({e.file for e in entries.values()}))
        raise CheckpointError(f"{folder}: {len(missing)} model tensor(s) missing from {files}: {listing(missing)}")
    wrong = [f"{present[k].file}:{k} expected {list(state[n].shape)} found {list(present[k].shape)}"
             for k, n in expected.items() if tuple(state[n].shape) != present[k].shape]
    if wrong:
        raise CheckpointError(f"{folder}: {len(wrong)} shape mismatch(es): {'; '.join(sorted(wrong)[:SHOW])}")

    files = sorted({e.file for e in present.values()})
    with torch.no_grad():
        for name in files:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    if key in expected:
                        state[expected[key]].copy_(handle.get_tensor(key))
    return LoadReport(folder=folder, files=tuple(files), loaded=len(expected), ignored=ignored)


def save_checkpoint(model: nn.Module, folder: str | Path, *, to_checkpoint_name: Callable[[str], str],
                    shards: int = 1, family: str = "checkpoint") -> tuple[Path, ...]:
    """Write ``model`` under checkpoint names, as ``model.safetensors`` or ``shards`` HF shards + index.

    Keys are split into ``shards`` contiguous groups of roughly equal bytes, named
    ``model-0000i-of-0000n.safetensors`` as ``save_pretrained`` does, so the folder reads like a public one.
    Names ``to_checkpoint_name`` refuses are one error listing all of them (``family`` names the rules).
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    renamed = rename_keys(model.state_dict(), to_checkpoint_name, what="module name(s)", family=family)
    tensors = {k: v.detach().contiguous() for k, v in renamed.items()}
    if shards == 1:
        path = folder / SINGLE_FILE
        save_safetensors(tensors, path, {"format": "pt"})
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
        save_safetensors(group, folder / name, {"format": "pt"})
        weight_map.update({k: name for k in group})
        paths.append(folder / name)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return tuple(paths)
