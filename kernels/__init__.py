"""Per-token statistics of softmax distributions over a full vocabulary (``asg.kernels``).

Every entropy, chosen-token log-probability and full-vocabulary KL in asg goes through these
functions, so there is one definition of their semantics, shared by the PyTorch reference
(``asg.kernels.reference``, any device) and the fused Triton kernels (``asg.kernels.triton_kernels``):

- logits are upcast to fp32 first (fp64 stays fp64 on the reference); ``temperature`` divides the
  upcast values;
- entropy is in nats, accumulated on ``z - max`` (no cancellation for peaked rows);
- ``-inf`` logits are allowed; a row whose logits are all ``-inf`` gives entropy 0, log-prob and
  log-sum-exp ``-inf``, top-1 index 0 and margin 0 (never NaN);
- rows whose target equals ``ignore_index`` get log-prob 0 (their other statistics are computed);
- columns at or beyond ``vocab_size`` (padded vocabularies) count as ``-inf`` and are never read;
- top-1 is the first index of the maximum; top-2 keeps ties: if the maximum occurs twice the margin
  is 0.

Backend per call: ``backend=`` or the ``ASG_KERNELS`` environment variable (``auto``, ``triton``,
``torch``); ``auto`` runs Triton on GPU tensors and the reference elsewhere. See docs/kernels.md.
"""

from asg.kernels.api import (
    BACKENDS,
    TokenStatsOutput,
    linear_token_stats,
    select_backend,
    token_kl,
    token_stats,
    triton_available,
)

__all__ = [
    "BACKENDS",
    "TokenStatsOutput",
    "linear_token_stats",
    "select_backend",
    "token_kl",
    "token_stats",
    "triton_available",
]
