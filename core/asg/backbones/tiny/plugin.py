"""Built-in plugin: registers the `tiny` backbone exactly as a third-party plugin would."""

from asg import hookimpl


@hookimpl
def register_backbones(register):  # type: ignore[no-untyped-def]
    register(
        "tiny",
        "asg.backbones.tiny.model:TinyBackbone",
        description="embedded default: LLaVA-style VLM + rectified-flow head, pretrained on ShapesWorld (CPU)",
    )
