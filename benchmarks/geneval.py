"""GenEval with the official evaluator: write a backbone's samples, score them with GenEval's detector.

    # 1. samples (4 per prompt) from the prompts of your GenEval clone, resumable
    python -m benchmarks geneval --backbone bagel --model /ckpt \\
        --prompts ~/geneval/prompts/evaluation_metadata.jsonl --samples runs/geneval/bagel-base
    # 1 + 2: also run evaluation/evaluate_images.py in GenEval's own environment, then score
    python -m benchmarks geneval ... --geneval-repo ~/geneval --geneval-python ~/envs/geneval/bin/python \\
        --detector-dir ~/geneval-models
    # only score an existing evaluator output (no backbone is loaded; --samples reads its settings)
    python -m benchmarks geneval --backbone bagel --run RUN --parse results.jsonl [--prompts P --samples DIR]
    python -m benchmarks geneval --backbone bagel --report     # re-render the saved result

GenEval's prompt file is not shipped: ``--prompts`` reads it from the user's clone of
github.com/djghosh13/geneval (553 prompts; BAGEL's rewritten ``evaluation_metadata_long.jsonl`` works
the same, and the result names the file and its sha256). The evaluator (Mask2Former Swin-S detector,
CLIP ViT-L-14 colour classifier) needs mmdetection 2.x and a CUDA device, so it runs in its own
interpreter (``--geneval-python``). ``--run`` measures the self-evolved model: its Generator adapter is
active while the samples are drawn. Scores are percent: per task the share of correct images, overall
the unweighted mean of the six tasks (``asg.harness.geneval``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._runner import (add_backbone_args, add_report_arg, backbone_spec, default_out, load_backbone, load_result,
                                new_meta, save)

HARNESS = "geneval (djghosh13/geneval, official evaluate_images.py)"
JUDGE = "Mask2Former Swin-S + CLIP ViT-L-14 colour (official)"
METRICS = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "overall")
NAMES = {"single_object": "Single object", "two_object": "Two object", "counting": "Counting", "colors": "Colors",
         "position": "Position", "color_attr": "Color attribution", "overall": "**Overall**"}


def _evaluator_args(args: argparse.Namespace) -> bool:
    given = [getattr(args, k) is not None for k in ("geneval_repo", "geneval_python", "detector_dir")]
    if any(given) and not all(given):
        raise SystemExit("running the official evaluator needs all of --geneval-repo, --geneval-python and "
                         "--detector-dir")
    return all(given)


def _result(args: argparse.Namespace, parsed: dict[str, Any], results_file: Path, prompt_set: str | None,
            samples: dict[str, Any] | None) -> dict[str, Any]:
    from asg.harness.geneval import TAGS, repo_revision

    variant = "GenEval 6 tasks" if parsed["complete"] else \
        f"GenEval partial ({', '.join(t for t in parsed['tasks'] if t in TAGS)}; missing {', '.join(parsed['missing_tags'])})"
    seed = samples["seed"] if samples else args.seed
    # part of the benchmark (the report marks the result a subset): --limit, or tasks absent from the results
    limit = args.limit if args.limit is not None else \
        (None if parsed["complete"] else f"{len(TAGS) - len(parsed['missing_tags'])} of {len(TAGS)} tasks")
    ipp = samples["images_per_prompt"] if samples else args.images_per_prompt
    meta = new_meta("geneval", args, harness=HARNESS, harness_version=repo_revision(args.geneval_repo),
                    task_variant=variant, prompt_set=prompt_set, judge=JUDGE, seeds=[seed],
                    images_per_prompt=ipp, limit=limit)
    metrics = {t: parsed["tasks"][t] for t in METRICS[:-1] if t in parsed["tasks"]}
    metrics["overall"] = parsed["overall"]
    out: dict[str, Any] = {"_meta": meta, "metrics": metrics, "image_accuracy": parsed["image_accuracy"],
                           "prompt_accuracy": parsed["prompt_accuracy"], "counts": parsed["counts"],
                           "missing_tags": parsed["missing_tags"], "results_file": str(results_file)}
    if parsed["unknown_tags"]:
        out["other_tasks"] = {t: parsed["tasks"][t] for t in parsed["unknown_tags"]}
    if samples is not None:
        out["samples"] = samples
    return out


def _prompt_set(args: argparse.Namespace, prompts: list[Any] | None = None) -> str | None:
    from asg.harness.geneval import prompt_set_id

    if args.prompts is None:
        return None
    name = prompt_set_id(args.prompts, prompts)
    if args.limit is not None and prompts is not None and args.limit < len(prompts):
        return f"first {args.limit} prompts of {name}"
    return name


def collect(args: argparse.Namespace) -> dict[str, Any] | None:
    """Step 1 (samples), step 2 (the official evaluator) when its paths are given, or ``--parse`` only."""
    from asg.harness.geneval import MANIFEST, parse_results, read_prompts, run_official_evaluator, write_samples

    if args.parse is not None:
        # the generation settings, when --samples names the folder the results were computed on
        manifest = Path(args.samples) / MANIFEST if args.samples is not None else None
        samples = json.loads(manifest.read_text()) if manifest is not None and manifest.is_file() else None
        return _result(args, parse_results(args.parse), Path(args.parse), _prompt_set(args), samples)
    if args.prompts is None or args.samples is None:
        raise SystemExit("give --prompts (GenEval's evaluation_metadata.jsonl) and --samples DIR, or --parse RESULTS")
    evaluate = _evaluator_args(args)
    prompts = read_prompts(args.prompts)
    prompt_set = _prompt_set(args, prompts)
    if args.limit is not None:
        prompts = prompts[:args.limit]
    backbone = load_backbone(args)
    info = write_samples(backbone, prompts, args.samples, images_per_prompt=args.images_per_prompt, seed=args.seed,
                         batch_size=args.batch_size, steps=args.steps, guidance=args.guidance, grid=args.grid,
                         identity=backbone_spec(args))
    print(f"[geneval] {info['written']} prompt folders written, {info['skipped']} already complete: {args.samples}")
    results_file = Path(args.results) if args.results else Path(args.samples) / "results.jsonl"
    if not evaluate:
        print("next, in GenEval's environment (its clone as the working directory):\n"
              f"  python evaluation/evaluate_images.py {Path(args.samples).resolve()} --outfile "
              f"{results_file.resolve()} --model-path <detector dir>\n"
              f"then: python -m benchmarks geneval --parse {results_file} --prompts {args.prompts} --samples "
              f"{args.samples} <the same --backbone/--model/--run>")
        return None
    run_official_evaluator(args.samples, geneval_repo=args.geneval_repo, python=args.geneval_python,
                           detector_dir=args.detector_dir, outfile=results_file, timeout=args.timeout)
    return _result(args, parse_results(results_file), results_file, prompt_set, info)


def _pct(x: Any) -> str:
    return "–" if x is None else f"{float(x):.1f}"


def render(result: dict[str, Any]) -> str:
    """Markdown: the six task scores and the overall (percent), with correct / images per task, then the
    share of correct images and of prompts with a correct image."""
    metrics = result["metrics"]
    per_tag = result.get("counts", {}).get("per_tag", {})
    lines = ["| task | score (%) | correct / images |", "|---|---:|---:|"]
    for key in METRICS:
        c = per_tag.get(key)
        frac = f"{c['correct']} / {c['images']}" if c else ""
        if key == "overall":
            counts = result.get("counts", {})
            frac = f"{counts.get('correct_images', '')} / {counts.get('images', '')}"
        lines.append(f"| {NAMES[key]} | {_pct(metrics.get(key))} | {frac} |")
    for tag, value in result.get("other_tasks", {}).items():
        c = per_tag.get(tag, {})
        lines.append(f"| {tag} (not a GenEval task) | {_pct(value)} | {c.get('correct', '')} / {c.get('images', '')} |")
    counts = result.get("counts", {})
    lines += ["", (f"Correct images: {_pct(result.get('image_accuracy'))}% of {counts.get('images')}; prompts with "
                   f"at least one correct image: {_pct(result.get('prompt_accuracy'))}% of {counts.get('prompts')}.")]
    if result.get("missing_tags"):
        lines.append(f"\n**Incomplete**: no results for {', '.join(result['missing_tags'])}; the overall is the mean "
                     "of the tasks present, not GenEval's overall.")
    return "\n".join(lines)


def _title(result: dict[str, Any]) -> str:
    spec = result["_meta"].get("backbone") or {}
    return f"GenEval: {spec.get('name', '?')} ({spec.get('stage', '?')})"


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    out = default_out("geneval", args)
    if args.report:
        result = load_result(out)
    else:
        from asg.errors import AsgError

        if args.limit is not None and args.limit < 1:
            raise SystemExit(f"--limit must be >= 1, got {args.limit}")
        try:
            result = collect(args)
        except AsgError as e:
            raise SystemExit(f"geneval: {e}") from None
        if result is None:
            return None
    save(out, result, _title(result), render(result))
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks geneval", description=__doc__.split("\n\n")[0])
    add_backbone_args(p)
    p.add_argument("--prompts", type=Path, help="GenEval metadata file of your clone, e.g. "
                                                "~/geneval/prompts/evaluation_metadata.jsonl (not shipped)")
    p.add_argument("--samples", type=Path, help="image folder in GenEval's layout (written, or resumed)")
    p.add_argument("--images-per-prompt", type=int, default=4, help="default 4, as GenEval")
    p.add_argument("--seed", type=int, default=0, help="image j of prompt i uses seed*1000003 + i*images_per_prompt + j")
    p.add_argument("--batch-size", type=int, default=8, help="images per generate_images call (default 8)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the backbone's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the backbone's)")
    p.add_argument("--limit", type=int, help="only the first N prompts (a smoke test, not a GenEval score)")
    p.add_argument("--grid", action="store_true", help="also write each prompt's grid.png")
    p.add_argument("--geneval-repo", type=Path, help="clone of github.com/djghosh13/geneval: run its evaluator")
    p.add_argument("--geneval-python", help="python of the environment GenEval's evaluator is installed in")
    p.add_argument("--detector-dir", type=Path, help="folder of the Mask2Former checkpoint (evaluation/download_models.sh)")
    p.add_argument("--results", type=Path, help="evaluator output (default <samples>/results.jsonl)")
    p.add_argument("--timeout", type=float, help="seconds the evaluator may take (default: no limit)")
    p.add_argument("--parse", type=Path, metavar="RESULTS_JSONL",
                   help="only score an existing evaluator output (no backbone is loaded)")
    add_report_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
