"""Reward components of the ASG loop: pure, batched functions that return values and named diagnostics.

Public surface (one screen; every default is algorithm.md's, every formula is in its module docstring)::

    # Solve: self-consistency of N answers per question (§3.5)          -> consistency.py
    self_consistency(answers: list[list[str]]) -> list[VoteStats]        # majority, H_sc, margin, info, ...
    # Difficulty (§3.1, §3.5)                                             -> difficulty.py
    EasyThreshold()          .value  .update(h_sc)  .state_dict()         # IQR easy-threshold over 256 H_sc
    classify(votes, threshold) -> list[Difficulty]                        # easy / medium / hard, easy_case, unsolvable
    DifficultyTarget()       .observe(bucket)  .hint(rng) -> bucket       # target mix 0 / 0.7 / 0.3
    # Solver Token Entropy (§4)                                           -> ste.py
    solver_token_entropies(entropies, answer_starts=... | token_ids=..., answer_tag=...) -> list[SteValue]
    SteNormalizer()          .update(raw) -> d_ste  .quantile(raw)  .state_dict()
    # Role rewards (§3.7, §3.8, §6.3)                                     -> proposer.py, solver.py, generation.py
    proposer_rewards(list[ProposerCase]) -> RewardOutput                  # R = 0.70 d_ste + 0.30 R_sc, capped, clipped
    solver_rewards(list[SolverQuestion]) -> list[SolverReward]            # rewards, soft weights, skip reason
    generation_rewards(list[GenerationCase]) -> RewardOutput              # quality x clip(.65 fid + .20 cyc + .10 div - .20 ctr)
    # Generator sub-scores, per candidate                                  -> fidelity.py, cycle.py, diversity.py
    qa_fidelity(generated, reference)  contradiction(generated, reference)
    cycle_consistency(caption_sims, image_text_sims)  diversity(gray, hist)
    # Components and recipes                                              -> components.py, config.py
    RewardComponent(name, role, fn, weight=1.0, enabled=True)             # fn(cases, role_config) -> scores
    resolve_components(role, overrides) -> components                     # registered (plugins) + recipe overrides
    from_dict(RewardsConfig, mapping) -> RewardsConfig                    # unknown keys are errors

Each role function takes ``config=`` (its frozen attrs config) and ``components=`` (default: the
built-ins of that role); ``RewardOutput.diagnostics`` holds one flat ``{name: float}`` dict per case.
Nothing here imports torch at import time; tensors are accepted wherever a 1-D list of floats is.
"""

from __future__ import annotations

from asg.rewards.builtins import BUILTIN_COMPONENTS, builtin_components
from asg.rewards.components import (
    ComponentOverride,
    RewardComponent,
    RewardOutput,
    apply_overrides,
    combine,
    registered_components,
    resolve_components,
)
from asg.rewards.config import RewardsConfig, from_dict
from asg.rewards.consistency import ConsistencyConfig, VoteStats, entropy_nats, self_consistency, vote
from asg.rewards.cycle import CycleConfig, cosine_similarity, cycle_consistency, cycle_consistency_from_embeddings
from asg.rewards.difficulty import (
    BUCKETS,
    Difficulty,
    DifficultyConfig,
    DifficultyTarget,
    EasyThreshold,
    bucket_of,
    classify,
)
from asg.rewards.diversity import DiversityConfig, diversity, image_features, set_diversity
from asg.rewards.fidelity import FidelityConfig, contradiction, polarity, qa_fidelity, soft_match
from asg.rewards.generation import GenerationCase, GenerationConfig, generation_rewards
from asg.rewards.proposer import (
    ProposerCase,
    ProposerConfig,
    proposer_rewards,
    self_consistency_reward,
    vzero_reward,
)
from asg.rewards.solver import (
    SolverConfig,
    SolverQuestion,
    SolverReward,
    SolverSample,
    length_penalty,
    skip_reason,
    solver_rewards,
)
from asg.rewards.ste import (
    SteConfig,
    SteNormalizer,
    SteValue,
    answer_start_index,
    solver_token_entropies,
    solver_token_entropy,
    token_entropy,
)

__all__ = [
    "BUCKETS",
    "BUILTIN_COMPONENTS",
    "ComponentOverride",
    "ConsistencyConfig",
    "CycleConfig",
    "Difficulty",
    "DifficultyConfig",
    "DifficultyTarget",
    "DiversityConfig",
    "EasyThreshold",
    "FidelityConfig",
    "GenerationCase",
    "GenerationConfig",
    "ProposerCase",
    "ProposerConfig",
    "RewardComponent",
    "RewardOutput",
    "RewardsConfig",
    "SolverConfig",
    "SolverQuestion",
    "SolverReward",
    "SolverSample",
    "SteConfig",
    "SteNormalizer",
    "SteValue",
    "VoteStats",
    "answer_start_index",
    "apply_overrides",
    "bucket_of",
    "builtin_components",
    "classify",
    "combine",
    "contradiction",
    "cosine_similarity",
    "cycle_consistency",
    "cycle_consistency_from_embeddings",
    "diversity",
    "entropy_nats",
    "from_dict",
    "generation_rewards",
    "image_features",
    "length_penalty",
    "polarity",
    "proposer_rewards",
    "qa_fidelity",
    "registered_components",
    "resolve_components",
    "self_consistency",
    "self_consistency_reward",
    "set_diversity",
    "skip_reason",
    "soft_match",
    "solver_rewards",
    "solver_token_entropies",
    "solver_token_entropy",
    "token_entropy",
    "vote",
    "vzero_reward",
]
