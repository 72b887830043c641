"""What would the Solver learn from labels of a given quality? Fine-tunes tiny's Solver on pool questions.

    python -m benchmarks label_quality                                  # shipped tiny, val split, 3 seeds
    python -m benchmarks label_quality --model runs/tiny-v3 --sources oracle noisy:0.75 majority
    python -m benchmarks label_quality --steps 60 --batch 16            # a larger label budget

The understanding half of the loop distils labels into the Solver's adapter: the majority of its own
votes, on questions the Proposer asks about unlabeled pool images. Two things decide what that can
gain: how many labels it gets and how often they are right. This suite separates the two. For each
seed it draws questions about ``pool`` scenes (the loop's images, never evaluated on), labels them
from one *source*, trains the Solver role's adapter on them with a plain cross-entropy step under the
canonical prompt (``--steps`` steps of ``--batch`` questions, AdamW at ``--lr``, as recipe ``demo``
updates the Solver), and measures held-out VQA accuracy like ``asg eval`` (greedy, canonical prompt).

Sources:

- ``oracle``: the ground-truth answer (an upper bound: no self-evolving loop has it);
- ``noisy:P``: the ground-truth answer with probability P, otherwise a wrong answer of the same type
  drawn uniformly (labels of a known accuracy P);
- ``greedy``: the Solver's own greedy answer (self-distillation; should change little);
- ``majority``: the majority of N answers under Prompt-Perturbed Sampling (what the loop uses);
- ``confident``: the same, only questions whose majority has at least ``--confident`` of the N votes;
- ``scene_vote``: the answer implied by the scene table that the Solver's answers to all 37 related
  questions about the image agree on best (:mod:`asg.shapes.scene_vote`, ``benchmarks scene_vote``); no
  ground truth, like ``majority``. Position questions are outside that family and get no label, nor do
  questions whose premise fails in the decoded table.

``--train full`` also trains every base weight of the vision-language model (a check of whether the
adapter limits what the labels can teach; the loop itself only trains adapters).

Each row reports the measured accuracy of the labels it trained on (against ground truth) next to
the VQA gain, so the table reads as "labels this right, this many of them, buy this much".
Results go to ``benchmarks/results/label-quality[-<split>].json`` (or ``--out``) with a markdown
table beside it.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, machine, publish

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SOURCES = ("oracle", "noisy", "greedy", "majority", "confident", "scene_vote")


def parse_source(text: str) -> tuple[str, float | None]:
    """``"noisy:0.75"`` -> ("noisy", 0.75); the others take no parameter."""
    name, _, value = text.partition(":")
    if name not in SOURCES:
        raise argparse.ArgumentTypeError(f"unknown label source {text!r}; choose from {', '.join(SOURCES)} (noisy:P)")
    if name == "noisy":
        try:
            p = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"noisy needs an accuracy, e.g. noisy:0.75, got {text!r}") from None
        if not 0.0 <= p <= 1.0:
            raise argparse.ArgumentTypeError(f"noisy:P needs 0 <= P <= 1, got {p}")
        return name, p
    if value:
        raise argparse.ArgumentTypeError(f"label source {name!r} takes no parameter, got {text!r}")
    return name, None


def corrupt(answer: str, qtype: str, p: float, rng: random.Random) -> str:
    """``answer`` with probability ``p``, else a different answer of the same type drawn uniformly."""
    from asg.shapes import answer_words

    if rng.random() < p:
        return answer
    others = [v for v in answer_words(qtype) if v != answer]
    return rng.choice(others)


def _train(backbone: Any, examples: list[tuple[Any, Any, str]], args: argparse.Namespace) -> list[float]:
    """Cross-entropy steps of the Solver adapter on (image, question, answer) triples; returns the losses."""
    import torch

    from asg.backbones.tiny import templates as T
    from asg.evaluation import solver_prompt_text
    from asg.types import Prompt

    params = [p for p in backbone.net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    losses = []
    with backbone.use_role("solver"):
        for step in range(args.steps):
            chunk = [examples[(step * args.batch + j) % len(examples)] for j in range(args.batch)]
            prompts = [Prompt(solver_prompt_text(backbone, q), image=im) for im, q, _ in chunk]
            out = backbone.score(prompts, [T.ANSWER.format(answer=a) for _, _, a in chunk], grad=True)
            loss = -(out.logprobs * out.mask).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
    return losses


def trainable(backbone: Any, what: str) -> list[Any]:
    """The weights the fine-tuning trains: the Solver's LoRA adapter (``adapter``, what the loop trains),
    or that plus every base weight of the vision-language model (``full``: a capacity check), or plus
    every weight of the language model alone, its embeddings and (tied) head included, the vision tower
    and projector frozen (``language``; ``benchmarks learnability``). Only these require grad afterwards."""
    adapter = list(backbone.trainable_parameters("solver"))
    backbone.net.requires_grad_(False)
    chosen = adapter
    if what in ("full", "language"):
        vlm = backbone.net["vlm"]
        base = vlm.parameters() if what == "full" else [*vlm.model.language_model.parameters(), *vlm.lm_head.parameters()]
        ids = {id(p) for role in backbone.adapters.roles for p in backbone.trainable_parameters(role)}
        chosen = adapter + list({id(p): p for p in base if id(p) not in ids}.values())  # the head is tied
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def _majorities(backbone: Any, items: list[Any], args: argparse.Namespace, seed: int) -> list[tuple[str, int, str]]:
    """(majority label, its vote count, greedy label) of every (qa, image) item under PPS."""
    from asg.rewards import vote
    from asg.roles import Solver
    from asg.roles.solver import SolverConfig
    from benchmarks.consistency import answered

    solver = Solver(SolverConfig(n=args.n, max_new_tokens=24))
    out = []
    for chunk in answered(backbone, solver, items, seed=seed, batch=30):
        for _, a in chunk:
            v = vote(a.labels)
            out.append((v.majority, list(a.labels).count(v.majority), a.labels[0]))
    return out


def scene_votes(backbone: Any, items: list[Any], batch: int = 8) -> Any:
    """For each (qa, image) item in turn, the scene-vote answer to its question: the answer the decoded
    scene table of its image implies (``joint-all`` of ``benchmarks scene_vote``), or None when the
    question is outside the family (position) or its premise fails in that table. Lazy: images are
    scored ``batch`` at a time, only as far as the caller reads."""
    from asg.roles.scene_vote import family_logprobs
    from asg.shapes.scene_vote import decode, family

    index = {q: k for k, (_, q, _) in enumerate(family())}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        asked = [(qa, im) for qa, im in chunk if qa.question in index]
        decoded = iter(family_logprobs(backbone, [im for _, im in asked]) if asked else [])
        for qa, _ in chunk:
            k = index.get(qa.question)
            yield None if k is None else decode(next(decoded))[1][k]


def labelled(source: str, p: float | None, items: list[Any], votes: Any, budget: int, args: argparse.Namespace,
             seed: int) -> list[tuple[Any, Any, str]]:
    """Up to ``budget`` (image, question, label) triples of ``source`` from the candidate ``items``.
    ``votes``: per item, (majority, its vote count, greedy) for greedy/majority/confident, or an iterable
    of scene-vote answers (None: no label) for scene_vote."""
    from asg.shapes import answer_words, normalize_answer

    rng = random.Random(seed * 7919 + 17)
    out = []
    answers = iter(votes) if source == "scene_vote" else None
    for k, (qa, im) in enumerate(items):
        if answers is not None:
            label = next(answers)
            if label is None:
                continue
        elif source == "oracle":
            label = qa.answer
        elif source == "noisy":
            label = corrupt(qa.answer, qa.qtype, p or 0.0, rng)
        else:
            assert votes is not None
            majority, count, greedy = votes[k]
            if source == "confident" and count < args.confident:
                continue
            label = normalize_answer(greedy if source == "greedy" else majority, qa.qtype)
            if not (label in answer_words(qa.qtype) or (qa.qtype == "count" and label.isdigit())):
                continue  # an answer of no known form (e.g. a caption): nothing to teach
        out.append((im, qa, label))
        if len(out) == budget:
            break
    return out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from asg.evaluation import evaluate_vqa, vqa_items
    from asg.progress import progress_bar
    from asg.shapes import answer_correct
    from asg.train.cli import load_backbone
    from benchmarks.shapes import top_answer_shares

    backbone = load_backbone(argparse.Namespace(backbone="tiny", preset=None, model=args.model, device="cpu",
                                                adapters=None))
    params = trainable(backbone, args.train)
    snapshot = [p.detach().clone() for p in params]
    budget = args.steps * args.batch
    sources = [parse_source(s) for s in args.sources]
    rows: dict[str, dict[str, list[float]]] = {}
    t0 = time.time()
    with progress_bar(total=len(args.seeds) * (1 + len(sources)), desc="label_quality") as bar:
        for seed in args.seeds:
            torch.manual_seed(seed)
            base = evaluate_vqa(backbone, split=args.split, seed=seed, n=args.questions)
            bar.update(1)
            # candidates: pool questions drawn like the held-out ones (types cycling), 3x the budget
            # so that "confident" can fill it; the pool split is disjoint from val and test
            items = vqa_items("pool", 10_000 + seed, 3 * budget, backbone.image_size[0])
            need_votes = any(s in ("greedy", "majority", "confident") for s, _ in sources)
            votes = _majorities(backbone, items, args, seed) if need_votes else None
            for source, p in sources:
                name = source if p is None else f"{source}:{p:g}"
                triples = labelled(source, p, items, scene_votes(backbone, items) if source == "scene_vote" else votes,
                                   budget, args, seed)
                label_acc = 100.0 * sum(answer_correct(lab, qa) for _, qa, lab in triples) / max(1, len(triples))
                losses = _train(backbone, [(im, qa.question, lab) for im, qa, lab in triples], args) if triples else []
                after = evaluate_vqa(backbone, split=args.split, seed=seed, n=args.questions)
                with torch.no_grad():  # back to the base adapter for the next source
                    for prm, s in zip(params, snapshot):
                        prm.copy_(s)
                r = rows.setdefault(name, {})
                for key, value in (("base", base["accuracy"]), ("after", after["accuracy"]),
                                   ("gain", after["accuracy"] - base["accuracy"]), ("label_accuracy", label_acc),
                                   ("labels", float(len(triples))),
                                   ("first_loss", losses[0] if losses else float("nan")),
                                   ("last_loss", losses[-1] if losses else float("nan"))):
                    r.setdefault(key, []).append(value)
                for t, acc in after["per_qtype"].items():
                    r.setdefault(f"gain_{t}", []).append(acc - base["per_qtype"][t])
                for k, v in top_answer_shares(after["samples"]).items():
                    r.setdefault(k, []).append(v)
                bar.update(1)
    return {"sources": rows, "_meta": {
        "command": command_line("label_quality"), "model": args.model or "shipped tiny", "split": args.split,
        "seeds": args.seeds, "train": args.train, "steps": args.steps, "batch": args.batch, "lr": args.lr, "n": args.n,
        "confident": args.confident, "questions": args.questions, "seconds": round(time.time() - t0, 1),
        "machine": machine()}}


def _ms(xs: list[float]) -> str:
    import statistics

    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:+.1f} ± {s:.1f}"


def table(result: dict[str, Any]) -> str:
    import statistics

    lines = ["| labels | n per seed | label accuracy % | VQA: base → after | VQA gain | by type (gain) |",
             "|---|---:|---:|---|---:|---|"]
    for name, r in result["sources"].items():
        types = sorted(k[5:] for k in r if k.startswith("gain_"))
        by_type = ", ".join(f"{t} {statistics.fmean(r['gain_' + t]):+.1f}" for t in types)
        lines.append(f"| {name} | {statistics.fmean(r['labels']):.0f} | {statistics.fmean(r['label_accuracy']):.1f} | "
                     f"{statistics.fmean(r['base']):.1f} → {statistics.fmean(r['after']):.1f} | {_ms(r['gain'])} | "
                     f"{by_type} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.steps < 1 or args.batch < 1 or args.questions < 1 or args.n < 2 or not 1 <= args.confident <= args.n:
        raise SystemExit("--steps, --batch and --questions must be >= 1, --n >= 2 and 1 <= --confident <= --n; got "
                         f"{args.steps}, {args.batch}, {args.questions}, {args.n}, {args.confident}")
    if args.model is not None and not Path(args.model).exists():
        raise SystemExit(f"--model: {args.model} does not exist")
    try:
        [parse_source(s) for s in args.sources]
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"--sources: {exc}") from None
    result = measure(args)
    out = Path(args.out) if args.out else RESULTS / f"label-quality-{args.split}.json"
    meta = result["_meta"]
    publish(out, result, f"What labels of a given quality teach the Solver ({meta['split']} split)", table(result),
            f"model {meta['model']}; trains {meta['train']}; {meta['steps']} steps × {meta['batch']} questions, "
            f"lr {meta['lr']:g}; "
            f"seeds {meta['seeds']}; gains are mean ± std over seeds.")
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks label_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local tiny checkpoint (default: the shipped weights)")
    p.add_argument("--split", choices=("val", "test"), default="val", help="held-out split (default val)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--sources", nargs="+", default=["oracle", "noisy:0.75", "noisy:0.5", "greedy", "majority", "confident"],
                   help="label sources: oracle, noisy:P, greedy, majority, confident, scene_vote")
    p.add_argument("--steps", type=int, default=60, help="update steps (default 60, the loop's length)")
    p.add_argument("--batch", type=int, default=3, help="questions per step (default 3, recipe demo's questions_per_step)")
    p.add_argument("--train", choices=("adapter", "full"), default="adapter",
                   help="what trains: the Solver's LoRA adapter (default, as the loop) or it plus every VLM weight")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3, recipe demo's)")
    p.add_argument("--n", type=int, default=7, help="PPS answers per question for majority/confident (default 7)")
    p.add_argument("--confident", type=int, default=6, help="votes the majority needs for 'confident' (default 6)")
    p.add_argument("--questions", type=int, default=500, help="held-out questions (default 500)")
    p.add_argument("--out", help="result file (default benchmarks/results/label-quality-<split>.json)")
    return p
