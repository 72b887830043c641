"""lm-eval tasks through asg's lm-eval adapter: MMMU (lm-eval's ``mmmu_val``) and text tasks that show
whether self-evolution cost the model language ability.

    python -m benchmarks text --backbone bagel --model /ckpt --tasks arc_easy mmmu_val --limit 200
    python -m benchmarks text --backbone bagel --model /ckpt --run runs/r1 --tasks mmmu_val   # evolved
    python -m benchmarks text --tasks arc_easy hellaswag lambada_openai piqa winogrande --num-fewshot 0
    python -m benchmarks text --tasks my_task --include-path my_tasks/      # local task YAMLs
    python -m benchmarks text --backbone bagel --tasks arc_easy mmmu_val --report   # re-render only

The model is ``asg.harness.lm.AsgLM`` (lm-eval model ``asg``): every request goes through the backbone's
own chat format under the Solver role (see that module for the mapping). ``--tasks`` takes lm-eval task
or group names (``asg.harness.lm.TEXT_TASKS`` suggests the text ones); their datasets must already be in
the local Hugging Face cache, nothing is downloaded. ``--limit N`` scores the first N documents of each
task, for smoke runs: such numbers are not comparable with published ones, and the page says so.

Result: ``benchmarks/results/text-<backbone>-<base|evolved>-<tasks>.json`` (or ``--out``) shaped
``{"_meta": ..., "metrics": {"MMMU": percent} (when mmmu_val ran), "tasks": {task: {metric: value}},
"n_samples": {task: documents scored}, "n_shot": {task: shots}}``; task metrics keep lm-eval's names
and units (fractions; ``acc_stderr`` beside ``acc``; a filter other than ``none`` stays in the name, as
in ``exact_match,strict-match``), and a markdown page beside it.
"""

from __future__ import annotations

import argparse
import math
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks._runner import add_backbone_args, add_report_arg, default_out, load_backbone, load_result, new_meta, save

SUITE = "text"
TITLE = "lm-eval tasks (MMMU, text)"
MMMU_TASK = "mmmu_val"  # asg.harness.lm.MMMU, repeated so that --report imports no harness
SKIP_KEYS = ("alias", "name", "sample_len")


def build_parser(p: argparse.ArgumentParser) -> None:
    add_backbone_args(p)
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK",
                   help="lm-eval task or group names, e.g. arc_easy hellaswag mmmu_val")
    p.add_argument("--limit", type=float,
                   help="at most N documents per task (a fraction when < 1); smoke runs only, not comparable")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: each task's own, else 0)")
    p.add_argument("--include-path", type=Path, action="append",
                   help="a directory of local lm-eval task YAMLs (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of Python, numpy, torch, few-shot sampling and decoding")
    p.add_argument("--batch-size", type=int, default=8, help="requests per backbone call (default 8)")
    add_report_arg(p)


def _limit(value: float | None) -> int | float | None:
    if value is None:
        return None
    if value <= 0:
        raise SystemExit(f"--limit must be positive, got {value:g}")
    return int(value) if value >= 1 else value


def _split(key: str) -> tuple[str, str]:
    """lm-eval's ``metric,filter`` key as (metric, filter)."""
    metric, _, filt = key.partition(",")
    return metric, filt or "none"


def _name(metric: str, filt: str) -> str:
    return metric if filt == "none" else f"{metric},{filt}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def task_metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task or group: {metric: value}}`` of lm-eval's results: numbers only (an ``N/A`` stderr is left
    out), filter ``none`` dropped from the names, tasks then groups in lm-eval's order."""
    rows: dict[str, dict[str, Any]] = {}
    for section in ("results", "groups"):
        for task, row in (results.get(section) or {}).items():
            rows.setdefault(task, row)
    out: dict[str, dict[str, float]] = {}
    for task, row in rows.items():
        metrics = {}
        for key, value in row.items():
            number = _number(value)
            if key in SKIP_KEYS or number is None:
                continue
            metrics[_name(*_split(key))] = number
        out[task] = metrics
    return out


def headline(tasks: dict[str, dict[str, float]]) -> dict[str, float]:
    """The paper's metrics among ``tasks``: ``MMMU`` = lm-eval's mmmu_val accuracy, in percent."""
    row = tasks.get(MMMU_TASK, {})
    return {"MMMU": 100.0 * row["acc"]} if "acc" in row else {}


def collect(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    from asg.harness.lm import AsgLM, run_lm_eval

    backbone = load_backbone(args)
    lm = AsgLM(backbone=backbone, batch_size=args.batch_size, seed=args.seed)
    results = run_lm_eval(lm, args.tasks, limit=_limit(args.limit), include_path=args.include_path,
                          num_fewshot=args.num_fewshot, seed=args.seed)
    tasks = task_metrics(results)
    n_shot = {t: int(k) for t, k in (results.get("n-shot") or {}).items() if _number(k) is not None}
    shots = sorted(set(n_shot.values()))
    meta["prompt_set"] = ("lm-eval task defaults, " + (f"{shots[0]}-shot" if len(shots) == 1 else
                          "shots per task: " + ", ".join(f"{t} {k}" for t, k in n_shot.items())))
    return {
        "_meta": meta, "metrics": headline(tasks), "tasks": tasks,
        "n_samples": {t: int(n["effective"]) for t, n in (results.get("n-samples") or {}).items()},
        "n_shot": n_shot,
    }


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def render(result: dict[str, Any]) -> str:
    """Markdown: the paper's metrics, then one row per task and metric (value ± stderr where lm-eval
    gives one), with the number of documents scored and a note when ``limit`` was set."""
    lines = []
    if result.get("metrics"):
        lines += [" · ".join(f"**{k}** {v:.1f}" for k, v in result["metrics"].items()), ""]
    n_samples, n_shot = result.get("n_samples", {}), result.get("n_shot", {})
    lines += ["| task | metric | value | documents | shots |", "|---|---|---:|---:|---:|"]
    for task, metrics in result.get("tasks", {}).items():
        for key, value in metrics.items():
            metric, filt = _split(key)
            if metric.endswith("_stderr"):
                continue
            stderr = metrics.get(_name(f"{metric}_stderr", filt))
            cell = _fmt(value) + (f" ± {_fmt(stderr)}" if stderr is not None else "")
            lines.append(f"| {task} | {key} | {cell} | {n_samples.get(task, '–')} | {n_shot.get(task, '–')} |")
    limit = result.get("_meta", {}).get("limit")
    lines.append("")
    if limit is not None:
        part = f"the first {limit:g} documents" if limit >= 1 else f"the first {limit:.0%} of the documents"
        lines.append(f"**limit {limit:g}**: only {part} of each task were scored; a smoke run, not comparable with "
                     "published numbers.")
    lines.append("Values in lm-eval's units (fractions, ± its standard error); MMMU in percent; a group's documents "
                 "are its tasks'.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> None:
    label = "+".join(args.tasks)
    out = default_out(SUITE, args, label)
    if args.report:
        result = load_result(out)
        save(out, result, TITLE, render(result))
        return
    meta = new_meta(SUITE, args, harness="lm-eval", harness_version=metadata.version("lm_eval"),
                    task_variant=" ".join(args.tasks), prompt_set="lm-eval task defaults",
                    judge="none", seeds=[args.seed], limit=_limit(args.limit))
    result = collect(args, meta)
    save(out, result, TITLE, render(result))
