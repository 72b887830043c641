"""The hook: registers `blip3o` by a lazy string, so listing plugins imports nothing heavy."""

import asg


@asg.hookimpl
def register_backbones(register):  # type: ignore[no-untyped-def]
    register("blip3o", "asg_blip3o.backbone:Blip3oBackbone",
             description="BLIP3o-8B: Qwen2.5-VL + flow-matching DiT over EVA-CLIP features + SDXL-style diffusion decoder")
