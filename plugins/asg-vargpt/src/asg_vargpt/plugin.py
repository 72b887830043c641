"""The hook: registers `vargpt` by a lazy string, so listing plugins imports nothing heavy."""

import asg


@asg.hookimpl
def register_backbones(register):  # type: ignore[no-untyped-def]
    register("vargpt", "asg_vargpt.backbone:VargptBackbone",
             description="VARGPT-v1.1: Qwen2-VL + Infinity next-scale bitwise image head + BSQ-VAE")
