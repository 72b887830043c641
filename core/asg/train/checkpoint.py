"""Checkpoints on disk: safetensors + JSON, complete only when ``SAVE_OK`` is there (algorithm.md §9).

    checkpoints/
      step_000050/ tensors.safetensors  state.json  SAVE_OK
      latest.txt                                    # name of the last checkpoint written

A save writes ``step_000050.tmp/`` (tensors, state, each fsynced, ``SAVE_OK`` last), then renames it
into place, points ``latest.txt`` at it, and only then removes checkpoints beyond ``keep_last`` (each is
first renamed to ``*.deleting``, so a half-deleted one is never taken for a checkpoint). A crash at any
moment therefore leaves either no ``step_000050`` or a complete one, and the previous checkpoint intact;
the next save (or a resume) removes what an interrupted save left. A save that fails with an OS error
(a full disk, a read-only directory) removes its partial ``.tmp`` directory and raises a
:class:`~asg.train.run.RunWriteError` naming the file and the checkpoint that is still intact. Loading
refuses a directory without ``SAVE_OK``. Tensors are stored with safetensors only, never pickle;
:mod:`asg.train.flat` turns optimizer and RNG states into tensors + JSON.

``ASG_FAULT_INJECT`` (tests only) names points at which the process SIGKILLs itself, e.g.
``save:before_rename@4`` (inside the save of step 4) or ``step:5`` (after step 5 is logged); see
:func:`fault_point`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import attrs
import torch

from asg.errors import ConfigError, DataError
from asg.train.flat import (  # noqa: F401  (re-exported: the trainer imports the whole checkpoint API from here)
    flatten_tree, merge_flat, optimizer_from_flat, optimizer_to_flat, rng_state, set_rng_state, unflatten_tree,
)
from asg.train.run import RunDir, RunWriteError, _fsync_dir, atomic_write_text, now_iso, step_name, write_failed

__all__ = [
    "FAULT_ENV", "SAVE_OK", "CheckpointError", "CheckpointInfo", "Loaded", "fault_point", "nonfinite_point", "find_checkpoint",
    "latest_checkpoint", "list_checkpoints", "load_checkpoint", "recover_interrupted_save", "save_checkpoint",
    # from asg.train.flat
    "flatten_tree", "merge_flat", "optimizer_from_flat", "optimizer_to_flat", "rng_state", "set_rng_state",
    "unflatten_tree",
]

SAVE_OK = "SAVE_OK"
TENSORS = "tensors.safetensors"
STATE = "state.json"
LATEST = "latest.txt"
FORMAT = "asg-checkpoint/1"
_STEP_DIR = re.compile(r"^step_(\d+)$")
FAULT_ENV = "ASG_FAULT_INJECT"
FAULT_POINTS = ("save:start", "save:after_tensors", "save:after_state", "save:before_rename", "save:after_move_aside",
                "save:after_rename", "save:before_rotate", "save:during_rotate", "step:N")


def _injected() -> set[str]:
    """The items of ``ASG_FAULT_INJECT`` (comma-separated); empty when it is unset."""
    spec = os.environ.get(FAULT_ENV)
    return {item.strip() for item in spec.split(",")} if spec else set()


def fault_point(name: str, step: int | None = None) -> None:
    """Fault injection for tests: SIGKILL this process here when ``ASG_FAULT_INJECT`` (comma-separated) lists
    ``name`` or ``name@STEP``. Points: :data:`FAULT_POINTS` (``step:5`` = right after step 5 is logged).
    Unset, this is one environment lookup."""
    wanted = _injected()
    if name in wanted or (step is not None and f"{name}@{step}" in wanted):
        where = name if step is None else f"{name}@{step}"
        try:
            os.write(2, f"asg: {FAULT_ENV}: killing process {os.getpid()} at {where}\n".encode())
        except OSError:
            pass
        os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))
        os._exit(137)  # pragma: no cover  (where SIGKILL is not immediate)


def nonfinite_point(step: int, rank: int) -> None:
    """Fault injection for tests: raise :class:`~asg.errors.NonFiniteError` at the start of step ``STEP``
    (before any rollout) when ``ASG_FAULT_INJECT`` lists ``nonfinite@STEP`` (every rank) or
    ``nonfinite@STEP/RANK`` (that rank only), as a NaN in the step's first sampling would."""
    wanted = _injected()
    if f"nonfinite@{step}" in wanted or f"nonfinite@{step}/{rank}" in wanted:
        from asg.errors import NonFiniteError

        raise NonFiniteError(f"{FAULT_ENV}: injected non-finite logits at step {step} on rank {rank}")


class CheckpointError(DataError):
    """A checkpoint is missing, incomplete or inconsistent."""


@attrs.frozen
class CheckpointInfo:
    """One ``checkpoints/step_*`` directory."""

    path: Path
    step: int
    complete: bool  # SAVE_OK present: the save finished


class Loaded(NamedTuple):
    step: int
    tensors: dict[str, torch.Tensor]  # on the CPU
    state: dict[str, Any]


def _root(run_dir: RunDir | str | os.PathLike[str]) -> Path:
    return (run_dir.path if isinstance(run_dir, RunDir) else Path(run_dir)) / "checkpoints"


def list_checkpoints(run_dir: RunDir | str | os.PathLike[str]) -> list[CheckpointInfo]:
    """Every ``step_*`` directory of a run (complete or not; never the ``.tmp`` ones), by step."""
    root = _root(run_dir)
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            m = _STEP_DIR.match(entry.name)
            if m and entry.is_dir():
                found.append(CheckpointInfo(entry, int(m.group(1)), (entry / SAVE_OK).is_file()))
    return sorted(found, key=lambda c: c.step)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``path`` as safetensors, fsynced."""
    from asg.backbones.checkpoint_io import save_safetensors

    save_safetensors(tensors, path, metadata)
    _fsync_file(path)


def _write_text(path: Path, text: str) -> None:
    """``path`` holding ``text``, fsynced."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _plain_state(value: Any, where: str) -> Any:
    """``value`` checked to be JSON that reads back equal (str keys, no tensors); numpy scalars unwrapped."""
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"checkpoint {where}: key {k!r} is a {type(k).__name__}; JSON keys are strings "
                                  "(use asg.train.flat.flatten_tree for int keys and tuples)")
        return {k: _plain_state(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_state(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor):
        raise ConfigError(f"checkpoint {where} is a tensor; put tensors in tensors= (asg.train.flat.flatten_tree "
                          "splits a tree into both)")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar
        return value.item()
    raise ConfigError(f"checkpoint {where} is a {type(value).__name__}, which JSON cannot hold")


def _cleanup(root: Path) -> None:
    """Remove what an interrupted save left: ``*.tmp`` and ``*.deleting`` dirs, a stray ``.latest.txt.*.tmp``,
    and ``*.replaced`` dirs whose successor exists (if a crash came between moving the old checkpoint aside
    and renaming the new one in, the old returns)."""
    for entry in list(root.iterdir()):
        if entry.name.endswith(".replaced") and entry.is_dir():
            final = root / entry.name[: -len(".replaced")]
            if final.exists():
                shutil.rmtree(entry)
            else:
                entry.rename(final)
    for entry in list(root.iterdir()):
        if entry.name.endswith((".tmp", ".deleting")) and entry.is_dir():
            shutil.rmtree(entry)
        elif entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
            entry.unlink()


def recover_interrupted_save(run_dir: RunDir | str | os.PathLike[str]) -> None:
    """Tidy ``checkpoints/`` after a crash (what the next save would do): drop partial ``.tmp`` dirs and put
    back a checkpoint a crash left moved aside. A resume calls this before it picks its checkpoint."""
    root = _root(run_dir)
    if root.is_dir():
        _cleanup(root)


def _rotate(run_dir: RunDir | str | os.PathLike[str], keep_last: int, final: Path, step: int) -> None:
    """Remove complete checkpoints beyond the newest ``keep_last`` (never ``final``). Each is renamed to
    ``*.deleting`` before it is deleted, so a crash cannot leave a half-deleted directory that still looks
    complete. A failure here only warns: the new checkpoint is written and the run can go on."""
    complete = [c for c in list_checkpoints(run_dir) if c.complete]
    for c in complete[:-keep_last]:
        if c.path == final:
            continue
        doomed = c.path.with_name(c.path.name + ".deleting")
        try:
            c.path.rename(doomed)
            fault_point("save:during_rotate", step)
            shutil.rmtree(doomed)
        except OSError as exc:
            warnings.warn(f"could not remove old checkpoint {c.path} ({exc}); delete it by hand to free the space",
                          RuntimeWarning, stacklevel=3)


def save_checkpoint(run_dir: RunDir | str | os.PathLike[str], step: int, *, tensors: Mapping[str, torch.Tensor],
                    state: Mapping[str, Any], keep_last: int | None) -> Path:
    """Write ``checkpoints/step_NNNNNN/`` (tensors, state, SAVE_OK last), point ``latest.txt`` at it and keep
    the newest ``keep_last`` complete checkpoints (None keeps all; the one just written is never removed)."""
    name = step_name(step)
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ConfigError(f"save_checkpoint: keep_last must be an int >= 1 or None (keep all), got {keep_last!r}")
    for key, t in tensors.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"save_checkpoint: tensor names must be non-empty strings, got {key!r}")
        if not isinstance(t, torch.Tensor):
            raise ConfigError(f"save_checkpoint: tensors[{key!r}] is a {type(t).__name__}, not a torch.Tensor")
    document = {"format": FORMAT, "step": step, "saved_at": now_iso(), "n_tensors": len(tensors),
                "state": _plain_state(dict(state), "state")}
    text = json.dumps(document, indent=1) + "\n"  # NaN/Infinity allowed: Python's json reads them back

    root = _root(run_dir)
    tmp, final = root / f"{name}.tmp", root / name
    current = root  # what is being written, for the error message
    try:
        root.mkdir(parents=True, exist_ok=True)
        _cleanup(root)
        current = tmp
        tmp.mkdir()
        fault_point("save:start", step)
        # own CPU copies: safetensors refuses tensors that share memory and needs them contiguous
        cpu = {k: t.detach().to("cpu", copy=True).contiguous() for k, t in tensors.items()}
        current = tmp / TENSORS
        _write_tensors(cpu, current, {"format": "pt", "asg_step": str(step)})
        fault_point("save:after_tensors", step)
        current = tmp / STATE
        _write_text(current, text)
        fault_point("save:after_state", step)
        current = tmp / SAVE_OK
        _write_text(current, f"{name} {document['saved_at']}\n")
        _fsync_dir(tmp)
        fault_point("save:before_rename", step)
        current = final
        if final.exists():  # same step saved again (e.g. after a resume): swap, then delete the old one
            old = root / f"{name}.replaced"
            final.rename(old)
            fault_point("save:after_move_aside", step)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        _fsync_dir(root)
        fault_point("save:after_rename", step)
        current = root / LATEST
        atomic_write_text(current, name + "\n")
    except RunWriteError:  # latest.txt (the checkpoint itself is complete)
        raise
    except OSError as exc:
        if exc.errno is None:  # not an error the OS reported (a test's stand-in for a crash): as a crash would
            raise
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        intact = latest_checkpoint(run_dir) if root.is_dir() else None
        kept = (f"the previous checkpoint {intact} is intact" if intact is not None and intact != final
                else "no earlier checkpoint of this run is complete")
        raise write_failed(exc, current, f"checkpoint of step {step}", kept) from exc
    fault_point("save:before_rotate", step)
    if keep_last is not None:
        _rotate(run_dir, keep_last, final, step)
    return final


def _describe(found: list[CheckpointInfo]) -> str:
    if not found:
        return "none"
    return ", ".join(f"{c.path.name}{'' if c.complete else ' (incomplete: no SAVE_OK)'}" for c in found)


def latest_checkpoint(run_dir: RunDir | str | os.PathLike[str]) -> Path | None:
    """The run's checkpoint to resume from: the one ``latest.txt`` names (the last written) if it is complete,
    else the highest complete step; None when the run has no complete checkpoint."""
    root = _root(run_dir)
    complete = {c.path.name: c for c in list_checkpoints(run_dir) if c.complete}
    try:
        latest = (root / LATEST).read_text(encoding="utf-8").strip()
    except OSError:
        latest = ""
    if latest in complete:
        return complete[latest].path
    aside = root / f"{latest}.replaced"  # a crash while that step was being saved again (see _cleanup)
    if latest and _STEP_DIR.match(latest) and (aside / SAVE_OK).is_file():
        return aside
    if not complete:
        return None
    return max(complete.values(), key=lambda c: c.step).path


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The complete checkpoint directory ``path`` means: a ``step_*`` dir, its ``state.json``, or a run dir /
    its ``checkpoints`` dir (then :func:`latest_checkpoint`)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory; pass a run directory, a checkpoints/step_* "
                              "directory or its state.json")
    if p.is_file():
        if p.name != STATE:
            raise CheckpointError(f"{p} is not a checkpoint's {STATE}; pass a run directory or a step_* directory")
        p = p.parent
    single = _STEP_DIR.match(p.name) or p.name.endswith(".tmp") or (p / STATE).exists() or (p / SAVE_OK).exists()
    if (p / "checkpoints").is_dir() or p.name == "checkpoints":
        run = p if (p / "checkpoints").is_dir() else p.parent
    elif single:
        if not (p / SAVE_OK).is_file():
            others = [c for c in list_checkpoints(p.parent.parent) if c.complete] if p.parent.name == "checkpoints" else []
            hint = f"; complete ones: {', '.join(c.path.name for c in others)}" if others else ""
            raise CheckpointError(f"checkpoint {p} is incomplete (no {SAVE_OK}: its save was interrupted); "
                                  f"resume from a complete checkpoint{hint}")
        return p
    else:
        raise CheckpointError(f"{p} holds no checkpoints (no checkpoints/ directory); pass a run directory, "
                              "a checkpoints/step_* directory or its state.json")
    found = latest_checkpoint(run)
    if found is None:
        raise CheckpointError(f"no complete checkpoint in {run / 'checkpoints'} (found: {_describe(list_checkpoints(run))}); "
                              "resume from another run, or start this one again without --resume in a new --out")
    return found


def load_checkpoint(path: str | os.PathLike[str]) -> Loaded:
    """``(step, tensors, state)`` of the complete checkpoint ``path`` means (see :func:`find_checkpoint`)."""
    from safetensors.torch import load_file

    ckpt = find_checkpoint(path)
    try:
        document = json.loads((ckpt / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{ckpt / STATE}: unreadable ({exc}); resume from another checkpoint") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        got = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise CheckpointError(f"{ckpt / STATE}: not an asg checkpoint (format {got!r}, expected {FORMAT!r})")
    step = document.get("step")
    m = _STEP_DIR.match(ckpt.name)
    if not isinstance(step, int) or (m is not None and int(m.group(1)) != step):
        raise CheckpointError(f"{ckpt}: state.json says step {step!r}, which its directory name contradicts")
    if not (ckpt / TENSORS).is_file():
        raise CheckpointError(f"{ckpt}: {TENSORS} is missing although {SAVE_OK} is present; the directory was edited")
    tensors = load_file(str(ckpt / TENSORS), device="cpu")
    return Loaded(step, tensors, document["state"])
