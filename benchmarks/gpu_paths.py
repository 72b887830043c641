"""GPU paths: the shipped `tiny` evaluated and self-evolved on a GPU, against the same on the CPU, in one run.

    python -m benchmarks gpu_paths                                  # cpu float32, cuda float32, cuda bfloat16
    python -m benchmarks gpu_paths --configs cpu:float32 cuda:float32 --steps 10 --questions 500

For each configuration (device:dtype), in this order:

- ``asg eval``'s measurement on ShapesWorld ``--split`` (default val): VQA accuracy over ``--questions``
  questions and GenEval-mini over ``--per-tag`` prompts per category, with their seconds. The VQA answers
  are compared one by one with the first configuration's (the reference, cpu float32 by default):
  ``agree %`` is the share of identical answers, so a device or dtype that changes what the model says
  shows up here, not only in the accuracy.
- ``asg train --recipe shapes`` for ``--steps`` steps on a small unlabeled pool, in a child process, with
  the seconds of every step read back from the run's ``metrics.jsonl``: the median seconds of a U-step
  and of a G-step. On CUDA the loop's per-token statistics run through the Triton kernels
  (``ASG_KERNELS=auto``), so this is also the kernels inside a real run.

Times are reported as ratios to the reference configuration measured in the same run. Results go to
``benchmarks/results/gpu-paths-<device>.{json,md}``; the result is rewritten after every configuration,
so a run cut off by a time limit keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asg.train.run import read_jsonl
from benchmarks._results import write_result

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = ("float32", "bfloat16", "float16")


def parse_config(text: str) -> tuple[str, str]:
    device, _, dtype = text.partition(":")
    dtype = dtype or "float32"
    if device not in ("cpu", "cuda") or dtype not in DTYPES:
        raise SystemExit(f"gpu_paths: bad --configs entry {text!r}: expected DEVICE:DTYPE with DEVICE cpu or cuda "
                         f"and DTYPE one of {', '.join(DTYPES)}, e.g. cuda:bfloat16")
    return device, dtype


def evaluate(device: str, dtype: str, args: argparse.Namespace) -> dict[str, Any]:
    """VQA answers and GenEval-mini of the shipped base on one device and dtype."""
    import torch

    from asg.evaluation import evaluate_geneval, evaluate_vqa
    from asg.plugins import get_backbone_class

    t0 = time.time()
    backbone = get_backbone_class("tiny").load(device=device, dtype=dtype)
    t1 = time.time()
    vqa = evaluate_vqa(backbone, split=args.split, seed=0, n=args.questions)
    if device == "cuda":
        torch.cuda.synchronize()
    t2 = time.time()
    gen = evaluate_geneval(backbone, split=args.split, seed=0, per_tag=args.per_tag)
    if device == "cuda":
        torch.cuda.synchronize()
    t3 = time.time()
    gen.pop("_images", None)
    out = {"load_seconds": t1 - t0, "vqa_accuracy": vqa["accuracy"], "vqa_seconds": t2 - t1,
           "vqa_answers": [s.get("prediction") for s in vqa["samples"]],
           "geneval_mini": gen["overall"], "geneval_seconds": t3 - t2}
    if device == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del backbone
    return out


def train_steps(device: str, dtype: str, pool: Path, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``asg train`` for --steps steps in a child process; the step times from its metrics.jsonl."""
    cmd = [sys.executable, "-c", "import sys; from asg.cli import main; sys.exit(main(sys.argv[1:]))",
           "train", "--images", str(pool), "--recipe", "shapes", "--steps", str(args.steps), "--out", str(run),
           "--device", device, "--dtype", dtype]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), timeout=args.train_timeout)
    wall = time.time() - t0
    # a child stopped by its timeout may leave a last line cut short: read_jsonl reports it instead of failing
    steps = [r for r in read_jsonl(run / "metrics.jsonl").records if "step_time_sec" in r]
    out: dict[str, Any] = {"train_wall_seconds": wall, "steps_done": len(steps), "returncode": proc.returncode}
    if proc.returncode != 0:
        out["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
    for phase in ("U", "G"):
        times = [r["step_time_sec"] for r in steps if r.get("phase") == phase]
        out[f"{phase}_step_seconds"] = statistics.median(times) if times else None
        out[f"{phase}_steps"] = len(times)
    return out


def machine() -> dict[str, Any]:
    """The kernel benchmark's machine description (platform, torch, threads, CPU, GPU, git) and the
    kernel backend the loop was told to use."""
    import torch

    from benchmarks.kernels import machine as describe

    info = describe("cuda" if torch.cuda.is_available() else "cpu")
    info["asg_kernels"] = os.environ.get("ASG_KERNELS", "auto")
    return info


def _ratio(x: float | None, ref: float | None) -> str:
    return f"{x / ref:.2f}" if x and ref else "-"


def render(report: dict[str, Any]) -> str:
    info = report["machine"]
    rows = report["results"]
    ref = rows[0] if rows else {}
    lines = [f"# GPU paths: `tiny` on {info.get('gpu') or 'no GPU'} against {info['cpu']} "
             f"({info['cpu_threads']} threads)", "",
             f"`{report['command']}`" + (" (cut off: partial)" if report.get("partial") else ""), "",
             f"Reference configuration: `{ref.get('config', '-')}` (ratios are time / its time; "
             "`agree %`: VQA answers identical to its answers).", "",
             "| config | VQA % | agree % | VQA s | x ref | GenEval-mini | GenEval s | x ref | U-step s | x ref | "
             "G-step s | x ref | steps | error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        def f(key: str, fmt: str = "{:.2f}") -> str:
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| `{r['config']}` | {f('vqa_accuracy', '{:.1f}')} | {f('vqa_agreement', '{:.1f}')} | "
                     f"{f('vqa_seconds')} | {_ratio(r.get('vqa_seconds'), ref.get('vqa_seconds'))} | "
                     f"{f('geneval_mini', '{:.1f}')} | {f('geneval_seconds')} | "
                     f"{_ratio(r.get('geneval_seconds'), ref.get('geneval_seconds'))} | "
                     f"{f('U_step_seconds')} | {_ratio(r.get('U_step_seconds'), ref.get('U_step_seconds'))} | "
                     f"{f('G_step_seconds')} | {_ratio(r.get('G_step_seconds'), ref.get('G_step_seconds'))} | "
                     f"{r.get('steps_done', '-')} | {r.get('error', '')} |")
    lines += ["", f"{report['questions']} VQA questions and {report['per_tag']} GenEval-mini prompts per category on "
              f"the {report['split']} split; {report['steps']} steps of recipe `shapes` on a pool of "
              f"{report['images']} unlabeled images; step times are medians per phase."]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks._results import command_line

    configs = [parse_config(c) for c in args.configs]
    if any(d == "cuda" for d, _ in configs) and not torch.cuda.is_available():
        raise SystemExit("gpu_paths: a cuda configuration was asked for but torch sees no GPU "
                         f"(torch {torch.__version__}); pass --configs cpu:float32 to check the script on CPU")
    out = Path(args.out) if args.out else RESULTS / f"gpu-paths-{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    report: dict[str, Any] = {"suite": "gpu_paths", "command": command_line("gpu_paths"), "machine": machine(), "split": args.split,
                              "questions": args.questions, "per_tag": args.per_tag, "steps": args.steps,
                              "images": args.images, "results": [], "partial": True,
                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from asg.shapes import write_unlabeled_folder

    with tempfile.TemporaryDirectory(prefix="asg-gpu-paths-") as tmp:
        pool = Path(tmp) / "pool"
        write_unlabeled_folder(pool, n=args.images, seed=1000, split="pool")
        reference: list[Any] | None = None
        for k, (device, dtype) in enumerate(configs):
            name = f"{device}:{dtype}"
            row: dict[str, Any] = {"config": name}
            report["results"].append(row)
            print(f"[gpu_paths] {name}: evaluation", flush=True)
            try:
                ev = evaluate(device, dtype, args)
                answers = ev.pop("vqa_answers")
                if reference is None:
                    reference = answers
                row.update(ev, vqa_agreement=100.0 * sum(a == b for a, b in zip(answers, reference)) / max(1, len(answers)))
            except Exception as exc:  # noqa: BLE001 - a failing path is the finding: record it, go on
                row["error"] = f"eval: {type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"[gpu_paths] {name}: {args.steps} training steps", flush=True)
            try:
                tr = train_steps(device, dtype, pool, Path(tmp) / f"run{k}-{device}-{dtype}", args)
                err = tr.pop("error", None)
                row.update(tr)
                if err:
                    row["error"] = (row.get("error", "") + f" train: {err}").strip()
            except Exception as exc:  # noqa: BLE001
                row["error"] = (row.get("error", "") + f" train: {type(exc).__name__}: {exc}".splitlines()[0][:300]).strip()
            print(f"[gpu_paths] {name}: " + json.dumps(row), flush=True)
            write_result(out, report, render(report))
    report["partial"] = False
    text = render(report)
    write_result(out, report, text)
    print(text)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return report


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks gpu_paths", description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["cpu:float32", "cuda:float32", "cuda:bfloat16"],
                   help="DEVICE:DTYPE, the first is the reference (default: cpu:float32 cuda:float32 cuda:bfloat16)")
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--questions", type=int, default=500, help="VQA questions (default 500)")
    p.add_argument("--per-tag", type=int, default=5, help="GenEval-mini prompts per category (default 5)")
    p.add_argument("--steps", type=int, default=10, help="training steps per configuration (default 10)")
    p.add_argument("--images", type=int, default=32, help="unlabeled pool size (default 32)")
    p.add_argument("--train-timeout", type=float, default=300, help="seconds before a training child is stopped")
    p.add_argument("--out", help="result file (default benchmarks/results/gpu-paths-<cuda|cpu>.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
