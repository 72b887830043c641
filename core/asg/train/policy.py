"""Teacher-forced passes the text updates need: the policy (with grad) and the reference (adapters off).

Both updates of §5 score completions the model generated itself, exactly as sampled (token ids, not
re-tokenised text), under the prompt they were generated with (recipe quirk 2), and compare the
policy with the reference policy through the full-vocabulary KL of every completion position.

Shapes: B completions, T = longest completion + its end-of-turn step, V = vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from asg.kernels import token_kl
from asg.types import Completion, Prompt


@attrs.frozen(eq=False)
class PolicyPass:
    """Per-token quantities of B completions, aligned with their sampling-time statistics."""

    logprobs: torch.Tensor  # (B, T) log π(y_t) under the role's adapter, with grad
    mask: torch.Tensor  # (B, T) True at the positions the sampler emitted (EOS included when it stopped)
    kl: torch.Tensor  # (B, T) KL(π ‖ π_ref) over the full vocabulary, with grad through π
    old_logprobs: torch.Tensor  # (B, T) log-probs at sampling time (temperature 1), the GRPO "old" policy


def score_policy(backbone: object, role: str, prompts: Sequence[Prompt], completions: Sequence[Completion]) -> PolicyPass:
    """Score ``completions`` under ``role`` (grad) and under the reference (no grad) in two batched calls.

    A completion that stopped is scored with its end-of-turn token (the sampler emitted it, so the
    policy is responsible for it); one cut by the length limit is not, so its appended EOS row is
    masked out.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"score_policy got {len(prompts)} prompts but {len(completions)} completions")
    ids = [list(c.token_ids) for c in completions]
    with backbone.use_role(None), torch.no_grad():  # type: ignore[attr-defined]
        ref = backbone.score(prompts, ids, return_logits=True)  # type: ignore[attr-defined]
    with backbone.use_role(role):  # type: ignore[attr-defined]
        pol = backbone.score(prompts, ids, grad=True, return_logits=True)  # type: ignore[attr-defined]
    mask = pol.mask.clone()
    old = torch.zeros_like(pol.logprobs, dtype=torch.float32)
    for b, c in enumerate(completions):
        n = len(c.token_ids) + (1 if c.finish_reason == "stop" else 0)
        mask[b, n:] = False
        if c.stats is not None:
            old[b, :n] = c.stats.logprob[:n].to(old.dtype)
    kl = token_kl(pol.logits, ref.logits.detach())  # (B, T)
    kl = kl.masked_fill(~mask, 0.0)
    return PolicyPass(pol.logprobs.masked_fill(~mask, 0.0), mask, kl, old.to(pol.logprobs.dtype))


def mean_kl(kl: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean per-token KL over real positions (what the β controller is fed: recipe quirk 4)."""
    m = mask.to(kl.dtype)
    return float((kl.detach() * m).sum() / m.sum().clamp_min(1.0))
