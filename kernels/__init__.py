"""Per-token statistics of softmax distributions over a full vocabulary (``asg.kernels``).

Every entropy, chosen-token log-probability and full-vocabulary KL in asg goes through these
functions, so there is one definition of their semantics (shared with the fused kernels):

- logits are upcast to fp32 first; ``temperature`` divides the fp32 values;
- entropy is in nats, accumulated on ``z - max`` (no cancellation for peaked rows);
- ``-inf`` logits are allowed; a row whose logits are all ``-inf`` gives entropy 0, log-prob and
  log-sum-exp ``-inf``, top-1 index 0 and margin 0 (never NaN);
- rows whose target equals ``ignore_index`` get log-prob 0;
- columns at or beyond ``vocab_size`` (padded vocabularies) are treated as ``-inf``;
- top-2 keeps ties: if the maximum occurs twice the margin is 0.

The implementation here is the PyTorch reference: chunked over rows so its fp32 temporaries stay
bounded, differentiable by autograd, and runnable on any device.
"""

from asg.kernels.reference import TokenStatsOutput, token_kl, token_stats

__all__ = ["TokenStatsOutput", "token_kl", "token_stats"]
