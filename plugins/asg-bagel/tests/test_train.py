"""`asg train` runs the self-evolving loop on a tiny BAGEL end to end (understanding and generation steps)."""

from __future__ import annotations

import json


def test_asg_train_runs_both_phases_with_bagel(tmp_path) -> None:
    """Five steps of recipe `demo` (3 understanding, 2 generation) complete, log each step and leave a checkpoint."""
    from asg.cli import main

    images, run = tmp_path / "images", tmp_path / "run"
    assert main(["data", "shapes", "--out", str(images), "--n", "12"]) == 0
    assert main(["train", "--backbone", "bagel", "--preset", "tiny", "--images", str(images), "--recipe", "demo",
                 "--steps", "5", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in rows] == ["U", "U", "U", "G", "G"]
    assert all(r["proposer.stepped"] for r in rows[:3])  # the proposer trains on its own questions from step 1
    assert any((run / "checkpoints").iterdir())
    assert json.loads((run / "config.json").read_text())["backbone"] == "bagel"
