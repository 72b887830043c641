"""Reward-weighted flow-matching weights and batches (algorithm.md §6.4)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from asg.types import FlowTrace, GeneratedImage, LossOutput
from asg.updates.flow import FlowConfig, candidate_weights, flow_batch, flow_loss, real_image_weight

REAL = Image.new("RGB", (4, 4), "red")


def _gen(seed: int) -> GeneratedImage:
    trace = FlowTrace(noise=torch.zeros(1, 2, 2), latents=torch.zeros(1, 2, 2), num_steps=1, guidance=1.0)
    return GeneratedImage(image=Image.new("RGB", (4, 4)), prompt="p", seed=seed, trace=trace)


def test_real_image_weight_is_one_plus_half_the_clipped_best_reward() -> None:
    """w = 1 + 0.5·clip(R, 0, 1): R = 0.6 → 1.3; R = −1 → 1.0; R = 2 → 1.5."""
    assert real_image_weight(0.6) == pytest.approx(1.3)
    assert real_image_weight(-1.0) == 1.0 and real_image_weight(2.0) == 1.5


def test_positive_part_of_group_advantage() -> None:
    """R = (1, 0, 0.5) → A = (1.224745, −1.224745, 0) → w = (1.224745, 0, 0)."""
    torch.testing.assert_close(candidate_weights([1.0, 0.0, 0.5]), torch.tensor([1.224745, 0.0, 0.0]))


def test_exponential_weights_have_group_mean_one() -> None:
    """exp rule, τ = 1: e^A = (3.403298, 0.293833, 1), mean 1.565710 →
    w = (2.173645, 0.187667, 0.638688); an equal-reward group gets 1 each."""
    cfg = FlowConfig(weighting="exp")
    torch.testing.assert_close(candidate_weights([1.0, 0.0, 0.5], cfg), torch.tensor([2.173645, 0.187667, 0.638688]))
    torch.testing.assert_close(candidate_weights([0.4, 0.4, 0.4], cfg), torch.ones(3))


def test_equal_rewards_give_no_positive_weight_and_caps_apply() -> None:
    """A degenerate group has A = 0 → positive weights 0; max_weight caps one weight."""
    torch.testing.assert_close(candidate_weights([0.4, 0.4, 0.4]), torch.zeros(3))
    capped = candidate_weights([1.0, 0.0, 0.5], FlowConfig(weighting="exp", max_weight=1.0))
    torch.testing.assert_close(capped, torch.tensor([1.0, 0.187667, 0.638688]))


def test_batch_holds_the_real_image_and_positively_weighted_candidates() -> None:
    """One spec, R = (1, 0, 0.5): real image at 1 + 0.5·1 = 1.5, candidate 0 at 1.224745; two dropped."""
    cands = [_gen(0), _gen(1), _gen(2)]
    batch, diag = flow_batch(["a red circle"], [REAL], [cands], [[1.0, 0.0, 0.5]])
    assert batch.kinds == ("real", "generated") and batch.targets == (REAL, cands[0])
    assert batch.prompts == ("a red circle", "a red circle")
    torch.testing.assert_close(batch.weights, torch.tensor([1.5, 1.224745]))
    assert diag["n_generated_dropped"] == 2.0 and diag["real_weight_mean"] == 1.5


def test_imageless_mode_uses_the_best_candidate_as_the_real_target() -> None:
    """Without a real image the best candidate (R = 0.8) is the target, weighted 1 + 0.5·0.8 = 1.4."""
    cands = [_gen(0), _gen(1)]
    batch, _ = flow_batch(["p"], [None], [cands], [[0.2, 0.8]], FlowConfig(generated=False))
    assert batch.targets == (cands[1],) and batch.weights.tolist() == pytest.approx([1.4])


def test_each_part_can_be_switched_off() -> None:
    """real=False keeps only candidates; generated=False only the real image."""
    cands = [_gen(0), _gen(1)]
    only_gen, _ = flow_batch(["p"], [REAL], [cands], [[1.0, 0.0]], FlowConfig(real=False))
    assert only_gen.kinds == ("generated",)
    only_real, _ = flow_batch(["p"], [REAL], [cands], [[1.0, 0.0]], FlowConfig(generated=False))
    assert only_real.kinds == ("real",)


class _FlowFake:
    def __init__(self) -> None:
        self.active = None
        self.seen = {}

    @contextmanager
    def use_role(self, role):
        previous, self.active = self.active, role
        yield
        self.active = previous

    def generator_loss(self, prompts, targets, weights=None, *, seed=None):
        self.seen = {"role": self.active, "prompts": prompts, "weights": weights, "seed": seed}
        per = torch.full((len(prompts),), 2.0, requires_grad=True)
        return LossOutput(loss=(weights * per).mean(), per_sample=per, diagnostics={"flow_mse": 2.0})


def test_flow_loss_runs_under_the_generator_role_with_the_weights() -> None:
    """The loss is computed with the generator adapter active (quirk 7) and the batch's weights."""
    fake = _FlowFake()
    batch, _ = flow_batch(["p"], [REAL], [[_gen(0), _gen(1)]], [[1.0, 0.0]])
    loss, diag = flow_loss(fake, batch, seed=4)
    assert fake.seen["role"] == "generator" and fake.seen["seed"] == 4
    # weights (1.5, 1.0): A = (1, −1) for R = (1, 0) → positive part (1, 0); loss = mean(2·1.5, 2·1) = 2.5
    assert loss.item() == pytest.approx(2.5) and diag["flow_mse"] == 2.0 and diag["n_samples"] == 2.0
    with pytest.raises(ValueError, match="empty batch"):
        flow_loss(fake, flow_batch(["p"], [None], [[]], [[]])[0])


def test_mismatched_inputs_are_rejected() -> None:
    """Every prompt needs its image, candidate group and rewards."""
    with pytest.raises(ValueError, match="one real image, candidate group and reward group per prompt"):
        flow_batch(["p", "q"], [REAL], [[]], [[]])
    with pytest.raises(ValueError, match="spec 0: 2 candidates but 1 rewards"):
        flow_batch(["p"], [REAL], [[_gen(0), _gen(1)]], [[1.0]])
