"""`asg demo`: the embedded default end to end on a CPU — the shipped `tiny` backbone measured on
held-out ShapesWorld (VQA accuracy, GenEval-mini), with pictures and a report."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from asg.progress import progress_bar


def run_demo(out: Path, *, quick: bool = False, seed: int = 0) -> Path:
    from asg.evaluation import evaluate_shapes, vqa_items, write_report
    from asg.plugins import get_backbone_class

    out = Path(out)
    questions, per_tag = (60, 3) if quick else (500, 20)
    t0 = time.time()
    backbone = get_backbone_class("tiny").load()
    with progress_bar(total=questions + per_tag * 6 * 4, desc="asg demo: evaluating tiny") as bar:
        done = {"vqa": 0, "geneval": 0}

        def report(phase: str, i: int, n: int) -> None:
            done[phase] = i
            bar.update_to(done["vqa"] + done["geneval"])
            bar.set(phase=phase)

        results = evaluate_shapes(backbone, split="test", seed=seed, questions=questions, per_tag=per_tag, progress=report)
    results["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
    results["seconds"]["total"] = time.time() - t0
    imgs = [img for _, img in vqa_items("test", seed, min(24, questions), backbone.image_size[0])]
    path = write_report(results, out, title="asg demo: the shipped `tiny` backbone on held-out ShapesWorld", vqa_images=imgs)
    vqa, gen = results["vqa"], results["geneval_mini"]
    summary = {"vqa_accuracy": round(vqa["accuracy"], 1), "geneval_mini": round(gen["overall"], 1),
               "seconds": round(results["seconds"]["total"], 1), "report": str(path)}
    print(json.dumps(summary, indent=1))
    return path
