"""Does the vision tower keep what a shape is? Linear probes on its features, layer by layer.

    python -m benchmarks vision_probe                          # the shipped tiny base
    python -m benchmarks vision_probe --model runs/tiny-v2     # a model written by `asg tiny pretrain`
    python -m benchmarks vision_probe --preset init            # the same architecture, randomly initialised

Scenes with a single object (from a seed namespace no model was trained on) go through the vision tower.
For each layer's output (0 = patch + position embeddings, then one per encoder layer, then the
projector that feeds the language model) a linear classifier is fitted on the flattened features of
the training scenes to predict the object's shape, and scored on held-out scenes.

Read the **train** accuracy as well as the test accuracy: with thousands of feature dimensions and a
few thousand scenes, a linear probe separates almost any informative representation on its training
set. Train accuracy near chance (33 % for three shapes) therefore means the features no longer carry
the shape at all: the tower has collapsed. Results go to ``benchmarks/results/vision-probe[-<name>].json``
and a markdown table beside it.

``--supervised STEPS`` adds a second question: can this tower *learn* the shape when it is told the
answer directly? The tower (a copy, from the model's weights) and a linear head on its max-pooled last
layer are trained with cross-entropy on freshly drawn single-object scenes for STEPS steps (AdamW, lr
5e-4, batch 32), and the held-out accuracy is reported every 100 steps. If it learns quickly here but
not from the language model's answer tokens, the limit is the training signal, not the architecture.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, machine, write_result

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def probe_accuracy(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, classes: int, steps: int = 300,
                   l2: float = 1e-3) -> tuple[float, float]:
    """(train, test) accuracy of a multinomial logistic regression on features standardised with the
    training set's statistics (zero init, Adam, full batch, ``steps`` steps, L2 penalty ``l2``)."""
    import torch

    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError("features and labels differ in length")
    mean, std = x_train.mean(0), x_train.std(0) + 1e-5
    xtr, xte = (x_train - mean) / std, (x_test - mean) / std
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, y_train) + l2 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        train = float(((xtr @ w + b).argmax(1) == y_train).float().mean())
        test = float(((xte @ w + b).argmax(1) == y_test).float().mean())
    return train, test


def features(backbone: Any, images: list[Any], batch: int = 200) -> dict[str, Any]:
    """Flattened features of every vision-tower layer and of the projector, as (N, tokens x width)."""
    import torch

    from asg.backbones.tiny.perception import pixel_values

    vlm = backbone.net["vlm"].model
    out: dict[str, list[Any]] = {}
    with torch.no_grad():
        for start in range(0, len(images), batch):
            hidden = vlm.vision_tower(pixel_values(backbone, images[start:start + batch]), output_hidden_states=True).hidden_states
            for layer, h in enumerate(hidden):
                out.setdefault(f"layer {layer}", []).append(h.reshape(len(h), -1).float())
            proj = vlm.multi_modal_projector(hidden[-1])
            out.setdefault("projector", []).append(proj.reshape(len(proj), -1).float())
    return {k: torch.cat(v) for k, v in out.items()}


def supervised_curve(backbone: Any, scenes_fn: Any, test: tuple[Any, Any], *, classes: int, steps: int,
                     batch: int = 32, lr: float = 5e-4, every: int = 100, seed: int = 0) -> list[dict[str, float]]:
    """Train a copy of the vision tower + a linear head on (pixels, shape) batches from ``scenes_fn(n)``;
    held-out accuracy (percent) on ``test`` = (pixels, labels) every ``every`` steps and at the end."""
    import copy

    import torch

    torch.manual_seed(seed)
    tower = copy.deepcopy(backbone.net["vlm"].model.vision_tower).float().train().requires_grad_(True)
    head = torch.nn.Linear(backbone.config.vision_hidden, classes)
    opt = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=lr)
    curve = []
    for step in range(1, steps + 1):
        x, labels = scenes_fn(batch)
        loss = torch.nn.functional.cross_entropy(head(tower(x.float()).last_hidden_state.max(1).values), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            with torch.no_grad():
                pred = head(tower(test[0].float()).last_hidden_state.max(1).values).argmax(1)
            curve.append({"step": step, "loss": float(loss), "test": 100.0 * float((pred == test[1]).float().mean())})
    return curve


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from asg.backbones.tiny.model import TinyBackbone
    from asg.backbones.tiny.perception import pixel_values
    from asg.shapes import render
    from asg.shapes.sampling import sample_scene
    from asg.shapes.vocab import SHAPES

    if args.train < 3 or args.test < 1 or args.supervised < 0:
        raise SystemExit("--train must be at least 3, --test at least 1 and --supervised at least 0")
    t0 = time.time()
    backbone = TinyBackbone.load(preset=args.preset, model=args.model, adapters=False)
    rng = np.random.default_rng([args.seed, 4242])  # a stream no split of the pretraining or the loop uses
    scenes = [sample_scene(rng, 1, 1) for _ in range(args.train + args.test)]
    size = backbone.config.image_size
    labels = torch.tensor([SHAPES.index(s.objects[0].shape) for s in scenes])
    images = [render(s, size) for s in scenes]
    feats = features(backbone, images)
    rows = {}
    for name, x in feats.items():
        train, test = probe_accuracy(x[:args.train], labels[:args.train], x[args.train:], labels[args.train:],
                                     classes=len(SHAPES), steps=args.steps)
        rows[name] = {"dims": int(x.shape[1]), "train": 100.0 * train, "test": 100.0 * test}
        print(f"[vision_probe] {name}: train {100 * train:.1f} %, test {100 * test:.1f} %", flush=True)
    supervised = []
    if args.supervised:

        def draw(n: int) -> tuple[Any, Any]:
            batch = [sample_scene(rng, 1, 1) for _ in range(n)]
            return (pixel_values(backbone, [render(s, size) for s in batch]),
                    torch.tensor([SHAPES.index(s.objects[0].shape) for s in batch]))

        held_out = (pixel_values(backbone, images[args.train:]), labels[args.train:])
        supervised = supervised_curve(backbone, draw, held_out, classes=len(SHAPES), steps=args.supervised,
                                      seed=args.seed)
        for point in supervised:
            print(f"[vision_probe] supervised step {point['step']}: held-out {point['test']:.1f} %", flush=True)
    return {
        "rows": rows,
        "supervised": supervised,
        "_meta": {
            "command": command_line("vision_probe"),
            "model": str(args.model) if args.model else f"tiny preset {args.preset or 'base'}",
            "train_scenes": args.train, "test_scenes": args.test, "steps": args.steps, "seed": args.seed,
            "chance": 100.0 / len(SHAPES), "seconds": round(time.time() - t0, 1),
            "machine": machine(),
        },
    }


def table(results: dict[str, Any]) -> str:
    meta = results["_meta"]
    lines = [f"Linear probe of the single object's shape (chance {meta['chance']:.1f} %), {meta['model']}, "
             f"{meta['train_scenes']} training / {meta['test_scenes']} held-out scenes.", "",
             "| features | dims | train accuracy % | held-out accuracy % |", "|---|---:|---:|---:|"]
    for name, row in results["rows"].items():
        lines.append(f"| {name} | {row['dims']} | {row['train']:.1f} | {row['test']:.1f} |")
    if results.get("supervised"):
        lines += ["", "The tower trained directly on the shape (max-pooled last layer + linear head, fresh scenes):", "",
                  "| step | held-out accuracy % |", "|---:|---:|"]
        lines += [f"| {p['step']} | {p['test']:.1f} |" for p in results["supervised"]]
    lines += ["", f"`{meta['command']}` ({meta['seconds']} s, {meta['machine']})"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    results = measure(args)
    write_result(Path(args.out) if args.out else RESULTS / "vision-probe.json", results, table(results))
    print(table(results))
    return results


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks vision_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="a tiny directory written by `asg tiny pretrain`")
    p.add_argument("--preset", choices=("base", "init"), default=None, help="tiny preset (default base)")
    p.add_argument("--train", type=int, default=3000, help="training scenes of the probe (default 3000)")
    p.add_argument("--test", type=int, default=1000, help="held-out scenes of the probe (default 1000)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps of each probe (default 300)")
    p.add_argument("--seed", type=int, default=0, help="scene and probe seed (default 0)")
    p.add_argument("--supervised", type=int, default=0, metavar="STEPS",
                   help="also train the tower directly on the shape for STEPS steps (default 0: off)")
    p.add_argument("--out", help="result file (default benchmarks/results/vision-probe.json)")
    return p
