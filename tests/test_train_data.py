"""ImagePool: recursive scan, §2 order (sorted, cut, shuffled once), per-rank stream, lazy skipping."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from PIL import Image

from asg.errors import ConfigError, DataError
from asg.shapes import write_unlabeled_folder
from asg.train.data import IMAGE_EXTENSIONS, DataWarning, ImagePool


def _save(path, colour=(10, 20, 30), size=(8, 6), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)
    return path


def _flat_pool(tmp_path, n):
    """n solid images whose red channel is their index: a.png = 0, b.png = 1, ..."""
    folder = tmp_path / "imgs"
    for i in range(n):
        _save(folder / f"{chr(97 + i)}.png", colour=(i, 0, 0))
    return folder


def test_scan_is_recursive_case_insensitive_and_ignores_non_images(tmp_path):
    """Every listed extension in any case and any subfolder is found; labels, text and gif are not."""
    root = tmp_path / "pool"
    _save(root / "a.png")
    _save(root / "B.JPG", fmt="JPEG")
    _save(root / "sub" / "c.jpeg", fmt="JPEG")
    _save(root / "sub" / "deeper" / "d.WebP", fmt="WEBP")
    _save(root / "e.bmp")
    _save(root / "f.TIFF", fmt="TIFF")
    _save(root / "g.gif")  # not in the §2 list
    (root / "pool.labels.jsonl").write_text('{"file": "a.png"}\n')
    (root / "notes.txt").write_text("cat on a mat")
    pool = ImagePool(root, seed=0)
    names = [p.relative_to(root).as_posix() for p in pool.paths]
    assert names == ["B.JPG", "a.png", "e.bmp", "f.TIFF", "sub/c.jpeg", "sub/deeper/d.WebP"]
    assert len(pool) == 6
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tiff")


def test_paths_sort_as_strings_not_as_path_parts(tmp_path):
    """'a-b.png' sorts before 'a/x.png' ('-' is 0x2d, '/' is 0x2f), the order sorted(os.path.join) gives."""
    root = tmp_path / "pool"
    _save(root / "a" / "x.png")
    _save(root / "a-b.png")
    pool = ImagePool(root, seed=0)
    assert [p.relative_to(root).as_posix() for p in pool.paths] == ["a-b.png", "a/x.png"]


def test_order_is_sorted_then_cut_then_shuffled_once_with_random_seed(tmp_path):
    """indices is range(max_images) shuffled by random.Random(seed); max_images keeps the first sorted paths."""
    folder = _flat_pool(tmp_path, 6)
    pool = ImagePool(folder, seed=42, max_images=4)
    assert [p.name for p in pool.paths] == ["a.png", "b.png", "c.png", "d.png"]
    expected = [0, 1, 2, 3]
    random.Random(42).shuffle(expected)
    assert list(pool.indices) == expected
    assert ImagePool(folder, seed=42, max_images=4).indices == pool.indices  # deterministic
    orders = {ImagePool(folder, seed=s).indices for s in range(5)}
    assert len(orders) > 1  # the seed matters


def test_image_for_follows_the_section_2_formula_per_rank(tmp_path):
    """Step s on rank r of W reads indices[((s-1)*W + r) % n]; with n=5, W=2: step 3 rank 1 -> position 0."""
    folder = _flat_pool(tmp_path, 5)
    pool = ImagePool(folder, seed=7)
    idx = pool.indices
    # (step, rank, world) -> position: (1,0,2)->0, (1,1,2)->1, (2,0,2)->2, (3,0,2)->4, (3,1,2)->5%5=0
    for (step, rank, world), pos in {(1, 0, 2): 0, (1, 1, 2): 1, (2, 0, 2): 2, (3, 0, 2): 4, (3, 1, 2): 0,
                                     (1, 0, 1): 0, (6, 0, 1): 0, (4, 0, 1): 3}.items():
        path, image = pool.image_for(step, rank, world)
        assert path == pool.paths[idx[pos]] == pool.path_for(step, rank, world)
        assert image.getpixel((0, 0)) == (idx[pos], 0, 0)  # red channel = index in sorted order
    # one "epoch" of 2 ranks over an even pool visits every image exactly once
    pool6 = ImagePool(_flat_pool(tmp_path / "six", 6), seed=3)
    seen = [pool6.path_for(s, r, 2) for s in (1, 2, 3) for r in (0, 1)]
    assert sorted(seen) == list(pool6.paths)


def test_image_is_rgb_and_resized_when_image_size_given(tmp_path):
    """Grey, palette and RGBA files come back as RGB; image_size makes them square of that side."""
    root = tmp_path / "pool"
    _save(root / "grey.png", colour=128, mode="L", size=(10, 4))
    _save(root / "rgba.png", colour=(1, 2, 3, 0), mode="RGBA", size=(10, 4))
    _save(root / "pal.bmp", colour=5, mode="P", size=(10, 4))
    plain = ImagePool(root, seed=0)
    sized = ImagePool(root, seed=0, image_size=16)
    for step in (1, 2, 3):
        _, im = plain.image_for(step)
        assert im.mode == "RGB" and im.size == (10, 4)
        _, im = sized.image_for(step)
        assert im.mode == "RGB" and im.size == (16, 16)
    grey = [plain.image_for(s).image for s in (1, 2, 3) if plain.image_for(s).path.name == "grey.png"][0]
    assert grey.getpixel((3, 2)) == (128, 128, 128)


def test_shapes_folder_labels_are_never_part_of_the_pool(tmp_path):
    """Pointing the pool at the parent of an `asg data shapes` folder finds the PNGs, not the labels file."""
    out = tmp_path / "data" / "pool"
    labels = write_unlabeled_folder(out, 3, seed=1, size=32)
    assert labels.parent == tmp_path / "data"
    pool = ImagePool(tmp_path / "data", seed=0, image_size=32)
    assert sorted(p.name for p in pool.paths) == ["000000.png", "000001.png", "000002.png"]
    _, im = pool.image_for(1)
    assert np.asarray(im).shape == (32, 32, 3)


def test_missing_folder_and_file_instead_of_folder_are_named(tmp_path):
    """A missing folder names itself and suggests `asg data shapes`; a file says to pass its folder."""
    with pytest.raises(DataError, match=r"'.*nowhere' does not exist.*asg data shapes --out DIR --n N"):
        ImagePool(tmp_path / "nowhere", seed=0)
    f = _save(tmp_path / "one.png")
    with pytest.raises(DataError, match=r"one\.png' is a file, not a folder"):
        ImagePool(f, seed=0)


def test_folder_without_images_lists_extensions_and_the_way_out(tmp_path):
    """A folder with only labels/text says which extensions were searched and how to make a pool."""
    root = tmp_path / "empty"
    root.mkdir()
    (root / "x.labels.jsonl").write_text("{}\n")
    with pytest.raises(DataError) as err:
        ImagePool(root, seed=0)
    msg = str(err.value)
    assert str(root) in msg and "no images" in msg
    assert ".png, .jpg, .jpeg, .webp, .bmp, .tiff" in msg
    assert "asg data shapes --out DIR --n N" in msg


def test_corrupt_image_is_skipped_once_with_a_warning_and_counted(tmp_path):
    """A truncated file is replaced by the next image of the stream, warned about once, counted in skipped."""
    folder = _flat_pool(tmp_path, 4)
    pool = ImagePool(folder, seed=0)
    bad = pool.path_for(1)  # the file step 1 would read
    bad.write_bytes(bad.read_bytes()[:40])  # PNG header survives, pixel data does not
    with pytest.warns(DataWarning, match=rf"skipping unreadable image '.*{bad.name}'"):
        path, image = pool.image_for(1)
    assert path == pool.path_for(2) != bad  # next position of the stream
    assert image.getpixel((0, 0))[0] == pool.paths.index(path)
    assert pool.skipped == 1 and list(pool.unreadable) == [bad]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second encounter is silent
        assert pool.image_for(1 + len(pool)).path == path
    assert pool.skipped == 1


def test_all_unreadable_raises_data_error_naming_the_folder(tmp_path):
    """When no file can be decoded, the error names the folder, a file and why, and the way out."""
    root = tmp_path / "junk"
    root.mkdir()
    for name in ("a.png", "b.jpg"):
        (root / name).write_bytes(b"not an image")
    pool = ImagePool(root, seed=0)
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"none of the 2 images under '.*junk'.*asg data shapes"):
        pool.image_for(1)
    assert pool.skipped == 2


def test_bad_arguments_name_the_field(tmp_path):
    """Steps are 1-based, rank < world, max_images/image_size are positive integers."""
    pool = ImagePool(_flat_pool(tmp_path, 2), seed=0)
    with pytest.raises(ConfigError, match="step must be an integer >= 1, got 0"):
        pool.image_for(0)
    with pytest.raises(ConfigError, match=r"rank must be in \[0, 1\] for world=2, got 2"):
        pool.image_for(1, rank=2, world=2)
    with pytest.raises(ConfigError, match="max_images must be an integer >= 1, got 0"):
        ImagePool(tmp_path / "imgs", seed=0, max_images=0)
    with pytest.raises(ConfigError, match=r"image_size must be an integer >= 1, got 2\.5"):
        ImagePool(tmp_path / "imgs", seed=0, image_size=2.5)
