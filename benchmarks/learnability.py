"""Can tiny's language model learn a question type at all? Trains it on abundant correct labels, eyes frozen.

    python -m benchmarks learnability --model runs/x --qtypes existence            # 600 steps x 32 questions
    python -m benchmarks learnability --model runs/x --qtypes position --steps 1500

``label_quality`` asks what labels of the loop's pool teach the Solver's adapter at the loop's budget.
This suite asks the question before it: given as many correct labels as it wants, does the model learn
the question type? If it does not, no labeller (the loop's votes included) can teach it, and the
headroom lies in the architecture. For ``--steps`` steps it draws ``--batch`` questions of the
``--qtypes`` types (uniform over the types) about fresh ``pool`` scenes (``--scenes`` distinct ones),
answers them from ground truth and takes one cross-entropy step under the canonical Solver prompt,
training the language model with the vision tower and the projector frozen (``--train language``; or
the Solver's LoRA adapter alone, ``--train adapter``, what the loop trains). Every ``--eval-every``
steps it scores ``--val-questions`` held-out ``val`` questions per type by forced choice: the answer
word of the type with the highest log-probability under the canonical prompt (chance is 50 % for
yes/no types).

Two controls say where a failure lies:

- ``--attention-probe STEPS`` (on by default, 300 steps; 0 turns it off) trains a one-layer attention
  read-out on the same frozen image tokens instead of the language model: a learned (colour, shape)
  query attends once over the 64 layer-normed tokens, and a small MLP answers "is there a <colour>
  <shape>?" (3 000 ``pool`` scenes, scored on 500 ``val`` scenes). If it answers existence and the
  language model does not, the tokens hold the answer and one attention read reaches it: what fails
  is the language model's learning, not the eyes.
- ``--position-probe STEPS`` (on by default, 300 steps; 0 turns it off) does the same for position
  questions with two reads, one per named object, and a learned relation embedding. Two probes: one
  sees only the tokens' values (``content``: do the tokens carry where they are?), the other also
  gets the attention-weighted column and row of the patches (``located``: is the object found, and
  would a 2-D position code suffice?).
- ``--position-code SCALE`` adds to every image token a fixed code of its patch's column and row (a
  forward hook on the projector, like the next option), ``SCALE`` times the tokens' mean RMS: does
  the language model learn a question type once the tokens say where they are?
- ``--one-phrase`` rewrites every position question, trained and scored, into one phrase per axis
  ("Is B to the left of A?" for "Is A to the right of B?", "above" for "below"; the answer stays):
  :func:`one_phrase`. ShapesWorld draws the order of the two objects and the relation at random, so
  the answer is "yes" exactly when (first object before the second) equals (the relation is "left
  of" or "above"): neither the comparison nor the relation word alone says anything about it, an
  XOR that gradient descent is slow to start on. With one phrase per axis the comparison is the
  answer. ``--one-phrase-steps N`` does so for the first N training steps only and scores the
  questions as drawn: does a comparison learned in one phrase carry over to the others?
- ``--normalize-image-tokens`` layer-norms the projector's output and scales it to the RMS of the
  language model's token embeddings, through a forward hook (nothing in the checkpoint changes). The
  projector's tokens are about 75 times larger than the text embeddings in the bases of
  docs/results.md; this tests whether that mismatch is what stops the language model.

Results go to ``benchmarks/results/learnability.json`` (or ``--out``) with a markdown table and a plot
of the curves beside it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, machine, publish

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def question_items(split: str, seed: int, qtypes: list[str], per_type: int, scenes: int | None = None) -> list[Any]:
    """``per_type`` (qa, scene index) pairs of each type in ``qtypes`` about scenes ``0, 1, ...`` of ``split``
    (at most ``scenes`` of them, cycled); a scene that has no question of a type is skipped for it."""
    import numpy as np

    from asg.shapes import questions, scene_for

    out: list[Any] = []
    for qtype in qtypes:
        got, i = 0, 0
        while got < per_type:
            if scenes is not None and i >= 50 * scenes + per_type:
                raise SystemExit(f"--scenes {scenes}: too few scenes of the {split} split have a {qtype} question")
            index = i % scenes if scenes else i
            rng = np.random.default_rng([seed, index, i, 17])
            pool = [q for q in questions(scene_for(split, seed, index), rng) if q.qtype == qtype]
            i += 1
            if pool:
                out.append((pool[int(rng.integers(len(pool)))], index))
                got += 1
    return out


def one_phrase(qa: Any) -> Any:
    """``qa`` with a position question rewritten to "to the left of" or "above", the two objects swapped
    where the relation was "to the right of" or "below" (the answer is the same; :func:`asg.shapes.one_phrase`);
    any other question unchanged."""
    from asg.shapes import QA
    from asg.shapes import one_phrase as rewrite

    question = rewrite(qa.question) if qa.qtype == "position" else qa.question
    return qa if question == qa.question else QA(question, qa.answer, qa.qtype)


def forced_choice(backbone: Any, items: list[tuple[Any, Any]], batch: int = 60) -> list[bool]:
    """For (qa, image) ``items``: is the right answer the most likely answer word of its type under the
    canonical prompt (summed log-probability of the answer turn, answer tag and end of turn included)?"""
    import torch

    from asg.backbones.tiny import templates as T
    from asg.evaluation import solver_prompt_text
    from asg.shapes import answer_words
    from asg.types import Prompt

    rows = [(k, w) for k, (qa, _) in enumerate(items) for w in answer_words(qa.qtype)]
    scores: dict[int, dict[str, float]] = {}
    with torch.no_grad(), backbone.use_role("solver"):
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            prompts = [Prompt(solver_prompt_text(backbone, items[k][0].question), image=items[k][1]) for k, _ in chunk]
            out = backbone.score(prompts, [T.ANSWER.format(answer=w) for _, w in chunk])
            for (k, w), lp in zip(chunk, (out.logprobs * out.mask).sum(1).tolist()):
                scores.setdefault(k, {})[w] = lp
    return [max(scores[k], key=scores[k].__getitem__) == qa.answer for k, (qa, _) in enumerate(items)]


def normalize_image_tokens(backbone: Any) -> float:
    """Layer-norm every image token at the projector's output and scale it to the RMS of the language
    model's input embeddings (a forward hook; the weights are untouched). Returns that RMS."""
    import torch

    vlm = backbone.net["vlm"].model
    rms = float(vlm.language_model.get_input_embeddings().weight.detach().pow(2).mean(-1).sqrt().mean())

    def hook(module: Any, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.layer_norm(out, out.shape[-1:]) * rms

    vlm.multi_modal_projector.register_forward_hook(hook)
    return rms



def position_code(backbone: Any, scale: float, images: list[Any]) -> float:
    """Add to every image token a fixed code of where its patch is (a forward hook on the projector; the
    weights are untouched), so that the tokens' content says where they are. The code of the patch in
    column c and row r of the square grid is [c', r', sin(π 2^k c'), cos(π 2^k c'), sin(π 2^k r'),
    cos(π 2^k r') for k = 0..3], with c' and r' the column and row scaled to [-1, 1], mapped to the token
    width by a fixed random matrix (seed 0) and scaled to ``scale`` times the mean RMS of the tokens of
    ``images``. Returns the code's RMS."""
    import torch

    vlm = backbone.net["vlm"].model
    rms = token_rms(backbone, images)
    with torch.no_grad():
        from asg.backbones.tiny.perception import image_tokens, pixel_values

        n, width = image_tokens(backbone, pixel_values(backbone, images[:1])).shape[1:]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"position_code expects a square grid of image tokens, got {n}")
    idx = torch.arange(n)
    cr = torch.stack([idx % side, idx // side], -1).float() / max(side - 1, 1) * 2 - 1  # (n, 2) in [-1, 1]
    feats = [cr] + [f(math.pi * 2 ** k * cr) for k in range(4) for f in (torch.sin, torch.cos)]
    code = torch.cat(feats, -1) @ torch.randn(2 + 16, width, generator=torch.Generator().manual_seed(0))
    code = code / code.pow(2).mean(-1, keepdim=True).sqrt().mean() * scale * rms  # (n, width)

    def hook(module: Any, inputs: Any, out: torch.Tensor) -> torch.Tensor:
        return out + code.to(out.dtype)

    vlm.multi_modal_projector.register_forward_hook(hook)
    return float(code.pow(2).mean(-1).sqrt().mean())

def token_rms(backbone: Any, images: list[Any]) -> float:
    """Mean RMS of the image tokens the language model reads for ``images``."""
    import torch

    from asg.backbones.tiny.perception import image_tokens, pixel_values

    with torch.no_grad():
        return float(image_tokens(backbone, pixel_values(backbone, images)).pow(2).mean(-1).sqrt().mean())


def _probe_data(backbone: Any, split: str, n: int, seed: int, stream: int, qtype: str,
                row: Any) -> tuple[Any, Any, Any]:
    """Frozen image tokens of ``n`` ``split`` scenes, and their ``qtype`` questions (drawn by ShapesWorld's
    generator from the seed ``[seed, stream]``) as (scene index, *``row(named words)``) with yes/no labels."""
    import numpy as np
    import torch

    from asg.backbones.tiny.perception import image_tokens, pixel_values
    from asg.shapes import question_template, questions, render, scene_for

    rng = np.random.default_rng([seed, stream])
    scenes = [scene_for(split, seed, i) for i in range(n)]
    with torch.no_grad():
        tokens = torch.cat([image_tokens(backbone, pixel_values(backbone, [render(s, backbone.image_size[0])
                                                                          for s in scenes[k:k + 250]]))
                            for k in range(0, n, 250)]).float()
    rows, labels = [], []
    for i, scene in enumerate(scenes):
        for qa in questions(scene, rng):
            if qa.qtype == qtype:
                rows.append((i, *row(question_template(qa.question)[1])))
                labels.append(qa.answer == "yes")
    return tokens, torch.tensor(rows), torch.tensor(labels, dtype=torch.float32)


def _fit_probe(probe: Any, train: tuple[Any, Any, Any], val: tuple[Any, Any, Any], steps: int, gen: Any) -> float:
    """AdamW at 3e-3 on batches of 128 training questions (drawn with ``gen``); held-out accuracy (%)."""
    import torch
    from torch import nn

    (x_tr, q_tr, y_tr), (x_va, q_va, y_va) = train, val
    opt = torch.optim.AdamW(probe.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(len(q_tr), (128,), generator=gen)
        q = q_tr[idx]
        loss = nn.functional.binary_cross_entropy_with_logits(probe(x_tr[q[:, 0]], q), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * float(((probe(x_va[q_va[:, 0]], q_va) > 0).float() == y_va).float().mean())


def attention_probe(backbone: Any, steps: int, seed: int, train_scenes: int = 3000, val_scenes: int = 500) -> float:
    """Held-out existence accuracy (%) of a one-layer attention read-out of the frozen image tokens: a
    learned query per (colour, shape) attends once over the layer-normed tokens; an MLP of the pooled
    value and the query answers yes or no. AdamW at 3e-3, batches of 128 existence questions."""
    import torch
    from torch import nn

    from asg.shapes.vocab import COLORS, SHAPES

    colors = list(COLORS)

    def row(named: dict[str, str]) -> tuple[int, int]:
        return colors.index(named["color"]), SHAPES.index(named["shape"])

    class Probe(nn.Module):
        def __init__(self, width: int, d: int = 64) -> None:
            super().__init__()
            self.norm, self.key, self.value = nn.LayerNorm(width), nn.Linear(width, d), nn.Linear(width, d)
            self.color, self.shape = nn.Embedding(len(colors), d), nn.Embedding(len(SHAPES), d)
            self.out = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, 1))

        def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            x = self.norm(x)
            query = self.color(q[:, 1]) + self.shape(q[:, 2])  # (B, d)
            att = torch.softmax(torch.einsum("btd,bd->bt", self.key(x), query) / query.shape[-1] ** 0.5, -1)
            pooled = torch.einsum("bt,btd->bd", att, self.value(x))
            return self.out(torch.cat([pooled, query], -1)).squeeze(-1)

    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train = _probe_data(backbone, "pool", train_scenes, seed, 29, "existence", row)
        val = _probe_data(backbone, "val", val_scenes, seed, 29, "existence", row)
        return _fit_probe(Probe(train[0].shape[-1]), train, val, steps, gen)


def position_probe(backbone: Any, steps: int, seed: int, train_scenes: int = 3000,
                   val_scenes: int = 500) -> dict[str, float]:
    """Held-out accuracy (%) on ShapesWorld's position questions ("is the red circle to the left of the
    blue square?") of two-read attention probes of the frozen image tokens. Each probe reads the image
    once per named object: a learned (colour, shape) query attends over the layer-normed tokens. An MLP
    of the two reads, their difference and a learned embedding of the relation answers yes or no. ``content`` reads only
    the tokens' values, so it answers only if the tokens carry where they are. ``located`` adds to
    each read the attention-weighted (column, row) of the patches in the 8 × 8 grid: the answer is
    then there whenever attention finds the object, the read-out a 2-D position code would give the
    language model. AdamW at 3e-3, batches of 128 questions."""
    import torch
    from torch import nn

    from asg.shapes.qa import RELATION_PHRASES
    from asg.shapes.vocab import COLORS, SHAPES

    colors, relations = list(COLORS), [r[0] for r in RELATION_PHRASES]

    def row(named: dict[str, str]) -> tuple[int, ...]:
        return (colors.index(named["c1"]), SHAPES.index(named["s1"]), colors.index(named["c2"]),
                SHAPES.index(named["s2"]), relations.index(named["rel"]))

    class Probe(nn.Module):
        def __init__(self, width: int, grid: torch.Tensor | None, d: int = 64) -> None:
            super().__init__()
            self.grid = grid
            self.norm, self.key, self.value = nn.LayerNorm(width), nn.Linear(width, d), nn.Linear(width, d)
            self.color, self.shape = nn.Embedding(len(colors), d), nn.Embedding(len(SHAPES), d)
            self.relation = nn.Embedding(len(relations), d)
            read = d + (2 if grid is not None else 0)
            self.out = nn.Sequential(nn.Linear(3 * read + d, d), nn.GELU(), nn.Linear(d, 1))

        def read(self, x: torch.Tensor, color: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
            query = self.color(color) + self.shape(shape)  # (B, d)
            att = torch.softmax(torch.einsum("btd,bd->bt", self.key(x), query) / query.shape[-1] ** 0.5, -1)
            pooled = torch.einsum("bt,btd->bd", att, self.value(x))
            if self.grid is not None:
                pooled = torch.cat([pooled, att @ self.grid], -1)
            return pooled

        def forward(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            x = self.norm(x)
            a, b = self.read(x, q[:, 1], q[:, 2]), self.read(x, q[:, 3], q[:, 4])
            return self.out(torch.cat([a, b, a - b, self.relation(q[:, 5])], -1)).squeeze(-1)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train = _probe_data(backbone, "pool", train_scenes, seed, 31, "position", row)
        val = _probe_data(backbone, "val", val_scenes, seed, 31, "position", row)
        n = train[0].shape[1]
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"position_probe expects a square grid of image tokens, got {n}")
        idx = torch.arange(n)
        # (column, row), centred and spread over [-2, 2] so that a coordinate weighs like a value feature
        grid = (torch.stack([idx % side, idx // side], -1).float() / max(side - 1, 1) - 0.5) * 4.0
        result = {name: _fit_probe(Probe(train[0].shape[-1], g), train, val, steps,
                                   torch.Generator().manual_seed(seed))
                  for name, g in (("content", None), ("located", grid))}
        result["val_questions"] = float(len(val[2]))
        result["val_yes_share"] = 100.0 * float(val[2].mean())
        return result


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from asg.backbones.tiny import templates as T
    from asg.evaluation import solver_prompt_text
    from asg.progress import progress_bar
    from asg.shapes import render, scene_for
    from asg.train.cli import load_backbone
    from asg.types import Prompt
    from benchmarks.label_quality import trainable

    t0 = time.time()
    torch.manual_seed(args.seed)
    backbone = load_backbone(argparse.Namespace(backbone="tiny", preset=None, model=args.model, device="cpu",
                                                adapters=None))
    size = backbone.image_size[0]
    probe = None
    if args.attention_probe and "existence" in args.qtypes:
        probe = attention_probe(backbone, args.attention_probe, args.seed)
        print(f"attention probe of the frozen image tokens: val existence {probe:.1f}%", flush=True)
    pprobe = None
    if args.position_probe and "position" in args.qtypes:
        pprobe = position_probe(backbone, args.position_probe, args.seed)
        print(f"position probes of the frozen image tokens: val position {pprobe['content']:.1f}% (content), "
              f"{pprobe['located']:.1f}% (located)", flush=True)
    sample = [render(scene_for("val", args.seed, i), size) for i in range(16)]
    rms = {"image_tokens": token_rms(backbone, sample)}
    if args.normalize_image_tokens:
        rms["text_embeddings"] = normalize_image_tokens(backbone)
        rms["image_tokens_normalized"] = token_rms(backbone, sample)
    if args.position_code:
        rms["position_code"] = position_code(backbone, args.position_code, sample)
    params = trainable(backbone, args.train)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    val = [(qa, render(scene_for("val", args.seed, i), size))
           for qa, i in question_items("val", args.seed, args.qtypes, args.val_questions)]
    per_type = -(-args.steps * args.batch // len(args.qtypes))  # steps x batch in all, rounded up
    train = question_items("pool", 20_000 + args.seed, args.qtypes, per_type, scenes=args.scenes)
    if args.one_phrase:
        val = [(one_phrase(qa), im) for qa, im in val]
        train = [(one_phrase(qa), i) for qa, i in train]
    order = np.random.default_rng([args.seed, 3]).permutation(len(train))  # types mixed in every batch
    images: dict[int, Any] = {}

    def evaluate(step: int, loss: float | None) -> dict[str, Any]:
        ok = forced_choice(backbone, val)
        row: dict[str, Any] = {"step": step, "loss": loss}
        for qtype in args.qtypes:
            hits = [o for o, (qa, _) in zip(ok, val) if qa.qtype == qtype]
            row[qtype] = 100.0 * sum(hits) / len(hits)
        return row

    curve = [evaluate(0, None)]
    losses: list[float] = []
    backbone.net.train()
    backbone.net["vae"].eval()
    with progress_bar(total=args.steps, desc="learnability") as bar, backbone.use_role("solver"):
        for step in range(1, args.steps + 1):
            lr = args.lr * min(1.0, step / 50) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps)))
            for group in opt.param_groups:
                group["lr"] = lr
            chunk = [train[order[(step - 1) * args.batch + j]] for j in range(args.batch)]
            if step <= args.one_phrase_steps:  # a curriculum: one phrase per axis first, then as drawn
                chunk = [(one_phrase(qa), i) for qa, i in chunk]
            for _, i in chunk:
                if i not in images:
                    images[i] = render(scene_for("pool", 20_000 + args.seed, i), size)
            prompts = [Prompt(solver_prompt_text(backbone, qa.question), image=images[i]) for qa, i in chunk]
            out = backbone.score(prompts, [T.ANSWER.format(answer=qa.answer) for qa, _ in chunk], grad=True)
            loss = -(out.logprobs * out.mask).sum() / out.mask.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            bar.set(loss=loss.item())
            bar.update(1)
            if step % args.eval_every == 0 or step == args.steps:
                backbone.net.eval()
                row = evaluate(step, sum(losses[-args.eval_every:]) / len(losses[-args.eval_every:]))
                backbone.net.train()
                backbone.net["vae"].eval()
                curve.append(row)
                bar.write(f"step {step}: " + ", ".join(f"{t} {row[t]:.1f}%" for t in args.qtypes))
    return {"curve": curve, "_meta": {
        "command": command_line("learnability"), "model": args.model or "shipped tiny", "qtypes": args.qtypes,
        "train": args.train, "steps": args.steps, "batch": args.batch, "lr": args.lr, "scenes": args.scenes,
        "distinct_training_scenes": len({i for _, i in train}), "val_questions": args.val_questions, "seed": args.seed,
        "normalize_image_tokens": args.normalize_image_tokens, "position_code": args.position_code, "one_phrase": args.one_phrase,
        "one_phrase_steps": args.one_phrase_steps, "token_rms": rms, "attention_probe_existence": probe,
        "position_probe": pprobe,
        "seconds": round(time.time() - t0, 1), "machine": machine()}}


def table(result: dict[str, Any]) -> str:
    qtypes = result["_meta"]["qtypes"]
    lines = ["| step | mean loss | " + " | ".join(f"{t} %" for t in qtypes) + " |",
             "|---:|---:|" + "---:|" * len(qtypes)]
    for row in result["curve"]:
        loss = "–" if row["loss"] is None else f"{row['loss']:.3f}"
        lines.append(f"| {row['step']} | {loss} | " + " | ".join(f"{row[t]:.1f}" for t in qtypes) + " |")
    meta = result["_meta"]
    if meta.get("attention_probe_existence") is not None:
        lines += ["", f"One attention read of the same frozen image tokens (`attention_probe`): val existence "
                      f"{meta['attention_probe_existence']:.1f} %."]
    if meta.get("position_probe") is not None:
        pp = meta["position_probe"]
        lines += ["", f"Two attention reads of the same frozen image tokens (`position_probe`, "
                      f"{pp['val_questions']:.0f} val position questions, {pp['val_yes_share']:.1f} % \"yes\"): "
                      f"{pp['content']:.1f} % from the tokens' content alone, {pp['located']:.1f} % with the "
                      f"attention-weighted patch coordinates."]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = result["_meta"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [r["step"] for r in result["curve"]]
    for t in meta["qtypes"]:
        ax.plot(steps, [r[t] for r in result["curve"]], "o-", label=t)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0, 100)
    ax.set_xlabel(f"step ({meta['batch']} correct labels each)")
    ax.set_ylabel("held-out accuracy % (forced choice)")
    if meta.get("attention_probe_existence") is not None:
        ax.axhline(meta["attention_probe_existence"], color="C0", lw=0.8, ls=":", label="existence, one attention read")
    if meta.get("position_probe") is not None:
        for k, (name, ls) in enumerate((("content", ":"), ("located", "-."))):
            ax.axhline(meta["position_probe"][name], color=f"C{k + 2}", lw=0.8, ls=ls, label=f"position probe, {name}")
    norm = ", image tokens normalised" if meta.get("normalize_image_tokens") else ""
    norm += f", 2-D position code × {meta['position_code']:g}" if meta.get("position_code") else ""
    norm += ", one phrase per axis" if meta.get("one_phrase") else ""
    norm += f", one phrase for {meta['one_phrase_steps']} steps" if meta.get("one_phrase_steps") else ""
    ax.set_title(f"{meta['model']}: trains {meta['train']}{norm}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from asg.shapes.vocab import QTYPES

    bad = [t for t in args.qtypes if t not in QTYPES]
    if bad:
        raise SystemExit(f"--qtypes: unknown question type(s) {', '.join(bad)}; choose from {', '.join(QTYPES)}")
    if args.attention_probe < 0:
        raise SystemExit(f"--attention-probe must be >= 0 steps, got {args.attention_probe}")
    if args.position_probe < 0:
        raise SystemExit(f"--position-probe must be >= 0 steps, got {args.position_probe}")
    if not (args.position_code >= 0 and math.isfinite(args.position_code)):
        raise SystemExit(f"--position-code must be a finite SCALE >= 0, got {args.position_code}")
    if args.one_phrase_steps < 0 or (args.one_phrase_steps and args.one_phrase):
        raise SystemExit(f"--one-phrase-steps must be >= 0 and is a curriculum for questions scored as drawn, so it "
                         f"does not go with --one-phrase; got {args.one_phrase_steps}"
                         f"{' with --one-phrase' if args.one_phrase else ''}")
    if min(args.steps, args.batch, args.eval_every, args.val_questions) < 1 or (args.scenes is not None and args.scenes < 1):
        raise SystemExit("--steps, --batch, --eval-every, --val-questions and --scenes must be >= 1; got "
                         f"{args.steps}, {args.batch}, {args.eval_every}, {args.val_questions}, {args.scenes}")
    if args.model is not None and not Path(args.model).exists():
        raise SystemExit(f"--model: {args.model} does not exist")
    result = measure(args)
    out = Path(args.out) if args.out else RESULTS / "learnability.json"
    meta = result["_meta"]
    code = (f"; a fixed 2-D code of each patch's place, {meta['position_code']:g} × the tokens' RMS, added to its token"
            if meta["position_code"] else "")
    code += "; position questions in one phrase per axis (left of, above)" if meta.get("one_phrase") else ""
    code += (f"; the first {meta['one_phrase_steps']} steps train position questions in one phrase per axis, "
             "the rest as drawn" if meta.get("one_phrase_steps") else "")
    publish(out, result, f"Can the model learn {', '.join(meta['qtypes'])} from correct labels?", table(result),
            f"model {meta['model']}; trains {meta['train']} (vision tower and projector frozen"
            f"{'; image tokens layer-normed to the text embeddings RMS' if meta['normalize_image_tokens'] else ''}{code}); "
            f"{meta['steps']} steps × "
            f"{meta['batch']} correct labels about {meta['distinct_training_scenes']} distinct pool scenes, "
            f"lr {meta['lr']:g}; {meta['val_questions']} val questions per type, scored by forced choice.")
    plot(result, out.with_suffix(".png"))
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks learnability", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="local tiny checkpoint (default: the shipped weights)")
    p.add_argument("--qtypes", nargs="+", default=["existence"], help="question types to train and score (default existence)")
    p.add_argument("--train", choices=("language", "adapter"), default="language",
                   help="the language model with the eyes frozen (default), or the Solver's LoRA adapter alone")
    p.add_argument("--steps", type=int, default=600, help="update steps (default 600)")
    p.add_argument("--batch", type=int, default=32, help="questions per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate, 50 warm-up steps then cosine (default 1e-3)")
    p.add_argument("--scenes", type=int, default=None, help="distinct pool scenes to draw from (default: a new one per question)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations (default 100)")
    p.add_argument("--val-questions", type=int, default=200, help="held-out questions per type (default 200)")
    p.add_argument("--normalize-image-tokens", action="store_true",
                   help="layer-norm the projector's output to the text embeddings' RMS (a hook; weights untouched)")
    p.add_argument("--position-code", type=float, default=0.0, metavar="SCALE",
                   help="add a fixed 2-D code of each patch's place to its image token, SCALE times the tokens' "
                        "RMS (a hook; weights untouched; default 0: off)")
    p.add_argument("--one-phrase", action="store_true",
                   help="rewrite position questions into one phrase per axis (left of, above), the answer unchanged")
    p.add_argument("--one-phrase-steps", type=int, default=0, metavar="N",
                   help="a curriculum: the first N steps train position questions in one phrase per axis, the "
                        "rest as drawn; scored as drawn (default 0: off)")
    p.add_argument("--attention-probe", type=int, default=300,
                   help="steps of the one-attention-read existence probe, run when existence is asked (default 300; 0: off)")
    p.add_argument("--position-probe", type=int, default=300,
                   help="steps of the two-read position probes, run when position is asked (default 300; 0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes and the order (default 0)")
    p.add_argument("--out", help="result file (default benchmarks/results/learnability.json)")
    return p
