"""`python -m benchmarks report` and the shared runner: baselines as data, our results beside them, flags."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "published-baselines.json"


def _result(folder: Path, name: str, suite: str, backbone: str, stage: str, metrics: dict, **meta) -> Path:
    body = {"suite": suite, "command": f"python -m benchmarks {suite}", "harness": "lmms-eval",
            "harness_version": "0.7.3", "task_variant": "x", "prompt_set": "lmms-eval task defaults", "judge": None,
            "seeds": [0], "started": "2026-11-29T10:00:00+00:00", "seconds": 1.0,
            "backbone": {"name": backbone, "preset": None, "model": "/ckpt", "run": "/run" if stage == "evolved" else None,
                         "stage": stage}}
    body.update(meta)
    path = folder / name
    path.write_text(json.dumps({"_meta": body, "metrics": metrics}))
    return path


def test_baselines_are_the_shared_file_and_map_onto_real_backbones() -> None:
    from asg.plugins import registered
    from benchmarks.report import BASELINES, load_baselines

    if SHARED.is_file():  # the copy is verbatim: the shared file stays the single source of the numbers
        assert (BASELINES / "published-baselines.json").read_bytes() == SHARED.read_bytes()
    b = load_baselines()
    assert b["published"]["understanding"]["metrics"] == ["MMMU", "MMBench", "TextVQA", "SEED", "RealWorldQA",
                                                           "MM-Vet", "MME-P", "MME-C"]
    backbones = registered("backbones")
    for name, spec in b["comparability"]["backbones"].items():
        assert name in backbones, f"{name} is not a registered backbone ({backbones})"
        assert spec["baseline"] in b["published"]["understanding"]["results"]
        assert spec["baseline"] in b["published"]["generation_geneval"]["results"]


def test_bad_baseline_mapping_is_named(tmp_path: Path) -> None:
    from benchmarks.report import BASELINES, load_baselines

    (tmp_path / "published-baselines.json").write_bytes((BASELINES / "published-baselines.json").read_bytes())
    comp = json.loads((BASELINES / "comparability.json").read_text())
    comp["backbones"]["bagel"]["baseline"] = "bagel-13b"
    (tmp_path / "comparability.json").write_text(json.dumps(comp))
    with pytest.raises(ValueError, match="bagel-13b"):
        load_baselines(tmp_path)


def test_report_puts_ours_beside_published_with_deltas_and_flags(tmp_path: Path, capsys) -> None:
    from benchmarks import report

    res, out = tmp_path / "results", tmp_path / "out"
    res.mkdir()
    # an older base result that the newer one must replace
    _result(res, "understanding-bagel-base-old.json", "understanding", "bagel", "base", {"MMMU": 10.0},
            started="2026-11-01T00:00:00+00:00")
    _result(res, "understanding-bagel-base.json", "understanding", "bagel", "base",
            {"MMMU": 50.0, "MME-P": 1690.0, "MMBench": 84.5}, judge="none")
    _result(res, "understanding-bagel-evolved.json", "understanding", "bagel", "evolved", {"MMMU": 52.5})
    _result(res, "text-bagel-base.json", "text", "bagel", "base", {"MMMU": 40.0}, harness="lm-eval")
    _result(res, "geneval-bagel-base.json", "geneval", "bagel", "base", {"overall": 80.0, "counting": 70.0},
            harness="geneval", prompt_set="geneval-553 (evaluation_metadata.jsonl, sha256 ab12)")
    _result(res, "geneval-vargpt-base.json", "geneval", "vargpt", "base", {"overall": 53.0},
            harness="geneval", prompt_set="geneval-553 (evaluation_metadata.jsonl, sha256 ab12)", limit=20)
    # BAGEL's rewritten long prompts are another prompt set, although also 553 prompts
    _result(res, "geneval-bagel-evolved.json", "geneval", "bagel", "evolved", {"overall": 88.0},
            harness="geneval", prompt_set="geneval-553 (evaluation_metadata_long.jsonl, sha256 cd34)")
    (res / "broken.json").write_text("{not json")
    args = report.build_parser().parse_args(["--results", str(res), "--out", str(out), "--backbone", "bagel", "vargpt"])
    data = report.run(args)
    assert "skipping" in capsys.readouterr().err  # the broken file is named and skipped

    rows = {r["metric"]: r for r in data["backbones"]["bagel"]["understanding"]}
    # published BAGEL MMMU 55.3 -> 58.8; ours 50.0 -> 52.5 (the newest base, lmms-eval's, not lm-eval's 40.0)
    mmmu = rows["MMMU"]
    assert (mmmu["published_base"], mmmu["published_evolved"], mmmu["ours_base"], mmmu["ours_evolved"]) == (55.3, 58.8, 50.0, 52.5)
    assert mmmu["published_delta"] == pytest.approx(3.5) and mmmu["ours_delta"] == pytest.approx(2.5)
    assert any(f.startswith("harness: ours lmms-eval, published InternVL2") for f in mmmu["flags"])
    assert "tolerance: base off by -5.3" in mmmu["flags"]
    # MME-P: published 1687.0, ours 1690.0: within 1 % (16.87), so no tolerance flag
    assert not any(f.startswith("tolerance") for f in rows["MME-P"]["flags"])
    assert "judge: ours none" in rows["MMBench"]["flags"]  # judge-dependent metric
    assert rows["TextVQA"]["ours_base"] is None and rows["TextVQA"]["flags"] == []

    gen = {r["metric"]: r for r in data["backbones"]["bagel"]["geneval"]}
    assert gen["overall"]["ours_base"] == 80.0 and gen["overall"]["published_base"] == 82
    assert gen["overall"]["ours_evolved"] == 88.0
    # the base used the published 553-prompt file; the evolved result used the long prompts and is flagged
    # (and its 80 is 2 points from the published 82: more than the 1-point tolerance)
    assert gen["overall"]["flags"] == ["tolerance: base off by -2.0", "prompts: ours geneval-553 (evaluation_metadata_long.jsonl, sha256 cd34), "
                                       "published geneval-553 (evaluation_metadata.jsonl, (evolved)"]
    vgen = {r["metric"]: r for r in data["backbones"]["vargpt"]["geneval"]}
    # VARGPT published on Infinity's prompts; ours ran on a subset: both flagged, no tolerance verdict
    assert "subset (limit=20)" in vgen["overall"]["flags"]
    assert any(f.startswith("prompts: ours geneval-553") for f in vgen["overall"]["flags"])
    assert not any(f.startswith("tolerance") for f in vgen["overall"]["flags"])

    md = (out / "report-bagel.md").read_text()
    assert "| MMMU | 55.3 | 58.8 | +3.5 | 50.0 | 52.5 | +2.5 | harness: ours lmms-eval" in md
    assert "| TextVQA | 86.0 | 88.5 | +2.5 | – | – | – |  |" in md
    with Image.open(out / "report-bagel.png") as im:
        assert im.format == "PNG" and im.width > 600
    assert "## bagel" in (out / "report.md").read_text() and "## blip3o" not in (out / "report.md").read_text()


def test_report_of_a_backbone_without_baselines_or_results_is_refused(tmp_path: Path) -> None:
    from benchmarks import report

    with pytest.raises(SystemExit, match="no baselines or results for nosuch"):
        report.run(report.build_parser().parse_args(["--results", str(tmp_path), "--backbone", "nosuch"]))


def test_runner_meta_names_everything_a_number_depends_on(tmp_path: Path) -> None:
    from benchmarks._runner import add_backbone_args, default_out, finish_meta, new_meta

    p = argparse.ArgumentParser()
    add_backbone_args(p)
    args = p.parse_args(["--backbone", "tiny", "--run", str(tmp_path / "run")])
    meta = finish_meta(new_meta("understanding", args, harness="lmms-eval", harness_version="0.7.3",
                                task_variant="mme", prompt_set="defaults", judge="none", seeds=[0]))
    for key in ("suite", "command", "harness", "harness_version", "task_variant", "prompt_set", "judge", "seeds",
                "backbone", "packages", "git_revision", "device", "machine", "started", "seconds"):
        assert key in meta, key
    assert meta["backbone"]["stage"] == "evolved" and meta["packages"]["torch"]
    assert default_out("understanding", args).name == "understanding-tiny-evolved.json"
    with pytest.raises(SystemExit):  # --preset and --model exclude each other
        p.parse_args(["--preset", "base", "--model", "x"])


def test_runner_names_a_missing_run_before_loading(tmp_path: Path) -> None:
    from asg.errors import ConfigError
    from benchmarks._runner import load_backbone

    args = argparse.Namespace(backbone="tiny", preset=None, model=None, run=tmp_path / "nowhere", device="cpu", dtype=None)
    with pytest.raises(ConfigError, match="nowhere"):
        load_backbone(args)


def test_help_lists_every_suite() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from benchmarks.__main__ import SUITES

    for name in SUITES:
        assert name in proc.stdout
    assert {"understanding", "text", "geneval", "geneval_mini", "report", "kernels", "shapes"} <= set(SUITES)
