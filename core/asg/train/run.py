"""The run directory (architecture.md "A run on disk", algorithm.md §9).

    runs/<name>/
      config.json  environment.json  status.json      # status rewritten atomically every step
      metrics.jsonl  rollouts.jsonl                   # one JSON object per line, every record has a `step`
      checkpoints/step_000050/ ... SAVE_OK            # asg.train.checkpoint
      plots/*.png  samples/step_000050/*.png  report.md

A crash may cut the line being written short; nothing else is lost, because every append is flushed
and fsynced before the call returns. Resuming from checkpoint ``k`` calls :meth:`RunDir.truncate_after` which
keeps exactly the records with ``step <= k``, so the logs of a resumed run equal an uninterrupted one's.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from asg.errors import AsgError, ConfigError, DataError
from asg.safety import safe_child

STATES = ("running", "completed", "failed", "interrupted")  # interrupted: by a signal, resumable
SKIPPED_IMAGES_LISTED = 20  # status.json lists at most this many unreadable pool files
RUN_MARKERS = ("config.json", "status.json", "metrics.jsonl", "rollouts.jsonl", "checkpoints")
_PACKAGES = ("torch", "transformers", "diffusers", "peft", "accelerate", "safetensors", "numpy", "asg-core")


def step_name(step: int) -> str:
    """Directory name of a step: ``step_000050`` (zero-padded to 6 digits, wider past 999999)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"a step must be a non-negative int, got {step!r}")
    return f"step_{step:06d}"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -- JSON values and files ------------------------------------------------------------------------
def jsonable(value: Any, where: str = "value") -> Any:
    """``value`` as plain JSON data: numpy/torch scalars and arrays become numbers and lists,
    non-finite floats become None (so every line is valid JSON), tuples become lists, Paths strings."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if attrs.has(type(value)):
        return jsonable(attrs.asdict(value, recurse=True), where)
    if hasattr(value, "tolist"):  # numpy scalars/arrays, torch tensors (0-d ones give a Python number)
        return jsonable(value.tolist(), where)
    raise TypeError(f"{where}: cannot write a {type(value).__module__}.{type(value).__name__} as JSON; "
                    "log numbers, strings, lists or dicts of them")


# -- writing safely --------------------------------------------------------------------------------
class RunWriteError(AsgError, OSError):
    """Writing the run directory failed (disk full, read-only, no permission). The message names the path;
    ``errno`` is the operating system's error number."""

    def __init__(self, message: str, error: int | None = None, path: str | os.PathLike[str] | None = None) -> None:
        if error is None:
            super().__init__(message)
        else:
            super().__init__(error, message)
        self.message = message
        self.path = None if path is None else Path(path)

    def __str__(self) -> str:
        return self.message


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def disk_free(path: str | os.PathLike[str]) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor); None if unknown."""
    path = Path(path).absolute()
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else "no errno"


def write_failed(exc: OSError, path: str | os.PathLike[str], what: str, note: str = "") -> RunWriteError:
    """The :class:`RunWriteError` for ``exc`` raised while writing ``what`` at ``path``: names the path, the
    cause, the free space when the disk is full, ``note`` and the way out."""
    parts = [f"could not write {what}: {path}: {exc.strerror or exc} ({_errno_name(exc)})"]
    if exc.errno in _DISK_FULL:
        free = disk_free(path)
        parts.append("the disk is full" + (f" ({human_bytes(free)} free there)" if free is not None else ""))
    if note:
        parts.append(note)
    if exc.errno in _DISK_FULL:
        parts.append("free space (or lower run.keep_checkpoints), then resume the run")
    elif exc.errno in _NO_PERMISSION:
        parts.append("make the directory writable, or start the run with another --out")
    return RunWriteError("; ".join(parts), exc.errno, path)


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` if needed, then write, fsync and delete a probe file in it; a RunWriteError naming
    the folder if any of that fails (read-only file system, no permission, no space)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".asg-write-test-", dir=folder)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise RunWriteError(f"run directory {folder} is not writable: {exc.strerror or exc} ({_errno_name(exc)}); "
                            "make it writable, or choose another --out", exc.errno, folder) from exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so that a reader sees the old file or the new one, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise write_failed(exc, path, path.name, "the previous version of the file is intact") from exc
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")


@attrs.frozen
class JsonlRead:
    """The records of a JSON-lines file and what a crash left at its end."""

    path: Path
    records: tuple[dict[str, Any], ...]
    truncated: str | None = None  # the unterminated, unparseable last line (None if the file ends cleanly)


def _split(path: Path) -> tuple[list[tuple[bytes, dict[str, Any]]], bytes]:
    """Complete lines (raw bytes with newline, parsed record) and the unparseable tail (b"" if none)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: b"" for a cleanly ended file
    out: list[tuple[bytes, dict[str, Any]]] = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not a JSON line ({exc}); only the last line of a log may be cut "
                            "short by a crash, so this file was edited or damaged: repair or remove that line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
        out.append((raw + b"\n", record))
    if tail.strip():
        try:  # a complete object that only lacks its newline is kept
            record = json.loads(tail)
        except ValueError:
            return out, tail
        if isinstance(record, dict):
            out.append((tail + b"\n", record))
            return out, b""
    return out, tail if tail.strip() else b""


def read_jsonl(path: str | os.PathLike[str]) -> JsonlRead:
    """Every record of a JSON-lines log; a last line cut short by a crash is reported in ``truncated``.

    A missing file reads as no records. A bad line anywhere but at the end is a DataError naming it.
    """
    path = Path(path)
    if not path.exists():
        return JsonlRead(path, ())
    lines, tail = _split(path)
    return JsonlRead(path, tuple(r for _, r in lines), tail.decode("utf-8", "replace") if tail else None)


def _keep_until(path: Path, step: int) -> int:
    """Rewrite ``path`` to its records with ``step <= step`` (dropping a cut-short tail); the number dropped."""
    if not path.exists():
        return 0
    lines, tail = _split(path)
    kept = b"".join(raw for raw, rec in lines if not (isinstance(rec.get("step"), int) and rec["step"] > step))
    dropped = len(lines) - sum(1 for _ in kept.splitlines()) + (1 if tail else 0)
    if len(kept) != path.stat().st_size:  # also when only the last record's newline was missing
        atomic_write_text(path, kept.decode("utf-8"))
    return dropped


def _append_lines(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    lines = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TypeError(f"{path.name} record {i}: expected a dict, got {type(record).__name__}")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigError(f"{path.name} record {i}: every record needs an int 'step' >= 0 (resume keeps the "
                              f"records up to the checkpoint's step), got step={step!r}")
        lines.append(json.dumps(jsonable(record, "record"), allow_nan=False) + "\n")
    if not lines:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        if exc.errno is None:
            raise
        raise write_failed(exc, path, path.name) from exc


# -- environment ----------------------------------------------------------------------------------
def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _device() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"kind": "cpu"}
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        return {"kind": "cuda", "count": n, "names": [torch.cuda.get_device_name(i) for i in range(n)],
                "cuda": torch.version.cuda}
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return {"kind": "mps"}
    return {"kind": "cpu", "torch_threads": torch.get_num_threads()}


def environment(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Where and with what a run started: versions, platform, device, git commit, host, argv, time."""
    return {
        "time": now_iso(), "hostname": socket.gethostname(), "argv": list(sys.argv if argv is None else argv),
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "packages": {name: _version(name) for name in _PACKAGES}, "device": _device(), "git_commit": _git_commit(),
    }


def _changes(old: Any, new: Any, where: str = "") -> dict[str, list[Any]]:
    """Dotted keys whose values differ between two configs: {key: [old, new]}."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, list[Any]] = {}
        for key in sorted(set(old) | set(new)):
            out.update(_changes(old.get(key), new.get(key), f"{where}.{key}" if where else str(key)))
        return out
    return {} if old == new else {where or "(root)": [old, new]}


# -- the run directory ----------------------------------------------------------------------------
class RunDir:
    """One run's directory: metadata, status, logs and samples. Checkpoints: ``asg.train.checkpoint``."""

    __slots__ = ("path", "resumed", "config_changes", "_t0", "_elapsed_before", "_start_step", "_rewound", "_status")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.resumed = False
        self.config_changes: dict[str, list[Any]] = {}  # on resume: dotted key -> [old, new]
        self._t0 = time.monotonic()
        self._elapsed_before = 0.0  # wall time of earlier sessions of this run (resume)
        self._start_step = 0
        self._rewound = True
        self._status: dict[str, Any] = {"step": 0, "phase": None, "steps_total": None,
                                        "last_checkpoint": None, "last_error": None}

    @staticmethod
    def holds_run(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds (part of) a previous run."""
        path = Path(path)
        return path.is_dir() and any((path / m).exists() for m in RUN_MARKERS)

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, config: Mapping[str, Any], resume: bool,
               argv: Sequence[str] | None = None) -> RunDir:
        """Make (or, with ``resume``, reopen) the run directory and write config.json and environment.json.

        A resumed run must call :meth:`truncate_after` with the step it restarts from before it logs anything.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"run directory {path} is a file; choose another --out")
        previous = cls.holds_run(path)
        if previous and not resume:
            raise ConfigError(f"{path} already holds a run; pass --resume {path} to continue it, "
                              "or choose another --out for a new run")
        if resume and not previous:
            raise ConfigError(f"--resume {path}: there is no run to continue there; "
                              "drop --resume to start a new run in it")
        run = cls(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunWriteError(f"run directory {path} cannot be created: {exc.strerror or exc} ({_errno_name(exc)}); "
                                "choose another --out", exc.errno, path) from exc
        env = environment(argv)
        if resume:
            run.resumed, run._rewound = True, False
            old_config = _read_json(run.config_path)
            run.config_changes = _changes(old_config, jsonable(config)) if old_config is not None else {}
            old_env = _read_json(run.environment_path) or {}
            env["config_changes"] = run.config_changes
            env["previous_starts"] = [*old_env.pop("previous_starts", []), old_env] if old_env else []
            old_status = _read_json(run.status_path) or {}
            run._elapsed_before = float(old_status.get("elapsed_sec") or 0.0)
            run._status.update({k: old_status.get(k) for k in ("steps_total", "last_checkpoint")})
        write_json(run.config_path, config)
        write_json(run.environment_path, env)
        return run

    # paths
    config_path = property(lambda self: self.path / "config.json")
    environment_path = property(lambda self: self.path / "environment.json")
    status_path = property(lambda self: self.path / "status.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    rollouts_path = property(lambda self: self.path / "rollouts.jsonl")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    plots_dir = property(lambda self: self.path / "plots")
    report_path = property(lambda self: self.path / "report.md")

    def truncate_after(self, step: int) -> dict[str, int]:
        """Resume from ``step``: drop every metrics/rollouts record with a larger step (and a line a crash cut
        short). Returns the number of lines dropped per file."""
        step_name(step)  # validates
        dropped = {p.name: _keep_until(p, step) for p in (self.metrics_path, self.rollouts_path)}
        self._start_step, self._rewound = step, True
        self._status["step"] = step
        return dropped

    def write_status(self, state: str, *, step: int | None = None, phase: str | None = None,
                     steps_total: int | None = None, last_checkpoint: str | os.PathLike[str] | None = None,
                     last_error: str | BaseException | None = None, steps_done: int | None = None,
                     elapsed_sec: float | None = None, steps_per_sec: float | None = None,
                     eta_sec: float | None = None, reason: str | None = None, resume_command: str | None = None,
                     images_skipped: int | None = None, skipped_images: Mapping[Any, str] | None = None,
                     **metrics: Any) -> dict[str, Any]:
        """Atomically rewrite status.json. ``step`` is the last completed global step; step, phase, steps_total,
        last_checkpoint and last_error keep their previous value when not given; steps_done, elapsed_sec,
        steps_per_sec and eta_sec are computed (this session's rate) unless given; extra keyword arguments
        land in its ``metrics`` block. ``reason`` says why a run stopped (failed, interrupted) and
        ``resume_command`` how to continue it; ``images_skipped`` counts the unreadable pool files and
        ``skipped_images`` ({path: why}) lists the first :data:`SKIPPED_IMAGES_LISTED` of them."""
        if state not in STATES:
            raise ConfigError(f"status state must be one of {', '.join(STATES)}; got {state!r}")
        if isinstance(last_error, BaseException):
            last_error = f"{type(last_error).__name__}: {last_error}"
        given = {"step": step, "phase": phase, "steps_total": steps_total,
                 "last_checkpoint": os.fspath(last_checkpoint) if last_checkpoint is not None else None,
                 "last_error": last_error}
        self._status.update({k: v for k, v in given.items() if v is not None})
        s = self._status
        session = time.monotonic() - self._t0
        done_now = s["step"] - self._start_step
        rate = steps_per_sec if steps_per_sec is not None else (done_now / session if session > 0 and done_now > 0 else None)
        remaining = max(0, s["steps_total"] - s["step"]) if s["steps_total"] is not None else None
        if eta_sec is None and remaining is not None and rate:
            eta_sec = remaining / rate
        status = {
            "state": state, "step": s["step"], "phase": s["phase"], "steps_total": s["steps_total"],
            "steps_started_from": self._start_step, "steps_done": s["step"] if steps_done is None else steps_done,
            "steps_remaining": remaining, "progress": s["step"] / s["steps_total"] if s["steps_total"] else None,
            "elapsed_sec": self._elapsed_before + session if elapsed_sec is None else elapsed_sec,
            "session_elapsed_sec": session, "steps_per_sec": rate, "eta_sec": eta_sec,
            "last_checkpoint": s["last_checkpoint"], "last_error": s["last_error"],
            "reason": reason, "resume_command": resume_command, "images_skipped": images_skipped,
            "skipped_images": None if skipped_images is None else [
                {"path": os.fspath(p), "reason": why} for p, why in list(skipped_images.items())[:SKIPPED_IMAGES_LISTED]],
            "updated_at": now_iso(), "run_dir": str(self.path), "metrics": metrics,
        }
        write_json(self.status_path, status)
        return jsonable(status)

    def _check_rewound(self) -> None:
        if not self._rewound:
            raise AsgError(f"{self.path} was reopened with resume=True: call truncate_after(step) with the restored "
                           "checkpoint's step (0 when none) before logging, so the logs drop what came after it")

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Append one step's record (it must carry ``step``) to metrics.jsonl, flushed to disk."""
        self._check_rewound()
        _append_lines(self.metrics_path, [record])

    def append_rollouts(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append rollout records (each with ``step``) to rollouts.jsonl in one flushed write."""
        self._check_rewound()
        _append_lines(self.rollouts_path, records)

    def read_metrics(self) -> JsonlRead:
        return read_jsonl(self.metrics_path)

    def sample_dir(self, step: int) -> Path:
        """``samples/step_000050/``, created on demand."""
        out = self.path / "samples" / step_name(step)
        out.mkdir(parents=True, exist_ok=True)
        return out

    def save_images(self, step: int, images: Sequence[Any], names: Sequence[str]) -> list[Path]:
        """Save PIL images as ``samples/step_NNNNNN/<name>.png``; the written paths."""
        if len(images) != len(names):
            raise ConfigError(f"save_images: {len(images)} images but {len(names)} names; give one name per image")
        for name in names:
            if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name or name.startswith("."):
                raise ConfigError(f"save_images: bad file name {name!r}; use a plain name such as 'best_0_r0.91'")
        out = self.sample_dir(step)
        paths = []
        for image, name in zip(images, names):
            path = safe_child(out, name if name.lower().endswith(".png") else f"{name}.png")  # never outside the run
            image.save(path)
            paths.append(path)
        return paths


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
