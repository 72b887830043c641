"""Does voting across related questions of one image beat the Solver's own answers? Graded on held-out ShapesWorld.

    python -m benchmarks scene_vote --model runs/tiny-e2000-l384-l200-lr3e-4     # 100 val scenes
    python -m benchmarks scene_vote --scenes 200 --split val

The loop's per-question vote (the majority of N answers under perturbed framings) is hardly more
accurate than the greedy answer on any `tiny` base (``benchmarks consistency``, ``benchmarks audit``), so
it has little to teach. This suite measures a different vote: for every image it asks the 37 questions
of :func:`asg.shapes.scene_vote.family` (how many shapes, how many of each shape and colour, whether each
colour-shape pair is there, the colour of each shape, the shape of each colour), scores every candidate
answer of each with the Solver (teacher-forced, under the greedy answer's prompt:
:func:`asg.roles.scene_vote.family_logprobs`), and decodes the one scene table whose implied answers
the Solver finds most likely in sum (:func:`asg.shapes.scene_vote.decode`). Each
question's ``independent`` answer is its own most likely candidate, the stand-in for the greedy answer.

Graded against the scene's ground truth, for every question whose premise holds: accuracy per template
kind of the independent answers and of each decoder (``joint-count+existence`` uses only the count and
existence questions to pick the table, ``joint-all`` all of them), and, what a loop would teach, the
accuracy of both on the questions where the decoder *changes* the answer. With ``--position``, each
decoder's table also names the objects that position questions are asked about (those it holds exactly
one of); every phrasing of every position question about them is scored, and the per-axis orders the
answers agree on best give the decoder's position answers (:func:`asg.roles.scene_vote.position_labels`
does the same in the loop). Position questions the true scene does not answer (an object missing or
not unique, or centres within ``POSITION_MARGIN`` on the axis) are not graded. Results go to
``benchmarks/results/scene-vote-<split>.json`` (or ``--out``) with a markdown table beside it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, machine, publish

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"

DECODERS = {"joint-count+existence": ("count_all", "count_shape", "count_color", "existence"),
            "joint-all": ("count_all", "count_shape", "count_color", "existence", "color", "shape")}


def grade(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (percent) per template kind of each answer source in ``rows`` (one per graded question:
    ``kind``, ``truth``, and one answer per source under ``answers``), plus, per decoder, how often it
    changes the independent answer and how right both are where it does."""
    sources = list(rows[0]["answers"]) if rows else []
    by_kind: dict[str, dict[str, Any]] = {}
    for r in rows:
        keys = [r["kind"], "all"]
        if r["kind"] in ("existence", "position"):
            keys.insert(1, f"{r['kind']} ({r['truth']})")
        for key in keys:
            g = by_kind.setdefault(key, {"n": 0, **{s: 0 for s in sources}})
            g["n"] += 1
            for s in sources:
                g[s] += r["answers"][s] == r["truth"]
    order = ["count_all", "count_shape", "count_color", "existence", "existence (yes)", "existence (no)", "color", "shape",
             "position", "position (yes)", "position (no)", "all"]
    accuracy = {k: {"n": by_kind[k]["n"], **{s: 100.0 * by_kind[k][s] / by_kind[k]["n"] for s in sources}}
                for k in order if k in by_kind}
    changed: dict[str, dict[str, Any]] = {}
    for s in sources:
        if s == "independent":
            continue
        diff = [r for r in rows if r["answers"][s] != r["answers"]["independent"]]
        changed[s] = {"n": len(diff), "share": 100.0 * len(diff) / max(len(rows), 1),
                      "decoder_right": 100.0 * sum(r["answers"][s] == r["truth"] for r in diff) / max(len(diff), 1),
                      "independent_right": 100.0 * sum(r["answers"]["independent"] == r["truth"] for r in diff) / max(len(diff), 1)}
    return {"accuracy": accuracy, "changed": changed}


def position_rows(backbone: Any, image: Any, scene: Any, index: int, tables: dict[str, Any]) -> list[dict[str, Any]]:
    """One graded row per position question about the objects each decoder's table names (see the
    module docstring): the Solver's own answer, and each decoder's voted order's answer (the Solver's
    own where a decoder's table does not name both of the question's objects: no label to change it)."""
    import numpy as np

    from asg.roles.scene_vote import question_logprobs
    from asg.shapes import answer_question
    from asg.shapes.scene_vote import YES_NO, decode_positions, position_family, unique_objects

    answers: dict[str, dict[str, str]] = {}  # question -> source -> answer
    scored: dict[str, np.ndarray] = {}
    for name, table in tables.items():
        objects = unique_objects(table)
        fam = position_family(objects)
        todo = [q for *_, q in fam if q not in scored]
        scored.update(zip(todo, question_logprobs(backbone, [(image, q, YES_NO) for q in todo])))
        if len(objects) >= 2:
            _, voted = decode_positions(objects, [scored[q] for *_, q in fam])
            for (*_, q), a in zip(fam, voted):
                answers.setdefault(q, {})[name] = a
    rows = []
    for q, by in answers.items():
        qa = answer_question(q, scene)
        if qa is not None:
            own = YES_NO[int(np.argmax(scored[q]))]
            rows.append({"scene": index, "kind": "position", "question": q, "truth": qa.answer,
                         "answers": {"independent": own, **{name: by.get(name, own) for name in tables}}})
    return rows


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from asg.progress import progress_bar
    from asg.roles.scene_vote import family_logprobs
    from asg.shapes import answer_question, render, scene_for
    from asg.shapes.scene_vote import decode, family, independent
    from asg.train.cli import load_backbone

    backbone = load_backbone(argparse.Namespace(backbone=args.backbone, preset=args.preset, model=args.model,
                                                device="cpu", adapters=args.adapters))
    size = backbone.image_size[0]
    fam = family()
    rows: list[dict[str, Any]] = []
    kept: list[Any] = []
    t0 = time.time()
    with progress_bar(total=args.scenes, desc="scene vote") as bar:
        for start in range(0, args.scenes, args.batch):
            idx = list(range(start, min(start + args.batch, args.scenes)))
            scenes = [scene_for(args.split, args.seed, i) for i in idx]
            images = [render(s, size) for s in scenes]
            for i, scene, image, lps in zip(idx, scenes, images, family_logprobs(backbone, images, exact=args.exact)):
                kept.append(np.concatenate(lps))
                answers = {"independent": independent(lps)}
                tables = {}
                for name, kinds in DECODERS.items():
                    tables[name], answers[name], _ = decode(lps, kinds=kinds)
                for q, (kind, question, _) in enumerate(fam):
                    qa = answer_question(question, scene)
                    if qa is None:
                        continue
                    rows.append({"scene": i, "kind": kind, "question": question, "truth": qa.answer,
                                 "answers": {s: a[q] for s, a in answers.items()}})
                if args.position:
                    rows += position_rows(backbone, image, scene, i, tables)
            bar.update(len(idx))
    if args.logprobs:
        np.save(args.logprobs, np.stack(kept))
    result = grade(rows)
    result["_meta"] = {"command": command_line("scene_vote"), "backbone": args.backbone, "model": args.model,
                       "adapters": str(args.adapters) if args.adapters else None, "split": args.split,
                       "seed": args.seed, "scenes": args.scenes, "questions": len(rows), "exact": args.exact,
                       "position": args.position,
                       "seconds": round(time.time() - t0, 1), "machine": machine()}
    return result


def table(result: dict[str, Any]) -> str:
    sources = ["independent", *DECODERS]
    lines = ["| question kind | n | " + " | ".join(sources) + " |", "|---|---:|" + "---:|" * len(sources)]
    for kind, r in result["accuracy"].items():
        name = f"**{kind}**" if kind == "all" else kind
        lines.append(f"| {name} | {r['n']} | " + " | ".join(f"{r[s]:.1f}" for s in sources) + " |")
    lines += ["", "Where a decoder changes the independent answer (what a loop trained on its answers would teach):", "",
              "| decoder | changed | share % | decoder right % | independent right % |", "|---|---:|---:|---:|---:|"]
    for name, c in result["changed"].items():
        lines.append(f"| {name} | {c['n']} | {c['share']:.1f} | {c['decoder_right']:.1f} | {c['independent_right']:.1f} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenes < 1 or args.batch < 1:
        raise SystemExit(f"--scenes and --batch must be >= 1, got {args.scenes} and {args.batch}")
    if args.adapters is not None and not Path(args.adapters).exists():
        raise SystemExit(f"--run: {args.adapters} does not exist")
    result = measure(args)
    out = Path(args.out) if args.out else RESULTS / f"scene-vote-{args.split}.json"
    meta = result["_meta"]
    publish(out, result, f"Voting across the questions of one image ({meta['split']} split, {meta['scenes']} scenes)",
            table(result), intro="Accuracy (%) of each question's own most likely answer and of the answers a "
            "decoded scene table implies; only questions whose premise holds in the true scene are graded.")
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks scene_vote", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny", help="backbone plugin name (default tiny)")
    p.add_argument("--preset", default=None, help="backbone preset")
    p.add_argument("--model", default=None, help="local checkpoint path for the backbone")
    p.add_argument("--run", "--adapters", dest="adapters", type=Path, default=None,
                   help="an evolved model: its run/checkpoint directory or adapters .safetensors")
    p.add_argument("--split", choices=("val", "test"), default="val", help="held-out split (default val)")
    p.add_argument("--seed", type=int, default=0, help="scene seed (default 0)")
    p.add_argument("--scenes", type=int, default=100, help="held-out scenes (default 100; 37 questions each)")
    p.add_argument("--batch", type=int, default=8, help="scenes per scoring call (default 8)")
    p.add_argument("--exact", action="store_true",
                   help="score every candidate in full (one sequence each) even when one pass per question would do")
    p.add_argument("--position", action="store_true",
                   help="also vote on position questions about the objects each decoded table names (see above)")
    p.add_argument("--out", help="result file (default benchmarks/results/scene-vote-<split>.json)")
    p.add_argument("--logprobs", help="also save every candidate's log-probability here (.npy, scenes x 142)")
    return p
