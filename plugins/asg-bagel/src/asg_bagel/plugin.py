"""The hook: registers `bagel` by a lazy string, so listing plugins imports nothing heavy."""

import asg


@asg.hookimpl
def register_backbones(register):  # type: ignore[no-untyped-def]
    register("bagel", "asg_bagel.backbone:BagelBackbone",
             description="BAGEL-7B-MoT: Qwen2 mixture-of-transformers + SigLIP-NaViT + FLUX AE, rectified flow in the LLM")
