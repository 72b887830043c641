"""Handlers of ``asg train``, ``asg ask`` and ``asg generate`` (argument parsing lives in asg.cli)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from asg.errors import ConfigError


def load_backbone(args: Any, device: Any = None) -> Any:
    """The backbone of ``--backbone/--preset/--model``, with ``--adapters`` loaded when given; what its
    plugin code raises (``load`` and every primitive) names the backbone, plugin and primitive."""
    from asg.plugins import attributed, get_backbone_class, guard_backbone

    cls = get_backbone_class(args.backbone)
    device = str(device or getattr(args, "device", None) or "cpu")
    kwargs = {"dtype": args.dtype} if getattr(args, "dtype", None) else {}
    with attributed(args.backbone, "load"):
        backbone = cls.load(preset=getattr(args, "preset", None), model=getattr(args, "model", None), device=device, **kwargs)
    backbone = guard_backbone(backbone, args.backbone)
    if getattr(args, "adapters", None) is not None:
        load_adapters(backbone, Path(args.adapters))
    return backbone


def load_adapters(backbone: Any, path: Path) -> None:
    """Trained adapters from a ``.safetensors`` file (``save_trainable``) or a run/checkpoint directory."""
    if path.suffix == ".safetensors":
        backbone.load_trainable(path)
        return
    from asg.train.checkpoint import load_checkpoint
    from asg.train.trainer import MODEL_PREFIX

    _, tensors, _ = load_checkpoint(path)
    backbone.load_trainable_state_dict({k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)})


def _recipe(args: Any) -> Any:
    from asg.train.recipe import load_recipe

    overrides = list(getattr(args, "set", None) or [])
    if getattr(args, "steps", None) is not None:
        overrides.append(f"schedule.steps={args.steps}")
    return load_recipe(args.recipe, overrides)


def run_train(args: Any) -> dict[str, Any]:
    """``asg train``: the self-evolving loop, optionally measured before and after on ShapesWorld."""
    from asg.train.data import ImagePool
    from asg.train.dist import Dist
    from asg.train.report import write_plots, write_report
    from asg.train.run import RunDir
    from asg.train.trainer import Trainer

    recipe = _recipe(args)
    dist = Dist.create(cpu=(args.device or "cpu") == "cpu")
    if args.out is None and args.resume is None:
        raise ConfigError("asg train needs --out RUN_DIR (or --resume RUN_DIR to continue a run)")
    out = Path(args.out) if args.out is not None else _run_dir_of(Path(args.resume))
    # the pool is checked before any model is loaded: a folder without one usable image fails in seconds
    pool = ImagePool(args.images, seed=recipe.seed)
    pool.verify(report=dist.is_main)
    backbone = load_backbone(args, device=dist.device)
    pool.image_size = backbone.image_size
    config = {"recipe": recipe.to_dict(), "backbone": args.backbone, "preset": args.preset,
              "model": str(args.model) if args.model else None, "images": str(args.images), "pool_size": len(pool),
              "world_size": dist.world_size, "eval": args.eval}
    run = RunDir.create(out, config=config, resume=args.resume is not None) if dist.is_main else RunDir(out)
    before = after = None
    # eval_before=False (benchmark suites that measure the base once per seed) skips the first measurement
    if args.eval and args.resume is None and dist.is_main and getattr(args, "eval_before", True):
        before = _evaluate(backbone, args, run.path / "eval_before")
    trainer = Trainer(backbone, recipe, pool, run, dist=dist)
    if args.resume is not None:
        trainer.resume(args.resume)
    trainer.train()
    summary: dict[str, Any] = {"run": str(run.path), "steps": trainer.step}
    if dist.is_main:
        if args.eval:
            before = before or _read_json(run.path / "eval_before" / "summary.json")
            after = _evaluate(backbone, args, run.path / "eval_after")
        write_plots(run.path)
        report = write_report(run.path, before=before, after=after)
        summary["report"] = str(report)
        if before and after:
            summary["before"], summary["after"] = before, after
    return summary


def _run_dir_of(path: Path) -> Path:
    """The run directory holding ``path`` (a run dir, a checkpoint dir or a checkpoint's state file)."""
    for p in (path, *path.parents):
        if (p / "config.json").is_file() and (p / "checkpoints").is_dir():
            return p
    raise ConfigError(f"--resume {path}: no run directory (config.json + checkpoints/) at or above it")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _evaluate(backbone: Any, args: Any, out: Path) -> dict[str, Any]:
    """Held-out ShapesWorld: VQA accuracy (solver role) and GenEval-mini (generator role)."""
    from asg.evaluation import evaluate_shapes, write_report as write_eval_report
    from asg.progress import progress_bar

    q, per_tag = args.eval_questions, args.eval_per_tag
    with progress_bar(total=q + per_tag * 6 * 4, desc=f"evaluating ({out.name})") as bar:
        done = {"vqa": 0, "geneval": 0}

        def report(phase: str, i: int, n: int) -> None:
            done[phase] = i
            bar.update_to(done["vqa"] + done["geneval"])

        # tuning reads the "val" split (eval_split, benchmark suites only); everything reported reads "test"
        split = getattr(args, "eval_split", "test")
        results = evaluate_shapes(backbone, split=split, seed=args.eval_seed, questions=q, per_tag=per_tag, progress=report)
    write_eval_report(results, out, title=f"{'held-out' if split == 'test' else split} ShapesWorld ({out.name})")
    summary = {"vqa_accuracy": results["vqa"]["accuracy"], "geneval_mini": results["geneval_mini"]["overall"],
               "vqa_by_type": results["vqa"]["per_qtype"], "geneval_by_category": results["geneval_mini"]["per_tag"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def run_ask(args: Any) -> dict[str, Any]:
    """``asg ask``: one U-step on one image without updates — questions, answers, votes, H_sc, STE, rewards."""
    from PIL import Image

    from asg.train.data import load_rgb
    from asg.train.trainer import Trainer

    path = Path(args.image)
    if not path.is_file():
        raise ConfigError(f"--image {path} does not exist")
    image = load_rgb(path)  # the pool's reader (upright, RGB, first frame; DataError naming the file), before the model
    recipe = _recipe(argparse_like(args, extra=["solver.update=false", "proposer.update=false", "generator.update=false"]))
    backbone = load_backbone(args)
    image = image.resize(tuple(reversed(backbone.image_size)), Image.BICUBIC)
    from asg.train.ustep import understanding_step

    trainer = Trainer(backbone, recipe, pool=None, run=None)
    metrics, rollout = understanding_step(trainer, image, args.seed + 1)
    return {"image": str(path), **rollout, "metrics": {k: v for k, v in metrics.items() if v is not None}}


def argparse_like(args: Any, *, extra: list[str]) -> Any:
    """A copy of ``args`` whose ``--set`` list is extended with ``extra``."""
    import argparse

    ns = argparse.Namespace(**vars(args))
    ns.set = list(getattr(args, "set", None) or []) + extra
    return ns


def print_ask(result: dict[str, Any], stream: Any = None) -> None:
    """The human view of ``asg ask`` (on ``stream``, default: the current ``sys.stdout``)."""
    w = (stream or sys.stdout).write
    w(f"image: {result['image']}\n\nProposer asked ({result['desired']} wanted):\n")
    for i, (q, ste, b) in enumerate(zip(result["candidates"], result["spot_ste"], result["spot_buckets"])):
        mark = "→" if q == result.get("question") else " "
        w(f" {mark} {i + 1}. {q}   [STE {ste:.3f} nats, spot {b}]\n")
    if result.get("question") is None:
        w("\nno candidate passed the certificate; proposer reward "
          f"{result['proposer_reward']:+.3f}\n")
        return
    w(f"\nSolver, {len(result['answers'])} answers under Prompt-Perturbed Sampling:\n")
    for i, (a, lab, r) in enumerate(zip(result["answers"], result["labels"], result["solver_rewards"])):
        w(f"  {'greedy' if i == 0 else f'PPS {i}':>7}: {a!r:<24} label {lab!r:<10} reward {r:+.3f}\n")
    votes: dict[str, int] = {}
    for lab in result["labels"]:
        votes[lab] = votes.get(lab, 0) + 1
    split = " / ".join(f"{k} ×{v}" for k, v in sorted(votes.items(), key=lambda kv: -kv[1]))
    w(f"\nvotes: {split}   majority {result['majority']!r}\n")
    w(f"H_sc {result['h_sc']:.3f} nats   STE {result['ste']:.3f} nats (d_ste {result['d_ste']:.3f})   "
      f"bucket {result['bucket']}   proposer reward {result['proposer_reward']:+.3f}\n")


def run_generate(args: Any) -> list[Path]:
    """``asg generate``: images for a prompt under the generator role, as PNG files and a grid."""
    from asg.evaluation import grid

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    backbone = load_backbone(args)
    with backbone.use_role("generator"):
        images = backbone.generate_images([args.prompt] * args.n, seed=args.seed, num_steps=args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, g in enumerate(images):
        p = out / f"image_{i:02d}.png"
        g.image.save(p)
        paths.append(p)
    grid([g.image.resize((g.image.width * 2, g.image.height * 2)) for g in images], cols=min(4, args.n)).save(out / "grid.png")
    (out / "prompt.txt").write_text(args.prompt + "\n")
    return paths


def format_before_after(rows: dict[str, dict[str, float | None]]) -> str:
    """The before/after table of a report as aligned text (what `asg train --eval` and `asg demo` print)."""
    def cell(v: float | None, sign: bool = False) -> str:
        return "–" if v is None else (f"{v:+.1f}" if sign else f"{v:.1f}")

    width = max([len("metric"), *(len(k) for k in rows)])
    lines = [f"{'metric':<{width}}  {'before':>7}  {'after':>7}  {'delta':>7}"]
    for name, r in rows.items():
        lines.append(f"{name:<{width}}  {cell(r['before']):>7}  {cell(r['after']):>7}  {cell(r['delta'], True):>7}")
    return "\n".join(lines)
