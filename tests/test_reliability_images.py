"""Bad input images: every usable file is used (upright, first frame, RGB), every unusable one skipped,
named and counted, and a folder with nothing usable fails before any model is loaded."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
from PIL import Image

from asg.errors import DataError
from asg.train.data import DataWarning, ImagePool, load_rgb

RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)
BAD_NAME = b"caf\xe9-latin1.png"  # not UTF-8: Python's str for it holds the surrogate escape \udce9


def _near(pixel, colour, tol=12):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour))


def _png_bytes(image, **kw):
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _exif_rotated(path):
    """A 32x16 JPEG whose stored pixels are blue with a red top-left 16x8 block, EXIF orientation 6.

    Displayed upright (rotated 90 degrees clockwise) it is 16x32 with the red block at the top right."""
    im = Image.new("RGB", (32, 16), BLUE)
    im.paste(RED, (0, 0, 16, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, format="JPEG", quality=95, exif=exif)


def _animated(path, fmt):
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _zoo(root):
    """One file of every kind; returns (expected usable: name -> check, expected skipped: name -> reason part)."""
    root.mkdir()
    usable, skipped = {}, {}

    Image.new("L", (4, 4), 77).save(root / "grey.png")
    usable["grey.png"] = lambda im: im.getpixel((0, 0)) == (77, 77, 77)

    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(root / "cmyk.jpg", format="JPEG", quality=95)
    usable["cmyk.jpg"] = lambda im: _near(im.getpixel((8, 8)), RED, 20)

    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 255, 0, 0))  # fully transparent green -> white
    rgba.putpixel((2, 0), (255, 0, 0, 128))  # half transparent red over white -> pink
    rgba.save(root / "rgba.png")
    usable["rgba.png"] = lambda im: (im.getpixel((0, 0)) == RED and im.getpixel((1, 0)) == WHITE
                                     and _near(im.getpixel((2, 0)), (255, 127, 127), 2))

    Image.fromarray(np.array([[0, 32896, 65535, 257]], dtype=np.uint16)).save(root / "sixteen.png")
    usable["sixteen.png"] = lambda im: [im.getpixel((x, 0))[0] for x in range(4)] == [0, 128, 255, 1]

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)  # index 0 green, 1 blue
    pal.putpixel((1, 0), 1)
    pal.save(root / "palette.png")
    usable["palette.png"] = lambda im: im.getpixel((0, 0)) == GREEN and im.getpixel((1, 0)) == BLUE
    pal.save(root / "palette_trns.png", transparency=0)  # index 0 transparent -> white
    usable["palette_trns.png"] = lambda im: im.getpixel((0, 0)) == WHITE and im.getpixel((1, 0)) == BLUE

    _animated(root / "anim.webp", "WEBP")
    usable["anim.webp"] = lambda im: _near(im.getpixel((4, 4)), RED, 30)
    _animated(root / "anim_apng.png", "PNG")
    usable["anim_apng.png"] = lambda im: im.getpixel((4, 4)) == RED
    _animated(root / "gif_named.bmp", "GIF")  # GIF bytes under a listed extension: PIL reads the content
    usable["gif_named.bmp"] = lambda im: im.getpixel((4, 4)) == RED
    _animated(root / "ignored.gif", "GIF")  # .gif is not a pool extension (§2): neither used nor skipped

    _exif_rotated(root / "rotated.jpg")
    usable["rotated.jpg"] = lambda im: (im.size == (16, 32) and _near(im.getpixel((12, 4)), RED, 40)
                                        and _near(im.getpixel((3, 4)), BLUE, 40))

    Image.new("RGB", (40, 40), RED).save(root / "bomb_warn.png")  # 1600 px > limit 1000
    skipped["bomb_warn.png"] = "DecompressionBombWarning"
    Image.new("RGB", (50, 50), RED).save(root / "bomb_error.png")  # 2500 px > 2 x limit
    skipped["bomb_error.png"] = "DecompressionBombError"

    (root / "zero.png").write_bytes(b"")
    skipped["zero.png"] = "empty file (0 bytes)"
    full = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(full, format="JPEG")
    (root / "truncated.jpg").write_bytes(full.getvalue()[:300])
    skipped["truncated.jpg"] = "truncated"
    (root / "text.png").write_text("this is not a picture\n")
    skipped["text.png"] = "UnidentifiedImageError"
    os.symlink(root / "nowhere.png", root / "broken_link.png")
    skipped["broken_link.png"] = "broken symbolic link"
    os.symlink(root / "loop.png", root / "loop.png")
    skipped["loop.png"] = "broken symbolic link"
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo.png")  # opening it for reading would block until a writer comes
        skipped["fifo.png"] = "not a regular file"

    Image.new("RGB", (4, 4), BLUE).save(root / "z_plain.tiff")
    usable["z_plain.tiff"] = lambda im: im.getpixel((0, 0)) == BLUE
    try:  # a non-UTF-8 name: one good image, one bad
        with open(os.fsencode(root) + b"/" + BAD_NAME, "wb") as f:
            f.write(_png_bytes(Image.new("RGB", (2, 2), GREEN)))
        with open(os.fsencode(root) + b"/bad-" + BAD_NAME, "wb") as f:
            f.write(b"\x89PNG garbage")
    except OSError:  # a file system that insists on UTF-8 names
        pass
    else:
        usable[os.fsdecode(BAD_NAME)] = lambda im: im.getpixel((0, 0)) == GREEN
        skipped[os.fsdecode(b"bad-" + BAD_NAME)] = "UnidentifiedImageError"
    return usable, skipped


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = tmp_path / "zoo"
    usable, skipped = _zoo(root)
    return root, usable, skipped


def _draw_all(pool):
    """Every distinct image one pass of the stream yields, by file name."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn = {}
        for step in range(1, len(pool) + 1):
            path, image = pool.image_for(step)
            drawn[path.name] = image
    return drawn, [w for w in caught if issubclass(w.category, DataWarning)]


def test_every_usable_image_is_used_upright_and_rgb_every_bad_one_skipped_named_and_counted(zoo):
    """The zoo: grey, CMYK, RGBA, 16-bit, palettes, animations, EXIF-rotated are read correctly; empty,
    truncated, text, bombs, broken/looping links, a FIFO are skipped with their reason, once each."""
    root, usable, skipped = zoo
    pool = ImagePool(root, seed=3)
    assert sorted(p.name for p in pool.paths) == sorted([*usable, *skipped])  # ignored.gif is not scanned
    with pytest.warns(DataWarning) as record:
        pool.verify()
    found = {p.name for p in pool.unreadable}  # the header check cannot see a truncated body; the first
    assert set(skipped) - {"truncated.jpg"} <= found <= set(skipped)  # decode finds it if it comes first
    drawn, warned = _draw_all(pool)
    assert sorted(drawn) == sorted(usable)
    for name, check in usable.items():
        image = drawn[name]
        assert image.mode == "RGB", name
        assert check(image), (name, image.size, image.getpixel((0, 0)))
    reasons = {p.name: why for p, why in pool.unreadable.items()}
    assert sorted(reasons) == sorted(skipped)
    for name, part in skipped.items():
        assert part.lower() in reasons[name].lower(), (name, reasons[name])
    assert pool.skipped == len(skipped)
    messages = [str(w.message) for w in [*record, *warned]]
    left_out = [m for m in messages if "left out 1 .gif file" in m]  # ignored.gif: reported once, not read
    messages = [m for m in messages if m not in left_out]
    assert len(left_out) == 1 and pool.ignored == {".gif": 1}
    assert len(messages) == len(skipped)  # each bad file warned about exactly once
    for name in skipped:
        assert sum(repr(name)[1:-1] in m for m in messages) >= 1, name
    for text in [*messages, *reasons.values(), repr(pool)]:
        text.encode("utf-8")  # printable even with a non-UTF-8 file name
    assert pool.verify() == len(usable)  # again: nothing new to find


def test_image_size_set_after_verify_resizes_every_draw(zoo):
    """run_train checks the pool first and sets the backbone's image size afterwards."""
    root, _, _ = zoo
    pool = ImagePool(root, seed=0)
    with pytest.warns(DataWarning):
        pool.verify(report=True)
    pool.image_size = (12, 20)
    drawn, _ = _draw_all(pool)
    assert {im.size for im in drawn.values()} == {(20, 12)}
    pool.image_size = 9
    assert pool.image_size == (9, 9) and pool.image_for(1).image.size == (9, 9)


def test_verify_without_report_is_silent_but_counts(zoo):
    """Ranks other than the main one check the same files without repeating the warnings."""
    root, _, skipped = zoo
    pool = ImagePool(root, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pool.verify(report=False)
    assert pool.skipped in (len(skipped) - 1, len(skipped))  # the truncated body is found if drawn first


def test_decompression_bomb_limit_is_left_as_it_was(zoo):
    """Refusing bombs does not change PIL's limit or warning filters for the rest of the process."""
    root, _, _ = zoo
    filters = list(warnings.filters)
    pool = ImagePool(root, seed=0)
    with pytest.warns(DataWarning):
        pool.verify()
    assert Image.MAX_IMAGE_PIXELS == 1000 and warnings.filters == filters
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(root / "bomb_warn.png").close()


def test_load_rgb_names_the_file_and_why(zoo):
    """The single-file reader used by the pool raises a DataError for an unusable file."""
    root, _, _ = zoo
    assert load_rgb(root / "rotated.jpg").size == (16, 32)
    with pytest.raises(DataError, match=r"zero\.png' cannot be used: empty file"):
        load_rgb(root / "zero.png")


def test_unreadable_file_is_skipped(tmp_path):
    """A file without read permission is skipped; as root chmod 000 does not block reads, so the case is skipped."""
    root = tmp_path / "perm"
    root.mkdir()
    Image.new("RGB", (4, 4), RED).save(root / "a.png")
    locked = root / "b.png"
    Image.new("RGB", (4, 4), BLUE).save(locked)
    locked.chmod(0)
    try:
        try:
            open(locked, "rb").close()
        except PermissionError:
            pass
        else:
            pytest.skip("reads are not blocked by chmod 000 here (running as root)")
        pool = ImagePool(root, seed=0)
        with pytest.warns(DataWarning, match=r"b\.png.*PermissionError"):
            pool.verify()
        assert list(pool.unreadable) == [locked] and pool.skipped == 1
    finally:
        locked.chmod(0o644)


def test_permission_error_is_skipped_even_as_root(tmp_path, monkeypatch):
    """The same skip, with the refusal simulated, so it is checked where chmod 000 blocks nothing."""
    import builtins

    from asg.train import data

    root = tmp_path / "perm"
    root.mkdir()
    Image.new("RGB", (4, 4), RED).save(root / "a.png")
    Image.new("RGB", (4, 4), BLUE).save(root / "b.png")

    def refuse(file, *args, **kwargs):
        if str(file).endswith("b.png"):
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(data, "open", refuse, raising=False)
    pool = ImagePool(root, seed=0)
    with pytest.warns(DataWarning, match=r"b\.png' \(PermissionError: Permission denied\)"):
        pool.verify()
    assert pool.unreadable == {root / "b.png": "PermissionError: Permission denied"}
    assert {pool.image_for(s).path.name for s in (1, 2)} == {"a.png"}


def test_folder_of_only_bad_files_is_a_data_error_naming_the_folder_and_problems(tmp_path):
    """verify() raises a DataError naming the folder, the first three problems and how many more."""
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "b.jpg").write_text("hello")
    os.symlink(root / "gone.png", root / "c.png")
    (root / "d.webp").write_bytes(b"RIFF")
    pool = ImagePool(root, seed=0)
    with pytest.warns(DataWarning), pytest.raises(DataError) as err:
        pool.verify()
    msg = str(err.value)
    assert f"none of the 4 images under {str(root)!r} can be read" in msg
    assert "a.png': empty file (0 bytes)" in msg and "b.jpg': UnidentifiedImageError" in msg
    assert "c.png': broken symbolic link" in msg and "and 1 more" in msg and "asg data shapes" in msg


def test_asg_train_on_bad_folder_fails_before_the_backbone_is_loaded(tmp_path, monkeypatch, capsys):
    """`asg train` on a folder with no usable image exits 2 with the DataError and never loads a model."""
    import asg.train.cli as train_cli
    from asg.cli import main

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the image folder was checked")

    monkeypatch.setattr(train_cli, "load_backbone", no_backbone)
    monkeypatch.setenv("ASG_PROGRESS", "0")
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "b.png").write_text("not an image")
    out = tmp_path / "run"
    with pytest.warns(DataWarning):
        code = main(["train", "--backbone", "tiny", "--images", str(root), "--recipe", "demo", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "asg train: error: none of the 2 images under" in err and str(root) in err and "empty file" in err
    assert not out.exists()


def test_formats_outside_the_pool_list_are_reported_not_dropped_silently(tmp_path) -> None:
    """§2's pool takes png/jpg/jpeg/webp/bmp/tiff; a GIF is left out, and the pool says so."""
    from PIL import Image

    from asg.errors import DataError
    from asg.train.data import DataWarning, ImagePool

    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    with pytest.raises(DataError, match=r"holds no images \(it holds 1 \.gif file"):
        ImagePool(tmp_path, seed=0)
    Image.new("RGB", (8, 8), "green").save(tmp_path / "ok.png")
    pool = ImagePool(tmp_path, seed=0)
    assert [p.name for p in pool.paths] == ["ok.png"] and pool.ignored == {".gif": 1}
    with pytest.warns(DataWarning, match=r"left out 1 \.gif file: the pool takes \.png"):
        assert pool.verify() == 1
