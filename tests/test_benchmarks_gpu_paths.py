"""``python -m benchmarks gpu_paths`` runs end to end on CPU at toy size; its errors name the problem; a run
cut off keeps the configurations it finished. Not a timing test: no time is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    """The same configuration twice: both evaluate and train, and the second gives exactly the first's
    answers (the model is deterministic on CPU), so its agreement is 100 % and its accuracy equal."""
    out = tmp_path / "gp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "gpu_paths", "--configs", "cpu:float32", "cpu:float32",
         "--questions", "6", "--per-tag", "1", "--steps", "1", "--images", "2", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["suite"] == "gpu_paths" and report["partial"] is False
    a, b = report["results"]
    for r in (a, b):
        assert "error" not in r, r
        assert r["config"] == "cpu:float32" and r["steps_done"] == 1 and r["U_steps"] == 1 and r["returncode"] == 0
        assert r["U_step_seconds"] > 0 and r["vqa_seconds"] > 0 and 0 <= r["vqa_accuracy"] <= 100
    assert b["vqa_agreement"] == 100.0 and b["vqa_accuracy"] == a["vqa_accuracy"]
    assert b["geneval_mini"] == a["geneval_mini"]
    page = out.with_suffix(".md").read_text()
    assert "| `cpu:float32` |" in page and "Reference configuration: `cpu:float32`" in page
    assert "(cut off: partial)" not in page


@pytest.mark.parametrize("bad,message", [
    (["--configs", "tpu:float32"], "bad --configs entry 'tpu:float32'"),
    (["--configs", "cpu:int8"], "bad --configs entry 'cpu:int8'"),
])
def test_bad_configuration_is_named(bad: list[str], message: str) -> None:
    from benchmarks import gpu_paths

    with pytest.raises(SystemExit, match=message):
        gpu_paths.run(gpu_paths.build_parser().parse_args(bad))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from benchmarks import gpu_paths

    out = tmp_path / "gp.json"
    with pytest.raises(SystemExit, match="a cuda configuration was asked for but torch sees no GPU"):
        gpu_paths.run(gpu_paths.build_parser().parse_args(["--out", str(out)]))
    assert not out.exists()


def test_a_run_cut_off_keeps_the_configurations_it_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped during the second configuration's training: the first's row is on disk, the page is
    marked partial; a failing evaluation is recorded as that row's error and the run goes on."""
    from benchmarks import gpu_paths

    def evaluate(device: str, dtype: str, args: object) -> dict:
        if dtype == "float16":
            raise RuntimeError("no fp16 here")
        return {"vqa_accuracy": 50.0, "vqa_seconds": 2.0, "vqa_answers": ["1", "2"], "geneval_mini": 10.0,
                "geneval_seconds": 1.0, "load_seconds": 0.1}

    calls = []

    def train(device: str, dtype: str, pool: Path, run: Path, args: object) -> dict:
        calls.append(dtype)
        if dtype == "bfloat16":
            raise KeyboardInterrupt
        return {"train_wall_seconds": 3.0, "steps_done": 2, "returncode": 0, "U_step_seconds": 1.5, "U_steps": 2,
                "G_step_seconds": None, "G_steps": 0}

    monkeypatch.setattr(gpu_paths, "evaluate", evaluate)
    monkeypatch.setattr(gpu_paths, "train_steps", train)
    monkeypatch.setattr("asg.shapes.write_unlabeled_folder", lambda path, **kw: path.mkdir(parents=True))
    out = tmp_path / "gp.json"
    args = gpu_paths.build_parser().parse_args(["--configs", "cpu:float32", "cpu:float16", "cpu:bfloat16",
                                                "--out", str(out)])
    with pytest.raises(KeyboardInterrupt):
        gpu_paths.run(args)
    report = json.loads(out.read_text())
    assert report["partial"] is True and calls == ["float32", "float16", "bfloat16"]
    first, second = report["results"][:2]
    assert first["vqa_agreement"] == 100.0 and first["U_step_seconds"] == 1.5 and "error" not in first
    assert second["error"] == "eval: RuntimeError: no fp16 here" and second["steps_done"] == 2
    page = out.with_suffix(".md").read_text()
    assert "(cut off: partial)" in page and "| `cpu:float32` | 50.0 | 100.0 | 2.00 | 1.00 |" in page
