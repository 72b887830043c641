"""The unlabeled image pool: which image each rank sees at each step (algorithm.md §2).

A pool is every image file under a folder (recursively), in sorted path order, optionally cut to the
first ``max_images``, then put in an order shuffled once with ``random.Random(seed)``. Global step
``s`` (1-based) on rank ``r`` of ``W`` reads ``indices[((s - 1) * W + r) % len(pool)]``, so the ranks
walk one shared stream side by side and the U- and G-steps draw from the same stream.

Only image files are read; anything else in the folder (a ``*.labels.jsonl`` written by
``asg data shapes``, notes, captions) is ignored, because self-evolving training never sees labels.

Images are opened lazily. A file that cannot be decoded is reported once (a ``DataWarning``), counted
in ``pool.skipped`` and replaced by the next readable image of the stream, so one bad file among
10 000 does not end a run at step 7 000. The replacement depends only on the file, not on the rank,
so every rank that meets the file makes the same choice.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from asg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff")  # §2; matched case-insensitively
MAKE_POOL_HINT = "write a synthetic pool with `asg data shapes --out DIR --n N` and pass --images DIR"


class DataWarning(UserWarning):
    """An image in the pool was skipped (unreadable or corrupt)."""


class PoolImage(NamedTuple):
    """One draw from the pool; unpacks as ``path, image = pool.image_for(step)``."""

    path: Path
    image: Image.Image  # mode "RGB"; resized to image_size when the pool resizes


def _int_arg(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"ImagePool {name} must be an integer >= {lo}, got {value!r} ({type(value).__name__})")
    if value < lo:
        raise ConfigError(f"ImagePool {name} must be an integer >= {lo}, got {value!r}")
    return value


def scan_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Every file under ``folder`` whose suffix is in IMAGE_EXTENSIONS, sorted by path string.

    Sorting by the string (not by ``Path`` parts) is the order ``sorted(os.path.join(...))`` gives,
    which is what the reference implementation's pool order is built from.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"image folder {str(root)!r} does not exist; check the path, or {MAKE_POOL_HINT}")
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} is a file, not a folder; pass the folder that holds the images")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
    return [Path(p) for p in sorted(found)]


class ImagePool:
    """The shuffled image stream of §2; ``image_for(step, rank, world)`` is the only way to draw."""

    def __init__(self, folder: str | os.PathLike[str], *, seed: int, max_images: int | None = None,
                 image_size: int | tuple[int, int] | None = None) -> None:
        self.seed = _int_arg("seed", seed, 0)
        if max_images is not None:
            _int_arg("max_images", max_images, 1)
        # (height, width) as backbones declare it; an int means a square
        if image_size is None:
            self.image_size: tuple[int, int] | None = None
        elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
            self.image_size = (_int_arg("image_size[0]", image_size[0], 1), _int_arg("image_size[1]", image_size[1], 1))
        else:
            side = _int_arg("image_size", image_size, 1)
            self.image_size = (side, side)
        self.folder = Path(folder)
        paths = scan_images(self.folder)
        if not paths:
            exts = ", ".join(IMAGE_EXTENSIONS)
            raise DataError(f"image folder {str(self.folder)!r} holds no images (looked recursively for {exts}, "
                            f"any case); point --images at a folder of images, or {MAKE_POOL_HINT}")
        self.paths: tuple[Path, ...] = tuple(paths[:max_images])  # sorted, then cut (§2 order)
        order = list(range(len(self.paths)))
        random.Random(self.seed).shuffle(order)
        self.indices: tuple[int, ...] = tuple(order)
        self._unreadable: dict[Path, str] = {}  # path -> why it was skipped

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"ImagePool({str(self.folder)!r}, images={len(self)}, seed={self.seed}, skipped={self.skipped})"

    @property
    def skipped(self) -> int:
        """How many distinct files were found unreadable so far (each was warned about once)."""
        return len(self._unreadable)

    @property
    def unreadable(self) -> dict[Path, str]:
        """The skipped files and the decoder's complaint about each."""
        return dict(self._unreadable)

    def position(self, step: int, rank: int = 0, world: int = 1) -> int:
        """Where in the shuffled order step ``step`` (1-based) of rank ``rank`` out of ``world`` reads."""
        _int_arg("step", step, 1)
        _int_arg("world", world, 1)
        _int_arg("rank", rank, 0)
        if rank >= world:
            raise ConfigError(f"ImagePool rank must be in [0, {world - 1}] for world={world}, got {rank}")
        return ((step - 1) * world + rank) % len(self.paths)

    def path_for(self, step: int, rank: int = 0, world: int = 1) -> Path:
        """The file §2 assigns to (step, rank), before any skipping of unreadable files."""
        return self.paths[self.indices[self.position(step, rank, world)]]

    def image_for(self, step: int, rank: int = 0, world: int = 1) -> PoolImage:
        """The image for global step ``step`` (1-based) on rank ``rank`` of ``world`` ranks.

        If that file is unreadable, the next positions of the stream are tried in turn; when none of
        the pool can be read, a DataError names the folder.
        """
        start = self.position(step, rank, world)
        n = len(self.paths)
        for offset in range(n):
            path = self.paths[self.indices[(start + offset) % n]]
            if path in self._unreadable:
                continue
            image = self._load(path)
            if image is not None:
                return PoolImage(path, image)
        raise DataError(f"none of the {n} images under {str(self.folder)!r} can be read "
                        f"(first: {str(self.paths[0])!r}: {self._unreadable[self.paths[0]]}); "
                        f"replace the files, or {MAKE_POOL_HINT}")

    def _load(self, path: Path) -> Image.Image | None:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()  # decode now, so a truncated file fails here and not inside the model
                rgb = im.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            self._unreadable[path] = why
            warnings.warn(f"skipping unreadable image {str(path)!r} ({why}); it will be skipped for the rest "
                          f"of the run ({self.skipped} skipped so far in {str(self.folder)!r})",
                          DataWarning, stacklevel=3)
            return None
        if self.image_size is not None and rgb.size != (self.image_size[1], self.image_size[0]):
            rgb = rgb.resize((self.image_size[1], self.image_size[0]), Image.BICUBIC)  # PIL sizes are (w, h)
        return rgb
