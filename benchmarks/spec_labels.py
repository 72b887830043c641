"""Would the gen-step Solver update teach right answers? Spec labels graded against the generated images.

    python -m benchmarks spec_labels                          # the shipped tiny base, 40 pool images
    python -m benchmarks spec_labels --model runs/x --images 100

The reference's optional gen-step Solver update (algorithm.md §6.4, E5/E6 only; asg does not implement
it) trains the Solver on the QA pairs of the best generated image, rewarded by how well its answer
there agrees with the pair's label. The issue behind it: a spec fixes answers, so generated images could
teach the Solver. That only helps if the label is right about the *generated* image more often than
the Solver's own answer there. ShapesWorld can check this. The detector that GenEval-mini scores with
reads each candidate's scene, and :func:`asg.shapes.answer_question` answers each spec question from it.

For each image of a ``pool`` scene the suite runs the G-step's own code: the spec with its gate on the
real image (:func:`asg.train.gstep.write_gated_spec`), the L candidates, and the Solver's answers on
them (:func:`asg.train.gstep.judge_candidates`). Then, per spec question and candidate, it grades four
labels against the candidate's detected scene:

- ``expected``: the answer the Proposer wrote into the spec;
- ``reference``: the Solver's majority on the real image (what QA fidelity compares with, §6.3);
- ``judge``: the Solver's majority on the candidate (the answers QA fidelity scores);
- ``greedy``: the Solver's greedy answer on the candidate (PPS sample 0: the canonical framing with
  focus hint 0, as recipe ``demo`` asks it), i.e. what it answers there already.

A label source can teach only if it beats ``greedy``. ``expected`` and ``reference`` are also graded
against the real scene. Questions whose premise fails on an image (they name an object that is not
there, or not unique) have no right answer there and are counted apart. Recipe ``demo``'s settings are
used unless ``--recipe`` names another. Results go to ``benchmarks/results/spec-labels.json`` (or
``--out``) with a markdown table beside it.
"""

from __future__ import annotations

import argparse
import functools
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, machine, publish

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SOURCES = ("expected", "reference", "judge", "greedy")
REAL_SOURCES = ("expected", "reference")


def detected_scene(image: Any) -> Any:
    """The scene the ShapesWorld detector reads in ``image``. Sizes are the nearest of the two box sizes
    (no question asks about them); centres are clipped into the canvas."""
    from asg.shapes.detector import detect
    from asg.shapes.scene import Obj, Scene
    from asg.shapes.vocab import SIZE_FRACTION

    objects = []
    for d in detect(image):
        size = min(SIZE_FRACTION, key=lambda s: abs(SIZE_FRACTION[s] - max(d.w, d.h)))
        objects.append(Obj(shape=d.shape, color=d.color, size=size, x=min(1.0, max(0.0, d.x)),
                           y=min(1.0, max(0.0, d.y))))
    return Scene(tuple(objects))


def grade(question: str, label: str, scene: Any) -> bool | None:
    """Whether vote label ``label`` answers ``question`` rightly about ``scene``; None when the question has
    no answer there (not a template question, or its premise fails)."""
    from asg.shapes import answer_correct, answer_question

    qa = answer_question(question, scene)
    return None if qa is None else answer_correct(label, qa)


def tally(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy in percent of each label source, per question type and ``all``, from items with ``qtype``,
    ``on_generated`` ({source: bool | None}) and ``on_real`` ({source: bool | None}); items whose grade
    is None count as ``no_answer``."""
    sums: dict[str, dict[str, dict[str, float]]] = {"generated": {}, "real": {}}
    no_answer = {"generated": 0, "real": 0}
    for it in items:
        for where, sources in (("generated", SOURCES), ("real", REAL_SOURCES)):
            grades = it[f"on_{where}"]
            if grades[sources[0]] is None:
                no_answer[where] += 1
                continue
            for key in (it["qtype"], "all"):
                s = sums[where].setdefault(key, {"n": 0, **{src: 0.0 for src in sources}})
                s["n"] += 1
                for src in sources:
                    s[src] += bool(grades[src])
    out: dict[str, Any] = {}
    for where, by_type in sums.items():
        rows = {}
        for key in sorted(by_type, key=lambda k: (k == "all", k)):
            s = by_type[key]
            rows[key] = {"n": int(s["n"]), **{src: 100.0 * v / s["n"] for src, v in s.items() if src != "n"}}
        out[where] = {"by_qtype": rows, "no_answer": no_answer[where]}
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from asg.progress import progress_bar
    from asg.rewards import vote
    from asg.roles import Generator, Solver
    from asg.shapes import question_template, render, scene_for
    from asg.train.cli import load_backbone
    from asg.train.gstep import judge_candidates, write_gated_spec
    from asg.train.recipe import load_recipe

    backbone = load_backbone(argparse.Namespace(backbone=args.backbone, preset=args.preset, model=args.model,
                                                device="cpu", adapters=args.adapters))
    recipe = load_recipe(args.recipe)
    generator, solver = Generator(recipe.generator.generate), Solver(recipe.solver.sample)
    items: list[dict[str, Any]] = []
    specs: list[dict[str, Any]] = []
    t0 = time.time()
    with torch.no_grad(), progress_bar(total=args.images, desc="spec labels") as bar:
        for i in range(args.images):
            scene = scene_for("pool", args.seed, i)
            image = render(scene, backbone.image_size[0])
            seed = functools.partial(_seed, args.seed, i)
            chosen = write_gated_spec(backbone, image, recipe, seed)
            spec = chosen.proposal.spec
            specs.append({"image": i, "prompt": spec.prompt, "qa": [[p.question, p.expected] for p in spec.qa],
                          "accepted": chosen.gate.accepted})
            bar.update(1)
            if not spec.qa:
                continue
            cands = [c.image for c in generator.generate(backbone, [spec], seed=seed("generate"))[0]]
            reference, judged, _ = judge_candidates(backbone, image, spec, chosen.gate, cands, recipe, seed)
            questions = [p.question for p in spec.qa]
            greedy = solver.greedy(backbone, [c for c in cands for _ in questions], questions * len(cands),
                                   seed=seed("greedy"))
            for l, cand in enumerate(cands):
                drawn = detected_scene(cand)
                for j, pair in enumerate(spec.qa):
                    template = question_template(pair.question)
                    qtype = _qtype(template[0]) if template else "other"
                    labels = {"expected": pair.expected, "reference": reference[j], "judge": vote(judged[l][j]).majority,
                              "greedy": greedy[l * len(questions) + j].label}
                    items.append({"image": i, "candidate": l, "question": pair.question, "qtype": qtype,
                                  "accepted": chosen.gate.accepted, "labels": labels,
                                  "on_generated": {s: grade(pair.question, labels[s], drawn) for s in SOURCES},
                                  "on_real": {s: grade(pair.question, labels[s], scene) for s in REAL_SOURCES}})
    result = {"all_specs": tally(items), "accepted_specs": tally(it for it in items if it["accepted"]),
              "items": items, "specs": specs}
    result["_meta"] = {"command": command_line("spec_labels"), "backbone": args.backbone, "model": args.model,
                       "adapters": str(args.adapters) if args.adapters else None, "recipe": args.recipe,
                       "images": args.images, "seed": args.seed, "specs_accepted": sum(s["accepted"] for s in specs),
                       "questions_graded": len(items), "seconds": round(time.time() - t0, 1), "machine": machine()}
    return result


def _seed(base: int, image: int, tag: str) -> int:
    """A stable seed for one call (``tag``) about one pool image, as the trainer's ``seed_for``."""
    return zlib.crc32(f"{base}/{image}/{tag}".encode()) & 0x7FFFFFFF


def _qtype(template: str) -> str:
    """The question type of a ShapesWorld template kind (count_all, count_shape, count_color -> count)."""
    return "count" if template.startswith("count") else template


def table(result: dict[str, Any]) -> str:
    lines = []
    for group, title in (("all_specs", "All specs"), ("accepted_specs", "Specs the gate accepted")):
        g = result[group]["generated"]
        lines += [f"{title}, graded against the generated image (% right):", "",
                  "| question type | n | expected | reference | judge | greedy |", "|---|---:|---:|---:|---:|---:|"]
        for key, r in g["by_qtype"].items():
            name = f"**{key}**" if key == "all" else key
            lines.append(f"| {name} | {r['n']} | " + " | ".join(f"{r[s]:.1f}" for s in SOURCES) + " |")
        real = result[group]["real"]["by_qtype"].get("all")
        no_answer = result[group]["generated"]["no_answer"]
        lines += ["", f"No answer on the generated image (false premise or not a template question): {no_answer}."]
        if real:
            lines.append(f"Against the real image: expected {real['expected']:.1f} %, reference {real['reference']:.1f} % "
                         f"right (n = {real['n']}).")
        lines.append("")
    meta = result["_meta"]
    lines.append(f"{meta['images']} pool images, {meta['specs_accepted']} specs accepted by the gate, "
                 f"{meta['questions_graded']} (question, candidate) pairs.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.images < 1:
        raise SystemExit(f"--images must be >= 1, got {args.images}")
    if args.adapters is not None and not Path(args.adapters).exists():
        raise SystemExit(f"--run: {args.adapters} does not exist")
    result = measure(args)
    out = Path(args.out) if args.out else RESULTS / "spec-labels.json"
    publish(out, result, "Spec labels graded against the generated images", table(result))
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks spec_labels", description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="tiny", help="backbone plugin name (default tiny)")
    p.add_argument("--preset", default=None, help="backbone preset")
    p.add_argument("--model", default=None, help="local checkpoint path for the backbone")
    p.add_argument("--run", "--adapters", dest="adapters", type=Path, default=None,
                   help="measure a self-evolved model: its run/checkpoint directory or adapters .safetensors")
    p.add_argument("--recipe", default="demo", help="recipe whose generator and solver settings are used (default demo)")
    p.add_argument("--images", type=int, default=40, help="pool images, one spec each (default 40)")
    p.add_argument("--seed", type=int, default=0, help="pool and sampling seed (default 0)")
    p.add_argument("--out", help="result file (default benchmarks/results/spec-labels.json)")
    return p
