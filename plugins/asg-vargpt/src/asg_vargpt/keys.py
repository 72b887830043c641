"""VARGPT-v1.1 checkpoint names <-> our module names, both ways.

The public checkpoint was saved by transformers 4.46 from upstream's ``VARGPTQwen2VLForConditionalGeneration``,
whose Qwen2-VL parts use the pre-4.52 layout (``visual.*``, ``model.*`` = text decoder, ``lm_head.*``). We build
the LLM as transformers v5's native ``Qwen2VLForConditionalGeneration``, which nests them as
``model.visual.*``, ``model.language_model.*`` and ``lm_head.*``. The image head (:class:`VargptImageHead`) and
the BSQ-VAE keep the checkpoint's names unchanged.

Every key is translated by an explicit rule; a key no rule covers is an error naming it, because guessing would
load a tensor into the wrong place or drop one silently. Note the overlap the rules must respect: checkpoint
``model.*`` (text decoder) and module ``model.*`` (v5 wrapper) mean different things, so a module name is
only ever fed to :func:`to_checkpoint_name` and a checkpoint name only to :func:`to_module_name`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

from asg.errors import DataError

T = TypeVar("T")

Part = Literal["llm", "head", "vae"]

# (checkpoint prefix, v5 module prefix, part). Prefixes end in "." so "model.norm." never matches "model.normx".
PREFIX_RULES: tuple[tuple[str, str, Part], ...] = (
    ("visual.", "model.visual.", "llm"),
    ("model.embed_tokens.", "model.language_model.embed_tokens.", "llm"),
    ("model.layers.", "model.language_model.layers.", "llm"),
    ("model.norm.", "model.language_model.norm.", "llm"),
    ("lm_head.", "lm_head.", "llm"),
    ("vargpt_gen.", "vargpt_gen.", "head"),
    ("image_gen_projector.", "image_gen_projector.", "head"),
    ("image_gen_projector_out.", "image_gen_projector_out.", "head"),
    ("sos_embedding.", "sos_embedding.", "head"),
    ("vae_local.", "vae_local.", "vae"),
)


class KeyMappingError(DataError):
    """A checkpoint or module key that no VARGPT naming rule covers (the message names it)."""


def _rule(name: str, side: int) -> tuple[str, str, Part]:
    for rule in PREFIX_RULES:
        if name.startswith(rule[side]):
            return rule
    which = "checkpoint" if side == 0 else "module"
    raise KeyMappingError(f"{which} key {name!r} matches no VARGPT-v1.1 naming rule "
                          f"(known {which} prefixes: {', '.join(r[side] for r in PREFIX_RULES)})")


def to_module_name(checkpoint_key: str) -> str:
    """v5 module name of one checkpoint key (``model.layers.0.x`` -> ``model.language_model.layers.0.x``)."""
    src, dst, _ = _rule(checkpoint_key, 0)
    return dst + checkpoint_key[len(src):]


def to_checkpoint_name(module_key: str) -> str:
    """Checkpoint name of one v5 module key; the inverse of :func:`to_module_name`."""
    src, dst, _ = _rule(module_key, 1)
    return src + module_key[len(dst):]


def part_of(checkpoint_key: str) -> Part:
    """Which component a checkpoint key belongs to: ``llm`` (Qwen2-VL), ``head`` (image head) or ``vae``."""
    return _rule(checkpoint_key, 0)[2]


def checkpoint_to_modules(state: Mapping[str, T], part: Part | None = None) -> dict[str, T]:
    """Rename a checkpoint state dict to module names; with ``part``, keep only that component's keys."""
    out: dict[str, T] = {}
    for key, value in state.items():
        if part is None or part_of(key) == part:
            out[to_module_name(key)] = value
    return out


def modules_to_checkpoint(state: Mapping[str, T]) -> dict[str, T]:
    """Rename a module state dict (v5 LLM names and/or head/VAE names) to checkpoint names."""
    renamed: dict[str, T] = {}
    for key, value in state.items():
        name = to_checkpoint_name(key)
        if name in renamed:
            raise KeyMappingError(f"two module keys map to checkpoint key {name!r}")
        renamed[name] = value
    return renamed


def missing_and_unexpected(expected: Iterable[str], found: Iterable[str]) -> tuple[list[str], list[str]]:
    """(keys expected but absent, keys present but not expected), each sorted: for strict-load errors."""
    want, have = set(expected), set(found)
    return sorted(want - have), sorted(have - want)
