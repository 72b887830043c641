"""ShapesWorld self-evolution suite: does the loop improve `tiny`, and which parts matter?

    python -m benchmarks shapes --seeds 3                 # every variant, 3 seeds (hours on 2 CPU cores)
    python -m benchmarks shapes --seeds 1 --variants full e2 e3
    python -m benchmarks shapes --split val ...           # tuning: measure on the validation split
    python -m benchmarks shapes --report                  # re-render table and plot from the saved results
    python -m benchmarks shapes --seeds 3 --variants e2 --work DIR --merge   # add a variant to the saved results

For each seed it writes an unlabeled ShapesWorld folder (``pool`` split, disjoint from the held-out
scenes), measures the shipped `tiny` base once on the evaluation split, and for each variant runs the
loop from that base (recipe ``shapes`` plus the variant's overrides; ``--recipe`` names another) and
measures the evolved model:
VQA accuracy (overall and per question type) and GenEval-mini (overall and per category), percent.

Variants (the full recipe and one ablation each):

- ``full``: recipe ``shapes`` (E1 scaled to a CPU and tuned on the val split);
- ``no_ste``: the proposer reward from self-consistency only (component ``proposer.ste`` off);
- ``no_sc``: no Prompt-Perturbed Sampling, a single Solver answer (``solver.sample.n = 1``);
- ``no_fidelity``: the generator reward without QA fidelity (``generator.qa_fidelity`` off);
- ``no_cycle``: the generator reward without cycle consistency (``generator.cycle_consistency`` off);
- ``e2``: understanding only (5U:0G, generator not updated);
- ``e3``: generation only (0U:5G, solver and proposer frozen).

Every finished (seed, variant) is saved under ``--work`` at once, so an interrupted suite resumes where
it stopped (a run cut off before its result was saved continues from its latest checkpoint); ``--work``
records the settings it was made with and refuses others. Results:
``benchmarks/results/shapes[-<split>].json`` shaped
``{variant: {metric: {"base": [per seed], "evolved": [per seed]}}}``, a markdown table (mean ± std of
the gain over seeds) and a plot beside it; run metadata (command, machine, runtime) in ``_meta``.

``--merge`` adds this invocation's variants to the result file already at ``--out`` (a variant of the
same name is replaced) instead of overwriting it, so that variants measured in separate invocations,
sessions or machines make one table. The file's settings (split, steps, pool size, evaluation sizes,
recipe, overrides, model, seeds) must equal this invocation's: that is checked before anything runs.
``_meta["parts"]`` then lists every invocation that contributed (command, variants, machine, time).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._results import write_result
from benchmarks._runner import add_backbone_args, default_device, finish_meta, load_backbone, new_meta, package_versions

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

# variant -> (recipe overrides on top of --recipe, "shapes" by default; description)
_E2 = ["schedule.understanding=5", "schedule.generation=0", "generator.update=false",
       "rewards.difficulty.tau_easy=1.0"]
_E3 = ["schedule.understanding=0", "schedule.generation=5", "solver.update=false", "proposer.update=false",
       "rewards.difficulty.tau_easy=1.0"]
VARIANTS: dict[str, tuple[list[str], str]] = {
    "full": ([], "the whole recipe"),
    "no_ste": (["rewards.components.proposer.ste.enabled=false"], "proposer reward from self-consistency only"),
    "no_sc": (["solver.sample.n=1"], "no PPS: a single Solver answer per question"),
    "no_fidelity": (["rewards.components.generator.qa_fidelity.enabled=false"], "no QA-fidelity reward"),
    "no_cycle": (["rewards.components.generator.cycle_consistency.enabled=false"], "no cycle-consistency reward"),
    "e2": (_E2, "understanding only (5U:0G)"),
    "e3": (_E3, "generation only (0U:5G, solver and proposer frozen)"),
}
SIZES = {"full": {"images": 400, "steps": 120, "questions": 500, "per_tag": 10}}


def top_answer_shares(samples: list[dict[str, Any]]) -> dict[str, float]:
    """Per question type, the percent of questions answered with that type's single most frequent
    (normalised) prediction: 100 means the model gives one answer whatever the image. A VQA gain that
    comes with this share rising toward 100 is a shift of the answer prior, not better seeing."""
    from collections import Counter

    from asg.shapes.answers import normalize_answer

    by_type: dict[str, Counter[str]] = {}
    for s in samples:
        by_type.setdefault(s["qtype"], Counter())[normalize_answer(s["prediction"], s["qtype"])] += 1
    return {f"vqa_{t}_top_answer_share": 100.0 * c.most_common(1)[0][1] / sum(c.values()) for t, c in by_type.items()}


def _metrics(summary: dict[str, Any], results: Path | None = None) -> dict[str, float]:
    """Flat percent metrics of one evaluation summary (as written by ``asg train --eval shapes``), plus the
    top-answer shares and GenEval-mini's shapes per image (not a percent) from the evaluation's
    ``results.json`` beside it when given."""
    out = {"vqa_accuracy": float(summary["vqa_accuracy"]), "geneval_mini": float(summary["geneval_mini"])}
    out.update({f"vqa_{k}": float(v) for k, v in summary["vqa_by_type"].items()})
    out.update({f"geneval_{k}": float(v) for k, v in summary["geneval_by_category"].items()})
    if results is not None and results.is_file():
        data = json.loads(results.read_text())
        out.update(top_answer_shares(data["vqa"]["samples"]))
        shapes = data.get("geneval_mini", {}).get("shapes_per_image")
        if shapes is not None:  # evaluations before 2026-11-30 did not count them
            out["geneval_shapes_per_image"] = float(shapes)
    return out


def _evaluate_base(args: argparse.Namespace, seed: int, out: Path) -> dict[str, float]:
    from asg.train.cli import _evaluate

    ns = argparse.Namespace(eval_questions=args.questions, eval_per_tag=args.per_tag, eval_seed=seed,
                            eval_split=args.split)
    return _metrics(_evaluate(load_backbone(args), ns, out), out / "results.json")


def _run_variant(args: argparse.Namespace, seed: int, variant: str, pool: Path, out: Path) -> dict[str, float]:
    from asg.train.cli import run_train

    overrides, _ = VARIANTS[variant]
    ns = argparse.Namespace(
        backbone=args.backbone, preset=args.preset, model=args.model, device=default_device(args),
        dtype=args.dtype, adapters=None, images=pool, recipe=args.recipe,
        set=[f"seed={seed}", *overrides, *(args.set or [])], steps=args.steps, out=out, resume=_interrupted(out),
        eval="shapes",
        eval_questions=args.questions, eval_per_tag=args.per_tag, eval_seed=seed, eval_split=args.split,
        eval_before=False,
    )
    summary = run_train(ns)
    after = Path(summary["run"]) / "eval_after"
    return _metrics(json.loads((after / "summary.json").read_text()), after / "results.json")


def _interrupted(out: Path) -> Path | None:
    """A run an earlier invocation left unfinished in ``out``: continued from its latest checkpoint (the
    returned path), or, with none yet, moved aside (never deleted) so that a new run starts there."""
    from asg.train.checkpoint import latest_checkpoint
    from asg.train.run import RunDir

    if not RunDir.holds_run(out):
        return None
    if latest_checkpoint(out) is not None:
        print(f"[shapes] {out}: continuing an interrupted run from its latest checkpoint", flush=True)
        return out
    aside = out.with_name(out.name + ".interrupted")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.interrupted{n}")
    out.rename(aside)
    print(f"[shapes] {out}: an interrupted run without a checkpoint, moved to {aside}; starting afresh", flush=True)
    return None


def _cached(path: Path, make: Any) -> dict[str, float]:
    """The metrics saved at ``path``, or ``make()`` saved there (write-then-rename: a crash loses nothing)."""
    if path.is_file():
        return json.loads(path.read_text())
    from asg.train.run import atomic_write_text

    value = make()
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")
    return value


def _check_settings(work: Path, args: argparse.Namespace) -> None:
    """``--work`` caches results per (seed, variant) only, so it must not mix settings: the first invocation
    writes them to ``settings.json`` and a later one with other settings stops, naming the differences."""
    from asg.train.run import atomic_write_text

    settings = {"split": args.split, "recipe": args.recipe, "set": list(args.set or []), "steps": args.steps,
                "images": args.images, "questions": args.questions, "per_tag": args.per_tag,
                "backbone": args.backbone, "preset": args.preset, "model": str(args.model) if args.model else None}
    path = work / "settings.json"
    if not path.is_file():
        atomic_write_text(path, json.dumps(settings, indent=1) + "\n")
        return
    differ = _differences(json.loads(path.read_text()), settings)
    if differ:
        raise SystemExit(f"shapes: --work {work} holds results made with other settings ({'; '.join(differ)}); "
                         "its saved runs would be reused as if they were these. Use a new --work, or the same settings.")


def collect(args: argparse.Namespace) -> dict[str, Any]:
    from asg.shapes import write_unlabeled_folder

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    _check_settings(work, args)
    results: dict[str, dict[str, dict[str, list[float]]]] = {}
    t0 = time.time()
    for seed in range(args.seeds):
        sdir = work / f"seed{seed}"
        sdir.mkdir(exist_ok=True)
        pool = sdir / "pool"
        if not (pool.is_dir() and len(list(pool.glob("*.png"))) == args.images):
            write_unlabeled_folder(pool, n=args.images, seed=1000 + seed, split="pool")
        print(f"[shapes] seed {seed}: base on the {args.split} split", flush=True)
        base = _cached(sdir / "base.json", lambda: _evaluate_base(args, seed, sdir / "eval_base"))
        for variant in args.variants:
            print(f"[shapes] seed {seed}: variant {variant} ({time.time() - t0:.0f} s so far)", flush=True)
            evolved = _cached(sdir / f"{variant}.json",
                              lambda: _run_variant(args, seed, variant, pool, sdir / f"run-{variant}"))
            per = results.setdefault(variant, {})
            for metric, value in evolved.items():
                per.setdefault(metric, {"base": [], "evolved": []})
                per[metric]["base"].append(base.get(metric, float("nan")))
                per[metric]["evolved"].append(value)
    results["_meta"] = new_meta(  # type: ignore[assignment]
        "shapes", args, harness="asg ShapesWorld (held-out VQA + GenEval-mini)",
        harness_version=package_versions(["asg-core"])["asg-core"], task_variant=f"ShapesWorld {args.split} split",
        prompt_set=f"{args.questions} VQA questions, {args.per_tag} GenEval-mini prompts per category",
        judge="ShapesWorld ground truth and detector", seeds=list(range(args.seeds)))
    results["_meta"].update({  # type: ignore[union-attr]
        "n_seeds": args.seeds, "variants": list(args.variants), **_settings(args),
        "seconds_this_invocation": round(time.time() - t0, 1),
        "machine": f"{platform.processor() or platform.machine()}, {_threads()} threads, Python {platform.python_version()}",
        "descriptions": {v: VARIANTS[v][1] for v in args.variants},
    })
    finish_meta(results["_meta"])  # type: ignore[arg-type]
    return results


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two results comparable, as ``_meta`` records it (``set``: the extra overrides)."""
    return {"split": args.split, "steps": args.steps, "images": args.images, "questions": args.questions,
            "per_tag": args.per_tag, "recipe": args.recipe, "set": list(args.set or []),
            "model": str(args.model) if args.model else f"{args.backbone} {args.preset or 'default preset'}"}


def _differences(saved: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    """``"<key> <saved value> there, <value now> now"`` for every key of ``now`` whose value ``saved`` does not
    share (a key ``saved`` lacks counts as its ``defaults`` value, else None)."""
    defaults = defaults or {}
    return [f"{key} {saved.get(key, defaults.get(key))!r} there, {value!r} now"
            for key, value in now.items() if saved.get(key, defaults.get(key)) != value]


def _check_mergeable(saved: dict[str, Any], args: argparse.Namespace, out: Path) -> None:
    """Refuse ``--merge`` into a result made with other settings, naming each difference."""
    # results written before ``set`` was recorded had no overrides
    differ = _differences(saved.get("_meta", {}), {"n_seeds": args.seeds, **_settings(args)}, {"set": []})
    if differ:
        raise SystemExit(f"shapes: --merge: {out} holds results made with other settings ({'; '.join(differ)}); "
                         "merging would put incomparable numbers in one table. Use another --out, or the same settings.")


def _part(meta: dict[str, Any]) -> dict[str, Any]:
    return {key: meta.get(key) for key in ("command", "variants", "started", "seconds", "machine", "git_revision")}


def merge(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``saved``'s variants with ``new``'s added (a variant in both: ``new``'s), and a ``_meta`` listing
    every contributing invocation under ``parts``. The base is measured again by every invocation, so a
    base that differs between them (another torch, another machine) is reported, not hidden."""
    old_meta, new_meta_ = saved.get("_meta", {}), new["_meta"]
    kept = [v for v in saved if not v.startswith("_") and v not in new]
    added = [v for v in new if not v.startswith("_")]
    variants = kept + added
    merged: dict[str, Any] = {**{v: saved[v] for v in kept}, **{v: new[v] for v in added}}
    parts = [p for p in old_meta.get("parts", [_part(old_meta)]) if set(p.get("variants") or []) - set(new_meta_["variants"])]
    meta = dict(new_meta_)
    meta.update({
        "variants": variants,
        "descriptions": {**old_meta.get("descriptions", {}), **new_meta_.get("descriptions", {})},
        "parts": parts + [_part(new_meta_)],
    })
    mismatch = []
    if kept:  # every variant of one invocation has the same base: compare with one saved variant's
        ref = kept[0]
        for v in added:
            for metric in ("vqa_accuracy", "geneval_mini"):
                a, b = saved[ref][metric]["base"], new[v][metric]["base"]
                if any(abs(x - y) > 1e-6 for x, y in zip(a, b)):
                    mismatch.append(f"{metric}: {a} ({ref}) against {b} ({v})")
    if mismatch:
        meta["base_mismatch"] = mismatch
        print("[shapes] warning: the base measured by this invocation differs from the saved one: "
              + "; ".join(mismatch), flush=True)
    merged["_meta"] = meta
    return merged


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summary_table(results: dict[str, Any]) -> str:
    """Markdown, one row per variant: the two headline metrics (base → evolved, gain mean ± std, ✓ when the
    gain is positive and larger than two standard deviations) and the count / shape top-answer shares."""
    lines = ["| variant | what changes | VQA: base → evolved | VQA gain | GenEval-mini: base → evolved | "
             "GenEval-mini gain | top-answer share, count / shape: base → evolved |",
             "|---|---|---|---|---|---|---|"]
    descriptions = results.get("_meta", {}).get("descriptions", {})
    seeds = 0
    for variant, per in results.items():
        if variant.startswith("_"):
            continue
        cells = []
        for metric in ("vqa_accuracy", "geneval_mini"):
            b, e = per[metric]["base"], per[metric]["evolved"]
            gains = [y - x for x, y in zip(b, e)]
            seeds = len(gains)
            gm, gs = _mean_std(gains)
            mark = " ✓" if len(gains) > 1 and gm > 0 and gm > 2 * gs else ""
            cells += [f"{_mean_std(b)[0]:.1f} → {_mean_std(e)[0]:.1f}", f"{gm:+.1f} ± {gs:.1f}{mark}"]
        shares = [f"{_mean_std(per[m]['base'])[0]:.0f} → {_mean_std(per[m]['evolved'])[0]:.0f}"
                  if m in per and not any(math.isnan(x) for x in per[m]["base"]) else "–"
                  for m in ("vqa_count_top_answer_share", "vqa_shape_top_answer_share")]
        lines.append(f"| `{variant}` | {descriptions.get(variant, '')} | " + " | ".join(cells) + f" | {' / '.join(shares)} |")
    lines += ["", f"{seeds} seed(s), mean over seeds; ✓ = gain larger than two standard deviations across seeds"]
    return "\n".join(lines)


def table(results: dict[str, Any]) -> str:
    """Markdown: per variant, base and evolved (mean ± std over seeds) and the gain, for the two headline
    metrics and every per-type / per-category metric."""
    lines = ["| variant | metric | base | evolved | gain | gain > 2 std |", "|---|---|---:|---:|---:|:---:|"]
    for variant, per in results.items():
        if variant.startswith("_"):
            continue
        order = ["vqa_accuracy", "geneval_mini"] + sorted(k for k in per if k not in ("vqa_accuracy", "geneval_mini"))
        for metric in order:
            b, e = per[metric]["base"], per[metric]["evolved"]
            gains = [y - x for x, y in zip(b, e)]
            (bm, bs), (em, es), (gm, gs) = _mean_std(b), _mean_std(e), _mean_std(gains)
            sig = "yes" if len(gains) > 1 and gm > 2 * gs else ("no" if len(gains) > 1 else "n/a (1 seed)")
            name = f"**{metric}**" if metric in ("vqa_accuracy", "geneval_mini") else metric
            lines.append(f"| {variant} | {name} | {bm:.1f} ± {bs:.1f} | {em:.1f} ± {es:.1f} | {gm:+.1f} ± {gs:.1f} | {sig} |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Gain (evolved - base) per variant for VQA accuracy and GenEval-mini, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in results if not v.startswith("_")]
    split = results.get("_meta", {}).get("split", "test")
    vqa_title = "held-out VQA accuracy" if split == "test" else f"VQA accuracy ({split} split)"
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), constrained_layout=True)
    for ax, metric, title in zip(axes, ("vqa_accuracy", "geneval_mini"), (vqa_title, "GenEval-mini overall")):
        stats = [_mean_std([e - b for b, e in zip(results[v][metric]["base"], results[v][metric]["evolved"])]) for v in variants]
        ax.bar(variants, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4,
               color=["#2b6cb0" if v == "full" else "#a0aec0" for v in variants])
        ax.axhline(0, color="black", lw=0.8)
        ax.axhline(5, color="#c53030", lw=0.8, ls="--", label="target +5")
        ax.set_title(f"{title}: gain over the base (points)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _paths(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return RESULTS / ("shapes.json" if args.split == "test" else f"shapes-{args.split}.json")


def write(results: dict[str, Any], out: Path) -> None:
    meta = results.get("_meta", {})
    text = summary_table(results) + "\n\n" + table(results)
    commands = [p.get("command") or "" for p in meta.get("parts", [])] or [meta.get("command", "")]
    how = "\n".join(f"`{c}`  " for c in commands).rstrip()
    if len(commands) > 1:
        how = "Merged from these invocations (`--merge`):\n\n" + how
    write_result(out, results, f"# ShapesWorld self-evolution ({meta.get('split', 'test')} split)\n\n{how}\n\n{text}")
    plot(results, out.with_suffix(".png"))
    print(text)
    print(f"\nwrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "run", None) is not None:
        raise SystemExit("shapes: --run does not apply here: the suite evolves the base itself. To measure an "
                         "existing run on ShapesWorld use `python -m benchmarks geneval_mini --run RUN` or `asg eval`.")
    out = _paths(args)
    if args.report:
        if not out.is_file():
            raise SystemExit(f"--report: no results at {out}; run the suite first")
        results = json.loads(out.read_text())
    else:
        saved = None
        if args.merge and out.is_file():
            saved = json.loads(out.read_text())
            _check_mergeable(saved, args, out)  # before hours of runs, not after
        results = collect(args)
        if saved is not None:
            results = merge(saved, results)
    write(results, out)
    return results


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks shapes", description=__doc__.split("\n\n")[0])
    d = SIZES["full"]
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="default: all")
    p.add_argument("--split", choices=("test", "val"), default="test", help="evaluation split (tune on val only)")
    p.add_argument("--steps", type=int, default=d["steps"], help=f"loop steps per run (default {d['steps']})")
    p.add_argument("--images", type=int, default=d["images"], help=f"unlabeled pool size (default {d['images']})")
    p.add_argument("--questions", type=int, default=d["questions"], help="VQA questions per evaluation")
    p.add_argument("--per-tag", type=int, default=d["per_tag"], help="GenEval-mini prompts per category")
    p.add_argument("--recipe", default="shapes",
                   help="the recipe every variant starts from (default shapes; the test-split results of "
                        "2026-11-29 used demo at 60 steps)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra recipe override for every variant")
    add_backbone_args(p)  # --model: e.g. a tiny directory written by `asg tiny pretrain` (default: shipped base)
    p.add_argument("--work", default="runs/benchmarks/shapes", help="run directories and per-run results (resumable)")
    p.add_argument("--out", help="result file (default benchmarks/results/shapes[-val].json)")
    p.add_argument("--report", action="store_true", help="re-render table and plot from the saved results only")
    p.add_argument("--merge", action="store_true",
                   help="add this invocation's variants to the results already at --out (same settings required) "
                        "instead of overwriting them")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
