"""The ShapesWorld self-evolution suite runs end to end at toy size, writes the promised JSON shape,
resumes from its saved runs, and re-renders from the saved results (not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _suite(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", "shapes", *extra], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


def test_shapes_suite_end_to_end_resume_and_report(tmp_path: Path) -> None:
    out, work = tmp_path / "shapes.json", tmp_path / "work"
    args = ["--seeds", "1", "--variants", "full", "e3", "--steps", "1", "--images", "6", "--questions", "5",
            "--per-tag", "1", "--split", "val", "--work", str(work), "--out", str(out)]
    proc = _suite(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {"full", "e3", "_meta"} and results["_meta"]["split"] == "val"
    for variant in ("full", "e3"):
        for metric in ("vqa_accuracy", "geneval_mini", "vqa_count", "geneval_counting"):
            cell = results[variant][metric]
            assert len(cell["base"]) == len(cell["evolved"]) == 1 and 0.0 <= cell["evolved"][0] <= 100.0
    shares = [k for k in results["full"] if k.endswith("_top_answer_share")]
    assert shares and all(0.0 < results["full"][k]["evolved"][0] <= 100.0 for k in shares)
    # the base is measured once per seed: every variant reports the same base values
    assert results["full"]["vqa_accuracy"]["base"] == results["e3"]["vqa_accuracy"]["base"]
    # step 1 of the full recipe is a U-step, so its generator is untouched; e3's step 1 trains it
    assert results["full"]["geneval_mini"]["evolved"] == results["full"]["geneval_mini"]["base"]
    shapes = results["full"]["geneval_shapes_per_image"]  # from each evaluation's results.json
    assert shapes["evolved"] == shapes["base"] and shapes["base"][0] >= 0.0
    assert (work / "seed0" / "run-e3" / "eval_after" / "summary.json").is_file()
    # every variant starts from recipe `shapes` unless --recipe names another
    assert results["_meta"]["recipe"] == "shapes"
    assert json.loads((work / "seed0" / "run-full" / "config.json").read_text())["recipe"]["name"] == "shapes"
    assert not (work / "seed0" / "run-e3" / "eval_before").exists()
    assert out.with_suffix(".png").stat().st_size > 10_000 and "| full | **vqa_accuracy** |" in out.with_suffix(".md").read_text()
    assert "| `e3` | generation only" in out.with_suffix(".md").read_text()
    # a second invocation reuses every saved result (nothing is retrained) and gives the same numbers
    before = (work / "seed0" / "e3.json").stat().st_mtime_ns
    again = _suite(*args)
    assert again.returncode == 0 and (work / "seed0" / "e3.json").stat().st_mtime_ns == before
    assert {k: v for k, v in json.loads(out.read_text()).items() if k != "_meta"} == \
        {k: v for k, v in results.items() if k != "_meta"}
    # the same --work with other settings is refused before anything runs, naming what differs
    saved = sorted(p.name for p in (work / "seed0").iterdir())
    other = _suite(*args, "--steps", "2", "--recipe", "demo")
    assert other.returncode != 0 and "holds results made with other settings" in other.stderr
    assert "steps 1 there, 2 now" in other.stderr and "recipe 'shapes' there, 'demo' now" in other.stderr
    assert sorted(p.name for p in (work / "seed0").iterdir()) == saved
    assert json.loads((work / "settings.json").read_text())["steps"] == 1
    # --merge adds a variant run later to the saved table, keeping the others as they were
    merged = _suite("--seeds", "1", "--variants", "no_cycle", *args[5:], "--merge")
    assert merged.returncode == 0, merged.stderr[-3000:]
    both = json.loads(out.read_text())
    assert list(both) == ["full", "e3", "no_cycle", "_meta"]
    assert both["full"] == results["full"] and both["e3"] == results["e3"]
    assert both["no_cycle"]["vqa_accuracy"]["base"] == results["full"]["vqa_accuracy"]["base"]
    meta = both["_meta"]
    assert meta["variants"] == ["full", "e3", "no_cycle"] and "base_mismatch" not in meta
    assert [p["variants"] for p in meta["parts"]] == [["full", "e3"], ["no_cycle"]]
    assert "no cycle-consistency reward" in meta["descriptions"]["no_cycle"] and "full" in meta["descriptions"]
    page = out.with_suffix(".md").read_text()
    assert "Merged from these invocations" in page and "--variants no_cycle" in page and "| `no_cycle` |" in page
    # ... and refuses, before running anything, a merge of results made with other settings
    kept = out.read_text()
    clash = _suite(*[a if a != str(work) else str(tmp_path / "work2") for a in args], "--merge", "--recipe", "demo")
    assert clash.returncode != 0 and "--merge" in clash.stderr and "recipe 'shapes' there, 'demo' now" in clash.stderr
    assert out.read_text() == kept and not (tmp_path / "work2").exists()
    # --report re-renders from the saved file only
    out.with_suffix(".md").unlink()
    assert _suite("--report", "--out", str(out)).returncode == 0 and out.with_suffix(".md").is_file()


def test_shapes_suite_continues_an_interrupted_run(tmp_path: Path) -> None:
    """A (seed, variant) whose run was cut off before its result was saved is continued from the run's
    latest checkpoint; one with no checkpoint yet is moved aside, not deleted, and run again. Either way
    the result is the one an uninterrupted run gives."""
    import shutil

    out, work = tmp_path / "shapes.json", tmp_path / "work"
    args = ["--seeds", "1", "--variants", "e3", "--steps", "2", "--images", "4", "--questions", "5", "--per-tag", "1",
            "--split", "val", "--work", str(work), "--out", str(out), "--set", "run.checkpoint_every=1"]
    assert _suite(*args).returncode == 0
    first = json.loads((work / "seed0" / "e3.json").read_text())
    run = work / "seed0" / "run-e3"
    # cut off after its last checkpoint: the result file and the final evaluation are missing
    (work / "seed0" / "e3.json").unlink()
    shutil.rmtree(run / "eval_after")
    again = _suite(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing an interrupted run from its latest checkpoint" in again.stdout
    assert json.loads((work / "seed0" / "e3.json").read_text()) == first
    # cut off before any checkpoint: moved aside whole, and the run made again from the start
    (work / "seed0" / "e3.json").unlink()
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    third = _suite(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "moved to" in third.stdout and (work / "seed0" / "run-e3.interrupted" / "config.json").is_file()
    assert json.loads((work / "seed0" / "e3.json").read_text()) == first


def test_merge_by_hand() -> None:
    """merge(): variants kept in order, a re-run variant replaced, every invocation listed under ``parts``,
    and a base that differs between invocations recorded and named."""
    from benchmarks.shapes import merge

    def cell(base: float, evolved: float) -> dict[str, list[float]]:
        return {"base": [base], "evolved": [evolved]}

    saved = {"full": {"vqa_accuracy": cell(80.0, 82.0), "geneval_mini": cell(40.0, 48.0)},
             "e3": {"vqa_accuracy": cell(80.0, 80.0), "geneval_mini": cell(40.0, 51.0)},
             "_meta": {"command": "python -m benchmarks shapes --variants full e3", "variants": ["full", "e3"],
                       "descriptions": {"full": "the whole recipe", "e3": "generation only"}, "seconds": 9.0}}
    new = {"e3": {"vqa_accuracy": cell(80.0, 80.0), "geneval_mini": cell(40.0, 45.0)},
           "e2": {"vqa_accuracy": cell(80.5, 83.0), "geneval_mini": cell(40.0, 40.0)},
           "_meta": {"command": "python -m benchmarks shapes --variants e3 e2 --merge", "variants": ["e3", "e2"],
                     "descriptions": {"e3": "generation only", "e2": "understanding only"}, "seconds": 5.0}}
    out = merge(saved, new)
    assert list(out) == ["full", "e3", "e2", "_meta"]
    assert out["full"] == saved["full"] and out["e3"] == new["e3"] and out["e2"] == new["e2"]
    meta = out["_meta"]
    assert meta["variants"] == ["full", "e3", "e2"] and set(meta["descriptions"]) == {"full", "e3", "e2"}
    assert [p["command"] for p in meta["parts"]] == [saved["_meta"]["command"], new["_meta"]["command"]]
    # the kept variant's base is 80.0, the new e2's 80.5: named, once per differing metric and new variant
    assert meta["base_mismatch"] == ["vqa_accuracy: [80.0] (full) against [80.5] (e2)"]
    # merging again over a variant that replaced everything of an earlier part drops that part
    again = merge(out, {"full": saved["full"], "e3": new["e3"], "e2": new["e2"],
                        "_meta": {**new["_meta"], "command": "third", "variants": ["full", "e3", "e2"]}})
    assert [p["command"] for p in again["_meta"]["parts"]] == ["third"]


def test_shapes_report_without_results_is_a_clear_error(tmp_path: Path) -> None:
    proc = _suite("--report", "--out", str(tmp_path / "none.json"))
    assert proc.returncode != 0 and "no results at" in proc.stderr


def test_top_answer_shares_by_hand() -> None:
    from benchmarks.shapes import top_answer_shares

    samples = [{"qtype": "existence", "prediction": "<answer>no</answer>"},
               {"qtype": "existence", "prediction": "No"},
               {"qtype": "existence", "prediction": "<answer>yes</answer>"},
               {"qtype": "count", "prediction": "<answer>two</answer>"},  # number words normalise to digits
               {"qtype": "count", "prediction": "2"},
               {"qtype": "count", "prediction": "3"},
               {"qtype": "count", "prediction": "1"}]
    shares = top_answer_shares(samples)
    assert shares == {"vqa_existence_top_answer_share": pytest.approx(200 / 3), "vqa_count_top_answer_share": 50.0}


def test_shapes_suite_starts_from_a_given_model(tmp_path: Path) -> None:
    """--model: base measurement and loop both use that directory (recorded in the run and the meta);
    a directory without weights is refused, naming it."""
    from asg.backbones.tiny.model import TinyBackbone

    model = tmp_path / "model"
    TinyBackbone.load(preset="init", adapters=False).save_pretrained(model)
    out, work = tmp_path / "shapes.json", tmp_path / "work"
    proc = _suite("--seeds", "1", "--variants", "e3", "--steps", "1", "--images", "4", "--questions", "5",
                  "--per-tag", "1", "--split", "val", "--model", str(model), "--work", str(work), "--out", str(out),
                  "--recipe", "demo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(out.read_text())["_meta"]
    assert meta["model"] == str(model) and meta["recipe"] == "demo"
    assert json.loads((work / "seed0" / "run-e3" / "config.json").read_text())["recipe"]["name"] == "demo"
    # the runner's provenance, as every suite records it (benchmarks/_runner.py)
    assert meta["suite"] == "shapes" and meta["backbone"] == {"name": "tiny", "preset": None, "model": str(model),
                                                               "run": None, "stage": "base"}
    assert meta["seeds"] == [0] and meta["packages"]["torch"] and meta["seconds"] >= 0
    assert json.loads((work / "seed0" / "run-e3" / "config.json").read_text())["model"] == str(model)
    # randomly initialised: no answer is in the answer format, so not one of the 5 questions is right
    assert json.loads((work / "seed0" / "base.json").read_text())["vqa_accuracy"] == 0.0
    bad = _suite("--seeds", "1", "--variants", "e3", "--model", str(tmp_path / "nowhere"), "--work", str(work / "x"),
                 "--out", str(tmp_path / "bad.json"))
    assert bad.returncode != 0 and "nowhere" in bad.stderr
