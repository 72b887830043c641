"""Update rules: each loss is a small function citing its equation and returning (loss, diagnostics).

- :mod:`asg.updates.reinforce` — Solver: REINFORCE with EMA baseline + full-vocabulary KL (§3.9, §5.1)
- :mod:`asg.updates.kl` — the adaptive KL coefficient β (§5.1)
- :mod:`asg.updates.grpo` — Proposer / AR generator: group-relative advantages, PPO clip (§3.10, §5.2)
- :mod:`asg.updates.flow` — flow/diffusion generator: reward-weighted flow matching (§6.4)
- :mod:`asg.updates.guards` — non-finite loss/grad → skip reason; non-finite model outputs → NonFiniteError
"""

from asg.updates.flow import FlowBatch, FlowConfig, candidate_weights, flow_batch, flow_loss, real_image_weight
from asg.updates.grpo import GRPOConfig, group_advantages, grpo_loss, max_abs_advantages
from asg.updates.guards import NONFINITE_OUTPUT, SKIP_CODES, SkipReason, check_finite, skip_reason
from asg.updates.kl import AdaptiveKL, KLConfig
from asg.updates.reinforce import EMABaseline, ReinforceConfig, reinforce_loss

__all__ = [
    "NONFINITE_OUTPUT", "SKIP_CODES", "AdaptiveKL", "EMABaseline", "FlowBatch", "FlowConfig", "GRPOConfig", "KLConfig",
    "ReinforceConfig", "SkipReason", "candidate_weights", "flow_batch", "flow_loss", "group_advantages",
    "grpo_loss", "max_abs_advantages", "real_image_weight", "reinforce_loss", "skip_reason", "check_finite",
]
