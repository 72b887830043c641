"""``python -m benchmarks geneval_curve``: GenEval-mini at the base and at every checkpoint of a run.

The checkpoints are written by hand with :func:`asg.train.checkpoint.save_checkpoint`, from the shipped
tiny base's own trainable state: one unchanged (so it must score exactly as the base, image for image,
since the curve shares prompts and noise), one with the Generator's LoRA pushed far from zero (so its
images must be judged differently), and one left incomplete (skipped and listed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from asg.errors import ConfigError
from asg.train.checkpoint import SAVE_OK, save_checkpoint
from asg.train.trainer import MODEL_PREFIX

ARGS = ["--backbone", "tiny", "--device", "cpu", "--per-tag", "1", "--images-per-prompt", "2", "--steps", "2"]


def _write_run(run: Path) -> None:
    from asg.harness.common import load_named_backbone

    backbone = load_named_backbone("tiny")
    state = backbone.trainable_state_dict()
    same = {MODEL_PREFIX + k: v for k, v in state.items()}
    moved = {MODEL_PREFIX + k: (torch.full_like(v, 0.5) if "lora_B.generator" in k else v) for k, v in state.items()}
    save_checkpoint(run, 2, tensors=same, state={}, keep_last=None)
    save_checkpoint(run, 4, tensors=moved, state={}, keep_last=None)
    save_checkpoint(run, 6, tensors=same, state={}, keep_last=None)
    (run / "checkpoints" / "step_000006" / SAVE_OK).unlink()  # an interrupted save


@pytest.fixture(scope="module")
def curve(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from benchmarks import geneval_curve as suite

    tmp = tmp_path_factory.mktemp("curve")
    run = tmp / "seed3" / "run-full"
    _write_run(run)
    out = tmp / "curve.json"
    suite.main([str(run), *ARGS, "--seeds", "3", "--out", str(out)])
    return out, json.loads(out.read_text())


def test_curve_points(curve: tuple[Path, dict]) -> None:
    _, result = curve
    (r,) = result["runs"]
    assert r["seed"] == 3 and [p["step"] for p in r["points"]] == [0, 2, 4]
    base, same, moved = r["points"]
    assert base["checkpoint"] is None and same["checkpoint"].endswith("step_000002")
    # unchanged weights, same prompts and noise: the same verdict on every image
    assert same["metrics"] == base["metrics"] and same["judged"] == base["judged"]
    assert (same["objects_per_image"], same["empty_images"]) == (base["objects_per_image"], base["empty_images"])
    assert moved["judged"] != base["judged"]  # the checkpoint's adapters were loaded
    for p in r["points"]:
        assert sum(c["images"] for c in p["counts"].values()) == 6 * 2
        assert p["metrics"]["overall"] == pytest.approx(sum(p["metrics"][t] for t in p["counts"]) / 6)
        assert p["objects_per_image"] >= 0 and p["empty_images"] in {100.0 * k / 12 for k in range(13)}
    assert r["incomplete"] == [str(Path(r["run"]) / "checkpoints" / "step_000006")]
    meta = result["_meta"]
    assert meta["suite"] == "geneval_curve" and meta["seeds"] == [3] and meta["backbone"]["runs"] == [r["run"]]


def test_curve_page_and_picture(curve: tuple[Path, dict]) -> None:
    from benchmarks import geneval_curve as suite

    out, result = curve
    page = out.with_suffix(".md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| base | ") and rows[2].startswith("| 2 | ") and "| +0.0 |" in rows[2]
    assert rows[0].endswith("| shapes per image | empty images % |") and rows[1].count("|") == rows[0].count("|")
    assert "Skipped, incomplete" in page and "![GenEval-mini along the run](curve.png)" in page
    with Image.open(out.with_suffix(".png")) as im:
        assert im.size == (1320, 480)  # 11 x 4 inches at 120 dpi
    suite.main(["--report", "--out", str(out)])
    assert out.with_suffix(".md").read_text() == page


def test_run_labels_are_the_shortest_distinct_endings() -> None:
    from benchmarks.geneval_curve import run_labels

    assert run_labels(["r/a/seed0/run-full", "r/a/seed1/run-full"]) == ["seed0/run-full", "seed1/run-full"]
    assert run_labels(["r/a/seed0/run-full", "r/b/seed0/run-full"]) == ["a/seed0/run-full", "b/seed0/run-full"]
    assert run_labels(["x/run", "x/run"]) == ["x/run", "x/run"]  # the same run twice: its path, twice


def test_curve_errors(tmp_path: Path, curve: tuple[Path, dict]) -> None:
    from benchmarks import geneval_curve as suite

    with pytest.raises(ConfigError, match="no such run directory"):
        suite.main([str(tmp_path / "missing"), *ARGS, "--out", str(tmp_path / "x.json")])
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        suite.main([str(empty), *ARGS, "--out", str(tmp_path / "x.json")])
    run = Path(curve[1]["runs"][0]["run"])
    other = tmp_path / "other"
    shutil.copytree(run, other)
    with pytest.raises(ConfigError, match="one seed for all runs or one per run; got 3 seeds for 2 runs"):
        suite.main([str(run), str(other), *ARGS, "--seeds", "0", "1", "2", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="name at least one run"):
        suite.main([*ARGS, "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
