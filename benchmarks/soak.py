"""Soak: a long `tiny` run with its memory sampled. Does resident memory grow without bound, and do
the loop's rolling windows and the run's files stay at their configured sizes?

    python -m benchmarks soak                      # 300 steps of recipe demo on tiny (about 15 min on 2 cores)
    python -m benchmarks soak --steps 60 --window 16
    python -m benchmarks soak --report             # re-render the saved result

The run is the real loop (``Trainer.train_step`` and ``Trainer.save``, as ``asg train`` calls them) on
an unlabeled ShapesWorld folder, with the rolling windows shrunk (``--window``: the easy-threshold IQR
window, the difficulty-target window and the STE window) so that they fill early and the run then
spends most of its steps at their cap. After every step it records the process's resident set
(``VmRSS`` of ``/proc/self/status``) and each window's length; it checkpoints every
``--checkpoint-every`` steps with ``keep_checkpoints`` = 2. The result gives the resident set at the
start and end, its peak, and its growth over the second half of the run as a least-squares slope in
MB per 100 steps (the first half includes allocator warm-up), each window's largest length against
its cap, and the number of checkpoints left on disk. A plot of resident memory and window lengths per
step is saved beside it. Nothing is asserted: the numbers are for the reader (the tests run it at toy
size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._runner import RESULTS, add_backbone_args, load_backbone, load_result, new_meta, save


def rss_mb() -> float:
    """This process's resident set size in MiB (Linux ``/proc``; the peak from ``resource`` elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def slope_per_100(steps: list[int], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``steps``, per 100 steps (0 with fewer than 2 points)."""
    if len(steps) < 2:
        return 0.0
    mx, my = statistics.fmean(steps), statistics.fmean(values)
    sxx = sum((x - mx) ** 2 for x in steps)
    if sxx == 0:
        return 0.0
    return 100.0 * sum((x - mx) * (y - my) for x, y in zip(steps, values)) / sxx


def collect(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from asg.shapes import write_unlabeled_folder
    from asg.train.data import ImagePool
    from asg.train.recipe import load_recipe
    from asg.train.run import RunDir
    from asg.train.trainer import Trainer

    meta = new_meta("soak", args, harness="asg soak (in-process Trainer)", task_variant=f"recipe {args.recipe}",
                    prompt_set=None, judge=None, seeds=[args.seed], steps=args.steps, window=args.window)
    pool_dir = work / "pool"
    write_unlabeled_folder(pool_dir, n=args.images, seed=args.seed, split="pool")
    w = args.window
    # each window's "enough samples" threshold is capped at the window (the recipe refuses a larger one)
    overrides = [f"seed={args.seed}", f"rewards.difficulty.iqr_window={w}", f"rewards.difficulty.target_window={w}",
                 f"rewards.difficulty.iqr_min_samples={min(w, 32)}", f"rewards.difficulty.target_min_samples={min(w, 8)}",
                 f"rewards.ste.window={w}", f"rewards.ste.min_window={min(w, 8)}",
                 f"run.checkpoint_every={args.checkpoint_every}", "run.keep_checkpoints=2", *(args.set or [])]
    recipe = load_recipe(args.recipe, overrides)
    backbone = load_backbone(args)
    pool = ImagePool(pool_dir, seed=recipe.seed, image_size=backbone.image_size)
    run = RunDir.create(work / "run", config={"recipe": recipe.to_dict(), "backbone": args.backbone, "soak": True},
                        resume=False)
    trainer = Trainer(backbone, recipe, pool, run)
    caps = {"easy_threshold": recipe.rewards.difficulty.iqr_window, "difficulty_target": recipe.rewards.difficulty.target_window,
            "ste": recipe.rewards.ste.window}
    windows = {"easy_threshold": trainer.state.threshold, "difficulty_target": trainer.state.target, "ste": trainer.state.ste}
    samples: list[dict[str, Any]] = [{"step": 0, "rss_mb": rss_mb(), **{k: len(v) for k, v in windows.items()}}]
    from asg.progress import progress_bar

    t0 = time.time()
    with progress_bar(total=args.steps, desc="soak") as bar:
        for step in range(1, args.steps + 1):
            trainer.train_step(step)
            if step % args.checkpoint_every == 0:
                trainer.save()
            samples.append({"step": step, "rss_mb": rss_mb(), **{k: len(v) for k, v in windows.items()}})
            bar.set(rss=f"{samples[-1]['rss_mb']:.0f} MB")
            bar.update(1)
    half = [s for s in samples if s["step"] >= args.steps // 2]
    rss = [s["rss_mb"] for s in samples]
    checkpoints = sorted(p.name for p in (run.path / "checkpoints").glob("step_*"))
    result = {
        "_meta": meta,
        "summary": {
            "steps": args.steps, "seconds_per_step": round((time.time() - t0) / max(args.steps, 1), 2),
            "rss_start_mb": round(rss[0], 1), "rss_after_first_step_mb": round(rss[1], 1) if len(rss) > 1 else None,
            "rss_end_mb": round(rss[-1], 1), "rss_peak_mb": round(max(rss), 1),
            "rss_growth_second_half_mb_per_100_steps": round(slope_per_100([s["step"] for s in half], [s["rss_mb"] for s in half]), 2),
            "windows": {k: {"cap": caps[k], "max_len": max(s[k] for s in samples), "final_len": samples[-1][k]} for k in caps},
            "checkpoints_on_disk": checkpoints, "keep_checkpoints": recipe.run.keep_checkpoints,
            "metrics_lines": sum(1 for _ in (run.path / "metrics.jsonl").open()),
        },
        "samples": samples,
    }
    return result


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = ["| measure | value |", "|---|---:|",
             f"| steps | {s['steps']} ({s['seconds_per_step']} s per step) |",
             f"| resident set: start → after step 1 → end (MB) | {s['rss_start_mb']} → {s['rss_after_first_step_mb']} → {s['rss_end_mb']} |",
             f"| resident set: peak (MB) | {s['rss_peak_mb']} |",
             f"| growth over the second half (MB per 100 steps, least squares) | {s['rss_growth_second_half_mb_per_100_steps']:+.2f} |"]
    for name, w in s["windows"].items():
        ok = "within cap" if w["max_len"] <= w["cap"] else "OVER CAP"
        lines.append(f"| window `{name}`: largest / cap / final | {w['max_len']} / {w['cap']} / {w['final_len']} ({ok}) |")
    lines.append(f"| checkpoints on disk (keep {s['keep_checkpoints']}) | {len(s['checkpoints_on_disk'])}: {', '.join(s['checkpoints_on_disk'])} |")
    lines.append(f"| metrics.jsonl lines | {s['metrics_lines']} |")
    out = Path(result["_meta"].get("out_png") or "")
    if out.name:
        lines += ["", f"![resident memory and window lengths per step]({out.name})"]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    steps = [s["step"] for s in samples]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    a.plot(steps, [s["rss_mb"] for s in samples], color="#2b6cb0")
    a.set_xlabel("step")
    a.set_ylabel("resident set (MB)")
    a.set_title("memory")
    for name, w in result["summary"]["windows"].items():
        b.plot(steps, [s[name] for s in samples], label=f"{name} (cap {w['cap']})")
    b.set_xlabel("step")
    b.set_ylabel("length")
    b.set_title("rolling windows")
    b.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out) if args.out else RESULTS / f"soak-{args.backbone}.json"
    if args.report:
        result = load_result(out)
    else:
        with tempfile.TemporaryDirectory(prefix="asg-soak-") as tmp:
            work = Path(args.work) if args.work else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            result = collect(args, work)
        result["_meta"]["out_png"] = str(out.with_suffix(".png"))
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(result, out.with_suffix(".png"))
    save(out, result, f"Soak: {result['summary']['steps']} steps of {result['_meta']['backbone']['name']}", render(result))
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks soak", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    p.add_argument("--steps", type=int, default=300, help="loop steps (default 300)")
    p.add_argument("--window", type=int, default=32, help="cap of the three rolling windows (default 32)")
    p.add_argument("--images", type=int, default=200, help="unlabeled pool size (default 200)")
    p.add_argument("--checkpoint-every", type=int, default=25, help="checkpoint period in steps (default 25)")
    p.add_argument("--recipe", default="demo", help="named recipe (default demo)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra recipe override")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", help="keep the pool and run directory here (default: a temporary directory)")
    p.add_argument("--out", help="result file (default benchmarks/results/soak-<backbone>.json)")
    p.add_argument("--report", action="store_true", help="re-render the saved result only")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
