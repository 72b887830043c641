"""Cycle consistency of generated images (algorithm.md §6.3 item 2, §11 S_cyc).

Per candidate x̂ generated from prompt t, with ĉ the Solver's caption of x̂ and E the backbone's
mean-pooled last-layer embedding with adapters off (recipe quirk 6: image-dependent, not a constant):

    caption_sim    = cos(E(t), E(ĉ))
    image_text_sim = cos(E_img(x̂), E(t))
    cycle          = clip(0.5 caption_sim + 0.5 image_text_sim, 0, 1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from asg._validate import number
from asg.rewards._num import as_floats, clip, cosine
from asg.rewards.components import RewardOutput


@attrs.frozen
class CycleConfig:
    """Weights of the two similarities."""

    caption_weight: float = attrs.field(default=0.5, validator=number(0.0, 1.0))  # prompt<->caption; image term gets 1 - this


DEFAULT_CYCLE = CycleConfig()


def cosine_similarity(a: Any, b: Any) -> float | list[float]:
    """cos(a, b) of vectors (D,); if ``a`` is a matrix (L, D), one value per row. Zero vectors give 0.

    Accepts torch tensors (computed in float32 on their device) or lists of floats (pure Python).
    """
    if hasattr(a, "detach") or hasattr(b, "detach"):
        import torch

        ta, tb = torch.as_tensor(a).float(), torch.as_tensor(b).float()
        if tb.ndim != 1 or ta.ndim not in (1, 2) or ta.shape[-1] != tb.shape[-1]:
            raise ValueError(f"cosine_similarity needs (D,) or (L, D) against (D,), got {tuple(ta.shape)} and {tuple(tb.shape)}")
        tb = tb.to(ta.device)
        num = ta @ tb
        den = ta.norm(dim=-1) * tb.norm()
        sims = torch.where(den > 0, num / den.clamp_min(1e-12), torch.zeros_like(num))
        return sims.tolist()
    vb = as_floats(b, "b")
    if a and not isinstance(a[0], (int, float)):
        return [cosine(as_floats(row, f"a[{i}]"), vb) for i, row in enumerate(a)]
    return cosine(as_floats(a, "a"), vb)


def cycle_consistency(
    caption_sims: Sequence[float] | Any,
    image_text_sims: Sequence[float] | Any,
    config: CycleConfig = DEFAULT_CYCLE,
) -> RewardOutput:
    """S_cyc per candidate from precomputed similarities, each (L,) floats or a 1-D tensor."""
    cap = as_floats(caption_sims, "caption_sims")
    img = as_floats(image_text_sims, "image_text_sims")
    if len(cap) != len(img):
        raise ValueError(f"caption_sims has {len(cap)} entries but image_text_sims has {len(img)}")
    w = config.caption_weight
    values = [clip(w * c + (1.0 - w) * i, 0.0, 1.0) for c, i in zip(cap, img)]
    diags = [{"cycle.caption_sim": c, "cycle.image_text_sim": i} for c, i in zip(cap, img)]
    return RewardOutput(values, diags)


def cycle_consistency_from_embeddings(
    prompt: Any,
    captions: Any,
    images: Any,
    config: CycleConfig = DEFAULT_CYCLE,
) -> RewardOutput:
    """S_cyc per candidate from embeddings: ``prompt`` (D,), ``captions`` and ``images`` (L, D)."""
    cap = cosine_similarity(captions, prompt)
    img = cosine_similarity(images, prompt)
    cap = cap if isinstance(cap, list) else [cap]
    img = img if isinstance(img, list) else [img]
    return cycle_consistency(cap, img, config)


__all__ = ["DEFAULT_CYCLE", "CycleConfig", "cosine_similarity", "cycle_consistency", "cycle_consistency_from_embeddings"]
