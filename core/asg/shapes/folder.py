"""Export an unlabeled image folder with its ground truth kept elsewhere.

The labels live OUTSIDE the image folder so that a pipeline pointed at the
folder (e.g. self-training on "unlabeled" data) cannot read them by accident.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ._checks import require_choice, require_int
from .caption import describe
from .qa import qa_for
from .raster import MIN_SIZE, render
from .sampling import scene_for
from .vocab import SPLITS


def default_labels_path(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}.labels.jsonl"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    # Write a sibling temp file, then rename: a crash leaves either nothing or
    # a stray temp file, never a truncated file under the final name.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_unlabeled_folder(
    out_dir: str | os.PathLike[str],
    n: int,
    seed: int,
    split: str = "pool",
    size: int = 64,
    labels_path: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write n PNGs (000000.png, ...) of scene_for(split, seed, i) into out_dir.

    Ground truth goes to labels_path (default <parent>/<name>.labels.jsonl), one
    JSON object per image: file, split, seed, index, scene, caption, qa.
    Refuses a non-empty out_dir, an existing labels file and a labels path
    inside out_dir.  progress(i, n) is called after each image (i = 1..n).
    Returns the labels path.
    """
    n = require_int("n", n, 1)
    require_int("seed", seed, 0)
    require_choice("split", split, SPLITS)
    size = require_int("size", size, MIN_SIZE)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable(i, n) or None, got {progress!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"out_dir {str(out)!r} is not empty; refusing to mix datasets")
    labels = Path(labels_path) if labels_path is not None else default_labels_path(out)
    if labels.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"labels_path {str(labels)!r} must be outside out_dir {str(out)!r}, "
                         f"otherwise the folder is not unlabeled")
    if labels.exists():
        raise ValueError(f"labels_path {str(labels)!r} already exists; refusing to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    labels.parent.mkdir(parents=True, exist_ok=True)

    records = []
    for i in range(n):
        scene = scene_for(split, seed, i)
        name = f"{i:06d}.png"
        _atomic_write(out / name, lambda p, s=scene: render(s, size).save(p, format="PNG"))
        records.append({
            "file": name, "split": split, "seed": seed, "index": i,
            "scene": scene.to_dict(), "caption": describe(scene),
            "qa": [q.to_dict() for q in qa_for(split, seed, i)],
        })
        if progress is not None:
            progress(i + 1, n)

    def dump(p: Path) -> None:
        with open(p, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(labels, dump)
    return labels
