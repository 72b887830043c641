"""score_completions: the hidden-state path (linear_token_stats) against the logits path."""

from __future__ import annotations

import torch

from asg.backbones.hf import fused_head
from asg.backbones.tiny.model import TinyBackbone
from asg.types import Prompt


def test_tiny_scores_through_the_fused_head_and_matches_the_logits_path() -> None:
    """Without return_logits the tiny backbone scores from hidden states + head weight; log-probs,
    entropies and the gradient reaching the LM head equal those of the materialised-logits path."""
    bb = TinyBackbone.load()
    vlm = bb.net["vlm"]
    head = fused_head(vlm)
    assert head is vlm.get_output_embeddings()
    head.weight.requires_grad_(True)  # frozen in the loaded backbone; trained here to compare gradients
    prompts = [Prompt(text="How many shapes are there?"), Prompt(text="Describe the picture.")]
    comps = ["two", "a red circle on the left"]
    results = []
    for return_logits in (False, True):
        head.weight.grad = None
        s = bb.score(prompts, comps, grad=True, return_logits=return_logits)
        assert (s.logits is not None) == return_logits
        (s.logprobs[s.mask].sum() + 0.5 * s.entropy[s.mask].sum()).backward()
        results.append((s.logprobs.detach(), s.entropy.detach(), s.mask, head.weight.grad.clone()))
    (lp_a, h_a, m_a, g_a), (lp_b, h_b, m_b, g_b) = results
    assert torch.equal(m_a, m_b)
    torch.testing.assert_close(lp_a[m_a], lp_b[m_b], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_a[m_a], h_b[m_b], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_a, g_b, atol=1e-5, rtol=1e-4)
    assert g_a.abs().sum() > 0


def test_heads_that_scale_logits_are_not_fused() -> None:
    """A head with a bias or a config with logit soft-capping falls back to the logits path."""
    bb = TinyBackbone.load()
    vlm = bb.net["vlm"]
    text = vlm.config.get_text_config()
    text.final_logit_softcapping = 30.0
    try:
        assert fused_head(vlm) is None
    finally:
        text.final_logit_softcapping = None
    assert fused_head(torch.nn.Linear(3, 4)) is None
