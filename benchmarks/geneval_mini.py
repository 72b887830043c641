"""GenEval-mini on ShapesWorld: GenEval's six tasks for any backbone, checked exactly by the ShapesWorld detector.

    python -m benchmarks geneval_mini                              # tiny, test split, 20 prompts per task
    python -m benchmarks geneval_mini --backbone bagel --model /ckpt --run RUN --per-tag 20
    python -m benchmarks geneval_mini --report                     # re-render the saved result

Prompts are ShapesWorld's (``asg.shapes.geneval_prompts``: shapes and colours in GenEval's metadata
format, ``--per-tag`` per task from the ``--split`` scenes), 4 images each, drawn with the Generator
adapter active when the backbone has one (``--run``: the self-evolved model). The checker is GenEval's
rule set on the ShapesWorld detector, which is exact on rendered scenes, so the numbers run on a CPU and
compare base and evolved models, but they are not GenEval scores. Percent per task; overall is the
unweighted mean over tasks. A grid of samples (two prompts per task, green = judged correct) is saved
beside the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks._runner import add_backbone_args, add_report_arg, default_out, load_backbone, load_result, new_meta, save

HARNESS = "asg GenEval-mini (ShapesWorld, exact renderer-based checker)"


def sample_grid(result: dict[str, Any], images: list[Any], per: int, prompts_per_tag: int = 2) -> Any:
    """Tiles of the first ``prompts_per_tag`` prompts of each task, ``per`` images each, framed green
    (correct) or red, captioned with the prompt."""
    from asg.evaluation import _tile, grid

    tiles = []
    shown: dict[str, int] = {}
    samples = result["samples"]
    for start in range(0, len(images), per):
        s = samples[start]
        if shown.get(s["tag"], 0) >= prompts_per_tag:
            continue
        shown[s["tag"]] = shown.get(s["tag"], 0) + 1
        for j in range(per):
            tiles.append(_tile(images[start + j], [s["prompt"][:26], s["prompt"][26:52]], samples[start + j]["correct"]))
    return grid(tiles, per * 2)


def measure(backbone: Any, args: argparse.Namespace, desc: str = "GenEval-mini images") -> tuple[dict[str, Any], list[Any]]:
    """GenEval-mini of ``backbone`` on ``args``'s prompts (``split``, ``seed``, ``per_tag``,
    ``images_per_prompt``, ``batch_size``, ``steps``): ``({"metrics", "counts", "n_prompts",
    "images_per_prompt", "shapes_per_image", "samples"}, images)``. The same arguments give the same
    prompts and image noise, so two backbones measured alike differ only by their weights."""
    from asg.evaluation import evaluate_geneval
    from asg.harness.geneval import default_role
    from asg.progress import progress_bar

    with progress_bar(total=None, desc=desc) as bar:
        def report(i: int, n: int) -> None:
            bar.update_to(i, total=n)

        res = evaluate_geneval(backbone, split=args.split, seed=args.seed, per_tag=args.per_tag,
                               images_per_prompt=args.images_per_prompt, batch_size=args.batch_size,
                               role=default_role(backbone), num_steps=args.steps, progress=report)
    images = res.pop("_images")
    counts: dict[str, dict[str, int]] = {}
    for s in res["samples"]:
        c = counts.setdefault(s["tag"], {"images": 0, "correct": 0})
        c["images"] += 1
        c["correct"] += int(s["correct"])
    metrics = {**{t: float(v) for t, v in res["per_tag"].items()}, "overall": float(res["overall"])}
    return ({"metrics": metrics, "counts": counts, "n_prompts": res["n_prompts"],
             "images_per_prompt": res["images_per_prompt"], "shapes_per_image": res["shapes_per_image"],
             "samples": res["samples"]}, images)


def collect(args: argparse.Namespace, picture: Path) -> dict[str, Any]:
    import asg
    from asg.harness.geneval import default_role

    meta = new_meta("geneval_mini", args, harness=HARNESS, harness_version=asg.__version__,
                    task_variant=f"GenEval-mini {args.split}",
                    prompt_set=f"ShapesWorld {args.split} seed {args.seed}, {args.per_tag} per tag",
                    judge="ShapesWorld detector", seeds=[args.seed], images_per_prompt=args.images_per_prompt,
                    split=args.split)
    backbone = load_backbone(args)
    meta["role"] = default_role(backbone)
    scored, images = measure(backbone, args)
    result = {"_meta": meta, **scored, "picture": picture.name}
    picture.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(result, images, scored["images_per_prompt"]).save(picture)
    return result


def render(result: dict[str, Any]) -> str:
    """Markdown: percent per task and overall, correct / images, and the sample grid."""
    lines = ["| task | score (%) | correct / images |", "|---|---:|---:|"]
    counts = result.get("counts", {})
    for key, value in result["metrics"].items():
        if key == "overall":
            continue
        c = counts.get(key, {})
        lines.append(f"| {key} | {value:.1f} | {c.get('correct', '')} / {c.get('images', '')} |")
    n = sum(c["images"] for c in counts.values())
    k = sum(c["correct"] for c in counts.values())
    lines.append(f"| **overall** (mean over tasks) | {result['metrics']['overall']:.1f} | {k} / {n} |")
    lines += ["", (f"{result.get('n_prompts')} prompts x {result.get('images_per_prompt')} images; an exact "
                   "ShapesWorld checker, not the official GenEval detector.")]
    if result.get("picture"):
        lines += ["", f"![GenEval-mini samples (green: correct)]({result['picture']})"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    out = default_out("geneval_mini", args, None if args.split == "test" else args.split)
    if args.report:
        result = load_result(out)
    else:
        result = collect(args, out.with_suffix(".png"))
    spec = result["_meta"].get("backbone") or {}
    title = f"GenEval-mini ({result['_meta'].get('split', 'test')} split): {spec.get('name', '?')} ({spec.get('stage', '?')})"
    save(out, result, title, render(result))
    return result


def add_measure_args(p: argparse.ArgumentParser) -> None:
    """What :func:`measure` reads besides the seed: split, prompts per task, images, batch, sampling steps."""
    p.add_argument("--split", choices=("val", "test"), default="test", help="prompt split (tune on val only)")
    p.add_argument("--per-tag", type=int, default=20, help="prompts per task (default 20)")
    p.add_argument("--images-per-prompt", type=int, default=4, help="default 4, as GenEval")
    p.add_argument("--batch-size", type=int, default=48, help="images per generate_images call (default 48)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the backbone's)")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks geneval_mini", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    add_measure_args(p)
    p.add_argument("--seed", type=int, default=0, help="prompt choice and image noise (default 0)")
    add_report_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
