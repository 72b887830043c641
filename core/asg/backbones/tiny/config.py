"""Architecture of the `tiny` backbone as typed data (saved beside its weights as config.json)."""

from __future__ import annotations

from typing import Any

import attrs

from asg._validate import number
from asg.errors import ConfigError


def _pos_int(lo: int = 1) -> Any:
    return attrs.field(validator=number(lo, None, integer=True))


@attrs.frozen(kw_only=True)
class TinyConfig:
    """Sizes of the three parts: vision encoder, language model, flow-matching generation head."""

    image_size: int = attrs.field(default=64, validator=number(16, 1024, integer=True))  # square RGB, in and out
    patch_size: int = attrs.field(default=8, validator=number(2, 64, integer=True))  # vision-tower patches
    vision_hidden: int = attrs.field(default=128, validator=number(8, None, integer=True))
    vision_layers: int = attrs.field(default=3, validator=number(1, None, integer=True))
    vision_heads: int = attrs.field(default=4, validator=number(1, None, integer=True))
    vocab_size: int = attrs.field(default=768, validator=number(16, None, integer=True))  # = len(tokenizer)
    text_hidden: int = attrs.field(default=192, validator=number(8, None, integer=True))
    text_layers: int = attrs.field(default=4, validator=number(1, None, integer=True))
    text_heads: int = attrs.field(default=4, validator=number(1, None, integer=True))
    text_kv_heads: int = attrs.field(default=2, validator=number(1, None, integer=True))
    text_intermediate: int = attrs.field(default=512, validator=number(8, None, integer=True))
    max_positions: int = attrs.field(default=512, validator=number(64, None, integer=True))
    num_queries: int = attrs.field(default=16, validator=number(1, None, integer=True))  # latent queries -> head
    # Autoencoder (diffusers AutoencoderKL, 4x down-sampling): the head works on its latent grid.
    vae_channels: tuple[int, ...] = attrs.field(default=(16, 32, 64), converter=tuple)
    latent_channels: int = attrs.field(default=4, validator=number(1, None, integer=True))
    latent_shift: float = attrs.field(default=0.0, validator=number())  # latents are (z - shift) * scale
    latent_scale: float = attrs.field(default=1.0, validator=number(0.0, None, lo_open=True))
    head_patch: int = attrs.field(default=2, validator=number(1, None, integer=True))  # on the latent grid
    head_layers: int = attrs.field(default=4, validator=number(1, None, integer=True))
    head_heads: int = attrs.field(default=4, validator=number(1, None, integer=True))
    head_dim: int = attrs.field(default=32, validator=number(4, None, integer=True))
    # Role adapters: the recipe's LoRA r16 / alpha 32 / dropout 0.05, on the language model only;
    # the generator role also adapts the head's attention and feed-forward projections.
    lora_r: int = attrs.field(default=16, validator=number(1, None, integer=True))
    lora_alpha: int = attrs.field(default=32, validator=number(1, None, integer=True))
    lora_dropout: float = attrs.field(default=0.05, validator=number(0.0, 1.0, hi_open=True))
    head_lora: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    # Sampling defaults of the generation head (rectified flow, Euler, classifier-free guidance).
    sample_steps: int = attrs.field(default=20, validator=number(1, 1000, integer=True))
    guidance: float = attrs.field(default=2.0, validator=number(0.0, 50.0))
    cond_dropout: float = attrs.field(default=0.1, validator=number(0.0, 1.0, hi_open=True))

    # Read every prompt with its ShapesWorld position questions said in one phrase per axis ("to the
    # left of", "above"; asg.shapes.one_phrase), as the model was pretrained (`asg tiny pretrain
    # --one-phrase`). A rewrite of the input that keeps every answer, like a chat template; off for the
    # shipped weights, which read the questions as asked.
    one_phrase_position: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def __attrs_post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"TinyConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        for width, heads, what in ((self.vision_hidden, self.vision_heads, "vision"), (self.text_hidden, self.text_heads, "text")):
            if width % heads:
                raise ConfigError(f"TinyConfig.{what}_hidden ({width}) must be divisible by {what}_heads ({heads})")
        down = 2 ** (len(self.vae_channels) - 1)
        if self.image_size % (down * self.head_patch):
            raise ConfigError(f"TinyConfig.image_size ({self.image_size}) must be a multiple of {down * self.head_patch} "
                              f"(autoencoder down-sampling {down} x head_patch {self.head_patch})")
        if self.text_heads % self.text_kv_heads:
            raise ConfigError(f"TinyConfig.text_heads ({self.text_heads}) must be a multiple of text_kv_heads ({self.text_kv_heads})")

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** (len(self.vae_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        out["vae_channels"] = list(self.vae_channels)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TinyConfig:
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TinyConfig key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)
