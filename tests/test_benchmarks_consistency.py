"""``python -m benchmarks consistency``: the tally against hand-derived values, and the suite end to end at
toy size (not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.consistency import by_vote, tally

ROOT = Path(__file__).resolve().parents[1]


def test_tally_by_hand() -> None:
    records = [
        ("count", True, False, [True, False, False]),   # greedy right, majority wrong, 1/3 perturbed right
        ("count", False, True, [True, True, False]),    # majority fixes greedy, 2/3
        ("color", True, True, [True, True, True, True]),
    ]
    t = tally(records)
    assert list(t) == ["color", "count", "all"]  # types sorted, "all" last
    assert t["count"] == {"n": 2, "greedy": 50.0, "majority": 50.0, "sample_mean": pytest.approx(50.0),
                          "majority_minus_greedy": 0.0}
    assert t["color"]["sample_mean"] == 100.0
    assert t["all"]["n"] == 3
    assert t["all"]["greedy"] == pytest.approx(200 / 3) and t["all"]["majority"] == pytest.approx(200 / 3)
    assert t["all"]["sample_mean"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1) / 3)
    # no perturbed samples: the greedy sample stands for the mean
    assert tally([("shape", False, False, [])])["shape"]["sample_mean"] == 0.0


def test_by_vote_by_hand() -> None:
    """Questions grouped by how many of N answers agree with the majority; with N = 7 the easy gate at 0.85
    skips 6/7 (0.857) and 7/7, so only k <= 5 is trained."""
    items = [
        {"labels": list("aaaabcd"), "majority": "a", "greedy_ok": True, "majority_ok": False},   # k = 4
        {"labels": list("aaaabbb"), "majority": "a", "greedy_ok": False, "majority_ok": True},   # k = 4
        {"labels": list("aaaaaab"), "majority": "a", "greedy_ok": True, "majority_ok": True},    # k = 6
        {"labels": list("aaaaaaa"), "majority": "a", "greedy_ok": False, "majority_ok": False},  # k = 7
    ]
    v = by_vote(items, 7)
    assert list(v) == ["4", "6", "7"]
    assert v["4"] == {"n": 2, "greedy": 50.0, "majority": 50.0, "trained": True}
    assert v["6"] == {"n": 1, "greedy": 100.0, "majority": 100.0, "trained": False}
    assert v["7"]["trained"] is False and v["7"]["majority"] == 0.0
    assert by_vote(items, 7, easy_at=0.9)["6"]["trained"] is True


def test_consistency_suite_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "consistency", "--questions", "5", "--n", "3",
                           "--batch", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["by_qtype"]["all"]["n"] == 5 and len(result["items"]) == 5
    assert all(len(item["labels"]) == 3 and item["majority"] in item["labels"] for item in result["items"])
    assert result["_meta"]["n"] == 3 and result["_meta"]["split"] == "val"
    assert "| **all** | 5 |" in out.with_suffix(".md").read_text()
    assert sum(v["n"] for v in result["by_vote"].values()) == 5
    assert all(isinstance(item["greedy_ok"], bool) for item in result["items"])


def test_consistency_suite_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "consistency", "--n", "1", "--out", str(tmp_path / "c.json")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "--n >= 2" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "consistency", "--adapters", str(tmp_path / "missing")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
