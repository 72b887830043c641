"""Built-in plugin: registers asg's reward components exactly as a third-party plugin would.

Targets are lazy ``"module:attr"`` strings, so ``asg plugins`` lists them without importing them.
"""

from asg import hookimpl

BUILTIN_REWARDS: tuple[tuple[str, str, str], ...] = (
    ("proposer.ste", "asg.rewards.proposer:STE_COMPONENT",
     "d_ste: rank quantile of the Solver's first-answer-token entropy (§4)"),
    ("proposer.self_consistency", "asg.rewards.proposer:SELF_CONSISTENCY_COMPONENT",
     "R_hyb: informativeness band + Gaussian on H_sc of the N Solver answers (§3.8)"),
    ("solver.consistency", "asg.rewards.solver:CONSISTENCY_COMPONENT",
     "+info for majority answers, -0.25 info for the rest; reversed on near-unanimous questions (§3.7)"),
    ("generator.qa_fidelity", "asg.rewards.generation:QA_FIDELITY_COMPONENT",
     "S_fid: Solver answers on the generated image agree with its answers on the real image"),
    ("generator.cycle_consistency", "asg.rewards.generation:CYCLE_COMPONENT",
     "S_cyc: caption of the image and the image itself stay close to the prompt (backbone embeddings)"),
    ("generator.diversity", "asg.rewards.generation:DIVERSITY_COMPONENT",
     "S_div: what the candidate adds to the diversity of its set of L images"),
    ("generator.contradiction", "asg.rewards.generation:CONTRADICTION_COMPONENT",
     "S_ctr: penalty for yes/no answers that flip between real and generated image"),
)


@hookimpl
def register_rewards(register):  # type: ignore[no-untyped-def]
    for name, target, description in BUILTIN_REWARDS:
        register(name, target, description=description)
