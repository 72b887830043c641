"""The `asg` command line: inspect, data shapes, eval, demo, train's place, and error handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from asg.backbones.tiny.model import WEIGHTS_DIR, TinyBackbone
from asg.cli import main


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    return json.loads(capsys.readouterr().out)


def test_inspect_counts_parameters_on_the_meta_device(capsys) -> None:
    """`asg inspect tiny` reports per-component and total parameter counts equal to the real model's."""
    assert main(["inspect", "tiny"]) == 0
    report = _json(capsys)
    real = TinyBackbone.load(adapters=False)
    assert report["parameters"]["total"] == sum(p.numel() for p in real.net.parameters())
    parts = {k: v for k, v in report["parameters"].items() if k != "total"}
    assert set(parts) == {"vision_tower", "projector", "language_model", "generation_head", "autoencoder"}
    assert sum(parts.values()) == report["parameters"]["total"]
    total = report["parameters"]["total"]
    assert report["memory"]["weights"]["float32"]["bytes"] == 4 * total
    assert report["memory"]["weights"]["bfloat16"]["bytes"] == 2 * total
    assert set(report["trainable_per_role"]) == {"proposer", "solver", "generator"}
    assert report["trainable_per_role"]["generator"] > report["trainable_per_role"]["solver"]  # + head LoRA


def test_inspect_manifest_matches_the_shipped_checkpoint(capsys) -> None:
    """--manifest lists every tensor of the checkpoint with its shape and dtype (the tied head marked)."""
    from safetensors import safe_open

    assert main(["inspect", "tiny", "--manifest"]) == 0
    manifest = _json(capsys)["manifest"]
    with safe_open(str(WEIGHTS_DIR / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        for k in keys:
            assert manifest[k]["shape"] == list(f.get_slice(k).get_shape()), k
    assert set(manifest) - keys == {"vlm.lm_head.weight"} and manifest["vlm.lm_head.weight"]["tied"]
    assert all(v["dtype"] == "float32" for v in manifest.values())


@pytest.mark.parametrize(("argv", "message"), [
    (["inspect", "nope"], "unknown backbone 'nope'; valid choices:"),
    (["inspect", "tiny", "--preset", "huge"], "unknown preset 'huge' for backbone 'tiny'; valid presets: base, init"),
    (["train", "--images", "x"], "asg train needs --out RUN_DIR (or --resume RUN_DIR to continue a run)"),
    (["train", "--images", "OUT", "--out", "OUT"], "does not exist"),
    (["train", "--images", "x", "--out", "OUT", "--set", "solver.sample.m=5"], "SolverConfig: unknown key(s) 'm'"),
    (["data", "shapes", "--out", "OUT", "--n", "0"], "n must be"),
])
def test_errors_exit_2_with_a_clear_message(argv, message, capsys, tmp_path) -> None:
    """Bad names and arguments exit with status 2 and a message naming the problem."""
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_data_shapes_writes_an_unlabeled_folder(tmp_path: Path, capsys) -> None:
    """`asg data shapes` writes images into the folder and labels beside it; it refuses to overwrite."""
    out = tmp_path / "pool"
    assert main(["data", "shapes", "--out", str(out), "--n", "5", "--seed", "3"]) == 0
    pngs = sorted(out.iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(5)]
    assert Image.open(pngs[0]).size == (64, 64)
    labels = tmp_path / "pool.labels.jsonl"
    assert len(labels.read_text().splitlines()) == 5
    assert main(["data", "shapes", "--out", str(out), "--n", "5"]) == 2
    assert "is not empty; refusing to mix datasets" in capsys.readouterr().err


def test_eval_writes_results_report_and_pictures(tmp_path: Path, capsys) -> None:
    """`asg eval` measures VQA and GenEval-mini and writes results.json, report.md and two PNGs."""
    out = tmp_path / "eval"
    assert main(["eval", "--backbone", "tiny", "--split", "val", "--questions", "10", "--per-tag", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["vqa"]["n"] == 10 and 0 <= results["vqa"]["accuracy"] <= 100
    assert set(results["geneval_mini"]["per_tag"]) == {"single_object", "two_object", "counting", "colors",
                                                       "position", "color_attr"}
    assert len(results["geneval_mini"]["samples"]) == 6 * 4
    for pic in ("geneval_samples.png", "vqa_samples.png"):
        assert Image.open(out / pic).size[0] > 200
    assert "GenEval-mini overall" in (out / "report.md").read_text()


def test_demo_quick_runs_end_to_end(tmp_path: Path, capsys) -> None:
    """`asg demo --quick` writes a pool, evaluates, trains, evaluates again and prints the table."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"report: {out / 'run' / 'report.md'}" in text
    assert "vqa_accuracy" in text and "geneval_mini" in text
    report = (out / "run" / "report.md").read_text()
    assert "## Before / after" in report
    assert len(list((out / "pool").glob("*.png"))) == 40
    assert not (out / "pool" / "labels.jsonl").exists()  # labels live beside the folder, never inside
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))
