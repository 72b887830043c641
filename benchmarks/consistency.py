"""How much can self-consistency teach a backbone? Greedy vs. majority-of-N accuracy on held-out ShapesWorld.

    python -m benchmarks consistency                      # the shipped tiny base, val split, 300 questions
    python -m benchmarks consistency --run runs/x         # an evolved model (run or checkpoint directory; alias --adapters)
    python -m benchmarks consistency --n 11 --split test

The Solver's training signal in a U-step is agreement with the majority of its N answers under
Prompt-Perturbed Sampling (algorithm.md §3.5). Distilling that majority into the greedy answer can at
best raise greedy accuracy to the majority's accuracy, so the gap between the two, measured here with
ground truth the loop never sees, bounds what the understanding half of the loop can gain per round.
For every held-out question (the same items ``asg eval`` uses) the suite records:

- ``greedy``: the greedy answer under the canonical prompt with focus hint 0 (PPS sample 0);
- ``majority``: the plurality label of all N samples (ties broken as the reward's vote breaks them);
- ``sample_mean``: the mean accuracy of the N − 1 perturbed samples, each under its own framing.

Results go to ``benchmarks/results/consistency[-<split>].json`` and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, machine, publish

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def tally(records: Iterable[tuple[str, bool, bool, list[bool]]]) -> dict[str, dict[str, float]]:
    """Accuracies in percent per question type and ``all`` from (qtype, greedy ok, majority ok, perturbed oks)."""
    sums: dict[str, list[float]] = {}
    for qtype, greedy_ok, majority_ok, perturbed in records:
        mean = sum(perturbed) / len(perturbed) if perturbed else float(greedy_ok)
        for key in (qtype, "all"):
            s = sums.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            s[0] += 1
            s[1] += greedy_ok
            s[2] += majority_ok
            s[3] += mean
    out = {}
    for key in sorted(sums, key=lambda k: (k == "all", k)):
        n, g, m, f = sums[key]
        out[key] = {"n": int(n), "greedy": 100.0 * g / n, "majority": 100.0 * m / n, "sample_mean": 100.0 * f / n,
                    "majority_minus_greedy": 100.0 * (m - g) / n}
    return out


def by_vote(items: Iterable[dict[str, Any]], n: int, easy_at: float = 0.85) -> dict[str, dict[str, float]]:
    """Accuracies in percent grouped by the majority's size k (how many of the ``n`` answers agree with
    it), from items with ``labels``, ``majority``, ``greedy_ok`` and ``majority_ok``. ``trained`` says
    whether a question with that k is inside the Solver's training band of recipe ``demo`` (majority
    fraction below ``easy_at``, the §3.9 easy gate ``rewards.solver.easy_skip_majority``)."""
    groups: dict[int, list[float]] = {}
    for it in items:
        k = list(it["labels"]).count(it["majority"])
        g = groups.setdefault(k, [0, 0, 0])
        g[0] += 1
        g[1] += bool(it["greedy_ok"])
        g[2] += bool(it["majority_ok"])
    return {str(k): {"n": int(c), "greedy": 100.0 * g / c, "majority": 100.0 * m / c, "trained": k / n < easy_at}
            for k, (c, g, m) in sorted(groups.items())}


def answered(backbone: Any, solver: Any, items: list[Any], *, seed: int, batch: int) -> Iterator[list[tuple[Any, Any]]]:
    """(qa, SolverAnswers) pairs for (qa, image) ``items``, one list per generate call of ``batch``
    questions, without gradients; call k is seeded ``seed * 1_000_003 + its first index``."""
    import torch

    with torch.no_grad():
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            answers = solver.answer(backbone, [im for _, im in chunk], [qa.question for qa, _ in chunk],
                                    seed=seed * 1_000_003 + start)
            yield [(qa, a) for (qa, _), a in zip(chunk, answers)]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from asg.evaluation import vqa_items
    from asg.progress import progress_bar
    from asg.rewards import vote
    from asg.roles import Solver
    from asg.roles.solver import SolverConfig
    from asg.shapes import answer_correct
    from asg.train.cli import load_backbone

    backbone = load_backbone(argparse.Namespace(backbone=args.backbone, preset=args.preset, model=args.model,
                                                device="cpu", adapters=args.adapters))
    solver = Solver(SolverConfig(n=args.n, max_new_tokens=args.max_new_tokens))
    items = vqa_items(args.split, args.seed, args.questions, backbone.image_size[0])
    records, rows = [], []
    t0 = time.time()
    with progress_bar(total=len(items), desc="consistency") as bar:
        for chunk in answered(backbone, solver, items, seed=args.seed, batch=args.batch):
            for qa, a in chunk:
                majority = vote(a.labels).majority
                perturbed = [answer_correct(s.answer.text, qa) for s in a.samples[1:]]
                greedy_ok = answer_correct(a.samples[0].answer.text, qa)
                majority_ok = answer_correct(majority, qa)
                records.append((qa.qtype, greedy_ok, majority_ok, perturbed))
                rows.append({"question": qa.question, "qtype": qa.qtype, "answer": qa.answer,
                             "labels": list(a.labels), "majority": majority, "greedy_ok": greedy_ok,
                             "majority_ok": majority_ok})
            bar.update(len(chunk))
    return {"by_qtype": tally(records), "by_vote": by_vote(rows, args.n), "items": rows, "_meta": {
        "command": command_line("consistency"),
        "backbone": args.backbone, "adapters": str(args.adapters) if args.adapters else None, "split": args.split,
        "seed": args.seed, "questions": args.questions, "n": args.n, "seconds": round(time.time() - t0, 1),
        "machine": machine()}}


def table(result: dict[str, Any]) -> str:
    lines = ["| question type | n | greedy | majority of N | mean perturbed sample | majority − greedy |",
             "|---|---:|---:|---:|---:|---:|"]
    for qtype, r in result["by_qtype"].items():
        name = f"**{qtype}**" if qtype == "all" else qtype
        lines.append(f"| {name} | {r['n']} | {r['greedy']:.1f} | {r['majority']:.1f} | {r['sample_mean']:.1f} | "
                     f"{r['majority_minus_greedy']:+.1f} |")
    if result.get("by_vote"):
        n = result["_meta"]["n"]
        lines += ["", f"By the majority's size (answers of {n} that agree with it); *trained* = inside the Solver's "
                  "training band of recipe `demo` (the others are skipped as easy):", "",
                  "| majority | n | greedy | majority of N | trained |", "|---:|---:|---:|---:|---|"]
        for k, r in result["by_vote"].items():
            lines.append(f"| {k}/{n} | {r['n']} | {r['greedy']:.1f} | {r['majority']:.1f} | {'yes' if r['trained'] else 'no'} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.questions < 1 or args.n < 2 or args.batch < 1:
        raise SystemExit(f"--questions and --batch must be >= 1 and --n >= 2, got {args.questions}, {args.batch}, {args.n}")
    if args.adapters is not None and not Path(args.adapters).exists():
        raise SystemExit(f"--run: {args.adapters} does not exist")
    result = measure(args)
    out = Path(args.out) if args.out else RESULTS / ("consistency.json" if args.split == "test" else f"consistency-{args.split}.json")
    meta = result["_meta"]
    publish(out, result, f"Greedy vs. majority-of-{meta['n']} accuracy ({meta['split']} split)", table(result))
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks consistency", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny", help="backbone plugin name (default tiny)")
    p.add_argument("--preset", default=None, help="backbone preset")
    p.add_argument("--model", default=None, help="local checkpoint path for the backbone")
    p.add_argument("--run", "--adapters", dest="adapters", type=Path, default=None,
                   help="measure a self-evolved model: its run/checkpoint directory or adapters .safetensors")
    p.add_argument("--split", choices=("val", "test"), default="val", help="held-out split (default val)")
    p.add_argument("--seed", type=int, default=0, help="evaluation seed (default 0)")
    p.add_argument("--questions", type=int, default=300, help="held-out questions (default 300)")
    p.add_argument("--n", type=int, default=7, help="answers per question: 1 greedy + N-1 perturbed (default 7)")
    p.add_argument("--max-new-tokens", type=int, default=24, help="answer length cap (default 24, as recipe demo)")
    p.add_argument("--batch", type=int, default=30, help="questions per generate call (default 30)")
    p.add_argument("--out", help="result file (default benchmarks/results/consistency[-<split>].json)")
    return p
