"""The hook implementation. It imports nothing heavy: the backbone is named by a lazy string."""

import asg


@asg.hookimpl
def register_backbones(register):
    register("toy-ar", "asg_example.model:ToyARBackbone", description="example plugin: autoregressive image tokens")
