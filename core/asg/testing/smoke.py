"""GPU smoke test of a real backbone checkpoint: load, answer, generate, one U and one G step, with time and memory.

    python -m asg.testing.smoke --backbone bagel --model /path/to/BAGEL-7B-MoT [--size 512] [--steps 25]

Each 7B plugin wraps this as ``python -m asg_<name>.smoke``. Skips cleanly (exit 0, one line saying
why) without a CUDA GPU or without the checkpoint folder, so it can sit in any CI. Prints one JSON
object: seconds per phase and peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _peak_gib(device: str) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def run(backbone: str, model: Path, out: Path, size: int, steps: int, *, device: str = "cuda",
        dtype: str = "bfloat16") -> dict[str, Any]:
    """Every phase of the smoke test; ``device``/``dtype`` exist so the flow can be checked on a CPU
    with a tiny checkpoint folder (memory is then not reported)."""
    import torch

    from asg.cli import main as asg_main
    from asg.shapes import render, scene_for
    from asg.train.cli import load_backbone
    from asg.types import Prompt, SamplingParams

    out.mkdir(parents=True, exist_ok=True)
    cuda = device.startswith("cuda")
    report: dict[str, Any] = {"backbone": backbone, "model": str(model), "device": torch.cuda.get_device_name(0) if cuda else device, "dtype": dtype}
    t = time.time()
    # through asg's loader, so that an error in the plugin's load or a primitive names plugin and primitive
    bb = load_backbone(argparse.Namespace(backbone=backbone, preset="full", model=model, dtype=dtype), device=device)
    report["load_s"] = round(time.time() - t, 1)
    report["weights_gib"] = _peak_gib(device)

    image = render(scene_for("test", 0, 0), 512)
    image.save(out / "question_image.png")
    t = time.time()
    answer = bb.generate_text([Prompt("How many shapes are in the image? Answer with one number.", image=image)],
                              SamplingParams(temperature=0.0, max_new_tokens=16), seed=0)[0]
    report.update(answer=answer.text, answer_s=round(time.time() - t, 2), answer_tokens=len(answer.token_ids))

    bb.image_size = (size, size)
    t = time.time()
    img = bb.generate_images(["a red circle to the left of a blue square"], seed=0, num_steps=steps)[0]
    report.update(generate_s=round(time.time() - t, 1), generate_size=size, generate_steps=steps)
    img.image.save(out / "generated.png")
    report["inference_peak_gib"] = _peak_gib(device)
    del bb
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    with tempfile.TemporaryDirectory() as tmp:
        images, run_dir = Path(tmp) / "images", out / "run"
        asg_main(["data", "shapes", "--out", str(images), "--n", "8", "--size", "256"])
        t = time.time()
        rc = asg_main(["train", "--backbone", backbone, "--model", str(model), "--device", device, "--dtype", dtype,
                       "--images", str(images), "--recipe", "e1", "--steps", "2", "--set", "schedule.understanding=1",
                       "--set", "schedule.generation=1", "--out", str(run_dir)])
        report.update(train_rc=rc, train_two_steps_s=round(time.time() - t, 1), train_peak_gib=_peak_gib(device))
        report["train_phases"] = [json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return report


def main(argv: list[str] | None = None, *, backbone: str | None = None) -> int:
    """CLI; a plugin's wrapper passes its ``backbone`` name, otherwise ``--backbone`` is required."""
    p = argparse.ArgumentParser(prog=f"python -m asg_{backbone}.smoke" if backbone else "python -m asg.testing.smoke",
                                description=__doc__.split("\n\n")[0])
    if backbone is None:
        p.add_argument("--backbone", required=True, help="registered backbone name (see `asg plugins`)")
    p.add_argument("--model", type=Path, required=True, help="local checkpoint folder of the real model")
    p.add_argument("--out", type=Path, default=None, help="where images and the run go (default <backbone>-smoke)")
    p.add_argument("--size", type=int, default=512, help="generated image side (the release's default is usually 1024)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps of the generation")
    args = p.parse_args(argv)
    name = backbone or args.backbone
    import torch

    if not torch.cuda.is_available():
        print(f"{name} smoke skipped: no CUDA GPU on this machine")
        return 0
    if not args.model.is_dir():
        print(f"{name} smoke skipped: no checkpoint folder at {args.model}")
        return 0
    print(json.dumps(run(name, args.model, args.out or Path(f"{name}-smoke"), args.size, args.steps), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
