"""Value types: validation errors name the field, the expectation and the received value."""

from __future__ import annotations

import attrs
import pytest
import torch
from PIL import Image

from asg.types import (
    Completion,
    FlowTrace,
    GeneratedImage,
    LossOutput,
    Prompt,
    Rollout,
    SamplingParams,
    ScoreOutput,
    TokenStats,
    TokenTrace,
)


def _stats(n: int) -> TokenStats:
    z = torch.zeros(n)
    return TokenStats(entropy=z, logprob=z, logsumexp=z, top1=torch.zeros(n, dtype=torch.long), top1_logit=z + 2, top2_logit=z + 0.5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": -0.1}, r"SamplingParams.temperature must be a number in \[0.0, 100.0\], got -0.1"),
    ({"top_p": 0.0}, r"SamplingParams.top_p must be a number in \(0.0, 1.0\], got 0.0"),
    ({"top_p": 1.5}, r"SamplingParams.top_p must be a number in \(0.0, 1.0\], got 1.5"),
    ({"top_k": 2.5}, r"SamplingParams.top_k must be an integer"),
    ({"max_new_tokens": 0}, r"SamplingParams.max_new_tokens must be an integer in \[1, 1000000\], got 0"),
    ({"temperature": float("nan")}, r"SamplingParams.temperature must be finite"),
    ({"temperature": True}, r"SamplingParams.temperature must be a number"),
])
def test_sampling_params_validation_names_field_and_value(kwargs, message) -> None:
    """Out-of-range or mistyped sampling settings raise an error naming field, interval and value."""
    with pytest.raises((ValueError, TypeError), match=message):
        SamplingParams(**kwargs)


def test_sampling_params_are_frozen_and_greedy_at_zero_temperature() -> None:
    """SamplingParams is immutable; temperature 0 means greedy."""
    p = SamplingParams(temperature=0.0)
    assert p.is_greedy and not SamplingParams().is_greedy
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.temperature = 1.0  # type: ignore[misc]
    assert attrs.evolve(p, temperature=0.7).temperature == 0.7


def test_prompt_compares_images_by_pixels_and_is_hashable() -> None:
    """Prompts with equal text and pixel-equal images are equal; a Prompt can be hashed."""
    a = Prompt("q", image=Image.new("RGB", (4, 4), "red"))
    b = Prompt("q", image=Image.new("RGB", (4, 4), "red"))
    c = Prompt("q", image=Image.new("RGB", (4, 4), "blue"))
    assert a == b and a != c and hash(a) == hash(b)
    with pytest.raises(TypeError, match=r"Prompt.image must be a PIL.Image.Image, got ndarray"):
        import numpy as np

        Prompt("q", image=np.zeros((2, 2)))


def test_token_stats_margin_and_length_checks() -> None:
    """TokenStats gives the top-1/top-2 margin and refuses fields of unequal length."""
    s = _stats(3)
    assert len(s) == 3 and torch.equal(s.margin, torch.full((3,), 1.5))
    with pytest.raises(ValueError, match="per-token fields must have equal length"):
        TokenStats(entropy=torch.zeros(3), logprob=torch.zeros(2), logsumexp=torch.zeros(3),
                   top1=torch.zeros(3, dtype=torch.long), top1_logit=torch.zeros(3), top2_logit=torch.zeros(3))
    with pytest.raises(TypeError, match="TokenStats.top1 must have an integer dtype, got torch.float32"):
        TokenStats(entropy=torch.zeros(1), logprob=torch.zeros(1), logsumexp=torch.zeros(1),
                   top1=torch.zeros(1), top1_logit=torch.zeros(1), top2_logit=torch.zeros(1))


def test_completion_stats_must_cover_every_generated_step() -> None:
    """A stopped completion has one more statistics row (the EOS step) than tokens; others exactly one per token."""
    Completion(text="ab", token_ids=[1, 2], stats=_stats(3), finish_reason="stop", sampling=SamplingParams())
    Completion(text="ab", token_ids=[1, 2], stats=_stats(2), finish_reason="length", sampling=SamplingParams())
    with pytest.raises(ValueError, match=r"one row per generated step \(3 for 2 tokens"):
        Completion(text="ab", token_ids=[1, 2], stats=_stats(2), finish_reason="stop", sampling=SamplingParams())
    with pytest.raises(ValueError, match="Completion.finish_reason must be one of 'stop', 'length'; got 'eos'"):
        Completion(text="", token_ids=[], stats=None, finish_reason="eos", sampling=SamplingParams())


def test_score_output_sequence_logprob() -> None:
    """sequence_logprob sums or averages only the real tokens: (-1 - 2)/2 = -1.5 and -4/1 = -4."""
    lp = torch.tensor([[-1.0, -2.0], [-4.0, -9.0]])
    mask = torch.tensor([[True, True], [True, False]])
    out = ScoreOutput(logprobs=lp, entropy=torch.zeros(2, 2), mask=mask)
    assert out.sequence_logprob("sum").tolist() == [-3.0, -4.0]
    assert out.sequence_logprob("mean").tolist() == [-1.5, -4.0]
    with pytest.raises(ValueError, match="ScoreOutput fields must share shape"):
        ScoreOutput(logprobs=lp, entropy=torch.zeros(2, 3), mask=mask)


def test_traces_and_generated_images_validate() -> None:
    """Flow traces need noise and latents of one shape; token traces one log-prob per token."""
    with pytest.raises(ValueError, match="FlowTrace.noise and .latents must have the same shape"):
        FlowTrace(noise=torch.zeros(3, 4, 4), latents=torch.zeros(3, 8, 8), num_steps=1, guidance=1.0)
    with pytest.raises(ValueError, match="TokenTrace: 4 tokens but 3 log-probs"):
        TokenTrace(token_ids=torch.zeros(4, dtype=torch.long), logprobs=torch.zeros(3))
    trace = FlowTrace(noise=torch.zeros(3, 4, 4), latents=torch.zeros(3, 4, 4), num_steps=2, guidance=1.5)
    g = GeneratedImage(image=Image.new("RGB", (4, 4)), prompt="a circle", seed=3, trace=trace)
    assert g.trace.num_steps == 2
    with pytest.raises(TypeError, match="GeneratedImage.image must be a PIL.Image.Image"):
        GeneratedImage(image=torch.zeros(3, 4, 4), prompt="x", seed=0, trace=trace)


def test_loss_output_and_rollout() -> None:
    """LossOutput needs a scalar loss; Rollout roles are limited to proposer/solver/generator."""
    LossOutput(loss=torch.tensor(1.0), per_sample=torch.ones(2))
    with pytest.raises(ValueError, match="LossOutput.loss must have 0 dimensions, got shape \\(2,\\)"):
        LossOutput(loss=torch.ones(2), per_sample=torch.ones(2))
    c = Completion(text="a", token_ids=[1], stats=None, finish_reason="length", sampling=SamplingParams())
    with pytest.raises(ValueError, match="Rollout.role must be one of 'proposer', 'solver', 'generator'; got 'judge'"):
        Rollout(role="judge", prompt="p", output=c)
