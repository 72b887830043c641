"""The vision-tower probe: the classifier by hand, and the suite end to end at toy size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.vision_probe import probe_accuracy

ROOT = Path(__file__).resolve().parents[1]


def test_probe_on_constant_features_predicts_the_majority_class() -> None:
    """Features that carry nothing standardise to 0, so only the bias learns: it picks the training
    set's most frequent class (0, 3 of 5 = 60 %), which is right for 1 of the 2 held-out scenes."""
    x = torch.ones(5, 4)
    train, test = probe_accuracy(x, torch.tensor([0, 0, 0, 1, 2]), torch.ones(2, 4), torch.tensor([0, 1]), classes=3)
    assert train == pytest.approx(0.6) and test == pytest.approx(0.5)


def test_probe_separates_informative_features() -> None:
    """Three features that one-hot encode the class (beside two of pure noise) give 100 %."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.cat([torch.nn.functional.one_hot(y, 3).float(), torch.randn(60, 2, generator=gen)], dim=1)
    train, test = probe_accuracy(x[:45], y[:45], x[45:], y[45:], classes=3)
    assert train == 1.0 and test == 1.0


def test_probe_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        probe_accuracy(torch.ones(3, 2), torch.tensor([0, 1]), torch.ones(1, 2), torch.tensor([0]), classes=2)


def test_vision_probe_suite_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "vision_probe", "--preset", "init", "--train", "9",
                           "--test", "3", "--steps", "5", "--supervised", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    # tiny: 3 encoder layers -> embeddings + 3 layers + projector; 64 tokens of width 128 (the language
    # model's width after the projector: 384 for the shipped architecture)
    assert list(results["rows"]) == ["layer 0", "layer 1", "layer 2", "layer 3", "projector"]
    assert results["rows"]["layer 0"]["dims"] == 64 * 128 and results["rows"]["projector"]["dims"] == 64 * 384
    assert all(0.0 <= r["train"] <= 100.0 and 0.0 <= r["test"] <= 100.0 for r in results["rows"].values())
    assert "| projector | 24576 |" in out.with_suffix(".md").read_text()
    # --supervised 2: one point, at the last step (every 100 steps and at the end)
    assert [p["step"] for p in results["supervised"]] == [2] and 0.0 <= results["supervised"][0]["test"] <= 100.0
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "vision_probe", "--train", "1"], capture_output=True,
                         text=True, cwd=ROOT, timeout=600)
    assert bad.returncode != 0 and "--train must be at least 3" in bad.stderr
