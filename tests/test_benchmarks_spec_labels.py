"""``python -m benchmarks spec_labels``: the grading against hand-built scenes, the tally by hand, and the suite
end to end at toy size (not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asg.shapes import render
from asg.shapes.scene import Obj, Scene
from benchmarks.spec_labels import detected_scene, grade, tally

ROOT = Path(__file__).resolve().parents[1]
SCENE = Scene((Obj("circle", "red", "large", 0.25, 0.5), Obj("square", "blue", "large", 0.75, 0.5)))


def test_detected_scene_reads_a_rendered_scene() -> None:
    seen = detected_scene(render(SCENE, 64))
    got = sorted(seen.objects, key=lambda o: o.x)
    assert [(o.shape, o.color, o.size) for o in got] == [("circle", "red", "large"), ("square", "blue", "large")]
    assert [(o.x, o.y) for o in got] == [(pytest.approx(0.25, abs=0.03), pytest.approx(0.5, abs=0.03)),
                                         (pytest.approx(0.75, abs=0.03), pytest.approx(0.5, abs=0.03))]


def test_grade_by_hand() -> None:
    assert grade("Is the red circle to the left of the blue square?", "yes", SCENE) is True
    assert grade("Is the red circle to the left of the blue square?", "no", SCENE) is False
    assert grade("How many shapes are there?", "2", SCENE) is True
    assert grade("How many shapes are there?", "two", SCENE) is True  # answers are normalised as evaluation does
    assert grade("What color is the circle?", "blue", SCENE) is False
    assert grade("What color is the triangle?", "red", SCENE) is None  # false premise: no triangle
    assert grade("Describe the picture.", "a circle", SCENE) is None  # not a template question
    assert grade("Is there a green circle?", "no", Scene(())) is True


def _item(qtype: str, gen: tuple[bool | None, ...], real: tuple[bool | None, bool | None]) -> dict:
    return {"qtype": qtype, "on_generated": dict(zip(("expected", "reference", "judge", "greedy"), gen)),
            "on_real": dict(zip(("expected", "reference"), real))}


def test_tally_by_hand() -> None:
    items = [
        _item("count", (True, False, False, True), (True, True)),
        _item("count", (False, False, True, True), (None, None)),   # false premise about the real image
        _item("existence", (True, True, True, False), (False, True)),
        _item("color", (None, None, None, None), (True, False)),   # false premise about the generated image
    ]
    t = tally(items)
    gen, real = t["generated"], t["real"]
    assert list(gen["by_qtype"]) == ["count", "existence", "all"]
    assert gen["by_qtype"]["count"] == {"n": 2, "expected": 50.0, "reference": 0.0, "judge": 50.0, "greedy": 100.0}
    assert gen["by_qtype"]["all"]["n"] == 3
    assert gen["by_qtype"]["all"]["expected"] == pytest.approx(200 / 3)
    assert gen["by_qtype"]["all"]["greedy"] == pytest.approx(200 / 3)
    assert gen["no_answer"] == 1 and real["no_answer"] == 1
    assert real["by_qtype"]["all"] == {"n": 3, "expected": pytest.approx(200 / 3), "reference": pytest.approx(200 / 3)}
    assert set(real["by_qtype"]) == {"color", "count", "existence", "all"}
    assert tally([]) == {"generated": {"by_qtype": {}, "no_answer": 0}, "real": {"by_qtype": {}, "no_answer": 0}}


def test_spec_labels_suite_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "spec_labels", "--images", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["specs"]) == 2 and result["_meta"]["images"] == 2
    n_pairs = sum(len(s["qa"]) for s in result["specs"]) * 3  # recipe demo draws L = 3 candidates
    assert len(result["items"]) == n_pairs == result["_meta"]["questions_graded"]
    for it in result["items"]:
        assert set(it["labels"]) == {"expected", "reference", "judge", "greedy"}
        assert all(v in (True, False, None) for v in it["on_generated"].values())
    graded = sum(1 for it in result["items"] if it["on_generated"]["expected"] is not None)
    assert result["all_specs"]["generated"]["by_qtype"].get("all", {"n": 0})["n"] == graded
    assert "Spec labels graded against the generated images" in out.with_suffix(".md").read_text()


def test_spec_labels_suite_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "spec_labels", "--images", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "--images must be >= 1" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "spec_labels", "--run", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
