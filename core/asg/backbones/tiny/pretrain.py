"""`asg tiny pretrain`: train `tiny` from scratch on a small labeled ShapesWorld set, on CPU.

Phase 1 trains the autoencoder on the labeled images (L1 + L2 reconstruction, a 1e-6 KL term) and
fixes the latent normalisation. An optional perception phase (``perception_steps``) then trains the
vision tower and projector alone on dense per-patch targets of the labeled scenes (perception.py).
Phase 2 trains everything else, the autoencoder frozen: one step = a batch of understanding examples
(teacher-forced cross-entropy on the assistant turn, through the same ``score`` primitive the loop
uses) + a batch of text-to-image pairs (the same ``generator_loss`` the loop uses). AdamW, linear
warm-up then cosine decay. Deterministic for a given seed, code version and thread count.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from asg.backbones.tiny.config import TinyConfig
from asg.backbones.tiny.model import TinyBackbone, image_to_tensor
from asg.backbones.tiny.perception import (PerceptionHeads, evaluate_perception, image_tokens, perception_loss,
                                           pixel_values, stack_targets)
from asg.backbones.tiny.pretrain_config import PretrainConfig, config_from_args
from asg.backbones.tiny.pretrain_data import LabeledSet, generation_example, tokenizer_corpus, understanding_example
from asg.backbones.tiny.tokenizer import train_tokenizer
from asg.progress import progress_bar


def _cosine(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step <= warmup:
        return peak * step / max(1, warmup)
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def train_autoencoder(backbone: TinyBackbone, data: LabeledSet, cfg: PretrainConfig) -> dict[str, Any]:
    """Phase 1: fit the autoencoder to the labeled images, then set the latent shift/scale so the
    flow head sees zero-mean unit-variance latents. Returns the loss history and a quality check."""
    from asg.evaluation import scene_match_rate

    vae = backbone.net["vae"]
    vae.requires_grad_(True)
    vae.train()
    images = torch.stack([image_to_tensor(im, backbone.config.image_size) for im in data.images])  # (N, 3, S, S)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    rng = np.random.default_rng([cfg.seed, 5])
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    with progress_bar(total=cfg.vae_steps, desc="pretraining tiny: autoencoder") as bar:
        for step in range(1, cfg.vae_steps + 1):
            for group in opt.param_groups:
                group["lr"] = _cosine(step, cfg.vae_steps, cfg.vae_lr, 50, 0.1)
            x = images[torch.from_numpy(rng.integers(0, len(images), cfg.vae_batch))]
            posterior = vae.encode(x).latent_dist
            rec = vae.decode(posterior.sample(generator=gen)).sample
            loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            history.append({"step": step, "loss": loss.item()})
            bar.set(loss=loss.item())
            bar.update(1)
    vae.eval()
    vae.requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i:i + 256]).latent_dist.mode() for i in range(0, len(images), 256)])
    backbone.config = attrs.evolve(backbone.config, latent_shift=float(z.mean()), latent_scale=float(1.0 / z.std()))
    # quality: do validation scenes survive encode -> decode, as read by the ShapesWorld detector?
    from asg.shapes import render, scene_for

    val = [render(scene_for("val", cfg.seed, i), backbone.config.image_size) for i in range(100)]
    recon = backbone.decode_latents(backbone.encode_images(val))
    return {"history": history, "val_reconstruction_detected_exactly": scene_match_rate(val, recon),
            "latent_shift": backbone.config.latent_shift, "latent_scale": backbone.config.latent_scale}


class _PerceptionData:
    """The labeled images as pixel tensors with their per-patch targets, and a val set to check on."""

    def __init__(self, backbone: TinyBackbone, data: LabeledSet, cfg: PretrainConfig) -> None:
        from asg.shapes import render, scene_for

        grid = backbone.config.image_size // backbone.config.patch_size
        self.pixels = pixel_values(backbone, data.images)
        self.targets = stack_targets(data.scenes, grid)
        val = [scene_for("val", cfg.seed, 10_000 + i) for i in range(500)]  # not the scenes _quick_eval uses
        self.val_pixels = pixel_values(backbone, [render(s, backbone.config.image_size) for s in val])
        self.val_targets = stack_targets(val, grid)

    def batch(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.from_numpy(rng.integers(0, len(self.pixels), n))
        return self.pixels[idx], {k: v[idx] for k, v in self.targets.items()}


def train_perception(backbone: TinyBackbone, heads: torch.nn.Module, pdata: _PerceptionData,
                     cfg: PretrainConfig) -> dict[str, Any]:
    """Perception phase: the vision tower, the projector and the per-patch heads alone, on the dense
    targets of the labeled scenes (AdamW, cosine with 50 warm-up steps). Returns the loss history and
    the heads' patch accuracy on held-out val scenes."""
    vlm = backbone.net["vlm"].model
    params = [*vlm.vision_tower.parameters(), *vlm.multi_modal_projector.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.perception_lr, weight_decay=0.0)
    rng = np.random.default_rng([cfg.seed, 11])
    history = []
    with progress_bar(total=cfg.perception_steps, desc="pretraining tiny: perception") as bar:
        for step in range(1, cfg.perception_steps + 1):
            for group in opt.param_groups:
                group["lr"] = _cosine(step, cfg.perception_steps, cfg.perception_lr, 50, 0.1)
            x, y = pdata.batch(rng, cfg.perception_batch)
            loss, acc = perception_loss(heads, image_tokens(backbone, x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append({"step": step, "loss": loss.item(), **{f"acc_{k}": v for k, v in acc.items()}})
            bar.set(loss=loss.item(), shape=acc["shape"])
            bar.update(1)
    val = evaluate_perception(backbone, heads, pdata.val_pixels, pdata.val_targets)
    return {"history": history, "val_patch_accuracy": val}


def _quick_eval(backbone: TinyBackbone, cfg: PretrainConfig) -> dict[str, float]:
    from asg.evaluation import evaluate_geneval, evaluate_vqa

    was_training = backbone.net.training
    backbone.net.eval()
    vqa = evaluate_vqa(backbone, split="val", seed=cfg.seed, n=cfg.eval_questions, role=None)
    gen = evaluate_geneval(backbone, split="val", seed=cfg.seed, per_tag=cfg.eval_per_tag, images_per_prompt=2, role=None)
    backbone.net.train(was_training)
    return {"val_vqa_accuracy": vqa["accuracy"], "val_geneval_mini": gen["overall"],
            **{f"val_vqa_{k}": v for k, v in vqa["per_qtype"].items()},
            **{f"val_geneval_{k}": v for k, v in gen["per_tag"].items()}}


def _eval_line(ev: dict[str, float]) -> str:
    """One progress line per evaluation: overall VQA and GenEval-mini, then VQA by question type (which
    types have left chance is what a pretraining run is watched for)."""
    by_type = "  ".join(f"{k[len('val_vqa_'):]} {v:.1f}" for k, v in sorted(ev.items())
                        if k.startswith("val_vqa_") and k != "val_vqa_accuracy")
    line = f"step {ev['step']}: val VQA {ev['val_vqa_accuracy']:.1f}%  val GenEval-mini {ev['val_geneval_mini']:.1f}"
    return f"{line}  [VQA by type: {by_type}]" if by_type else line


_LONG_TASKS = ("proposer", "spec")  # targets of ~80 tokens, against ~6 for an answer


def _cross_entropy(backbone: TinyBackbone, examples: list[tuple[Any, str, str]]) -> torch.Tensor:
    """Mean next-token NLL over all target tokens of ``examples`` (prompt, target, task).

    Long-target tasks go in their own forward pass so short rows are not padded to their length; the
    result is the same token-weighted mean a single batch would give.
    """
    groups = [[e for e in examples if (e[2] in _LONG_TASKS) == long] for long in (False, True)]
    nll, tokens = 0.0, 0
    for group in groups:
        if group:
            scored = backbone.score([e[0] for e in group], [e[1] for e in group], grad=True)
            nll = nll - scored.logprobs[scored.mask].sum()
            tokens += int(scored.mask.sum())
    return nll / tokens


def _continue_from(directory: Path, cfg: PretrainConfig) -> TinyBackbone:
    """The pretrained `tiny` in ``directory`` (its tokenizer, architecture and autoencoder), with the
    vision tower and projector freshly initialised when ``cfg.reinit == "vision"``, everything but
    the autoencoder when it is ``"all"``, and everything but the autoencoder, vision tower and
    projector when it is ``"language"``. The loader refuses a directory that lacks any of its files,
    naming them."""
    backbone = TinyBackbone.load(model=directory, adapters=False, seed=cfg.seed)
    if cfg.reinit:
        fresh = TinyBackbone(backbone.config, backbone.tokenizer, adapters=False, seed=cfg.seed + 1)
        if cfg.reinit == "vision":
            for part in ("vision_tower", "multi_modal_projector"):
                getattr(backbone.net["vlm"].model, part).load_state_dict(getattr(fresh.net["vlm"].model, part).state_dict())
        else:
            keep = ("model.vision_tower.", "model.multi_modal_projector.") if cfg.reinit == "language" else ()
            backbone.net["gen"].load_state_dict(fresh.net["gen"].state_dict())
            kept = {k: v for k, v in backbone.net["vlm"].state_dict().items() if k.startswith(keep)} if keep else {}
            backbone.net["vlm"].load_state_dict({**fresh.net["vlm"].state_dict(), **kept})
    return backbone


def pretrain(cfg: PretrainConfig, out: Path) -> dict[str, Any]:
    """Train, then write config.json, tokenizer.json, model.safetensors and pretrain_report.json to ``out``."""
    out = Path(out)
    if cfg.init_from and out.resolve() == Path(cfg.init_from).resolve():
        raise FileExistsError(f"--out {out} is the --init-from directory; write the continued model elsewhere")
    if (out / "model.safetensors").exists() and not (out / "pretrain_report.json").exists():
        raise FileExistsError(f"{out} holds weights that `asg tiny pretrain` did not write; choose another --out")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.time()
    if cfg.init_from:
        backbone = _continue_from(Path(cfg.init_from), cfg)
        data = LabeledSet(cfg.scenes, cfg.seed, backbone.config.image_size)
        autoencoder: dict[str, Any] = {"history": [], "continued_from": str(cfg.init_from), "reinit": cfg.reinit,
                                       "latent_shift": backbone.config.latent_shift,
                                       "latent_scale": backbone.config.latent_scale}
    else:
        tokenizer = train_tokenizer(tokenizer_corpus(cfg.seed), cfg.vocab_size)
        model_cfg = TinyConfig(vocab_size=len(tokenizer), **cfg.model_sizes())
        backbone = TinyBackbone(model_cfg, tokenizer, adapters=False, seed=cfg.seed)
        data = LabeledSet(cfg.scenes, cfg.seed, model_cfg.image_size)
        autoencoder = train_autoencoder(backbone, data, cfg)
    if cfg.one_phrase:
        backbone.config = attrs.evolve(backbone.config, one_phrase_position=True)
    perception: dict[str, Any] = {}
    heads = pdata = None
    if cfg.perception_steps or cfg.perception_weight:
        heads = PerceptionHeads(backbone.config.text_hidden).to(backbone._param_dtype())
        pdata = _PerceptionData(backbone, data, cfg)
    if cfg.perception_steps:
        backbone.net.train()
        perception.update(train_perception(backbone, heads, pdata, cfg))
        print("perception phase: val patch accuracy " + ", ".join(
            f"{k} {v:.1f}%" for k, v in perception["val_patch_accuracy"].items()))
    backbone.net.train()
    backbone.net["vae"].eval()
    if cfg.freeze_vision:
        backbone.net["vlm"].model.vision_tower.requires_grad_(False)
    params = [p for p in backbone.net.parameters() if p.requires_grad]
    if cfg.perception_weight:
        params += list(heads.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng([cfg.seed, 3])
    history: list[dict[str, float]] = []
    evals: list[dict[str, float]] = []
    ema: dict[str, float] = {}
    with progress_bar(total=cfg.steps, desc="pretraining tiny: all but the autoencoder") as bar:
        for step in range(1, cfg.steps + 1):
            lr = _cosine(step, cfg.steps, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
            for group in opt.param_groups:
                group["lr"] = lr
            ex = [understanding_example(data, rng, vqa_share=cfg.vqa_share, position_share=cfg.position_share) for _ in range(cfg.batch_text)]
            ce = _cross_entropy(backbone, ex)
            gen = [generation_example(data, rng) for _ in range(cfg.batch_image)]
            flow = backbone.generator_loss([g[0] for g in gen], [g[1] for g in gen], seed=cfg.seed * 1_000_003 + step).loss
            loss = ce + cfg.flow_weight * flow
            if cfg.perception_weight:
                x, y = pdata.batch(rng, cfg.perception_batch)
                aux, _ = perception_loss(heads, image_tokens(backbone, x), y)
                loss = loss + cfg.perception_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
            opt.step()
            row = {"step": step, "lr": lr, "ce": ce.item(), "flow": flow.item(), "grad_norm": gnorm}
            history.append(row)
            for k in ("ce", "flow"):
                ema[k] = row[k] if k not in ema else 0.95 * ema[k] + 0.05 * row[k]
            bar.set(ce=ema["ce"], flow=ema["flow"], lr=lr)
            bar.update(1)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                ev = {"step": step, **_quick_eval(backbone, cfg)}
                evals.append(ev)
                bar.write(_eval_line(ev))
    backbone.net.eval()
    backbone.net["vlm"].model.vision_tower.requires_grad_(True)
    if heads is not None:
        perception["after"] = evaluate_perception(backbone, heads, pdata.val_pixels, pdata.val_targets)
    seconds = time.time() - t_start
    backbone.save_pretrained(out)
    report = {
        "pretrain_config": cfg.to_dict(),
        "model_config": backbone.config.to_dict(),
        "autoencoder": {k: v for k, v in autoencoder.items() if k != "history"},
        "labeled_set": {"split": "pretrain", "scenes": cfg.scenes, "examples_seen": {
            "understanding": cfg.steps * cfg.batch_text, "text_to_image": cfg.steps * cfg.batch_image}},
        "parameters": sum(p.numel() for p in backbone.net.parameters()),
        "seconds": seconds,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "threads": cfg.threads,
                    "torch": torch.__version__},
        "evals": evals,
        "history": history,
        "autoencoder_history": autoencoder["history"],
        "perception": {k: v for k, v in perception.items() if k != "history"},
        "perception_history": perception.get("history", []),
    }
    tmp = out / "pretrain_report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out / "pretrain_report.json")
    _plot(history, evals, out / "pretrain_curves.png")
    return report


def _plot(history: list[dict[str, float]], evals: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key in zip(axes[:2], ("ce", "flow")):
        vals = np.array([h[key] for h in history])
        k = max(1, len(vals) // 50)
        smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
        ax.plot(steps, vals, alpha=0.25)
        ax.plot(steps[k - 1:], smooth)
        ax.set_title({"ce": "text cross-entropy (nats/token)", "flow": "flow-matching loss (velocity MSE)"}[key])
        ax.set_xlabel("step")
        ax.set_yscale("log")
    if evals:
        e_steps = [e["step"] for e in evals]
        axes[2].plot(e_steps, [e["val_vqa_accuracy"] for e in evals], "o-", label="val VQA accuracy %")
        axes[2].plot(e_steps, [e["val_geneval_mini"] for e in evals], "s-", label="val GenEval-mini")
        axes[2].set_ylim(0, 100)
        axes[2].legend()
        axes[2].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def pretrain_from_args(args: Any) -> dict[str, Any]:
    report = pretrain(config_from_args(args), args.out)
    last = report["evals"][-1]
    print(f"wrote {args.out} in {report['seconds'] / 60:.1f} min: val VQA {last['val_vqa_accuracy']:.1f}%, "
          f"val GenEval-mini {last['val_geneval_mini']:.1f}")
    return report
