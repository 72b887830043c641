"""write_unlabeled_folder: images in the folder, ground truth outside it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import asg.shapes.folder as folder_module
from asg.shapes import QA, Scene, describe, qa_for, render, scene_for, write_unlabeled_folder


def test_writes_images_and_separate_parseable_labels(tmp_path):
    """n PNGs go in the folder; one JSON line per image goes to <name>.labels.jsonl beside it."""
    out = tmp_path / "pool_imgs"
    calls = []
    labels = write_unlabeled_folder(out, 3, seed=4, split="pool", size=32,
                                    progress=lambda i, n: calls.append((i, n)))
    assert labels == tmp_path / "pool_imgs.labels.jsonl"
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert calls == [(1, 3), (2, 3), (3, 3)]
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert [r["file"] for r in rows] == ["000000.png", "000001.png", "000002.png"]
    for i, r in enumerate(rows):
        scene = scene_for("pool", 4, i)
        assert Scene.from_dict(r["scene"]) == scene
        assert r["caption"] == describe(scene)
        assert [QA.from_dict(q) for q in r["qa"]] == qa_for("pool", 4, i)
        assert (r["split"], r["seed"], r["index"]) == ("pool", 4, i)
        with Image.open(out / r["file"]) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
            assert np.array_equal(np.asarray(im), np.asarray(render(scene, 32)))


def test_custom_labels_path_and_existing_empty_folder(tmp_path):
    """An existing empty folder is fine and labels_path is honoured."""
    out = tmp_path / "imgs"
    out.mkdir()
    labels = write_unlabeled_folder(out, 1, seed=0, labels_path=tmp_path / "meta" / "gt.jsonl")
    assert labels == tmp_path / "meta" / "gt.jsonl" and len(labels.read_text().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["000000.png"]


def test_refuses_non_empty_folder(tmp_path):
    """A folder with anything in it is never written into."""
    out = tmp_path / "imgs"
    out.mkdir()
    (out / "old.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is not empty"):
        write_unlabeled_folder(out, 2, seed=0)
    assert [p.name for p in out.iterdir()] == ["old.png"]


def test_refuses_bad_counts_and_labels_inside_folder(tmp_path):
    """n <= 0, labels inside the folder and an existing labels file are refused."""
    out = tmp_path / "imgs"
    with pytest.raises(ValueError, match=r"n must be an int >= 1, got 0"):
        write_unlabeled_folder(out, 0, seed=0)
    with pytest.raises(ValueError, match="must be outside out_dir"):
        write_unlabeled_folder(out, 1, seed=0, labels_path=out / "labels.jsonl")
    (tmp_path / "imgs.labels.jsonl").write_text("stale\n")
    with pytest.raises(ValueError, match="already exists"):
        write_unlabeled_folder(out, 1, seed=0)
    assert not out.exists()  # nothing created before the checks passed


def test_crash_leaves_no_truncated_labels(tmp_path):
    """If writing fails midway, no labels file exists under its final name."""
    out = tmp_path / "imgs"

    def boom(i: int, n: int) -> None:
        if i == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        write_unlabeled_folder(out, 3, seed=0, progress=boom)
    assert not (tmp_path / "imgs.labels.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["imgs"]  # no stray temp files


def test_crash_while_writing_labels_leaves_no_partial_file(tmp_path, monkeypatch):
    """A failure after some label lines were written leaves neither a labels file nor a temp file."""
    real_dumps = json.dumps
    written = []

    def flaky_dumps(obj, *args, **kwargs):
        if len(written) == 2:
            raise OSError("disk full")
        written.append(obj)
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(folder_module.json, "dumps", flaky_dumps)
    with pytest.raises(OSError, match="disk full"):
        write_unlabeled_folder(tmp_path / "imgs", 4, seed=0)
    assert len(written) == 2  # two lines had been written to the temp file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]
