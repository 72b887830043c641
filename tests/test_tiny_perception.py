"""Dense perception targets of `tiny`'s vision tower: hand-derived patch labels, the loss, and the
pretraining phase that uses them (the tower learns; --freeze-vision keeps it fixed in phase 2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from asg.backbones.tiny.perception import HEADS, PerceptionHeads, patch_targets, perception_loss, stack_targets
from asg.backbones.tiny.pretrain import pretrain
from asg.backbones.tiny.pretrain_config import PretrainConfig
from asg.shapes import Obj, Scene

SMALL = dict(scenes=6, vae_steps=2, vae_batch=2, steps=2, batch_text=3, batch_image=2, warmup=1, eval_every=0,
             eval_questions=2, eval_per_tag=1)


def _at(grid: int, *cells: tuple[int, int]) -> set[int]:
    return {r * grid + c for r, c in cells}


def test_patch_targets_by_hand() -> None:
    """Grid 8, patch centres at (k + 0.5) / 8. A large (0.28) circle or square centred at (0.5, 0.5)
    covers the four centres 0.0625 away on each axis (diagonal 0.088 < 0.14); the triangle of the same
    box (apex at y 0.36) covers only the two in row 4: in row 3 its half-width is 0.039 < 0.0625."""
    for shape, cells in (("circle", _at(8, (3, 3), (3, 4), (4, 3), (4, 4))),
                         ("square", _at(8, (3, 3), (3, 4), (4, 3), (4, 4))),
                         ("triangle", _at(8, (4, 3), (4, 4)))):
        t = patch_targets(Scene([Obj(shape, "blue", "large", 0.5, 0.5)]), 8)
        assert set(np.flatnonzero(t["shape"])) == cells, shape
        assert set(t["shape"][list(cells)]) == {1 + ("circle", "square", "triangle").index(shape)}
        assert set(t["color"][list(cells)]) == {1 + 4}  # blue is the fifth colour
        assert set(t["size"][list(cells)]) == {2}  # large
        assert set(np.flatnonzero(t["center"])) == {4 * 8 + 4}  # int(0.5 * 8) = 4
        assert t["shape"].shape == (64,) and t["shape"].dtype == np.int64


def test_later_object_owns_the_patches_it_covers() -> None:
    """The renderer paints objects in order, so the later one is what the pixels show."""
    red = Obj("square", "red", "large", 0.5, 0.5)
    small_green = Obj("circle", "green", "small", 0.5, 0.5)
    t = patch_targets(Scene([red, small_green]), 8)
    # the small circle (radius 0.1) covers the same four centres (0.088 away), all now green circle
    assert set(t["color"][t["color"] > 0]) == {1 + 3} and set(t["shape"][t["shape"] > 0]) == {1}
    assert set(t["size"][t["size"] > 0]) == {1}
    t2 = patch_targets(Scene([small_green, red]), 8)
    assert set(t2["color"][t2["color"] > 0]) == {1}
    corner = patch_targets(Scene([Obj("circle", "red", "small", 1.0, 1.0)]), 8)
    assert corner["center"][63] == 1  # a centre on the far edge falls in the last patch, not outside


def test_stack_targets_and_grid_check() -> None:
    scenes = [Scene([Obj("circle", "red", "small", 0.2, 0.2)]), Scene([])]
    st = stack_targets(scenes, 4)
    assert set(st) == set(HEADS) and st["shape"].shape == (2, 16) and int(st["center"][1].sum()) == 0
    with pytest.raises(ValueError, match="grid must be at least 1"):
        patch_targets(scenes[0], 0)


def test_perception_loss_by_hand() -> None:
    """Zero heads give uniform logits: the loss is the sum of log(class count) over the heads, and the
    argmax (class 0, background) is right exactly on the background patches."""
    heads = PerceptionHeads(5)
    for p in heads.parameters():
        torch.nn.init.zeros_(p)
    targets = stack_targets([Scene([Obj("square", "red", "large", 0.5, 0.5)])], 8)
    loss, acc = perception_loss(heads, torch.randn(1, 64, 5), targets)
    assert float(loss.detach()) == pytest.approx(math.log(4) + math.log(7) + math.log(3) + math.log(2), rel=1e-6)
    assert acc["shape"] == pytest.approx(100 * 60 / 64) and acc["center"] == pytest.approx(100 * 63 / 64)


def test_perception_phase_trains_the_tower_and_freeze_keeps_it(tmp_path: Path) -> None:
    """Perception steps lower the per-patch loss; with --freeze-vision the tower written at the end is
    the one the perception phase left, and phase 2 still moves the projector (through the auxiliary
    perception loss and the answers)."""
    first = tmp_path / "first"
    pretrain(PretrainConfig(**SMALL), first)
    out = tmp_path / "perceive"
    report = pretrain(PretrainConfig(init_from=str(first), perception_steps=40, perception_batch=8,
                                     perception_weight=1.0, freeze_vision=True, **SMALL), out)
    hist = report["perception_history"]
    assert len(hist) == 40
    assert np.mean([h["loss"] for h in hist[-5:]]) < 0.7 * np.mean([h["loss"] for h in hist[:5]])
    assert set(report["perception"]) == {"val_patch_accuracy", "after"}
    assert report["pretrain_config"]["freeze_vision"] is True
    # phase 2 froze the tower: compare with a run whose phase 2 cannot move anything (frozen, lr ~ 0)
    still = tmp_path / "still"
    pretrain(PretrainConfig(init_from=str(first), perception_steps=40, perception_batch=8, lr=1e-12,
                                     freeze_vision=True, **SMALL), still)
    a, b = load_file(str(out / "model.safetensors")), load_file(str(still / "model.safetensors"))
    tower = [k for k in a if k.startswith("vlm.model.vision_tower.")]
    assert tower and all(torch.equal(a[k], b[k]) for k in tower)
    proj = [k for k in a if k.startswith("vlm.model.multi_modal_projector.")]
    assert max(float((a[k] - b[k]).abs().max()) for k in proj) > 1e-4
    before = load_file(str(first / "model.safetensors"))
    assert max(float((a[k] - before[k]).abs().max()) for k in tower) > 1e-3  # the perception phase moved it


def test_cli_flags_reach_the_config() -> None:
    """`asg tiny pretrain` flags: --freeze-vision is a switch (off unless given), the numbers are typed."""
    import argparse

    from asg.backbones.tiny.pretrain_config import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--perception-steps", "5", "--perception-weight", "0.5", "--freeze-vision"]))
    assert (cfg.perception_steps, cfg.perception_weight, cfg.freeze_vision) == (5, 0.5, True)
    assert config_from_args(parser.parse_args([])).freeze_vision is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--perception-steps", "many"])
