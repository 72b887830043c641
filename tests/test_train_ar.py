"""The autoregressive generator update (§5.2, quirk 8) on the example plugin's `toy-ar` backbone."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("asg_example")

from asg.plugins import get_backbone_class  # noqa: E402
from asg.train.gstep import _token_update  # noqa: E402
from asg.train.recipe import load_recipe  # noqa: E402
from asg.train.trainer import Trainer  # noqa: E402


def test_group_relative_step_on_image_tokens_moves_only_the_generator() -> None:
    """Unequal candidate rewards give a clipped GRPO step on exact image-token log-probs that changes
    the generator adapter and leaves the solver's and proposer's untouched."""
    bb = get_backbone_class("toy-ar").load()
    trainer = Trainer(bb, load_recipe("demo"), pool=None, run=None)
    with bb.use_role("generator"):
        cands = bb.generate_images(["a red circle"] * 3, seed=5)
    before = {k: v.clone() for k, v in bb.trainable_state_dict().items()}
    result = _token_update(trainer, "a red circle", cands, [0.9, 0.1, 0.5])
    assert result.stepped and result.skip_reason is None
    assert 0.0 <= result.diagnostics["clip_fraction"] <= 1.0 and result.diagnostics["kl"] >= 0.0
    after = bb.trainable_state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".generator" in k for k in changed), sorted(changed)[:5]


def test_equal_rewards_leave_the_weights_unchanged() -> None:
    """Identical rewards (degenerate group set to zero advantage) give no policy gradient, and the KL
    term's gradient is 0 at the reference (fresh adapters), so only weight decay touches the weights."""
    bb = get_backbone_class("toy-ar").load()
    trainer = Trainer(bb, load_recipe("demo", ["proposer.grpo.degenerate=zero"]), pool=None, run=None)
    with bb.use_role("generator"):
        cands = bb.generate_images(["two squares"] * 3, seed=1)
    before = {k: v.clone() for k, v in bb.trainable_state_dict().items()}
    _token_update(trainer, "two squares", cands, [0.4, 0.4, 0.4])
    after = bb.trainable_state_dict()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # weight decay only: ~1e-6 relative
