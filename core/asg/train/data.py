"""The unlabeled image pool: which image each rank sees at each step (algorithm.md §2).

A pool is every image file under a folder (recursively), in sorted path order, optionally cut to the
first ``max_images``, then put in an order shuffled once with ``random.Random(seed)``. Global step
``s`` (1-based) on rank ``r`` of ``W`` reads ``indices[((s - 1) * W + r) % len(pool)]``, so the ranks
walk one shared stream side by side and the U- and G-steps draw from the same stream.

Only image files are read; anything else in the folder (a ``*.labels.jsonl`` written by
``asg data shapes``, notes, captions) is ignored, because self-evolving training never sees labels.

Every usable file is read the same way (:func:`load_rgb`): the first frame of an animation, turned
upright by its EXIF orientation, converted to RGB (transparency composited on white, 16-bit samples
scaled to 8 bits). A file that cannot be used (missing or looping link, not a regular file, empty, no
permission, not an image, truncated or corrupt, larger than ``PIL.Image.MAX_IMAGE_PIXELS``) is
reported once (a ``DataWarning`` naming it and why), counted in ``pool.skipped``, listed in
``pool.unreadable`` and replaced by the next usable image of the stream, so one bad file among 10 000
does not end a run at step 7 000. The replacement depends only on the file, not on the rank, so every
rank that meets the file makes the same choice.

:meth:`ImagePool.verify` checks the pool before any model is loaded: it opens the header of every file
(no pixel is decoded: about 0.2 ms a file on a local disk, 20 s for 100 000; a progress bar from 2 000),
which finds every problem above except truncated or corrupt pixel data, and decodes files in stream
order until one succeeds. A folder with no usable image is then a DataError naming the folder and the
first problems. Pixel data is decoded only when a step draws the file, so a corrupt body is found then.
"""

from __future__ import annotations

import os
import random
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from asg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff")  # §2; matched case-insensitively
# image formats a user may expect to be read that §2's list leaves out: counted and reported, never read
OTHER_IMAGE_EXTENSIONS = (".gif", ".tif", ".heic", ".heif", ".avif", ".jxl", ".ico", ".jp2", ".ppm", ".pgm")
MAKE_POOL_HINT = "write a synthetic pool with `asg data shapes --out DIR --n N` and pass --images DIR"
VERIFY_PROGRESS_MIN = 2000  # verify() shows a progress bar from this many files on
_SHOWN_PROBLEMS = 3  # problems an all-unusable DataError lists
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")


class DataWarning(UserWarning):
    """An image in the pool was skipped (unreadable or corrupt)."""


class PoolImage(NamedTuple):
    """One draw from the pool; unpacks as ``path, image = pool.image_for(step)``."""

    path: Path
    image: Image.Image  # mode "RGB"; resized to image_size when the pool resizes


class _Unusable(Exception):
    """Why one file cannot be used (internal: becomes a skip, or a DataError in load_rgb)."""


def printable(text: object) -> str:
    """``str(text)`` safe to print or write as UTF-8: a non-UTF-8 file name's bytes (surrogate escapes
    on Linux) become ``\\udcXX`` text instead of an encoding error."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def _show(path: object) -> str:
    """A path quoted for a message (repr escapes a non-UTF-8 name's surrogates)."""
    return printable(repr(str(path)))


def _int_arg(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"ImagePool {name} must be an integer >= {lo}, got {value!r} ({type(value).__name__})")
    if value < lo:
        raise ConfigError(f"ImagePool {name} must be an integer >= {lo}, got {value!r}")
    return value


def _size_arg(image_size: object) -> tuple[int, int] | None:
    """(height, width) as backbones declare it; an int means a square."""
    if image_size is None:
        return None
    if isinstance(image_size, (tuple, list)) and len(image_size) == 2:
        return (_int_arg("image_size[0]", image_size[0], 1), _int_arg("image_size[1]", image_size[1], 1))
    side = _int_arg("image_size", image_size, 1)
    return (side, side)


def scan_images(folder: str | os.PathLike[str], ignored: dict[str, int] | None = None) -> list[Path]:
    """Every file under ``folder`` whose suffix is in IMAGE_EXTENSIONS, sorted by path string.

    Sorting by the string (not by ``Path`` parts) is the order ``sorted(os.path.join(...))`` gives,
    which is what the reference implementation's pool order is built from. Files with a suffix in
    OTHER_IMAGE_EXTENSIONS (``.gif`` ...) are left out as §2 says, and counted per suffix into ``ignored``
    when given, so that the pool can say so instead of dropping them silently.
    """
    root = Path(folder)
    if not root.exists():
        raise DataError(f"image folder {str(root)!r} does not exist; check the path, or {MAKE_POOL_HINT}")
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} is a file, not a folder; pass the folder that holds the images")
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            ext = os.path.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
            elif ignored is not None and ext in OTHER_IMAGE_EXTENSIONS:
                ignored[ext] = ignored.get(ext, 0) + 1
    return [Path(p) for p in sorted(found)]


def _ignored_text(ignored: dict[str, int]) -> str:
    return ", ".join(f"{n} {ext} file{'s' if n > 1 else ''}" for ext, n in sorted(ignored.items()))


def _check_file(path: Path) -> None:
    """Raise _Unusable unless ``path`` is a non-empty regular file (a symlink to one counts)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        if os.path.islink(path):
            raise _Unusable(f"broken symbolic link ({exc.strerror})") from None
        raise _Unusable(f"{type(exc).__name__}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise _Unusable("not a regular file")
    if st.st_size == 0:
        raise _Unusable("empty file (0 bytes)")


@contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The file's PIL image, header read, pixels not decoded; every failure is _Unusable.

    An image over ``Image.MAX_IMAGE_PIXELS`` is refused: PIL raises DecompressionBombError above twice
    the limit and only warns (DecompressionBombWarning) above it; both count as unusable here, with the
    warning turned into an error for this call only (the global limit and filters are left as they are).
    """
    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    try:
        with open(path, "rb") as fp:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(fp)
            with im:
                yield im
    except _Unusable:
        raise
    except UnidentifiedImageError:
        raise _Unusable("UnidentifiedImageError: not an image format PIL can read") from None
    except OSError as exc:
        raise _Unusable(f"{type(exc).__name__}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL's plugins raise many types on malformed files
        raise _Unusable(f"{type(exc).__name__}: {exc}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB: transparency composited on white, 16-bit and float samples scaled, not clipped."""
    import numpy as np
    from PIL import Image

    if im.mode in _WIDE_GREY_MODES:  # 16-bit grey (a 16-bit PNG opens as I;16 or I): 65535 -> 255
        wide = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8))
    elif im.mode == "F":  # float samples: [0, 1] when they fit there, else taken as 0..255
        arr = np.asarray(im).astype(np.float64)
        arr = np.nan_to_num(arr * 255.0 if arr.size and arr.max() <= 1.0 else arr)
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if im.mode in _ALPHA_MODES or "transparency" in im.info or (im.mode == "P" and im.palette is not None
                                                                  and im.palette.mode == "RGBA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _decode(path: Path) -> Image.Image:
    """The first frame of ``path``, upright per its EXIF orientation, as RGB; _Unusable if it cannot be."""
    from PIL import ImageOps

    with _opened(path) as im:  # whatever fails in here becomes _Unusable
        im.load()  # frame 0 only; a truncated file fails here and not inside the model
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - malformed EXIF: the pixels are still good, keep them unrotated
            upright = im
        return _to_rgb(upright)  # a mode PIL cannot turn into RGB fails here


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """One image file read as the pool reads it (RGB, upright, first frame); DataError if unusable."""
    try:
        return _decode(Path(path))
    except _Unusable as why:
        raise DataError(f"image {_show(path)} cannot be used: {why}") from None


class ImagePool:
    """The shuffled image stream of §2; ``image_for(step, rank, world)`` is the only way to draw."""

    def __init__(self, folder: str | os.PathLike[str], *, seed: int, max_images: int | None = None,
                 image_size: int | tuple[int, int] | None = None) -> None:
        self.seed = _int_arg("seed", seed, 0)
        if max_images is not None:
            _int_arg("max_images", max_images, 1)
        self.image_size = image_size  # type: ignore[assignment]  # the setter normalises it
        self.folder = Path(folder)
        self.ignored: dict[str, int] = {}  # suffix -> files of OTHER_IMAGE_EXTENSIONS left out
        paths = scan_images(self.folder, self.ignored)
        if not paths:
            exts = ", ".join(IMAGE_EXTENSIONS)
            other = f" (it holds {_ignored_text(self.ignored)}, formats the pool does not take)" if self.ignored else ""
            raise DataError(f"image folder {str(self.folder)!r} holds no images{other} (looked recursively for {exts}, "
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
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) every drawn image is resized to; None keeps each file's size. Settable (an int
        means a square), so a pool can be checked before the backbone that decides the size is loaded."""
        return self._image_size

    @image_size.setter
    def image_size(self, value: int | tuple[int, int] | None) -> None:
        self._image_size = _size_arg(value)

    @property
    def skipped(self) -> int:
        """How many distinct files were found unusable so far (each was warned about once)."""
        return len(self._unreadable)

    @property
    def unreadable(self) -> dict[Path, str]:
        """The skipped files and why each could not be used (paths may hold surrogate escapes of a
        non-UTF-8 name: pass them through :func:`printable` before writing them as text)."""
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

    def verify(self, *, report: bool = True) -> int:
        """Check the pool up front; the number of files whose header opened.

        Every file's header is opened (see the module docstring for what that finds and costs), then
        files are decoded in stream order until one succeeds. Unusable files are skipped and counted as
        draws would skip them, and warned about when ``report`` (False on ranks other than the main one,
        which check the same files). Raises DataError when no file of the pool can be used.
        """
        if report and self.ignored:
            warnings.warn(f"{str(self.folder)!r}: left out {_ignored_text(self.ignored)}: the pool takes "
                          f"{', '.join(IMAGE_EXTENSIONS)} only (algorithm.md §2); convert them to PNG to use them",
                          DataWarning, stacklevel=2)
        todo = [p for p in self.paths if p not in self._unreadable]
        show = report and len(todo) >= VERIFY_PROGRESS_MIN
        with _maybe_progress(show, len(todo), f"checking {len(todo)} images") as bar:
            for path in todo:
                try:
                    with _opened(path):
                        pass
                except _Unusable as why:
                    self._skip(path, str(why), report, stacklevel=3)
                bar.update(1)
        n = len(self.paths)
        for offset in range(n):
            path = self.paths[self.indices[offset]]
            if path not in self._unreadable and self._load(path, report=report) is not None:
                break
        else:
            self._raise_unusable()
        return n - self.skipped

    def image_for(self, step: int, rank: int = 0, world: int = 1) -> PoolImage:
        """The image for global step ``step`` (1-based) on rank ``rank`` of ``world`` ranks.

        If that file is unusable, the next positions of the stream are tried in turn; when none of
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
        self._raise_unusable()

    def _raise_unusable(self) -> NoReturn:
        problems = [f"{_show(p)}: {why}" for p, why in sorted(self._unreadable.items())]
        more = f"; and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        raise DataError(f"none of the {len(self.paths)} images under {_show(self.folder)} can be "
                        f"read ({'; '.join(problems[:_SHOWN_PROBLEMS])}{more}); replace the files, or {MAKE_POOL_HINT}")

    def _skip(self, path: Path, why: str, report: bool = True, stacklevel: int = 4) -> None:
        self._unreadable[path] = printable(why)
        if report:  # stacklevel: the frame that called verify() or image_for()
            warnings.warn(f"skipping unreadable image {_show(path)} ({printable(why)}); it will be skipped for "
                          f"the rest of the run ({self.skipped} skipped so far in {_show(self.folder)})",
                          DataWarning, stacklevel=stacklevel)

    def _load(self, path: Path, report: bool = True) -> Image.Image | None:
        from PIL import Image

        try:
            rgb = _decode(path)
        except _Unusable as why:
            self._skip(path, str(why), report)
            return None
        if self.image_size is not None and rgb.size != (self.image_size[1], self.image_size[0]):
            rgb = rgb.resize((self.image_size[1], self.image_size[0]), Image.BICUBIC)  # PIL sizes are (w, h)
        return rgb


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


@contextmanager
def _maybe_progress(show: bool, total: int, desc: str) -> Iterator[Any]:
    if not show:
        yield _NoBar()
        return
    from asg.progress import progress_bar

    with progress_bar(total=total, desc=desc) as bar:
        yield bar
