"""``python -m benchmarks scene_vote``: candidate scores, grading by hand, and the suite end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asg.roles.scene_vote import family_logprobs
from benchmarks.scene_vote import grade

ROOT = Path(__file__).resolve().parents[1]


def test_grade_by_hand() -> None:
    rows = [
        {"kind": "count_shape", "truth": "2", "answers": {"independent": "1", "joint-all": "2"}},
        {"kind": "count_shape", "truth": "0", "answers": {"independent": "0", "joint-all": "0"}},
        {"kind": "existence", "truth": "yes", "answers": {"independent": "no", "joint-all": "no"}},
        {"kind": "existence", "truth": "no", "answers": {"independent": "no", "joint-all": "yes"}},
    ]
    result = grade(rows)
    acc = result["accuracy"]
    assert acc["count_shape"] == {"n": 2, "independent": 50.0, "joint-all": 100.0}
    assert acc["existence"] == {"n": 2, "independent": 50.0, "joint-all": 0.0}
    assert acc["existence (yes)"] == {"n": 1, "independent": 0.0, "joint-all": 0.0}
    assert acc["existence (no)"] == {"n": 1, "independent": 100.0, "joint-all": 0.0}
    assert acc["all"] == {"n": 4, "independent": 50.0, "joint-all": 50.0}
    assert list(acc) == ["count_shape", "existence", "existence (yes)", "existence (no)", "all"]
    # the decoder changed rows 1 and 4: right on the first, wrong on the second; independent the reverse
    assert result["changed"] == {"joint-all": {"n": 2, "share": 50.0, "decoder_right": 50.0, "independent_right": 50.0}}


def test_position_rows_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two decoders' tables: one names the red circle and the blue square (both in the scene, centres
    0.5 apart on x and 0.6 on y), the other also an absent green triangle. The Solver says "yes" to
    every question, a little more surely when right, so the voted orders are the true ones. Graded:
    the 8 questions about the two real objects (questions about the absent one have no truth); each
    decoder's answers are the truth, the independent answers all "yes"; every question is scored once."""
    import numpy as np

    import asg.roles.scene_vote as rsv
    from asg.shapes import Obj, Scene, answer_question
    from asg.shapes.scene_vote import table_of
    from benchmarks.scene_vote import position_rows

    scene = Scene((Obj("circle", "red", "small", 0.2, 0.8), Obj("square", "blue", "small", 0.7, 0.2)))
    asked: list[str] = []

    def fake(backbone, items, exact=False):
        asked.extend(q for _, q, _ in items)
        out = []
        for _, q, _ in items:
            truth = answer_question(q, scene)
            out.append(np.log([0.6, 0.4] if truth is None or truth.answer == "no" else [0.85, 0.15]))
        return out

    monkeypatch.setattr(rsv, "question_logprobs", fake)
    two = table_of({("red", "circle"): 1, ("blue", "square"): 1})
    three = table_of({("red", "circle"): 1, ("blue", "square"): 1, ("green", "triangle"): 1})
    rows = position_rows(None, "image", scene, 7, {"joint-count+existence": two, "joint-all": three})
    assert len(asked) == len(set(asked)) == 24  # 8 about the pair, 16 more with the triangle
    assert len(rows) == 8 and {r["scene"] for r in rows} == {7} and {r["kind"] for r in rows} == {"position"}
    for r in rows:
        assert r["answers"] == {"independent": "yes", "joint-count+existence": r["truth"], "joint-all": r["truth"]}
    assert sorted(r["truth"] for r in rows) == ["no"] * 4 + ["yes"] * 4
    # a decoder whose table names fewer than two objects keeps the Solver's own answers
    rows = position_rows(None, "image", scene, 7, {"joint-count+existence": table_of({("red", "circle"): 1}),
                                                   "joint-all": two})
    assert all(r["answers"]["joint-count+existence"] == "yes" for r in rows) and len(rows) == 8


def test_one_pass_scores_equal_the_answer_token_of_a_full_score() -> None:
    """The fast path reads every candidate from one distribution per question; each value must be the
    log-probability of that candidate's token when ``<answer>c`` is scored on its own."""
    import torch

    from asg.backbones.tiny.model import TinyBackbone
    from asg.roles.scene_vote import greedy_prompt
    from asg.roles.templates import RoleTemplates
    from asg.shapes import render, scene_for
    from asg.shapes.scene_vote import family

    bb = TinyBackbone.load()
    im = render(scene_for("val", 0, 3), bb.image_size[0])
    fast = family_logprobs(bb, [im])[0]
    fam = family()
    tpl = RoleTemplates.of(bb)
    picks = [0, 1, 12, 30, 36]  # count_all, count_shape, an existence, a colour and a shape question
    prompts, comps, where = [], [], []
    for q in picks:
        for j, c in enumerate(fam[q][2]):
            prompts.append(greedy_prompt(tpl, fam[q][1], im))
            comps.append(f"<answer>{c}")
            where.append((q, j))
    with torch.no_grad(), bb.use_role("solver"):
        out = bb.score(prompts, comps, append_eos=False)
    for b, (q, j) in enumerate(where):
        assert int(out.mask[b].sum()) == 2  # "<answer>" and the candidate: one token each
        assert fast[q][j] == pytest.approx(float(out.logprobs[b, 1]), abs=1e-4)
    # the exact path adds the closing tag and the end of turn: never more likely than the token alone
    exact = family_logprobs(bb, [im], exact=True)[0]
    assert all((e <= f + 1e-4).all() for e, f in zip(exact, fast))
    assert [len(x) for x in fast] == [len(c) for _, _, c in fam]


def test_scene_vote_suite_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "sv.json"
    npy = tmp_path / "lp.npy"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "scene_vote", "--scenes", "3", "--batch", "2",
                           "--out", str(out), "--logprobs", str(npy), "--position"], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    acc = result["accuracy"]
    # every graded question of the 3 val scenes, whose premise holds: 10 counts and 18 cells each, at least
    assert acc["all"]["n"] == result["_meta"]["questions"] >= 3 * 28
    assert acc["count_shape"]["n"] == 9 and acc["existence"]["n"] == 54
    assert set(acc["all"]) == {"n", "independent", "joint-count+existence", "joint-all"}
    # position (the shipped base's tables rarely name two objects that exist: test_position_rows_by_hand)
    pos = acc.get("position", {"n": 0})["n"]
    assert pos % 4 == 0 and acc.get("position (yes)", {"n": 0})["n"] == pos // 2
    assert result["_meta"]["position"] is True
    import numpy as np

    assert np.load(npy).shape == (3, 142)
    assert "| **all** |" in out.with_suffix(".md").read_text()
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "scene_vote", "--scenes", "0", "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and "--scenes and --batch must be >= 1, got 0" in bad.stderr
