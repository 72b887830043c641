"""ShapesWorld scenes: value types, deterministic sampling, rendering, captions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from asg.shapes import (
    BACKGROUND, COLORS, SHAPES, SIZE_FRACTION, SPLITS, Obj, Scene, describe, render,
    sample_scene, scene_for,
)
from asg.shapes.sampling import EDGE_MARGIN, GAP


def test_obj_rejects_unknown_shape_naming_field_and_choices():
    """A bad category names the field, the valid choices and the received value."""
    with pytest.raises(ValueError, match=r"Obj\.shape must be one of \('circle', 'square', 'triangle'\), got 'hexagon'"):
        Obj("hexagon", "red", "small", 0.5, 0.5)


def test_obj_rejects_out_of_canvas_and_non_numeric_coordinates():
    """Coordinates must be real numbers inside [0, 1]."""
    with pytest.raises(ValueError, match=r"Obj\.x must be in \[0\.0, 1\.0\], got 1\.5"):
        Obj("circle", "red", "small", 1.5, 0.5)
    with pytest.raises(TypeError, match=r"Obj\.y must be a finite real number"):
        Obj("circle", "red", "small", 0.5, "0.5")


def test_obj_converts_numpy_scalars_to_float():
    """numpy scalars are accepted and stored as plain floats (JSON-able)."""
    o = Obj("circle", "red", "small", np.float32(0.25), 1)
    assert type(o.x) is float and type(o.y) is float
    assert (o.x, o.y) == (0.25, 1.0)


def test_scene_round_trips_through_json():
    """to_dict -> JSON -> from_dict gives back an equal scene."""
    s = scene_for("val", 3, 11, max_objects=6)
    assert Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_scene_from_dict_rejects_missing_keys():
    """from_dict says which object is malformed and which keys are expected."""
    with pytest.raises(ValueError, match=r"objects\[0\] must be a dict with keys"):
        Scene.from_dict({"objects": [{"shape": "circle"}]})


def test_scene_rejects_non_obj_items():
    """Scene items must be Obj instances."""
    with pytest.raises(TypeError, match=r"Scene\.objects\[1\] must be a Obj"):
        Scene((Obj("circle", "red", "small", 0.5, 0.5), "square"))


def test_scene_for_is_deterministic_and_index_sensitive():
    """Same (split, seed, index) -> same scene; another index -> another scene."""
    assert scene_for("pretrain", 5, 42) == scene_for("pretrain", 5, 42)
    assert scene_for("pretrain", 5, 42) != scene_for("pretrain", 5, 43)
    assert scene_for("pretrain", 5, 42) != scene_for("pretrain", 6, 42)


def test_splits_never_share_scenes():
    """The four split namespaces give pairwise different scenes for the same seed/index."""
    for i in range(50):
        dumps = {json.dumps(scene_for(sp, 0, i).to_dict()) for sp in SPLITS}
        assert len(dumps) == len(SPLITS)


def test_scene_for_does_not_depend_on_python_hash_seed():
    """A fresh interpreter with another PYTHONHASHSEED draws the identical scene."""
    code = ("import json; from asg.shapes import scene_for; "
            "print(json.dumps(scene_for('test', 9, 123).to_dict()))")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == json.loads(json.dumps(scene_for("test", 9, 123).to_dict()))


def test_scene_for_rejects_unknown_split_and_negative_seed():
    """Bad split names list the valid splits; seeds must be non-negative ints."""
    with pytest.raises(ValueError, match=r"split must be one of \('pretrain', 'pool', 'val', 'test'\), got 'train'"):
        scene_for("train", 0, 0)
    with pytest.raises(ValueError, match=r"seed must be a non-negative int, got -1"):
        scene_for("val", -1, 0)


def test_sampled_objects_never_overlap_and_stay_inside_canvas():
    """Bounding boxes keep GAP from each other and EDGE_MARGIN from the border."""
    for i in range(400):
        scene = scene_for("pool", 1, i, max_objects=6 if i % 2 else 4)
        objs = scene.objects
        for o in objs:
            half = SIZE_FRACTION[o.size] / 2
            assert EDGE_MARGIN - 1e-12 <= o.x - half and o.x + half <= 1 - EDGE_MARGIN + 1e-12
            assert EDGE_MARGIN - 1e-12 <= o.y - half and o.y + half <= 1 - EDGE_MARGIN + 1e-12
        for a_i, a in enumerate(objs):
            for b in objs[a_i + 1:]:
                need = (a.extent + b.extent) / 2 + GAP
                assert abs(a.x - b.x) >= need or abs(a.y - b.y) >= need


def test_object_count_spans_the_requested_range():
    """Counts are within [min, max] and every count in that range occurs."""
    rng = np.random.default_rng(0)
    counts = {len(sample_scene(rng, 2, 5).objects) for _ in range(200)}
    assert counts == {2, 3, 4, 5}


def test_sample_scene_validates_bounds():
    """Impossible object counts are refused with the argument named."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"max_objects must be an int in \[1, 6\], got 7"):
        sample_scene(rng, 1, 7)
    with pytest.raises(ValueError, match=r"max_objects must be an int in \[3, 6\], got 2"):
        sample_scene(rng, 3, 2)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        sample_scene(0)


def test_render_fills_an_exact_square_with_pure_colour():
    """A large square centred on a 50 px canvas covers exactly pixels 18..31."""
    # side = 0.28 * 50 = 14 px, centre 25 -> spans [18, 32): no partial pixels.
    img = np.asarray(render(Scene((Obj("square", "red", "large", 0.5, 0.5),)), size=50))
    assert img.shape == (50, 50, 3)
    assert tuple(img[18, 18]) == COLORS["red"] and tuple(img[31, 31]) == COLORS["red"]
    assert tuple(img[17, 25]) == BACKGROUND and tuple(img[25, 32]) == BACKGROUND
    assert (img[18:32, 18:32] == COLORS["red"]).all()


def test_render_anti_aliases_a_half_covered_pixel():
    """A pixel half covered by red blends half-way to the background."""
    # centre x = 0.51 * 50 = 25.5 -> left edge 18.5, so pixel column 18 is half red:
    # R 0.5*220 + 0.5*245 = 232.5 -> 232, G 0.5*35 + 0.5*245 = 140, B 0.5*50 + 0.5*245
    # = 147.5 -> 148 (np.rint rounds halves to even).
    img = np.asarray(render(Scene((Obj("square", "red", "large", 0.51, 0.5),)), size=50))
    assert tuple(img[25, 18]) == (232, 140, 148)


def test_render_circle_leaves_box_corners_empty():
    """A circle does not paint the corners of its bounding box; its centre is pure colour."""
    img = np.asarray(render(Scene((Obj("circle", "blue", "large", 0.5, 0.5),)), size=50))
    assert tuple(img[25, 25]) == COLORS["blue"]
    assert tuple(img[18, 18]) == BACKGROUND  # corner pixel [18,19)^2 lies outside radius 7


def test_triangle_points_up():
    """A triangle's top row is narrower than its bottom row."""
    img = np.asarray(render(Scene((Obj("triangle", "green", "large", 0.5, 0.5),)), size=50))
    painted = (img != BACKGROUND).any(axis=-1)
    assert painted[19].sum() < painted[30].sum()


def test_render_validates_input():
    """render refuses non-scenes and tiny canvases."""
    with pytest.raises(TypeError, match="scene must be a Scene"):
        render("scene")
    with pytest.raises(ValueError, match=r"size must be an int >= 16, got 8"):
        render(Scene(()), size=8)


def test_describe_lists_objects_left_to_right_with_locations():
    """The caption orders objects by x and names their canvas region."""
    a = Obj("circle", "red", "large", 0.2, 0.5)
    b = Obj("square", "blue", "small", 0.8, 0.9)
    expected = "a large red circle on the left and a small blue square at the bottom right."
    assert describe(Scene((b, a))) == expected == describe(Scene((a, b)))


def test_describe_single_and_three_objects():
    """One object has no conjunction; three are comma separated with a final "and"."""
    c = Obj("triangle", "green", "small", 0.5, 0.5)
    assert describe(Scene((c,))) == "a small green triangle in the center."
    objs = (Obj("circle", "red", "small", 0.1, 0.1), c, Obj("square", "purple", "large", 0.9, 0.5))
    assert describe(Scene(objs)) == (
        "a small red circle at the top left, a small green triangle in the center"
        " and a large purple square on the right."
    )


def test_import_does_not_pull_in_torch():
    """import asg.shapes stays light: torch is never imported."""
    code = "import sys, asg.shapes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_constants_match_the_published_vocabulary():
    """Shapes, colours and splits are the agreed closed sets."""
    assert SHAPES == ("circle", "square", "triangle")
    assert set(COLORS) == {"red", "orange", "yellow", "green", "blue", "purple"}
    assert SPLITS == ("pretrain", "pool", "val", "test")
