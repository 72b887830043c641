"""Guards for what asg writes and fetches (docs/training.md, "Bad input and safety").

- :func:`safe_child` and :func:`safe_name`: a file written under a run directory from a name that
  comes from data (a label, a prompt, a reward) stays one plain file inside that directory.
- :func:`snapshot_download`: huggingface_hub's download, refused unless the user opted in with
  ``ASG_ALLOW_DOWNLOADS=1``. asg reaches the network only through it; every other load is local
  (``from_pretrained(..., local_files_only=True)``), weights are read and written as safetensors, and
  anything else from disk is JSON, TOML or ``torch.load(weights_only=True)``. ``tests/test_safety.py``
  checks the source tree for all of this.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from asg.errors import AsgError, ConfigError

ALLOW_DOWNLOADS_ENV = "ASG_ALLOW_DOWNLOADS"
_TRUE = ("1", "true", "yes", "on")
_MAX_NAME_BYTES = 255  # one path component on common file systems
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


class DownloadDisabledError(AsgError):
    """Something would have been downloaded, and the user did not allow downloads."""


def downloads_allowed() -> bool:
    """Whether the user allowed downloads: ``ASG_ALLOW_DOWNLOADS`` set to 1/true/yes/on."""
    return os.environ.get(ALLOW_DOWNLOADS_ENV, "").strip().lower() in _TRUE


def snapshot_download(repo_id: str, **kwargs: Any) -> str:
    """``huggingface_hub.snapshot_download(repo_id, **kwargs)`` when downloads are allowed, else
    DownloadDisabledError naming the repository and the way to allow it."""
    if not downloads_allowed():
        raise DownloadDisabledError(f"{repo_id!r} is not a local folder, and asg downloads nothing unless asked: "
                                    f"set {ALLOW_DOWNLOADS_ENV}=1 to fetch it from the Hugging Face hub")
    from huggingface_hub import snapshot_download as download

    return str(download(repo_id=repo_id, **kwargs))


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name.strip():
        return "empty"
    if name.startswith("."):
        return "starts with '.' (hidden, or '..')"
    if _UNSAFE_CHARS.search(name):
        return "holds a path separator, drive colon, wildcard or control character"
    if name[-1] in " .":
        return "ends with a space or '.'"
    if name.split(".", 1)[0].strip().upper() in _WINDOWS_RESERVED:
        return "is a reserved device name on Windows"
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        return f"longer than {_MAX_NAME_BYTES} bytes"
    return None


def safe_child(root: str | os.PathLike[str], name: str) -> Path:
    """``root / name``, for a ``name`` that must be one plain file name inside ``root``.

    ConfigError when it is not (a separator, ``..``, a leading dot, a drive, a control character, a
    Windows device name, over 255 bytes) or when the path resolves outside ``root`` (an existing
    symbolic link there pointing elsewhere). Use :func:`safe_name` first for text from data.
    """
    why = _name_problem(name)
    if why is None and (Path(root) / name).resolve().parent != Path(root).resolve():
        why = "resolves outside the directory (a symbolic link)"
    if why is not None:
        raise ConfigError(f"bad file name {name!r} under {str(root)!r}: {why}; use a plain name such as 'best_0_r0.91'")
    return Path(root) / name


def safe_name(text: str, *, default: str = "file", max_chars: int = 100) -> str:
    """A plain file name made from arbitrary ``text`` (a prompt, a label): unsafe characters and runs
    of them become ``_``, leading dots and trailing dots/spaces go, it is cut to ``max_chars``; the
    result always passes :func:`safe_child`."""
    name = _UNSAFE_CHARS.sub("_", str(text))
    name = re.sub(r"_+", "_", name).strip().lstrip(".").rstrip(" .")[:max_chars].rstrip(" .")
    name = name.encode("utf-8", "surrogatepass")[:_MAX_NAME_BYTES].decode("utf-8", "ignore").rstrip(" .")
    if _name_problem(name) is not None:
        name = f"_{name}" if name and _name_problem(f"_{name}") is None else default
    return name
