"""``python -m benchmarks label_quality``: label sources and corruption against hand-derived values, the
argument checks, and the suite end to end at toy size (not a measurement)."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.label_quality import corrupt, labelled, parse_source

ROOT = Path(__file__).resolve().parents[1]


def test_parse_source() -> None:
    assert parse_source("oracle") == ("oracle", None)
    assert parse_source("noisy:0.75") == ("noisy", 0.75)
    for bad, match in (("gold", "unknown label source"), ("noisy", "needs an accuracy"), ("noisy:x", "needs an accuracy"),
                       ("noisy:1.5", "0 <= P <= 1"), ("majority:3", "takes no parameter")):
        with pytest.raises(argparse.ArgumentTypeError, match=match):
            parse_source(bad)


def test_corrupt_keeps_the_type_and_the_rate() -> None:
    """P = 1 never changes an answer, P = 0 always does (to another word of the same type), and in
    between the kept share is P; wrong answers are spread over the alternatives."""
    rng = random.Random(0)
    assert {corrupt("circle", "shape", 1.0, rng) for _ in range(50)} == {"circle"}
    wrong = Counter(corrupt("circle", "shape", 0.0, rng) for _ in range(3000))
    assert set(wrong) == {"square", "triangle"} and abs(wrong["square"] - 1500) < 150
    assert {corrupt("yes", "existence", 0.0, rng) for _ in range(20)} == {"no"}
    kept = sum(corrupt("3", "count", 0.75, rng) == "3" for _ in range(4000)) / 4000
    assert kept == pytest.approx(0.75, abs=0.03)
    assert all(corrupt("3", "count", 0.0, rng).isdigit() for _ in range(50))


class _QA:
    def __init__(self, answer: str, qtype: str) -> None:
        self.answer, self.qtype, self.question = answer, qtype, f"q {answer}"


def test_labelled_sources_by_hand() -> None:
    items = [(_QA("2", "count"), "im0"), (_QA("red", "color"), "im1"), (_QA("yes", "existence"), "im2")]
    # (majority label, its votes of 7, greedy label) per item
    votes = [("1", 6, "2"), ("red", 4, "red"), ("a blue circle", 7, "no")]
    args = argparse.Namespace(confident=6)
    assert [t[2] for t in labelled("oracle", None, items, None, 10, args, 0)] == ["2", "red", "yes"]
    assert [t[2] for t in labelled("majority", None, items, votes, 10, args, 0)] == ["1", "red"]  # caption: no label
    assert [t[2] for t in labelled("greedy", None, items, votes, 10, args, 0)] == ["2", "red", "no"]
    assert [t[2] for t in labelled("confident", None, items, votes, 10, args, 0)] == ["1"]  # 6 of 7 votes at least
    assert len(labelled("oracle", None, items, None, 2, args, 0)) == 2  # the budget caps the count
    assert labelled("oracle", None, items, None, 10, args, 0)[0][:2] == ("im0", items[0][0])
    # scene_vote: one answer (or None: no label) per item, read only as far as the budget needs
    answers = iter(["3", None, "no", "never read"])
    assert [t[2] for t in labelled("scene_vote", None, items, answers, 10, args, 0)] == ["3", "no"]
    assert next(answers) == "never read"
    answers = iter(["3", None, "no", "never read"])
    assert [t[2] for t in labelled("scene_vote", None, items, answers, 1, args, 0)] == ["3"]
    assert next(answers) is None  # the budget was met after the first item


def test_label_quality_suite_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "lq.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "label_quality", "--seeds", "0", "--steps", "2",
                           "--batch", "2", "--questions", "6", "--n", "3", "--confident", "2",
                           "--sources", "oracle", "noisy:0", "majority", "scene_vote", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["sources"]) == {"oracle", "noisy:0", "majority", "scene_vote"}
    assert result["sources"]["oracle"]["label_accuracy"] == [100.0] and result["sources"]["oracle"]["labels"] == [4.0]
    assert result["sources"]["noisy:0"]["label_accuracy"] == [0.0]
    # scene_vote fills the budget too, passing over position questions (outside its family)
    assert result["sources"]["scene_vote"]["labels"] == [4.0]
    # every source starts from the same base adapter
    assert len({r["base"][0] for r in result["sources"].values()}) == 1
    assert out.with_suffix(".md").read_text().count("\n| ") >= 4


def test_label_quality_rejects_bad_arguments(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "label_quality", "--sources", "gold",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and "unknown label source 'gold'" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_trainable_adapter_or_full() -> None:
    """``adapter`` trains the Solver's LoRA weights only; ``full`` adds every base weight of the VLM but
    never the other roles' adapters, the generation head or the autoencoder."""
    from asg.backbones.tiny.model import TinyBackbone
    from benchmarks.label_quality import trainable

    bb = TinyBackbone.load()
    solver = {id(p) for p in bb.trainable_parameters("solver")}
    others = {id(p) for role in ("proposer", "generator") for p in bb.trainable_parameters(role)} - solver
    chosen = {id(p) for p in trainable(bb, "adapter")}
    assert chosen == solver == {id(p) for p in bb.net.parameters() if p.requires_grad}
    full = {id(p) for p in trainable(bb, "full")}
    vlm_base = {id(p) for p in bb.net["vlm"].parameters()} - solver - others
    assert full == solver | vlm_base == {id(p) for p in bb.net.parameters() if p.requires_grad}
    assert not full & others and not full & {id(p) for p in bb.net["vae"].parameters()}
    assert not full & ({id(p) for p in bb.net["gen"].parameters()} - solver)
