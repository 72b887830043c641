"""BLIP3o checkpoint names <-> our module names, and strict loading of the (sharded) safetensors files.

The public checkpoint was saved by transformers 4.51 from upstream's ``blip3oQwenForInferenceLM``, whose
text decoder also owns ``latent_queries`` and the DiT. Our ``Blip3oModel`` keeps the library's v5 layout
(``vlm.model.visual``, ``vlm.model.language_model``, ``vlm.lm_head``) with ``latent_queries`` and ``dit`` as
siblings, so every name is translated by the explicit table below, both ways. A name no rule covers is an
error: guessing would load a tensor into the wrong place or drop one silently.

EVA-CLIP keys (``model.gen_vision_tower.*``, the generation-target encoder) hold nothing the inference model
uses; if a checkpoint carries them they are reported as ignored, never loaded (``gen_tower.py`` reads them).

Only the name rules live here; the file handling (shards, index, strict loading, saving) is the generic
:mod:`asg.backbones.checkpoint_io`, whose names are re-exported so callers keep importing them from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from torch import nn

from asg.backbones import checkpoint_io as io
from asg.backbones.checkpoint_io import (  # re-exported: the plugin's tests and gen_tower import them from here
    INDEX_FILE,
    SINGLE_FILE,
    CheckpointError,
    LoadReport,
    TensorEntry,
    checkpoint_files,
    read_checkpoint_header,
)

__all__ = ["EXACT_RULES", "IGNORED_PREFIXES", "INDEX_FILE", "PREFIX_RULES", "SINGLE_FILE", "CheckpointError",
           "LoadReport", "TensorEntry", "checkpoint_files", "checkpoint_manifest", "from_checkpoint_name",
           "from_checkpoint_names", "is_ignored", "load_checkpoint", "read_checkpoint_header", "save_checkpoint",
           "to_checkpoint_name", "to_checkpoint_names"]

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

FAMILY = "BLIP3o"  # how errors name these rules


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


def _dit_hint(checkpoint_keys: Sequence[str]) -> str:
    return " (is the DiT attached?)"


def load_checkpoint(folder: str | Path, model: nn.Module) -> LoadReport:
    """Load a BLIP3o checkpoint folder into ``model`` strictly (:func:`asg.backbones.checkpoint_io.load_checkpoint`
    with the BLIP3o rules): every model tensor present, every checkpoint key outside the EVA-CLIP tower mapped
    to a model tensor, shapes equal, errors naming file and key; EVA-CLIP keys come back in ``report.ignored``."""
    return io.load_checkpoint(folder, model, to_checkpoint_name=to_checkpoint_name,
                              from_checkpoint_name=from_checkpoint_name, is_ignored=is_ignored,
                              unexpected_hint=_dit_hint, family=FAMILY)


def save_checkpoint(model: nn.Module, folder: str | Path, *, shards: int = 1) -> tuple[Path, ...]:
    """Write ``model`` under checkpoint names, as ``model.safetensors`` or ``shards`` HF shards + index."""
    return io.save_checkpoint(model, folder, to_checkpoint_name=to_checkpoint_name, shards=shards, family=FAMILY)
