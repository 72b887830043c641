"""GenEval-mini's detector: accuracy on clean and degraded renders, and robustness."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFilter

from asg.shapes import BACKGROUND, COLORS, Detection, Obj, Scene, detect, render, scene_for
from asg.shapes.components import label
from asg.shapes.raster import paint

Degrade = Callable[[Image.Image, np.random.Generator], Image.Image]


def _noise(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(im, dtype=np.float64) + rng.normal(0.0, 8.0, (im.height, im.width, 3))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _blur(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(1))


def _jpeg(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=40)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _rescale(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = im.size
    return im.resize((w // 2, h // 2), Image.BILINEAR).resize((w, h), Image.BILINEAR)


def _identity(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return im


def exact_rate(size: int, indices: range, degrade: Degrade) -> float:
    """Fraction of scenes whose detected (shape, colour) multiset equals the truth."""
    rng = np.random.default_rng(0)
    hits = 0
    for i in indices:
        scene = scene_for("test", 0, i)
        found = detect(degrade(render(scene, size), rng))
        hits += Counter((d.shape, d.color) for d in found) == Counter(
            (o.shape, o.color) for o in scene.objects)
    return hits / len(indices)


@pytest.mark.parametrize("size, n", [(64, 300), (32, 200)])
def test_detector_is_near_perfect_on_clean_renders(size, n):
    """On clean renders the exact (shape, colour) multiset is recovered for >= 99% of scenes."""
    # measured on these scenes: 100% at 64 px (300) and 100% at 32 px (200)
    assert exact_rate(size, range(n), _identity) >= 0.99


@pytest.mark.parametrize("size", [64, 32])
@pytest.mark.parametrize("degrade", [_noise, _blur, _jpeg, _rescale],
                         ids=["noise8", "blur1", "jpeg40", "down2up"])
def test_detector_is_robust_to_degradations(size, degrade):
    """Noise, blur, JPEG and down/up-scaling still give >= 90% exactly right scenes."""
    # measured on these 100 scenes: 100% for every degradation at 64 px; at 32 px
    # noise 100%, blur 100%, jpeg40 99%, down2up 98% (the failures are small
    # squares read as circles once downscaled to ~3 px)
    assert exact_rate(size, range(1000, 1100), degrade) >= 0.90


def test_detector_localises_objects():
    """Detected centres are within 1% of the canvas and sizes within 5% on clean 64 px renders."""
    for i in range(30):
        scene = scene_for("test", 3, i)
        found = detect(render(scene, 64))
        assert len(found) == len(scene.objects)
        for o in scene.objects:
            d = min(found, key=lambda d: (d.x - o.x) ** 2 + (d.y - o.y) ** 2)
            assert (d.shape, d.color) == (o.shape, o.color)
            assert abs(d.x - o.x) < 0.01 and abs(d.y - o.y) < 0.01
            assert abs(d.w - o.extent) < 0.05 * o.extent


def test_detection_area_is_in_pixels():
    """A large square on a 50 px canvas has area 14 * 14 = 196 px."""
    (d,) = detect(render(Scene((Obj("square", "purple", "large", 0.5, 0.5),)), 50))
    assert d.shape == "square" and d.color == "purple"
    assert d.area == pytest.approx(196.0, rel=0.01)
    assert (d.x, d.y) == (pytest.approx(0.5, abs=1e-3), pytest.approx(0.5, abs=1e-3))


def test_blank_image_has_no_detections():
    """A plain background (or plain white/black) image yields nothing."""
    for color in (BACKGROUND, (255, 255, 255), (0, 0, 0), (128, 128, 128)):
        assert detect(Image.new("RGB", (64, 64), color)) == []


def test_random_noise_yields_few_detections():
    """Uniform RGB noise (hue soup) gives at most one spurious detection per image."""
    rng = np.random.default_rng(0)
    for size in (32, 64, 128):
        for _ in range(5):
            noise = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            assert len(detect(noise)) <= 1


def test_touching_objects_of_different_colours_are_separated():
    """A red and a blue square sharing an edge come back as two detections."""
    canvas = np.empty((64, 64, 3))
    canvas[...] = BACKGROUND
    paint(canvas, "square", COLORS["red"], 0.35, 0.5, 0.3)
    paint(canvas, "square", COLORS["blue"], 0.65, 0.5, 0.3)  # boxes meet at x = 0.5
    img = Image.fromarray(np.rint(canvas).astype(np.uint8))
    assert [(d.shape, d.color) for d in detect(img)] == [("square", "red"), ("square", "blue")]


def test_off_colour_and_tinted_images_are_tolerated():
    """Darker colours on a tinted background still map to the nearest palette colour."""
    scene = Scene((Obj("circle", "orange", "large", 0.3, 0.3), Obj("triangle", "green", "large", 0.7, 0.7)))
    arr = np.asarray(render(scene, 64), dtype=np.float64) * 0.8 + np.array([20.0, 15.0, 0.0])
    img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    assert [(d.shape, d.color) for d in detect(img)] == [("circle", "orange"), ("triangle", "green")]


def test_detector_accepts_non_square_and_rgba_images():
    """Coordinates are normalised per axis and any PIL mode is converted."""
    canvas = np.empty((48, 96, 3))
    canvas[...] = BACKGROUND
    paint(canvas, "circle", COLORS["yellow"], 0.75, 0.5, 0.2)  # side 0.2 * 96 px
    img = Image.fromarray(np.rint(canvas).astype(np.uint8)).convert("RGBA")
    (d,) = detect(img)
    assert (d.shape, d.color) == ("circle", "yellow")
    assert d.x == pytest.approx(0.75, abs=0.01) and d.y == pytest.approx(0.5, abs=0.01)


def test_detect_validates_input():
    """Non-images and images smaller than 16 px are refused."""
    with pytest.raises(TypeError, match="image must be a PIL.Image.Image"):
        detect(np.zeros((64, 64, 3)))
    with pytest.raises(ValueError, match=r"at least 16x16 px, got \(8, 8\)"):
        detect(Image.new("RGB", (8, 8)))


def test_detection_validates_fields():
    """Detection refuses unknown colours and non-positive sizes."""
    with pytest.raises(ValueError, match=r"Detection\.color must be one of"):
        Detection("circle", "pink", 0.5, 0.5, 0.1, 0.1, 10.0)
    with pytest.raises(ValueError, match=r"Detection\.w must be in"):
        Detection("circle", "red", 0.5, 0.5, 0.0, 0.1, 10.0)


def test_component_labelling_uses_4_connectivity():
    """Diagonal neighbours are separate components; numbering follows raster order."""
    mask = np.array([[1, 1, 0, 0],
                     [0, 1, 0, 1],
                     [0, 0, 1, 1],
                     [1, 0, 0, 0]], dtype=bool)
    labels, n = label(mask)
    assert n == 3
    assert labels.tolist() == [[1, 1, 0, 0],
                               [0, 1, 0, 2],
                               [0, 0, 2, 2],
                               [3, 0, 0, 0]]


def test_component_labelling_handles_winding_shapes():
    """A serpentine path is one component (propagation must run to convergence)."""
    mask = np.zeros((9, 9), dtype=bool)
    mask[::2, :] = True  # rows 0, 2, 4, 6, 8
    for r in range(1, 9, 2):  # connect alternately at the right and left ends
        mask[r, 8 if r % 4 == 1 else 0] = True
    labels, n = label(mask)
    assert n == 1 and (labels[mask] == 1).all() and (labels[~mask] == 0).all()
