"""`python -m benchmarks soak` at toy size: the windows stay at their caps, old checkpoints are rotated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_slope_per_100_steps_is_the_least_squares_slope() -> None:
    from benchmarks.soak import slope_per_100

    # y = 500 + 0.02 x exactly -> 2 MB per 100 steps; a flat series -> 0
    assert slope_per_100([0, 50, 100, 150], [500.0, 501.0, 502.0, 503.0]) == pytest.approx(2.0)
    assert slope_per_100([10, 20, 30], [7.0, 7.0, 7.0]) == 0.0
    # least squares through (0,0) (1,2) (2,1): slope 0.5 per step -> 50 per 100 steps
    assert slope_per_100([0, 1, 2], [0.0, 2.0, 1.0]) == pytest.approx(50.0)
    assert slope_per_100([5], [1.0]) == 0.0


def test_soak_suite_end_to_end_at_toy_size(tmp_path: Path, monkeypatch) -> None:
    from benchmarks import soak

    monkeypatch.setenv("ASG_PROGRESS", "0")
    out = tmp_path / "soak.json"
    args = soak.build_parser().parse_args(["--steps", "5", "--window", "2", "--images", "6", "--checkpoint-every", "2",
                                           "--out", str(out), "--work", str(tmp_path / "work")])
    result = soak.run(args)
    s = result["summary"]
    assert [x["step"] for x in result["samples"]] == [0, 1, 2, 3, 4, 5]
    assert all(x["rss_mb"] > 0 for x in result["samples"])
    # five steps, windows of 2: every window fills to its cap and never beyond
    for name in ("easy_threshold", "difficulty_target", "ste"):
        assert s["windows"][name]["cap"] == 2 and s["windows"][name]["max_len"] <= 2, (name, s["windows"][name])
    assert s["windows"]["difficulty_target"]["max_len"] == 2
    # checkpoints at steps 2 and 4; keep_checkpoints = 2
    assert s["checkpoints_on_disk"] == ["step_000002", "step_000004"] and s["metrics_lines"] == 5
    assert json.loads(out.read_text())["summary"] == s and out.with_suffix(".png").is_file()
    page = out.with_suffix(".md").read_text()
    assert "| window `ste`: largest / cap / final | " in page
    # --report re-renders the same page from the saved result
    soak.run(soak.build_parser().parse_args(["--report", "--out", str(out)]))
    assert out.with_suffix(".md").read_text().split("\n")[2:-1] == page.split("\n")[2:-1]
