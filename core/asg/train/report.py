"""End-of-run pictures and report: curves from metrics.jsonl, update decisions, a before/after table.

The plots are a table (:data:`PLOTS`): plot -> panels -> metric keys (the dotted names the trainer
logs). Keys a run never logged are skipped, and so is a panel or a plot left with none, so a U-only
run simply has no generation curves. Each curve shows the raw per-step values as points and a trailing
rolling mean whose window grows with the run's length.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs

from asg.train.run import _read_json, atomic_write_text, read_jsonl

ROLES = ("solver", "proposer", "generator")
TABLE_HEADING = "## Before / after"


@attrs.frozen
class PlotSpec:
    """One picture ``plots/<name>.png``: side-by-side panels, each a titled list of metric keys."""

    name: str
    title: str
    panels: tuple[tuple[str, tuple[str, ...]], ...]  # (panel title, keys drawn in it)


PLOTS: tuple[PlotSpec, ...] = (
    PlotSpec("rewards", "Rewards per step", (
        ("understanding", ("solver.reward_mean", "proposer.reward")),
        ("generation", ("generator.reward_mean", "generator.reward_best")))),
    PlotSpec("consistency", "Self-consistency of the Solver's answers", (
        ("H_sc (nats)", ("h_sc",)), ("majority fraction", ("majority_fraction",)))),
    PlotSpec("ste", "Solver token entropy", (("STE raw (nats)", ("ste.raw",)), ("d_ste", ("ste.d_ste",)))),
    PlotSpec("kl_beta", "KL to the reference policy and its coefficient", (
        ("KL", ("solver.kl", "proposer.kl", "generator.kl")),
        ("beta", ("solver.beta", "proposer.beta", "generator.beta")))),
    PlotSpec("generation_components", "Generation reward components", (
        ("components", ("generator.qa_fidelity", "generator.cycle_consistency", "generator.diversity",
                        "generator.contradiction")),
        ("generator loss", ("generator.loss",)))),
)


def rolling_window(n: int) -> int:
    """Window of the rolling mean for ``n`` points: 1 below 10 points, then about n/15, at most 100."""
    return 1 if n < 10 else max(2, min(100, round(n / 15)))


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over ``window`` points (fewer at the start): [1, 2, 3, 4], 2 -> [1, 1.5, 2.5, 3.5]."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records holding a finite number (bools count 0/1) under ``key``."""
    xs, ys = [], []
    for r in records:
        v, step = r.get(key), r.get("step")
        if isinstance(v, (int, float)) and math.isfinite(v) and isinstance(step, int):
            xs.append(step)
            ys.append(float(v))
    return xs, ys


def _figure(n_panels: int, title: str) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5 * n_panels, 3.8), layout="constrained")  # no pyplot: no global state, no display
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    fig.suptitle(title)
    return fig, list(axes)


def _draw_curves(ax: Any, keys: Sequence[tuple[str, list[int], list[float]]], panel: str) -> None:
    for i, (key, xs, ys) in enumerate(keys):
        color = f"C{i}"
        w = rolling_window(len(ys))
        ax.scatter(xs, ys, s=6, alpha=0.3, color=color, linewidths=0)
        ax.plot(xs, rolling_mean(ys, w), color=color, lw=1.6, label=key if w == 1 else f"{key} (mean of {w})")
    ax.set_title(panel)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _draw_updates(run_dir: Path, records: Sequence[Mapping[str, Any]]) -> Path | None:
    roles = [r for r in ROLES if any(isinstance(rec.get(f"{r}.stepped"), bool) for rec in records)]
    if not roles:
        return None
    fig, (ax_count, ax_reasons) = _figure(2, "Update decisions")
    for i, role in enumerate(roles):
        xs, stepped, skipped, n_step, n_skip = [], [], [], 0, 0
        for rec in records:
            v = rec.get(f"{role}.stepped")
            if isinstance(v, bool) and isinstance(rec.get("step"), int):
                n_step, n_skip = n_step + v, n_skip + (not v)
                xs.append(rec["step"])
                stepped.append(n_step)
                skipped.append(n_skip)
        ax_count.plot(xs, stepped, color=f"C{i}", label=f"{role} stepped")
        ax_count.plot(xs, skipped, color=f"C{i}", ls="--", label=f"{role} skipped")
    ax_count.set_title("cumulative updates")
    ax_count.set_xlabel("step")
    ax_count.grid(alpha=0.3)
    ax_count.legend(fontsize=8)
    reasons = update_counts(records)
    bars = [(f"{role}: {reason}", n, f"C{i}") for i, role in enumerate(roles)
            for reason, n in reasons[role]["skip_reasons"].items()]
    if bars:
        labels, counts, colors = zip(*bars)
        drawn = ax_reasons.barh(range(len(labels)), counts, color=colors, height=0.6)
        ax_reasons.bar_label(drawn, fontsize=8, padding=2)
        ax_reasons.set_yticks(range(len(labels)), labels, fontsize=8)
        ax_reasons.invert_yaxis()
    else:
        ax_reasons.text(0.5, 0.5, "no skipped updates", ha="center", va="center", transform=ax_reasons.transAxes)
    ax_reasons.set_title("skip reasons (count)")
    path = run_dir / "plots" / "updates.png"
    fig.savefig(path, dpi=100)
    return path


def write_plots(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Draw ``plots/*.png`` from metrics.jsonl: every :data:`PLOTS` entry with data, plus update decisions."""
    run_dir = Path(run_dir)
    records = read_jsonl(run_dir / "metrics.jsonl").records
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    written = []
    for spec in PLOTS:
        panels = []
        for title, keys in spec.panels:
            present = [(k, *series(records, k)) for k in keys]
            present = [p for p in present if p[1]]
            if present:
                panels.append((title, present))
        if not panels:
            continue
        fig, axes = _figure(len(panels), spec.title)
        for ax, (title, present) in zip(axes, panels):
            _draw_curves(ax, present, title)
        path = run_dir / "plots" / f"{spec.name}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    updates = _draw_updates(run_dir, records)
    return written + ([updates] if updates else [])


# -- summary and report ---------------------------------------------------------------------------
def update_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per role: how many steps updated it, how many skipped, and the skip reasons counted."""
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        stepped, skipped, reasons = 0, 0, Counter()
        for rec in records:
            v = rec.get(f"{role}.stepped")
            if v is True:
                stepped += 1
            elif v is False:
                skipped += 1
                reasons[str(rec.get(f"{role}.skip_reason") or "(no reason given)")] += 1
        out[role] = {"stepped": stepped, "skipped": skipped, "skip_reasons": dict(reasons.most_common())}
    return out


def _flat_numbers(d: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (d or {}).items():
        if isinstance(v, Mapping):
            out.update(_flat_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _table_rows(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    b, a = _flat_numbers(before), _flat_numbers(after)
    first = ["vqa_accuracy", "geneval_mini"]
    keys = [k for k in first if k in b or k in a]
    keys += sorted(k for k in set(b) | set(a) if k not in first)
    rows = ["| metric | before | after | delta |", "|---|---|---|---|"]
    for k in keys:
        vb, va = b.get(k), a.get(k)
        delta = f"{va - vb:+.2f}" if vb is not None and va is not None else "–"
        cell = [k.replace("|", "\\|"), "–" if vb is None else f"{vb:.2f}", "–" if va is None else f"{va:.2f}", delta]
        rows.append("| " + " | ".join(cell) + " |")
    return rows


def _duration(sec: Any) -> str:
    if not isinstance(sec, (int, float)) or not math.isfinite(sec):
        return "–"
    s = int(round(sec))
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def _recipe_name(config: Any) -> str:
    if not isinstance(config, Mapping):
        return "–"
    recipe = config.get("recipe")
    if isinstance(recipe, Mapping) and recipe.get("name"):
        return str(recipe["name"])
    return str(recipe or config.get("name") or "–")


def _link(path: Path, base: Path) -> str:
    return quote(path.relative_to(base).as_posix())


def write_report(run_dir: str | os.PathLike[str], *, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
                 extra_sections: Sequence[str] = ()) -> Path:
    """Write ``report.md``: run summary, update decisions, before/after table, plots and samples."""
    run_dir = Path(run_dir)
    config, status = _read_json(run_dir / "config.json"), _read_json(run_dir / "status.json") or {}
    log = read_jsonl(run_dir / "metrics.jsonl")
    records = log.records
    phases = Counter(str(r.get("phase")) for r in records if r.get("phase") in ("U", "G"))
    last_step = max((r["step"] for r in records if isinstance(r.get("step"), int)), default=None)
    step = status.get("step", last_step)
    rate = status.get("steps_per_sec")
    lines = [f"# Run report: {_recipe_name(config)}", "", "| | |", "|---|---|",
             f"| run directory | `{run_dir}` |", f"| recipe | {_recipe_name(config)} |"]
    if isinstance(config, Mapping) and config.get("backbone"):
        lines.append(f"| backbone | {config['backbone']} |")
    lines += [f"| state | {status.get('state', '–')} |",
              f"| steps | {step if step is not None else '–'} of {status.get('steps_total') or '–'} "
              f"({phases.get('U', 0)} U, {phases.get('G', 0)} G logged) |",
              f"| wall time | {_duration(status.get('elapsed_sec'))} |",
              f"| steps/s | {f'{rate:.3g}' if isinstance(rate, (int, float)) else '–'} |"]
    if status.get("last_error"):
        lines.append(f"| last error | {str(status['last_error']).replace('|', '/')} |")
    if log.truncated is not None:
        lines.append("| note | metrics.jsonl ends in a line cut short by a crash (ignored) |")
    lines += ["", "## Updates", "", "| role | stepped | skipped | skip reasons |", "|---|---|---|---|"]
    for role, c in update_counts(records).items():
        if c["stepped"] or c["skipped"]:
            why = ", ".join(f"{r} ×{n}" for r, n in c["skip_reasons"].items()) or "–"
            lines.append(f"| {role} | {c['stepped']} | {c['skipped']} | {why.replace('|', '/')} |")
    lines += ["", TABLE_HEADING, ""]
    if before is None and after is None:
        lines.append("No held-out evaluation was run (`asg train --eval` measures before and after).")
    else:
        lines += _table_rows(before, after)
    details = [f"[{d}]({d}/report.md)" for d in ("eval_before", "eval_after") if (run_dir / d / "report.md").is_file()]
    if details:
        lines += ["", "Evaluation details: " + ", ".join(details)]
    plots = sorted((run_dir / "plots").glob("*.png"))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({_link(p, run_dir)})" for p in plots]
    lines += _samples_section(run_dir)
    for section in extra_sections:
        lines += ["", section.rstrip()]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _samples_section(run_dir: Path, dirs: int = 4, per_dir: int = 8) -> list[str]:
    steps = sorted(p for p in (run_dir / "samples").glob("step_*") if p.is_dir())
    if not steps:
        return []
    shown = min(dirs, len(steps))
    lines = ["", "## Samples", "", f"Sampled steps in `samples/`: {len(steps)}" + (f"; the last {shown}:" if shown < len(steps) else ":"), ""]
    for d in steps[-dirs:]:
        images = sorted(d.glob("*.png"))
        links = " ".join(f"![{p.stem}]({_link(p, run_dir)})" for p in images[:per_dir])
        lines += [f"**{d.name}** ({len(images)} images): {links}", ""]
    return lines[:-1]


def read_before_after_table(report_path: str | os.PathLike[str]) -> dict[str, dict[str, float | None]]:
    """The before/after table of a report: {metric: {"before", "after", "delta"}} ({} when it has none)."""
    text = Path(report_path).read_text(encoding="utf-8").splitlines()
    try:
        start = text.index(TABLE_HEADING)
    except ValueError:
        return {}
    rows: dict[str, dict[str, float | None]] = {}
    in_table = False
    for line in text[start + 1:]:
        if not line.startswith("|"):
            if in_table or line.startswith("#"):
                break
            continue
        in_table = True
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 4 or cells[0] == "metric" or re.fullmatch(r":?-+:?", cells[1]):
            continue
        values = [None if c in ("–", "") else float(c) for c in cells[1:]]
        rows[cells[0]] = dict(zip(("before", "after", "delta"), values))
    return rows

