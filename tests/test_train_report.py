"""End-of-run plots and report: curves from metrics.jsonl, update decisions, before/after table round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image

from asg.train.report import (
    PLOTS, read_before_after_table, rolling_mean, rolling_window, series, update_counts, write_plots, write_report,
)
from asg.train.run import RunDir

CONFIG = {"recipe": {"name": "e1"}, "backbone": "tiny"}


def _u(step: int) -> dict:
    return {"step": step, "phase": "U", "solver.reward_mean": 0.3 + step / 200, "proposer.reward": 0.1 * (step % 5),
            "h_sc": 1.2 - step / 100, "majority_fraction": 0.4 + step / 200, "ste.raw": 2.0 - step / 80,
            "ste.d_ste": (step % 7) / 7, "solver.kl": 0.01 * step, "solver.beta": 0.1, "proposer.kl": float("nan"),
            "proposer.beta": 0.05, "solver.stepped": step % 4 != 0,
            "solver.skip_reason": None if step % 4 else "all_same_answer", "proposer.stepped": step % 6 != 0,
            "proposer.skip_reason": None if step % 6 else "kl_guard"}


def _g(step: int) -> dict:
    return {"step": step, "phase": "G", "generator.reward_mean": 0.2 + step / 300, "generator.reward_best": 0.5,
            "generator.qa_fidelity": 0.6, "generator.cycle_consistency": 0.5, "generator.diversity": 0.3,
            "generator.contradiction": 0.1, "generator.loss": 1.0 / step, "generator.stepped": step % 10 != 0,
            "generator.skip_reason": None if step % 10 else "no_spread"}


def _run(tmp_path: Path, steps: int = 60, generation: bool = True) -> RunDir:
    run = RunDir.create(tmp_path / "r", config=CONFIG, resume=False)
    for step in range(1, steps + 1):
        run.append_metrics(_g(step) if generation and step % 5 in (3, 4) else _u(step))
    return run


def test_rolling_mean_by_hand() -> None:
    """Trailing window 2 over [1, 2, 3, 4] is [1, (1+2)/2, (2+3)/2, (3+4)/2]; the window grows with the run."""
    assert rolling_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert rolling_mean([5.0, 7.0], 1) == [5.0, 7.0]
    assert (rolling_window(9), rolling_window(60), rolling_window(1500), rolling_window(10**6)) == (1, 4, 100, 100)


def test_series_skips_absent_and_non_finite_values() -> None:
    """series keeps finite numbers (bools as 0/1) and drops records lacking the key or holding NaN/None."""
    recs = [{"step": 1, "x": 1.0}, {"step": 2}, {"step": 3, "x": float("nan")}, {"step": 4, "x": None}, {"step": 5, "x": True}]
    assert series(recs, "x") == ([1, 5], [1.0, 1.0])


def test_update_counts_by_role_and_reason() -> None:
    """Steps 1..12 of _u: solver skips at 4, 8, 12 (all_same_answer), proposer at 6, 12 (kl_guard)."""
    counts = update_counts([_u(s) for s in range(1, 13)])
    assert counts["solver"] == {"stepped": 9, "skipped": 3, "skip_reasons": {"all_same_answer": 3}}
    assert counts["proposer"] == {"stepped": 10, "skipped": 2, "skip_reasons": {"kl_guard": 2}}
    assert counts["generator"] == {"stepped": 0, "skipped": 0, "skip_reasons": {}}


def test_plots_are_written_as_real_pngs(tmp_path: Path) -> None:
    """A joint run gets every plot of the table plus update decisions, each a PNG PIL opens, not a blank file."""
    run = _run(tmp_path)
    paths = write_plots(run.path)
    assert sorted(p.name for p in paths) == sorted([f"{s.name}.png" for s in PLOTS] + ["updates.png"])
    for p in paths:
        assert p.parent == run.path / "plots" and p.stat().st_size > 10_000
        with Image.open(p) as img:
            assert img.format == "PNG" and img.width >= 500 and img.height >= 300
            assert len(img.convert("L").getcolors(maxcolors=100_000) or []) > 10  # drawn, not a flat image


def test_u_only_run_has_no_generation_plots(tmp_path: Path) -> None:
    """Keys a run never logged are skipped: a U-only run has no generation-components plot."""
    paths = write_plots(_run(tmp_path, steps=20, generation=False).path)
    names = {p.stem for p in paths}
    assert "generation_components" not in names and {"rewards", "consistency", "ste", "kl_beta", "updates"} <= names


def test_plots_of_an_empty_run(tmp_path: Path) -> None:
    """A run that logged nothing yields no plots and no error."""
    assert write_plots(RunDir.create(tmp_path / "r", config=CONFIG, resume=False).path) == []


BEFORE = {"vqa_accuracy": 41.25, "geneval_mini": 30.0, "vqa_by_type": {"count": 20.0, "color": 62.5},
          "geneval_by_category": {"single_object": 80.0, "two_object": 12.5}}
AFTER = {"vqa_accuracy": 45.5, "geneval_mini": 33.75, "vqa_by_type": {"count": 25.0, "color": 60.0, "shape": 50.0},
         "geneval_by_category": {"single_object": 85.0, "two_object": 20.0}}


def test_before_after_table_round_trip(tmp_path: Path) -> None:
    """The table written into report.md parses back: before, after and delta per metric, None where missing."""
    run = _run(tmp_path, steps=10)
    table = read_before_after_table(write_report(run.path, before=BEFORE, after=AFTER))
    assert list(table)[:2] == ["vqa_accuracy", "geneval_mini"]
    assert table["vqa_accuracy"] == {"before": 41.25, "after": 45.5, "delta": 4.25}
    assert table["vqa_by_type.color"] == {"before": 62.5, "after": 60.0, "delta": -2.5}
    assert table["geneval_by_category.two_object"]["delta"] == 7.5
    assert table["vqa_by_type.shape"] == {"before": None, "after": 50.0, "delta": None}
    assert len(table) == 2 + 3 + 2


def test_report_summarises_the_run_and_links_pictures(tmp_path: Path) -> None:
    """report.md names the recipe, steps, wall time and skip reasons, links every plot and sample, and
    appends extra sections; every linked file exists."""
    run = _run(tmp_path, steps=40, generation=False)  # solver skips at 4, 8, ..., 40; proposer at 6, ..., 36
    run.write_status("completed", step=40, steps_total=40, elapsed_sec=3725.0, steps_per_sec=0.0107)
    run.save_images(20, [Image.new("RGB", (8, 8), "red")], ["best_0_r0.5"])
    write_plots(run.path)
    text = write_report(run.path, before=None, after=None, extra_sections=["## Notes\n\nsmoke run"]).read_text()
    assert "# Run report: e1" in text and "| steps | 40 of 40 (40 U, 0 G logged) |" in text and "1h 02m 05s" in text
    assert "| solver | 30 | 10 | all_same_answer ×10 |" in text and "kl_guard ×6" in text
    assert "No held-out evaluation" in text and text.rstrip().endswith("smoke run")
    links = [line.split("](")[1].split(")")[0] for line in text.splitlines() if line.startswith("![")]
    links += [part.split(")")[0] for part in text.split("](")[1:] if "samples/" in part.split(")")[0]]
    assert "plots/rewards.png" in links and "samples/step_000020/best_0_r0.5.png" in links
    assert all((run.path / link).is_file() for link in links)
    assert read_before_after_table(run.path / "report.md") == {}


def test_report_flags_a_cut_short_metrics_log(tmp_path: Path) -> None:
    """A metrics.jsonl ending in a crash fragment still reports, and says so."""
    run = _run(tmp_path, steps=5)
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 6, "so')
    text = write_report(run.path, before={"vqa_accuracy": 10.0}, after=None).read_text()
    assert "cut short by a crash" in text
    row = read_before_after_table(run.path / "report.md")["vqa_accuracy"]
    assert row["before"] == 10.0 and row["after"] is None and row["delta"] is None and not math.isnan(row["before"])


def test_plot_table_uses_the_trainer_key_names() -> None:
    """The plot table draws the keys the trainer logs (dotted names), each role's KL and beta included."""
    keys = {k for spec in PLOTS for _, ks in spec.panels for k in ks}
    assert {"solver.reward_mean", "proposer.reward", "generator.reward_mean", "generator.reward_best", "h_sc",
            "majority_fraction", "ste.raw", "ste.d_ste", "solver.kl", "solver.beta", "proposer.kl", "proposer.beta",
            "generator.qa_fidelity", "generator.cycle_consistency", "generator.diversity", "generator.contradiction",
            "generator.loss"} <= keys
    with pytest.raises(AttributeError):
        PLOTS[0].name = "x"  # frozen
