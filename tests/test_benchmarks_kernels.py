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
    assert report["partial"] is False and "Partial" not in table


def test_a_run_cut_off_keeps_what_it_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The result is rewritten after every measurement: a run stopped after two of them (a time limit on a
    lent GPU) leaves both rows on disk, marked partial, and the page says so."""
    from benchmarks import kernels

    calls = []

    def fake(spec: dict) -> dict:
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(spec)
        return {"op": spec["op"], "impl": spec["impl"], "tokens": spec["T"], "vocab": spec["V"], "hidden": None,
                "dtype": "bf16", "time_ms": 2.0 * len(calls), "peak_mb": 1.0, "gb_per_s": 1.0, "tflop_per_s": None}

    monkeypatch.setattr(kernels, "measure_in_child", fake)
    out = tmp_path / "k.json"
    args = kernels.build_parser().parse_args(["--device", "cpu", "--tokens", "8", "--vocab", "1000", "2000", "--ops",
                                              "token_stats", "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        kernels.run(args)
    report = json.loads(out.read_text())
    assert report["partial"] is True
    assert [(r["impl"], r["time_ms"]) for r in report["results"]] == [("asg", 2.0), ("eager", 4.0)]
    page = out.with_suffix(".md").read_text()
    assert "**Partial:**" in page and "| token_stats | 8 x 1000 | eager | 4.00 | 2.00 |" in page


def test_benchmarks_help_lists_the_suites() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "kernels" in proc.stdout


@pytest.mark.parametrize("bad", [["kernels", "--ops", "softmax"], ["nosuch"]])
def test_bad_arguments_are_named(bad: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *bad], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
