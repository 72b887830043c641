"""``python -m benchmarks <suite> ...``: run one benchmark suite (``python -m benchmarks --help``)."""

from __future__ import annotations

import argparse
import importlib
import sys

# suite name -> (module, one-line description); each module has build_parser(parser) and run(args)
SUITES = {
    "kernels": ("benchmarks.kernels", "time and peak memory of asg.kernels vs eager PyTorch, torch.compile, Liger"),
    "consistency": ("benchmarks.consistency", "how much self-consistency can teach: greedy vs majority-of-N accuracy"),
    "vision_probe": ("benchmarks.vision_probe", "does the vision tower keep what a shape is: linear probes per layer"),
    "audit": ("benchmarks.audit", "how right were the Solver's training targets: a ShapesWorld run's votes against ground truth"),
    "label_quality": ("benchmarks.label_quality", "what labels of a given accuracy teach the Solver: fine-tune on pool questions, measure VQA"),
    "spec_labels": ("benchmarks.spec_labels", "would the gen-step Solver update teach right answers: spec labels graded on the generated images"),
    "learnability": ("benchmarks.learnability", "can the language model learn a question type from abundant correct labels, eyes frozen"),
    "scene_vote": ("benchmarks.scene_vote", "does voting across the related questions of one image beat the Solver's own answers"),
    "shapes": ("benchmarks.shapes", "self-evolution of tiny on ShapesWorld: base vs evolved, full recipe and ablations"),
    "geneval": ("benchmarks.geneval", "GenEval with the official evaluator: write samples, run evaluate_images.py in its own env, score"),
    "geneval_mini": ("benchmarks.geneval_mini", "GenEval-mini on ShapesWorld for any backbone (CPU, exact checker)"),
    "geneval_curve": ("benchmarks.geneval_curve", "GenEval-mini at every saved checkpoint of self-evolution runs: did the generator drift, and when"),
    "understanding": ("benchmarks.understanding", "understanding benchmarks through lmms-eval: MMMU, MMBench, TextVQA, SEED, RealWorldQA, MM-Vet, MME-P/C"),
    "text": ("benchmarks.text", "lm-eval tasks (MMMU, text tasks that catch a loss of language ability) through asg.harness.lm"),
    "kernel_configs": ("benchmarks.kernel_configs", "GPU: every launch configuration of the token_stats / token_kl forwards at one shape, against the autotuned one"),
    "gpu_paths": ("benchmarks.gpu_paths", "tiny evaluated and self-evolved on a GPU against the CPU: answers agreement, seconds per step"),
    "soak": ("benchmarks.soak", "a long tiny run with memory sampled: resident-set growth, rolling windows vs their caps"),
    "report": ("benchmarks.report", "published base / self-evolved numbers beside ours, per backbone, with flags and plots"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="asg benchmark suites")
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, (module, help_text) in SUITES.items():
        mod = importlib.import_module(module)
        mod.build_parser(sub.add_parser(name, help=help_text, description=mod.__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    if getattr(args, "child", None):
        return importlib.import_module(SUITES[args.suite][0]).main(sys.argv[2:])
    importlib.import_module(SUITES[args.suite][0]).run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
