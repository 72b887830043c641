"""How right were the answers the Solver was trained toward? Grades a ShapesWorld run's U-step votes.

    python -m benchmarks audit runs/benchmarks/shapes/seed0/run-full [more run directories ...]

The loop never sees labels, but a ShapesWorld pool folder keeps them beside it (``<pool>.labels.jsonl``,
written by ``asg shapes``). For every U-step question in ``rollouts.jsonl`` (the Proposer's pick and
the extra questions of ``solver.questions_per_step``) this suite answers the question from the
scene's ground truth with :func:`asg.shapes.answer_question` and compares the Solver's majority label
and its greedy answer (sample 0) with it. Questions whose premise fails ("the triangle" when there are
two, "the yellow object" when there is none) have no right answer; they are listed per template with
the majority answers the Solver gave them. Questions outside the templates are only counted.

Read ``trained`` first: those are the questions the §3.9 gate let through to the Solver's update,
i.e. what the Solver was taught. If their majority is hardly more accurate than their greedy answer,
self-consistency has little to teach on them. Runs with ``solver.scene_vote_questions`` also trained on
scene-vote labels (``scene_vote`` in each rollout); those are graded apart, against the Solver's own
most likely answer to the same question (``independent``). Results go to ``benchmarks/results/audit.json`` (or
``--out``) with a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, write_result

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def _records(run: Path) -> Iterable[dict[str, Any]]:
    """One record per U-step question: image, question, labels, majority and whether it was trained."""
    metrics = {}
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            metrics[row["step"]] = row
    for line in (run / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("phase") != "U" or "labels" not in r:
            continue
        extras = r.get("extra_questions", [])
        if "skip" in r:
            pick_trained = r["skip"] is None
        else:  # runs written before rollouts recorded the pick's gate: infer it from the trained count
            trained = metrics.get(r["step"], {}).get("solver.questions_trained", 0)
            pick_trained = trained - sum(e["skip"] is None for e in extras) == 1
        yield {"image": r["image"], "question": r["question"], "labels": r["labels"], "majority": r["majority"],
               "trained": pick_trained, "pick": True}
        for e in extras:
            yield {"image": r["image"], "question": e["question"], "labels": e["labels"], "majority": e["majority"],
                   "trained": e["skip"] is None, "pick": False}


def _scene_vote_records(run: Path) -> Iterable[dict[str, Any]]:
    """One record per scene-vote label of a U-step (recipe option ``solver.scene_vote_questions``), those of
    its extra pool images included (``solver.scene_vote_extra_images``), each with the image it is about."""
    for line in (run / "rollouts.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("phase") == "U":
            for s in r.get("scene_vote", []):
                yield {"image": r["image"], **s}
            for extra in r.get("scene_vote_extra", []):
                for s in extra["labels"]:
                    yield {"image": extra["image"], **s}


def grade_scene_vote(records: list[dict[str, Any]], scenes: dict[str, Any]) -> dict[str, Any]:
    """Accuracy (percent) per question type of scene-vote labels and of the Solver's own most likely
    answers to the same questions, and of both where the label differs from that answer; labels whose
    question's premise fails in the true scene are counted apart."""
    from asg.shapes import answer_correct, answer_question

    by_type: dict[str, list[int]] = {}
    changed = [0, 0, 0]
    premise = 0
    for rec in records:
        qa = answer_question(rec["question"], scenes[rec["image"]])
        if qa is None:
            premise += 1
            continue
        ok, ind = answer_correct(rec["label"], qa), answer_correct(rec["independent"], qa)
        for key in (qa.qtype, "all"):
            g = by_type.setdefault(key, [0, 0, 0])
            g[0] += 1
            g[1] += ok
            g[2] += ind
        if rec["label"] != rec["independent"]:
            changed[0] += 1
            changed[1] += ok
            changed[2] += ind
    rows = {k: {"n": g[0], "label": 100.0 * g[1] / g[0], "independent": 100.0 * g[2] / g[0]}
            for k, g in sorted(by_type.items(), key=lambda kv: (kv[0] == "all", kv[0]))}
    return {"by_qtype": rows, "false_premise": premise,
            "changed": {"n": changed[0], "label": 100.0 * changed[1] / max(changed[0], 1),
                        "independent": 100.0 * changed[2] / max(changed[0], 1)}}


def _scenes(images: Iterable[str]) -> dict[str, Any]:
    """Scene of every image, from the labels file beside its pool folder."""
    from asg.shapes import Scene
    from asg.shapes.folder import default_labels_path

    out: dict[str, Any] = {}
    for folder in sorted({str(Path(i).parent) for i in images}):
        path = default_labels_path(Path(folder))
        if not path.exists():
            raise SystemExit(f"no labels for the pool {folder}: {path} is missing (was it written by `asg shapes`?)")
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[str(Path(folder) / row["file"])] = Scene.from_dict(row["scene"])
    return out


def grade(records: list[dict[str, Any]], scenes: dict[str, Any]) -> dict[str, Any]:
    """Counts and accuracies (percent) of the majority and greedy labels, for trained and all questions,
    overall and per question type; and the questions that could not be graded: template questions
    whose premise fails (with their majority answers, per template) and questions outside the
    templates."""
    from asg.shapes import answer_correct, answer_question, question_template

    groups: dict[str, dict[str, dict[str, float]]] = {"trained": {}, "all": {}}
    premise: dict[str, dict[str, dict[str, int]]] = {"trained": {}, "all": {}}
    other = {"trained": 0, "all": 0}
    for rec in records:
        qa = answer_question(rec["question"], scenes[rec["image"]])
        template = question_template(rec["question"]) if qa is None else None
        for group in ("trained", "all") if rec["trained"] else ("all",):
            if qa is None:
                if template is None:
                    other[group] += 1
                else:
                    answers = premise[group].setdefault(template[0], {})
                    answers[rec["majority"]] = answers.get(rec["majority"], 0) + 1
                continue
            for key in (qa.qtype, "all"):
                g = groups[group].setdefault(key, {"n": 0, "majority": 0.0, "greedy": 0.0})
                g["n"] += 1
                g["majority"] += answer_correct(rec["majority"], qa)
                g["greedy"] += answer_correct(rec["labels"][0], qa)
    out: dict[str, Any] = {}
    for group, by_type in groups.items():
        rows = {}
        for key in sorted(by_type, key=lambda k: (k == "all", k)):
            g = by_type[key]
            rows[key] = {"n": int(g["n"]), "majority": 100.0 * g["majority"] / g["n"], "greedy": 100.0 * g["greedy"] / g["n"]}
        false_premise = {kind: dict(sorted(a.items(), key=lambda kv: (-kv[1], kv[0]))) for kind, a in sorted(premise[group].items())}
        out[group] = {"by_qtype": rows, "false_premise": false_premise,
                      "false_premise_total": sum(sum(a.values()) for a in false_premise.values()),
                      "not_template": other[group]}
    return out


def table(result: dict[str, Any]) -> str:
    lines = []
    for group, title in (("trained", "Questions the Solver was trained on"), ("all", "All U-step questions")):
        g = result[group]
        lines += [f"{title}:", "", "| question type | n | majority correct % | greedy correct % |", "|---|---:|---:|---:|"]
        for key, r in g["by_qtype"].items():
            name = f"**{key}**" if key == "all" else key
            lines.append(f"| {name} | {r['n']} | {r['majority']:.1f} | {r['greedy']:.1f} |")
        lines += ["", f"Not graded: {g['false_premise_total']} template questions whose premise fails "
                  f"(the named object is missing or not unique), {g['not_template']} outside the templates."]
        if g["false_premise"]:
            lines += ["", "| template, false premise | n | majority answers (count) |", "|---|---:|---|"]
            for kind, answers in g["false_premise"].items():
                shown = ", ".join(f"{a} ({c})" for a, c in list(answers.items())[:4])
                lines.append(f"| {kind} | {sum(answers.values())} | {shown} |")
        lines.append("")
    if "scene_vote" in result:
        sv = result["scene_vote"]
        lines += ["Scene-vote labels the Solver was trained on (`solver.scene_vote_questions`):", "",
                  "| question type | n | label correct % | Solver's own answer correct % |", "|---|---:|---:|---:|"]
        for key, r in sv["by_qtype"].items():
            name = f"**{key}**" if key == "all" else key
            lines.append(f"| {name} | {r['n']} | {r['label']:.1f} | {r['independent']:.1f} |")
        c = sv["changed"]
        lines += ["", f"Where the label differs from the Solver's own answer ({c['n']} labels): label right "
                  f"{c['label']:.1f} %, own answer right {c['independent']:.1f} %. Not graded: {sv['false_premise']} "
                  "labels whose question's premise fails in the true scene.", ""]
    lines.append(f"`{result['_meta']['command']}`")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "rollouts.jsonl").exists():
            raise SystemExit(f"{r} is not a run directory: it has no rollouts.jsonl")
    records = [rec for r in runs for rec in _records(r)]
    scene = [rec for r in runs for rec in _scene_vote_records(r)]
    scenes = _scenes([rec["image"] for rec in records] + [rec["image"] for rec in scene])
    result = grade(records, scenes)
    if scene:
        result["scene_vote"] = grade_scene_vote(scene, scenes)
    result["_meta"] = {"runs": [str(r) for r in runs], "questions": len(records),
                       "command": command_line("audit")}
    text = table(result)
    write_result(Path(args.out) if args.out else RESULTS / "audit.json", result, text)
    print(text)
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks audit", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories of `asg train` on a ShapesWorld pool folder")
    p.add_argument("--out", help="result file (default benchmarks/results/audit.json)")
    return p
