"""`asg demo`: the embedded default end to end on a CPU.

1. write an unlabeled ShapesWorld folder (``pool`` split; the labels file is never read by training);
2. measure the shipped `tiny` backbone on held-out ShapesWorld (``test`` split): VQA accuracy and
   GenEval-mini;
3. run the self-evolving loop (recipe ``shapes``: e1 scaled to a CPU, tuned on the val split) on the folder;
4. measure again, write ``report.md`` with plots and samples, and print the before/after table.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

QUICK = {"images": 40, "steps": 10, "questions": 60, "per_tag": 3}
FULL = {"images": 400, "steps": 120, "questions": 500, "per_tag": 10}


def run_demo(out: Path, *, quick: bool = False, seed: int = 0, steps: int | None = None) -> dict[str, Any]:
    from asg.shapes import write_unlabeled_folder
    from asg.train.cli import run_train

    sizes = dict(QUICK if quick else FULL)
    if steps is not None:
        sizes["steps"] = steps
    out = Path(out)
    pool = out / "pool"
    if not pool.is_dir() or not any(pool.iterdir()):
        write_unlabeled_folder(pool, n=sizes["images"], seed=seed, split="pool")
    args = argparse.Namespace(
        backbone="tiny", preset=None, model=None, device="cpu", adapters=None, images=pool, recipe="shapes",
        set=[f"seed={seed}"], steps=sizes["steps"], out=out / "run", resume=None, eval="shapes",
        eval_questions=sizes["questions"], eval_per_tag=sizes["per_tag"], eval_seed=seed,
    )
    return run_train(args)
