"""GenEval-mini along self-evolution runs: the base, then every saved checkpoint of each run, on one set of prompts and image noise per seed.

    python -m benchmarks geneval_curve runs/x/seed0/run-full runs/x/seed1/run-full --seeds 0 1 --split val --per-tag 10
    python -m benchmarks geneval_curve RUN --model DIR --split val     # a base written by `asg tiny pretrain`
    python -m benchmarks geneval_curve --report --out RESULT.json       # re-render the saved result

Each point is what ``python -m benchmarks geneval_mini --run CHECKPOINT --seed S`` measures. A run's
checkpoints and the base are drawn from the same prompts and the same initial noise, so its curve moves
only with the generator's weights. The score of a run's last checkpoint alone can hide a generator that
rose and fell; the curve shows whether it drifted, and when. A run keeps only its newest
``run.keep_checkpoints`` checkpoints (3 by default): set it higher, or ``run.checkpoint_every`` lower,
to see more of the curve. Incomplete checkpoints (an interrupted save) are skipped and listed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks._runner import add_backbone_args, load_backbone, load_result, new_meta, save
from benchmarks.geneval_mini import HARNESS, add_measure_args, measure

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _runs_and_seeds(args: argparse.Namespace) -> list[tuple[Path, int]]:
    """``args.runs`` paired with their seeds: one seed for all runs, or one per run."""
    from asg.errors import ConfigError

    seeds = list(args.seeds)
    if len(seeds) not in (1, len(args.runs)):
        raise ConfigError(f"--seeds: give one seed for all runs or one per run; got {len(seeds)} seeds for "
                          f"{len(args.runs)} runs")
    return [(Path(r), seeds[0] if len(seeds) == 1 else seeds[i]) for i, r in enumerate(args.runs)]


def checkpoints_of(run: Path) -> tuple[list[Any], list[Any]]:
    """``(complete, incomplete)`` checkpoints of ``run`` by step; a clear error when it has none complete."""
    from asg.errors import ConfigError
    from asg.train.checkpoint import list_checkpoints

    if not run.is_dir():
        raise ConfigError(f"{run}: no such run directory")
    found = list_checkpoints(run)
    complete = [c for c in found if c.complete]
    if not complete:
        raise ConfigError(f"{run}: no complete checkpoint under {run / 'checkpoints'} "
                          f"({len(found)} incomplete); pass the directory `asg train --out` wrote")
    return complete, [c for c in found if not c.complete]


def _point(scored: dict[str, Any], step: int, checkpoint: str | None) -> dict[str, Any]:
    """One point of a curve. ``judged`` fingerprints the checker's verdict and reason on every image, so two
    points with the same fingerprint were judged image for image alike. ``objects_per_image`` (the mean
    number of shapes the ShapesWorld detector finds) and ``empty_images`` (percent with none) show a
    generator that drifts toward clutter or toward blank images: GenEval's rules credit an image that
    holds the named objects whatever else it holds."""
    import hashlib

    samples = scored["samples"]
    verdicts = "\n".join(f"{s['correct']}:{s['reason']}" for s in samples)
    return {"step": step, "checkpoint": checkpoint, "metrics": scored["metrics"], "counts": scored["counts"],
            "objects_per_image": scored["shapes_per_image"],
            "empty_images": 100.0 * sum(s["shapes"] == 0 for s in samples) / len(samples),
            "judged": hashlib.sha1(verdicts.encode()).hexdigest()[:16]}


def collect(args: argparse.Namespace, picture: Path) -> dict[str, Any]:
    import asg
    from asg.train.cli import load_adapters

    pairs = _runs_and_seeds(args)
    plan = [(run, seed, *checkpoints_of(run)) for run, seed in pairs]  # every run checked before any work
    meta = new_meta("geneval_curve", args, harness=HARNESS, harness_version=asg.__version__,
                    task_variant=f"GenEval-mini {args.split}, per checkpoint",
                    prompt_set=f"ShapesWorld {args.split}, {args.per_tag} per tag, seeds {sorted({s for _, s in pairs})}",
                    judge="ShapesWorld detector", seeds=sorted({s for _, s in pairs}),
                    images_per_prompt=args.images_per_prompt, split=args.split)
    meta["backbone"]["stage"] = "base and evolved"
    meta["backbone"]["runs"] = [str(r) for r, _ in pairs]
    # the base is loaded once; each point restores its trainable state, then loads a checkpoint's over it
    backbone = load_backbone(argparse.Namespace(**{**vars(args), "run": None}))
    base_state = {k: v.detach().clone() for k, v in backbone.trainable_state_dict().items()}

    def point(seed: int, ckpt: Any | None, desc: str) -> dict[str, Any]:
        backbone.load_trainable_state_dict(base_state)
        if ckpt is not None:
            load_adapters(backbone, ckpt.path)
        scored, _ = measure(backbone, argparse.Namespace(**{**vars(args), "seed": seed}), desc=desc)
        made = _point(scored, 0 if ckpt is None else ckpt.step, None if ckpt is None else str(ckpt.path))
        print(f"[geneval_curve] {desc}: overall {made['metrics']['overall']:.1f}", flush=True)
        return made

    base_at: dict[int, dict[str, Any]] = {}
    runs = []
    for run, seed, complete, incomplete in plan:
        if seed not in base_at:
            base_at[seed] = point(seed, None, f"base, seed {seed}")
        points = [base_at[seed], *(point(seed, c, f"{run} step {c.step}") for c in complete)]
        runs.append({"run": str(run), "seed": seed, "points": points, "incomplete": [str(c.path) for c in incomplete]})
    result = {"_meta": meta, "runs": runs, "picture": picture.name}
    plot(result, picture)
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    """GenEval-mini overall, and the shapes the detector finds per image, against the step; one line per
    run (step 0: the base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (score, shapes) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for r, name in zip(result["runs"], run_labels([r["run"] for r in result["runs"]])):
        steps = [p["step"] for p in r["points"]]
        label = f"{name} (seed {r['seed']})"
        score.plot(steps, [p["metrics"]["overall"] for p in r["points"]], marker="o", label=label)
        shapes.plot(steps, [p["objects_per_image"] for p in r["points"]], marker="o", label=label)
    score.set_ylabel("GenEval-mini overall (%)")
    score.set_title(f"GenEval-mini along the run ({result['_meta'].get('split', 'test')} split)")
    shapes.set_ylabel("shapes found per image")
    shapes.set_title("what the generator draws: shapes per image")
    for ax in (score, shapes):
        ax.set_xlabel("step (0: the base)")
        ax.grid(alpha=0.3)
    score.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_labels(runs: list[str]) -> list[str]:
    """The shortest path endings that tell the runs apart: ``seed1/run-full`` says more than ``run-full``,
    and two suites' ``seed1/run-full`` need the directory above as well."""
    parts = [Path(r).parts for r in runs]
    for n in range(2, max((len(p) for p in parts), default=2) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in runs]


def render(result: dict[str, Any]) -> str:
    """Markdown: per run, a row per point (overall, its change from the base, each task)."""
    lines = []
    for r in result["runs"]:
        lines += [f"**{r['run']}** (seed {r['seed']})", "",
                  "| step | overall | change | " + " | ".join(TASKS) + " | shapes per image | empty images % |",
                  "|---:|---:|---:|" + "---:|" * (len(TASKS) + 2)]
        base = r["points"][0]["metrics"]["overall"]
        for p in r["points"]:
            m = p["metrics"]
            step = "base" if p["checkpoint"] is None else str(p["step"])
            change = "" if p["checkpoint"] is None else f"{m['overall'] - base:+.1f}"
            lines.append(f"| {step} | {m['overall']:.1f} | {change} | " + " | ".join(f"{m.get(t, float('nan')):.1f}" for t in TASKS)
                         + f" | {p['objects_per_image']:.2f} | {p['empty_images']:.1f} |")
        if r["incomplete"]:
            lines.append(f"\nSkipped, incomplete (no SAVE_OK): {', '.join(r['incomplete'])}")
        lines.append("")
    lines.append("Percent per task; overall is the mean over tasks. An exact ShapesWorld checker, not the official "
                 "GenEval detector.")
    if result.get("picture"):
        lines += ["", f"![GenEval-mini along the run]({result['picture']})"]
    return "\n".join(lines)


def _out(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    from benchmarks._runner import RESULTS

    return RESULTS / f"geneval_curve-{args.backbone}-{args.split}.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = _out(args)
    if args.report:
        result = load_result(out)
        plot(result, out.with_suffix(".png"))
    else:
        if not args.runs:
            raise SystemExit("geneval_curve: name at least one run directory (or --report to re-render)")
        result = collect(args, out.with_suffix(".png"))
    save(out, result, f"GenEval-mini along the run ({result['_meta'].get('split', 'test')} split)", render(result))
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks geneval_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="run directories written by `asg train`")
    add_backbone_args(p, run=False)  # the base the runs started from (--model for a `asg tiny pretrain` directory)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="prompt choice and image noise: one for all runs, or one per run (default 0)")
    add_measure_args(p)
    p.add_argument("--out", type=Path, help="result file (default benchmarks/results/geneval_curve-<backbone>-<split>.json)")
    p.add_argument("--report", action="store_true", help="re-render the page and the plot from the saved result only")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
