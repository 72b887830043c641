"""Reward-weighted flow matching for flow/diffusion generators (algorithm.md §6.4).

Two kinds of training pairs for ``Backbone.generator_loss`` (velocity MSE, weighted per sample):

(a) the REAL source image conditioned on the spec prompt (the reference's DiT step), weighted

        w_real = 1 + 0.5 · clip(R_best, 0, 1)          ∈ [1, 1.5]

    R_best = the best candidate's generation reward for that spec. In imageless mode (no real
    image) the best candidate takes its place, as in the reference.

(b) each generated candidate l of a spec (group of L), weighted by its group-relative advantage
    A_l = (R_l − mean R)/(std R + ε) (a degenerate group gets A = 0), made non-negative:

        positive:  w_l = max(0, A_l)                      (imitate only better-than-average images)
        exp:       w_l = min(w_max, exp(A_l/τ) / mean_l exp(A_l/τ))     (advantage-weighted regression)

    times ``generated_scale``. Candidates with weight 0 are dropped from the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from asg._validate import number, one_of
from asg.types import GeneratedImage
from asg.updates._tensor import stats
from asg.updates.grpo import GRPOConfig, group_advantages


@attrs.frozen
class FlowConfig:
    """Which pairs the generator is trained on and how they are weighted."""

    real: bool = True  # (a) the real source image under the spec prompt (reference behaviour)
    generated: bool = True  # (b) the generated candidates, weighted by group-relative advantage
    real_reward_scale: float = attrs.field(default=0.5, validator=number(0.0, None))  # w_real = 1 + this·clip(R_best, 0, 1)
    weighting: str = attrs.field(default="positive", validator=one_of(("positive", "exp")))  # advantage → weight rule for (b)
    temperature: float = attrs.field(default=1.0, validator=number(0.0, None, lo_open=True))  # τ of the exp rule
    max_weight: float = attrs.field(default=5.0, validator=number(0.0, None, lo_open=True))  # cap of one candidate's weight
    generated_scale: float = attrs.field(default=1.0, validator=number(0.0, None))  # multiplies every (b) weight
    std_eps: float = attrs.field(default=1e-8, validator=number(0.0, None))  # ε of the advantage normalisation


def real_image_weight(best_reward: float, scale: float = 0.5) -> float:
    """1 + scale·clip(best_reward, 0, 1) (§6.4)."""
    return 1.0 + scale * min(1.0, max(0.0, float(best_reward)))


def candidate_weights(rewards: torch.Tensor | Sequence[float], config: FlowConfig | None = None) -> torch.Tensor:
    """Non-negative weights (G,) or (N, G) of generated candidates from their rewards, per group."""
    cfg = config or FlowConfig()
    adv = group_advantages(torch.as_tensor(rewards, dtype=torch.float32),
                           GRPOConfig(std_eps=cfg.std_eps, degenerate="zero"))
    if cfg.weighting == "positive":
        w = adv.clamp_min(0.0)
    else:
        e = torch.exp(adv / cfg.temperature)
        w = e / e.mean(dim=-1, keepdim=True)
    return (w.clamp(max=cfg.max_weight) * cfg.generated_scale)


@attrs.frozen(eq=False)
class FlowBatch:
    """Arguments of one ``generator_loss`` call: prompts, targets and their weights."""

    prompts: tuple[str, ...]
    targets: tuple[Any, ...]  # PIL images (real) or GeneratedImage (candidates)
    weights: torch.Tensor  # (B,) non-negative
    kinds: tuple[str, ...]  # "real" | "generated" per entry

    def __len__(self) -> int:
        return len(self.prompts)


def flow_batch(
    prompts: Sequence[str],
    real_images: Sequence[Any | None],
    candidates: Sequence[Sequence[GeneratedImage]],
    rewards: Sequence[Sequence[float]],
    config: FlowConfig | None = None,
) -> tuple[FlowBatch, dict[str, float]]:
    """Build the weighted flow-matching batch for S specs (prompt, real image, L candidates, L rewards)."""
    cfg = config or FlowConfig()
    S = len(prompts)
    if not (len(real_images) == len(candidates) == len(rewards) == S):
        raise ValueError(f"flow_batch needs one real image, candidate group and reward group per prompt; got "
                         f"{S} prompts, {len(real_images)} images, {len(candidates)} groups, {len(rewards)} reward groups")
    entries: list[tuple[str, Any, float, str]] = []  # (prompt, target, weight, kind)
    real_w, gen_w = [], []
    for j in range(S):
        group, r = list(candidates[j]), [float(x) for x in rewards[j]]
        if len(group) != len(r):
            raise ValueError(f"spec {j}: {len(group)} candidates but {len(r)} rewards")
        best = max(range(len(r)), key=r.__getitem__) if r else None
        if cfg.real:
            target = real_images[j] if real_images[j] is not None else (group[best] if best is not None else None)
            if target is not None:
                w = real_image_weight(r[best] if best is not None else 0.0, cfg.real_reward_scale)
                entries.append((prompts[j], target, w, "real"))
                real_w.append(w)
        if cfg.generated and len(group) >= 2:
            for img, w in zip(group, candidate_weights(r, cfg).tolist()):
                gen_w.append(w)
                if w > 0:
                    entries.append((prompts[j], img, w, "generated"))
    kinds = [e[3] for e in entries]
    batch = FlowBatch(tuple(e[0] for e in entries), tuple(e[1] for e in entries),
                      torch.tensor([e[2] for e in entries], dtype=torch.float32), tuple(kinds))
    diag = {"n_real": float(kinds.count("real")), "n_generated": float(kinds.count("generated")),
            "n_generated_dropped": float(sum(w <= 0 for w in gen_w)),
            **stats(torch.tensor(real_w), "real_weight"), **stats(torch.tensor(gen_w), "gen_weight")}
    return batch, diag


def flow_loss(backbone: Any, batch: FlowBatch, *, seed: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted flow-matching loss of ``batch`` under the generator role (its adapter gets the
    gradient: recipe quirk 7). Raises on an empty batch: the trainer skips that step instead."""
    if len(batch) == 0:
        raise ValueError("flow_loss got an empty batch (no real image and no positive-weight candidate); skip the step")
    with backbone.use_role("generator"):
        out = backbone.generator_loss(list(batch.prompts), list(batch.targets), batch.weights, seed=seed)
    diag = {**{f"flow_{k}" if not k.startswith("flow_") else k: float(v) for k, v in out.diagnostics.items()},
            "loss": float(out.loss.detach()), "n_samples": float(len(batch)),
            "weight_mean": float(batch.weights.mean())}
    return out.loss, diag


__all__ = ["FlowBatch", "FlowConfig", "candidate_weights", "flow_batch", "flow_loss", "real_image_weight"]
