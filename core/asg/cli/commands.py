"""Sub-command definitions. Each ``add_*`` declares its arguments; handlers import what they need."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Sub = Any  # argparse._SubParsersAction


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


# -- asg plugins ------------------------------------------------------------------------------------
def add_plugins(sub: Sub) -> None:
    p = sub.add_parser("plugins", help="list installed plugins as JSON (never imports torch)")
    p.add_argument("--hook", help="only plugins implementing this hook, e.g. register_backbones")
    p.set_defaults(func=run_plugins)


def run_plugins(args: argparse.Namespace) -> int:
    from asg.plugins import get_host

    records = get_host().to_json()
    if args.hook:
        records = [r for r in records if args.hook in r["hooks"]]
    _print_json(records)
    return 0


# -- asg inspect ------------------------------------------------------------------------------------
def add_inspect(sub: Sub) -> None:
    p = sub.add_parser("inspect", help="build a backbone on the meta device: parameter counts, memory, manifest")
    p.add_argument("backbone", help="registered backbone name (see `asg plugins`)")
    p.add_argument("--preset", help="configuration preset (default: the backbone's default)")
    p.add_argument("--manifest", action="store_true", help="print every parameter/buffer name, shape and dtype as JSON")
    p.set_defaults(func=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from asg.inspect import inspect_backbone

    report = inspect_backbone(args.backbone, preset=args.preset, manifest=args.manifest)
    _print_json(report)
    return 0


# -- asg data shapes --------------------------------------------------------------------------------
def add_data(sub: Sub) -> None:
    p = sub.add_parser("data", help="write datasets")
    dsub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    s = dsub.add_parser("shapes", help="write an UNLABELED ShapesWorld image folder (labels go to a separate file)")
    s.add_argument("--out", required=True, type=Path, help="image folder to create (must be empty or absent)")
    s.add_argument("--n", required=True, type=int, help="number of images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--split", default="pool", help="seed namespace: pretrain, pool, val or test (default: pool)")
    s.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    s.add_argument("--labels", type=Path, help="ground-truth file (default: <out>.labels.jsonl beside the folder)")
    s.set_defaults(func=run_data_shapes)


def run_data_shapes(args: argparse.Namespace) -> int:
    from asg.errors import DataError
    from asg.progress import progress_bar
    from asg.shapes import write_unlabeled_folder

    with progress_bar(total=args.n, desc="rendering ShapesWorld") as bar:
        try:
            labels = write_unlabeled_folder(
                args.out, n=args.n, seed=args.seed, split=args.split, size=args.size, labels_path=args.labels,
                progress=lambda i, n: bar.update_to(i),
            )
        except (ValueError, FileExistsError) as exc:
            raise DataError(str(exc)) from exc
    print(f"wrote {args.n} images to {args.out} (labels, never read by training: {labels})")
    return 0


# -- asg tiny ... -----------------------------------------------------------------------------------
def add_tiny(sub: Sub) -> None:
    p = sub.add_parser("tiny", help="the embedded `tiny` backbone: pretraining and export")
    tsub = p.add_subparsers(dest="tiny_command", metavar="ACTION", required=True)
    pre = tsub.add_parser("pretrain", help="pretrain `tiny` on a small labeled ShapesWorld set (CPU)")
    from asg.backbones.tiny.pretrain_config import add_arguments

    add_arguments(pre)
    pre.set_defaults(func=run_tiny_pretrain)
    exp = tsub.add_parser("export", help="copy a `tiny` model directory with its weights stored as float16 "
                                         "(how the shipped weights are stored) or bfloat16")
    exp.add_argument("model", type=Path, help="a directory written by `asg tiny pretrain` or `save_pretrained`")
    exp.add_argument("--out", type=Path, required=True, help="new directory (never overwritten)")
    exp.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"],
                     help="storage type of model.safetensors (default float16); the model still runs in float32")
    exp.set_defaults(func=run_tiny_export)


def run_tiny_pretrain(args: argparse.Namespace) -> int:
    from asg.backbones.tiny.pretrain import pretrain_from_args

    pretrain_from_args(args)
    return 0


def run_tiny_export(args: argparse.Namespace) -> int:
    from asg.backbones.tiny.export import export

    record = export(args.model, args.out, args.dtype)
    size = (args.out / "model.safetensors").stat().st_size / 2**20
    print(f"wrote {args.out} ({record['tensors']} tensors as {record['dtype']}, {size:.1f} MiB; largest rounding "
          f"error {record['max_abs_rounding_error']:.2g} in {record['worst_tensor']})")
    return 0


# -- asg eval ---------------------------------------------------------------------------------------
def add_eval(sub: Sub) -> None:
    p = sub.add_parser("eval", help="measure a backbone on held-out ShapesWorld (VQA accuracy, GenEval-mini)")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--preset", help="configuration preset")
    p.add_argument("--model", type=Path, help="local checkpoint directory")
    p.add_argument("--suite", default="shapes", choices=["shapes"])
    p.add_argument("--split", default="test", choices=["val", "test"], help="held-out split (tune on val only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--questions", type=int, default=500, help="number of VQA questions")
    p.add_argument("--per-tag", type=int, default=20, help="GenEval-mini prompts per category (4 images each)")
    p.add_argument("--out", type=Path, help="write results.json, report.md and pictures here")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from asg.evaluation import evaluate_shapes_cli

    evaluate_shapes_cli(args)
    return 0


# -- asg train / ask / generate (the self-evolving loop) ------------------------------------------
def _backbone_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default="tiny", help="registered backbone name (see `asg plugins`)")
    p.add_argument("--preset", help="configuration preset of the backbone")
    p.add_argument("--model", type=Path, help="local checkpoint directory (nothing is downloaded)")
    p.add_argument("--device", help="cpu or cuda (default cpu; under accelerate each rank uses its own device)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="weight dtype (default: the backbone's, float32 for the built-in ones)")


def _recipe_args(p: argparse.ArgumentParser, default: str = "e1") -> None:
    p.add_argument("--recipe", default=default, help=f"named recipe (e1 ... e7, demo) or a .json/.toml file (default {default})")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE",
                   help="override one recipe field, e.g. --set solver.sample.n=5 (repeatable)")


def add_train(sub: Sub) -> None:
    p = sub.add_parser("train", help="self-evolve a backbone on a folder of unlabeled images")
    _backbone_args(p)
    p.add_argument("--images", type=Path, required=True, help="folder of unlabeled images (searched recursively)")
    _recipe_args(p)
    p.add_argument("--steps", type=int, help="total global steps (overrides schedule.steps)")
    p.add_argument("--out", type=Path, help="run directory (must be new unless --resume)")
    p.add_argument("--resume", type=Path, help="continue from a run directory, checkpoint directory or state file")
    p.add_argument("--eval", choices=["shapes"], help="measure on held-out ShapesWorld before and after training")
    p.add_argument("--eval-questions", type=int, default=500, help="VQA questions of --eval (default 500)")
    p.add_argument("--eval-per-tag", type=int, default=20, help="GenEval-mini prompts per category of --eval (default 20)")
    p.add_argument("--eval-seed", type=int, default=0)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from asg.train.cli import run_train as train

    summary = train(args)
    _print_outcome(summary)
    return 0


def _print_outcome(summary: dict[str, Any]) -> None:
    """The run directory, its report, and the before/after table read back from report.md."""
    if not summary.get("report"):
        return
    from asg.train.cli import format_before_after
    from asg.train.report import read_before_after_table

    print(f"run: {summary['run']}\nreport: {summary['report']}")
    rows = read_before_after_table(Path(summary["report"]))
    if rows:
        print(format_before_after(rows))


def add_ask(sub: Sub) -> None:
    p = sub.add_parser("ask", help="one image through the loop without updates: questions, N answers, votes, H_sc, STE, rewards")
    _backbone_args(p)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--adapters", type=Path, help="trained adapters: a run directory, checkpoint or .safetensors file")
    _recipe_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.set_defaults(func=run_ask)


def run_ask(args: argparse.Namespace) -> int:
    from asg.train.cli import print_ask, run_ask as ask

    result = ask(args)
    if args.json:
        _print_json(result)
    else:
        print_ask(result)
    return 0


def add_generate(sub: Sub) -> None:
    p = sub.add_parser("generate", help="draw images for a prompt with the generator role")
    _backbone_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--n", type=int, default=4, help="number of images (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="sampling steps (default: the backbone's)")
    p.add_argument("--adapters", type=Path, help="trained adapters: a run directory, checkpoint or .safetensors file")
    p.add_argument("--out", type=Path, default=Path("generated"), help="output folder (default ./generated)")
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from asg.train.cli import run_generate as generate

    paths = generate(args)
    print(f"wrote {len(paths)} images and grid.png to {args.out}")
    return 0


# -- asg demo ---------------------------------------------------------------------------------------
def add_demo(sub: Sub) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded default: tiny self-evolves on an unlabeled "
                                    "ShapesWorld folder, measured before and after on held-out scenes")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo; must be new)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 10 steps, small evaluations")
    p.add_argument("--steps", type=int, help="training steps (default 120; 10 with --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from asg.demo import run_demo as demo

    _print_outcome(demo(out=args.out, quick=args.quick, seed=args.seed, steps=args.steps))
    return 0


REGISTRY: list[Callable[[Sub], None]] = [
    add_plugins, add_inspect, add_data, add_tiny, add_eval, add_train, add_ask, add_generate, add_demo,
]
