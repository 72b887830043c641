"""VARGPT-v1.1 checkpoint names <-> :class:`~asg_vargpt.vlm.VargptModel` names, and strict (sharded) loading.

The public checkpoint holds upstream's flat ``VARGPTQwen2VLForConditionalGeneration`` state dict. Our model
nests it: ``vlm`` is the library's v5 Qwen2-VL (names translated by :mod:`asg_vargpt.keys`), ``head`` the image
head (checkpoint names with ``head.`` in front), ``vae_local`` the BSQ-VAE (same names). Every name goes through
an explicit rule; one no rule covers is an error, because guessing would load a tensor into the wrong place or
drop one silently.

Loading is strict and checked on file headers before any tensor is copied, so a failing load leaves the model
untouched. A component may be left out on purpose (``ignore_parts``, e.g. ``("vae",)`` while no BSQ-VAE is
attached); the keys skipped that way are reported, never silently dropped.

Only the name rules live here; the file handling (shards, index, strict loading, saving) is the generic
:mod:`asg.backbones.checkpoint_io`, whose names are re-exported so callers keep importing them from here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from torch import nn

from asg.backbones import checkpoint_io as io
from asg.backbones.checkpoint_io import (  # re-exported: the plugin's tests import them from here
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    LoadReport,
    TensorEntry,
    checkpoint_files,
    read_checkpoint_header,
)

from . import keys
from .keys import KeyMappingError, Part

__all__ = ["INDEX_FILE", "MODULE_PREFIXES", "SINGLE_FILE", "CheckpointError", "LoadReport", "TensorEntry",
           "checkpoint_files", "checkpoint_manifest", "from_checkpoint_name", "from_checkpoint_names",
           "load_checkpoint", "part_of", "read_checkpoint_header", "save_checkpoint", "to_checkpoint_name",
           "to_checkpoint_names"]

T = TypeVar("T")

MODULE_PREFIXES: Mapping[Part, str] = {"llm": "vlm.", "head": "head.", "vae": ""}
"""Where each checkpoint component lives in ``VargptModel``: the LLM under ``vlm.`` (v5 names), the image head
under ``head.``, the BSQ-VAE at the top (its checkpoint names already start with ``vae_local.``)."""

FAMILY = "VARGPT"  # how errors name these rules


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


def part_of(checkpoint_key: str) -> Part:
    """``llm``, ``head`` or ``vae`` for a checkpoint key; an unknown key is an error naming it."""
    try:
        return keys.part_of(checkpoint_key)
    except KeyMappingError as err:
        raise CheckpointError(str(err)) from err


def from_checkpoint_name(checkpoint_key: str) -> str:
    """Module name of one checkpoint key (``model.layers.0.mlp.up_proj.weight`` ->
    ``vlm.model.language_model.layers.0.mlp.up_proj.weight``; ``vargpt_gen.x`` -> ``head.vargpt_gen.x``)."""
    part = part_of(checkpoint_key)
    return MODULE_PREFIXES[part] + keys.to_module_name(checkpoint_key)


def to_checkpoint_name(module_name: str) -> str:
    """Checkpoint key of one ``VargptModel`` parameter/buffer name; an unknown name is an error naming it."""
    for part in ("llm", "head"):
        prefix = MODULE_PREFIXES[part]
        if module_name.startswith(prefix):
            inner = module_name[len(prefix):]
            try:
                key = keys.to_checkpoint_name(inner)
            except KeyMappingError as err:
                raise CheckpointError(f"module name {module_name}: {err}") from err
            if keys.part_of(key) != part:
                raise CheckpointError(f"module name {module_name} maps to checkpoint key {key}, which belongs to the "
                                      f"{keys.part_of(key)} part, not {part}")
            return key
    if module_name.startswith("vae_local."):
        return module_name
    raise CheckpointError(f"module name {module_name} matches no VARGPT name rule "
                          "(expected prefixes vlm.model.visual., vlm.model.language_model., vlm.lm_head., head., "
                          "vae_local.)")


def from_checkpoint_names(items: Mapping[str, T]) -> dict[str, T]:
    """Re-key a mapping (e.g. a state dict) from checkpoint names to module names; unknown keys are an error
    naming all of them."""
    return io.rename_keys(items, from_checkpoint_name, what="checkpoint key(s)", family=FAMILY)


def to_checkpoint_names(items: Mapping[str, T]) -> dict[str, T]:
    """Re-key a mapping from module names to checkpoint names; unknown names are an error naming them."""
    return io.rename_keys(items, to_checkpoint_name, what="module name(s)", family=FAMILY)


def checkpoint_manifest(model: nn.Module) -> dict[str, dict[str, object]]:
    """``{checkpoint_key: {shape, dtype, kind}}`` of everything ``model`` saves (meta-built models cost nothing).

    Same format as the fixture manifest of the public checkpoint, so the two compare with ``==``.
    """
    return io.checkpoint_manifest(model, to_checkpoint_name)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _known_part(key: str) -> Part | None:
    try:
        return keys.part_of(key)
    except KeyMappingError:
        return None


def _vae_hint(checkpoint_keys: Sequence[str]) -> str:
    """Why BSQ-VAE keys may have no place: the VAE is attached by the caller, or left out on purpose."""
    if any(k.startswith("vae_local.") for k in checkpoint_keys):
        return " (is the BSQ-VAE attached? or pass ignore_parts=('vae',))"
    return ""


def load_checkpoint(folder: str | Path, model: nn.Module, *, ignore_parts: Collection[Part] = ()) -> LoadReport:
    """Load a VARGPT checkpoint folder into ``model`` strictly, converting dtypes to the model's.

    All checks run on file headers before any tensor is copied, so a failing load leaves ``model`` untouched:
    every model tensor must be present, every checkpoint key (outside ``ignore_parts``) must map to a model
    tensor, shapes must match. Errors name the file and key. The model must be materialised (not on ``meta``):
    its non-persistent rotary buffers are not in the checkpoint and would stay empty.
    """
    bad_parts = sorted(set(ignore_parts) - set(MODULE_PREFIXES))
    if bad_parts:
        raise CheckpointError(f"ignore_parts {bad_parts} unknown; expected some of {sorted(MODULE_PREFIXES)}")
    ignored_parts = frozenset(ignore_parts)
    return io.load_checkpoint(folder, model, to_checkpoint_name=to_checkpoint_name,
                              from_checkpoint_name=from_checkpoint_name,
                              is_ignored=lambda key: _known_part(key) in ignored_parts,
                              unexpected_hint=_vae_hint, family=FAMILY)


def save_checkpoint(model: nn.Module, folder: str | Path, *, shards: int = 1) -> tuple[Path, ...]:
    """Write ``model`` under checkpoint names, as ``model.safetensors`` or ``shards`` HF shards + index, so the
    folder reads like the public one."""
    return io.save_checkpoint(model, folder, to_checkpoint_name=to_checkpoint_name, shards=shards, family=FAMILY)
