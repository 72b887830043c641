"""``python -m benchmarks audit``: a run's votes graded against the pool's ground truth, by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asg.shapes import scene_for, write_unlabeled_folder
from benchmarks.audit import _records, _scenes, grade

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    pool = tmp_path / "pool"
    write_unlabeled_folder(pool, n=2, seed=5, split="pool")
    assert scene_for("pool", 5, 0).count(color="purple") == 2  # the false premise of step 3: two purple objects
    truth = {i: scene_for("pool", 5, i).count() for i in range(2)}  # number of objects per image
    img = [str(pool / f"{i:06d}.png") for i in range(2)]
    wrong = lambda i: str(truth[i] + 1)  # noqa: E731
    rollouts = [
        # step 1: pick trained (recorded gate), majority right, greedy wrong; extra skipped, majority wrong
        {"step": 1, "phase": "U", "image": img[0], "question": "How many shapes are there?",
         "labels": [wrong(0), str(truth[0]), str(truth[0])], "majority": str(truth[0]), "skip": None,
         "extra_questions": [{"question": "How many shapes are there?", "labels": [wrong(0)] * 3,
                              "majority": wrong(0), "skip": "easy"}]},
        # step 2: an old-format rollout (no "skip"): 1 trained question, the extra's gate passed -> pick skipped
        {"step": 2, "phase": "U", "image": img[1], "question": "Describe the image.",
         "labels": ["x", "x", "y"], "majority": "x",
         "extra_questions": [{"question": "How many shapes are there?", "labels": [str(truth[1])] * 2 + [wrong(1)],
                              "majority": str(truth[1]), "skip": None}]},
        # step 3: a template question whose premise fails, skipped by its gate
        {"step": 3, "phase": "U", "image": img[0], "question": "What shape is the purple object?",
         "labels": ["circle"] * 3, "majority": "circle", "skip": "easy"},
        {"step": 4, "phase": "G", "image": img[1]},
    ]
    run = tmp_path / "run"
    run.mkdir()
    (run / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rollouts))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "solver.questions_trained": 1}) + "\n")
    return run, truth


def test_grade_by_hand(tmp_path: Path) -> None:
    run, _ = _run(tmp_path)
    records = list(_records(run))
    assert [(r["pick"], r["trained"]) for r in records] == [(True, True), (False, False), (True, False), (False, True),
                                                            (True, False)]
    result = grade(records, _scenes(r["image"] for r in records))
    trained = result["trained"]["by_qtype"]["all"]
    assert trained == {"n": 2, "majority": 100.0, "greedy": 50.0}  # step-1 pick (greedy wrong), step-2 extra
    assert result["trained"]["false_premise_total"] == 0 and result["trained"]["not_template"] == 0
    everything = result["all"]
    assert everything["by_qtype"]["count"] == {"n": 3, "majority": pytest.approx(200 / 3), "greedy": pytest.approx(100 / 3)}
    assert everything["not_template"] == 1  # "Describe the image." is no template question
    assert everything["false_premise"] == {"shape": {"circle": 1}}  # "the purple object": image 0 has two


def test_audit_suite_end_to_end_and_errors(tmp_path: Path) -> None:
    run, _ = _run(tmp_path)
    out = tmp_path / "a.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "audit", str(run), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["_meta"]["questions"] == 5
    assert "| **all** | 2 | 100.0 | 50.0 |" in out.with_suffix(".md").read_text()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "audit", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "has no rollouts.jsonl" in proc.stderr
    (tmp_path / "pool.labels.jsonl").unlink()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "audit", str(run), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "pool.labels.jsonl is missing" in proc.stderr


def test_scene_vote_labels_graded_by_hand(tmp_path: Path) -> None:
    from benchmarks.audit import _scene_vote_records, grade_scene_vote

    run, truth = _run(tmp_path)
    image = str(tmp_path / "pool" / "000000.png")
    labels = [{"question": "How many shapes are there?", "kind": "count_all", "label": str(truth[0]),
               "independent": str(truth[0] + 1)},  # the vote fixes the Solver's own answer
              {"question": "How many purple shapes are there?", "kind": "count_color", "label": "2", "independent": "2"},
              {"question": "What shape is the purple object?", "kind": "shape", "label": "circle",
               "independent": "circle"}]  # two purple objects: the premise fails
    rows = [json.loads(x) for x in (run / "rollouts.jsonl").read_text().splitlines()]
    rows[0]["scene_vote"] = labels
    # an extra pool image of the same step (solver.scene_vote_extra_images): graded against its own scene
    other = str(tmp_path / "pool" / "000001.png")
    extra = {"question": "How many shapes are there?", "kind": "count_all", "label": str(truth[0]),
             "independent": str(truth[1])}  # image 0's count: wrong for image 1 (asserted below)
    assert truth[0] != truth[1]
    rows[0]["scene_vote_extra"] = [{"image": other, "labels": [extra], "stepped": True, "skip": None}]
    (run / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = list(_scene_vote_records(run))
    assert [r["question"] for r in records] == [x["question"] for x in [*labels, extra]]
    assert [r["image"] for r in records] == [image] * 3 + [other]
    result = grade_scene_vote(records, _scenes(r["image"] for r in records))
    # count labels: 2 right + the extra's wrong one; own answers: 1 right (count_color) + the extra's
    two_thirds = pytest.approx(200 / 3)
    assert result["by_qtype"] == {"count": {"n": 3, "label": two_thirds, "independent": two_thirds},
                                  "all": {"n": 3, "label": two_thirds, "independent": two_thirds}}
    assert result["false_premise"] == 1 and result["changed"] == {"n": 2, "label": 50.0, "independent": 50.0}
    out = tmp_path / "a.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "audit", str(run), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.with_suffix(".md").read_text()
    assert "Scene-vote labels the Solver was trained on" in text and "label right 50.0 %, own answer right 50.0 %" in text
