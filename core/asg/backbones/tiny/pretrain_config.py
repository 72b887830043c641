"""Settings of `asg tiny pretrain` as typed data (no torch import: the CLI parser reads this)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import attrs

from asg._validate import number, one_of


@attrs.frozen(kw_only=True)
class PretrainConfig:
    """Everything that determines the pretrained weights (with the code version and thread count)."""

    seed: int = attrs.field(default=0, validator=number(0, None, integer=True))
    scenes: int = attrs.field(default=2000, validator=number(1, None, integer=True))  # labeled set size
    vae_steps: int = attrs.field(default=800, validator=number(1, None, integer=True))  # phase 1: autoencoder
    vae_lr: float = attrs.field(default=1e-3, validator=number(0.0, 1.0, lo_open=True))
    vae_batch: int = attrs.field(default=16, validator=number(1, None, integer=True))
    steps: int = attrs.field(default=3000, validator=number(1, None, integer=True))  # phase 2: everything else
    batch_text: int = attrs.field(default=24, validator=number(1, None, integer=True))  # understanding examples/step
    batch_image: int = attrs.field(default=16, validator=number(1, None, integer=True))  # text-to-image pairs/step
    lr: float = attrs.field(default=1e-3, validator=number(0.0, 1.0, lo_open=True))
    min_lr_ratio: float = attrs.field(default=0.1, validator=number(0.0, 1.0))  # cosine floor
    warmup: int = attrs.field(default=150, validator=number(0, None, integer=True))
    weight_decay: float = attrs.field(default=0.01, validator=number(0.0, 1.0))
    flow_weight: float = attrs.field(default=1.0, validator=number(0.0, None))  # weight of the flow loss
    vocab_size: int = attrs.field(default=768, validator=number(300, None, integer=True))
    eval_every: int = attrs.field(default=500, validator=number(0, None, integer=True))  # 0 = only at the end
    eval_questions: int = attrs.field(default=200, validator=number(1, None, integer=True))  # on the val split
    eval_per_tag: int = attrs.field(default=5, validator=number(1, None, integer=True))
    threads: int = attrs.field(default=2, validator=number(1, None, integer=True))
    # Share of understanding examples that are VQA answers; the rest keep the old 15:15:10 ratio of
    # captions, proposer blocks and generation specs.
    vqa_share: float = attrs.field(default=0.6, validator=number(0.0, 1.0))
    # Continue from a pretrained `tiny` directory instead of starting from scratch: its tokenizer,
    # architecture, autoencoder and latent normalisation are kept and phase 1 is skipped.
    init_from: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    # "vision": re-initialise the vision tower and projector of ``init_from`` before training (for a
    # tower whose features collapsed; see docs/tiny.md). "all": everything but the tokenizer and the
    # autoencoder (a base trained on another labeled set, reusing the label-free autoencoder).
    # "language": everything but the tokenizer, the autoencoder, the vision tower and the projector
    # (keeps a perception-trained "eye" and trains the language side afresh on ``scenes``).
    reinit: str = attrs.field(default="", validator=one_of(("", "vision", "all", "language")))
    # Perception phase (after the autoencoder, before phase 2): the vision tower and projector alone,
    # trained on dense per-patch targets from the labeled scenes (shape, colour, size, object centre;
    # see asg/backbones/tiny/perception.py). 0 = skipped, as in the shipped weights.
    perception_steps: int = attrs.field(default=0, validator=number(0, None, integer=True))
    perception_lr: float = attrs.field(default=1e-3, validator=number(0.0, 1.0, lo_open=True))
    perception_batch: int = attrs.field(default=32, validator=number(1, None, integer=True))
    # Phase 2: weight of the same perception loss on a batch of ``perception_batch`` labeled images
    # per step (0 = off), and whether the vision tower is frozen (the projector still trains).
    perception_weight: float = attrs.field(default=0.0, validator=number(0.0, None))
    freeze_vision: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    # Size of the language model of a fresh pretraining (0 = TinyConfig's default: 192 wide, 4 layers,
    # MLP 512). text_hidden must be a multiple of 4 (the attention heads); text_intermediate 0 keeps the
    # default's MLP ratio 8/3 for any width (384 -> 1024); a continued model keeps its architecture.
    text_hidden: int = attrs.field(default=0, validator=number(0, None, integer=True))
    text_layers: int = attrs.field(default=0, validator=number(0, None, integer=True))
    text_intermediate: int = attrs.field(default=0, validator=number(0, None, integer=True))

    # Position questions in one phrase per axis: the trained model reads every prompt with "to the right
    # of" and "below" rewritten to "to the left of" and "above", objects swapped (TinyConfig's
    # one_phrase_position, saved in config.json, so it reads them so after pretraining too). A model
    # continued with init_from keeps the setting it has when this is off.
    one_phrase: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    # Share of VQA answers drawn from the scene's position questions, where it has any (0 = the question
    # types drawn evenly, as in the shipped weights): to teach position to a model that reads the rest.
    position_share: float = attrs.field(default=0.0, validator=number(0.0, 1.0))

    def __attrs_post_init__(self) -> None:
        from asg.errors import ConfigError

        if self.reinit and not self.init_from:
            raise ConfigError(f"PretrainConfig.reinit={self.reinit!r} needs init_from (a pretrained tiny directory)")
        if self.init_from and (self.text_hidden or self.text_layers or self.text_intermediate):
            raise ConfigError("PretrainConfig.text_hidden/text_layers/text_intermediate size a fresh model; a model "
                              f"continued with init_from ({self.init_from}) keeps its own architecture")

    def model_sizes(self) -> dict[str, int]:
        """The TinyConfig fields this configuration sets (none by default). A width without an MLP size
        gets the default's ratio, 8/3, rounded up to a multiple of 8."""
        sizes = {k: v for k, v in (("text_hidden", self.text_hidden), ("text_layers", self.text_layers),
                                   ("text_intermediate", self.text_intermediate)) if v}
        if self.text_hidden and not self.text_intermediate:
            sizes["text_intermediate"] = -(-self.text_hidden // 3) * 8  # ceil(8W/3 / 8) * 8 = ceil(W/3) * 8
        return sizes

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/tiny-pretrain"),
                        help="output directory (config.json, tokenizer.json, model.safetensors, report)")
    for field in attrs.fields(PretrainConfig):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            parser.add_argument(flag, action="store_true", help="(default off)")
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default,
                                help=f"(default {field.default})")


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(**{f.name: getattr(args, f.name) for f in attrs.fields(PretrainConfig)})
