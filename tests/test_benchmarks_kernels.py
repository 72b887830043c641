"""The kernel benchmark runs end to end on CPU (tiny shapes) and writes its report; not a timing test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_benchmark_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "kernels.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "kernels", "--device", "cpu", "--tokens", "8", "--vocab", "1000",
         "--hidden", "32", "--repeat", "1", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["suite"] == "kernels" and report["machine"]["device"] == "cpu" and report["machine"]["torch"]
    got = {(r["op"], r["impl"]) for r in report["results"]}
    assert got == {("token_stats", "asg"), ("token_stats", "eager"), ("token_kl", "asg"), ("token_kl", "eager"),
                   ("linear_token_stats", "asg"), ("linear_token_stats", "gemm+asg"),
                   ("linear_token_stats", "gemm+eager")}
    for r in report["results"]:
        assert "error" not in r, r
        assert r["time_ms"] > 0 and r["peak_mb"] >= 0 and (r["tokens"], r["vocab"]) == (8, 1000)
    table = out.with_suffix(".md").read_text()
    assert "| token_stats | 8 x 1000 | eager |" in table and "x slower than asg" in table
    assert "x slower than asg" in proc.stdout


def test_benchmarks_help_lists_the_suites() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "kernels" in proc.stdout


@pytest.mark.parametrize("bad", [["kernels", "--ops", "softmax"], ["nosuch"]])
def test_bad_arguments_are_named(bad: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *bad], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
