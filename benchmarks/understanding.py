"""Understanding benchmarks through lmms-eval: the paper's MMMU, MMBench, TextVQA, SEED, RealWorldQA, MM-Vet, MME-P, MME-C.

    python -m benchmarks understanding --backbone bagel --model /ckpt/BAGEL-7B-MoT --tasks MMMU MME-P
    python -m benchmarks understanding --backbone bagel --model /ckpt/BAGEL-7B-MoT --run runs/e1   # evolved
    python -m benchmarks understanding --tasks MMBench MM-Vet --judge gpt-4o-2024-11-20 ...   # LLM-judged
    python -m benchmarks understanding --limit 50 ...          # a quick look at a subset (not comparable)
    python -m benchmarks understanding --include-path my_tasks --tasks my_task ...   # local task YAMLs
    python -m benchmarks understanding --report                # re-render the saved result's page

The backbone answers as an lmms-eval model (``asg.harness.lmms.AsgLmms``: each task's own prompts and
generation settings, the Solver's adapter when the backbone has one, several images of a document tiled
into one). ``--tasks`` takes the paper's metric names or raw lmms-eval task names; the default is the six
metrics scored without a judge. MMBench and MM-Vet are scored by an LLM judge that lmms-eval calls over
the network (an OpenAI-compatible API: ``OPENAI_API_KEY``, ``OPENAI_API_URL``, ``API_TYPE``); they run
only with ``--judge MODEL``, and their numbers depend on that judge. lmms-eval downloads each task's
dataset from the Hugging Face Hub on first use (or reads its cache with ``HF_DATASETS_OFFLINE=1``).

Numbers are in the paper's units: percent, MME-P and MME-C as raw scores (max 2000 and 800). With
``--limit`` each task is scored on its first documents only, so the numbers are not comparable with
published ones. Result: ``benchmarks/results/understanding-<backbone>-<base|evolved>.json`` shaped
``{"_meta", "metrics": {paper metric: value}, "tasks": {lmms-eval task: {metric: value as lmms-eval
reports it}}, "judge_dependent": [...], "definitions": {paper metric: {task, key, unit}}, "samples":
{task: documents scored}}`` and a markdown page.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks._runner import (
    add_backbone_args,
    add_report_arg,
    default_out,
    load_backbone,
    load_result,
    new_meta,
    save,
)

TITLE = "Understanding benchmarks (lmms-eval)"
NO_JUDGE = ("MMMU", "TextVQA", "SEED", "RealWorldQA", "MME-P", "MME-C")


def _limit(text: str) -> int | float:
    """``--limit``: a document count (``50``) or a fraction of each task (``0.1``)."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"--limit must be positive, got {text}")
    return int(value) if value >= 1 and value == int(value) else value


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m benchmarks understanding", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    p.add_argument("--tasks", nargs="+", default=list(NO_JUDGE), metavar="TASK",
                   help="paper metric names (MMMU MMBench TextVQA SEED RealWorldQA MM-Vet MME-P MME-C) or lmms-eval "
                        f"task names (default: {' '.join(NO_JUDGE)}, the ones without an LLM judge)")
    p.add_argument("--judge", metavar="MODEL",
                   help="LLM judge for MMBench / MM-Vet (e.g. gpt-4o-2024-11-20; lmms-eval's MODEL_VERSION); needs "
                        "network and an API key")
    p.add_argument("--limit", type=_limit, help="score only the first N documents of each task (or a fraction < 1)")
    p.add_argument("--include-path", type=Path, action="append", metavar="DIR",
                   help="extra directory of lmms-eval task YAMLs (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of lmms-eval and of any sampling (default 0)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts per backbone call (default 1)")
    add_report_arg(p)
    return p


def check_judge(judged: list[str], judge: str | None) -> None:
    """Judge-scored metrics without ``--judge``: an error saying what they need."""
    if judged and not judge:
        from asg.errors import ConfigError

        raise ConfigError(
            f"{', '.join(judged)} {'is' if len(judged) == 1 else 'are'} scored by an LLM judge: lmms-eval sends each "
            "answer to an OpenAI-compatible API (network access, OPENAI_API_KEY; API_TYPE/OPENAI_API_URL for another "
            f"endpoint). Pass --judge MODEL (e.g. --judge gpt-4o-2024-11-20) to run {'it' if len(judged) == 1 else 'them'}, "
            "or leave them out of --tasks "
            f"(the default, {' '.join(NO_JUDGE)}, needs no judge)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = default_out("understanding", args)
    if args.report:
        result = load_result(out)
        save(out, result, TITLE, render(result))
        return result

    from asg.harness.lmms import (
        UNDERSTANDING_TASKS,
        AsgLmms,
        lmms_eval_version,
        paper_metrics,
        resolve_tasks,
        run_lmms,
        task_manager,
        task_metrics,
    )

    tasks, judged = resolve_tasks(args.tasks)
    check_judge(judged, args.judge)
    if args.judge:  # read by lmms-eval's judge-scored tasks when their code loads
        os.environ["MODEL_VERSION"] = args.judge
    manager = task_manager(tasks, args.include_path)  # unknown task names fail here, before the model loads
    meta = new_meta("understanding", args, harness="lmms-eval", harness_version=lmms_eval_version(),
                    task_variant=",".join(tasks), prompt_set="lmms-eval task defaults", judge=args.judge,
                    seeds=[args.seed], limit=args.limit)
    model = AsgLmms(backbone=load_backbone(args), batch_size=args.batch_size, seed=args.seed)
    results = run_lmms(model, tasks, limit=args.limit, seed=args.seed, manager=manager)
    metrics = paper_metrics(results)
    result = {
        "_meta": meta,
        "metrics": metrics,
        "tasks": task_metrics(results),
        "judge_dependent": [m for m in metrics if UNDERSTANDING_TASKS[m].judge],
        "definitions": {m: {"task": UNDERSTANDING_TASKS[m].task, "key": UNDERSTANDING_TASKS[m].key,
                            "unit": UNDERSTANDING_TASKS[m].unit} for m in metrics},
        "samples": {t: int(n.get("effective", 0)) for t, n in (results.get("n-samples") or {}).items()},
    }
    save(out, result, TITLE, render(result))
    return result


def _fmt(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1.5 or value == 0 else f"{value:.4f}"


def render(result: dict[str, Any]) -> str:
    """Markdown: the paper's metrics (judge-dependent ones marked), then every task's raw metrics. Reads
    only ``result`` (``--report`` imports neither lmms-eval nor a model)."""
    meta = result.get("_meta", {})
    backbone = meta.get("backbone") or {}
    metrics = result.get("metrics", {})
    judged = set(result.get("judge_dependent", []))
    samples = result.get("samples", {})
    lines = [f"Backbone `{backbone.get('name')}` ({backbone.get('stage', 'base')}"
             + (f", run `{backbone['run']}`" if backbone.get("run") else "")
             + (f", model `{backbone['model']}`" if backbone.get("model") else "") + ")."]
    if meta.get("limit") is not None:
        lines.append("")
        lines.append(f"**Subset:** `--limit {meta['limit']}` scores only part of each task, so these numbers are "
                     "not comparable with published ones.")
    if metrics:
        lines += ["", "| metric | value | unit | lmms-eval task (metric) | documents |", "|---|---:|---|---|---:|"]
        for name, value in metrics.items():
            spec = result.get("definitions", {}).get(name, {})
            mark = " †" if name in judged else ""
            where = f"{spec['task']} ({spec['key']})" if spec else ""
            lines.append(f"| {name}{mark} | {_fmt(value)} | {spec.get('unit', '')} | {where} | "
                         f"{samples.get(spec.get('task'), '')} |")
        if judged:
            lines.append(f"\n† scored by an LLM judge ({meta.get('judge')}): the number depends on the judge model.")
    raw = {t: m for t, m in result.get("tasks", {}).items() if m}
    if raw:
        lines += ["", "As lmms-eval reports them (fractions or percent, per task):", "",
                  "| lmms-eval task | metric | value | documents |", "|---|---|---:|---:|"]
        for task, row in raw.items():
            for metric, value in row.items():
                lines.append(f"| {task} | {metric} | {value:.4f} | {samples.get(task, '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
