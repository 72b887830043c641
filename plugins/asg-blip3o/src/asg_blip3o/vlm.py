"""BLIP3o's understanding side: the Qwen2.5-VL backbone, its config, tokenizer, processor and scoring.

BLIP3o-8B answers questions with an unmodified Qwen2.5-VL-7B (upstream never overrides ``forward``), so
this module imports ``transformers.Qwen2_5_VLForConditionalGeneration`` and adds only what the library
does not know: how to read BLIP3o's ``config.json`` (pre-v5, flat, with BLIP3o training attributes), the
two BLIP3o parameters around it (``latent_queries``; the DiT comes from ``asg_blip3o.dit``), a processor
built from local files, and the log-prob helpers the self-evolving recipes need. The Qwen-VL pieces it shares
with other backbones (chat template, processor, image sizing, teacher forcing, log-probs) are
:mod:`asg.backbones.qwen_vl`'s, re-exported here under the names callers use.

Module tree (the checkpoint mapping in ``checkpoint.py`` relies on these names)::

    Blip3oModel
      vlm             Qwen2_5_VLForConditionalGeneration  (vlm.model.visual, vlm.model.language_model, vlm.lm_head)
      latent_queries  Parameter (1, n_query, hidden)
      dit             NextDiTCrossAttn or None              (dit.model.*)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from asg.backbones import qwen_vl
from asg.backbones.qwen_vl import (  # re-exported: BLIP3o's understanding API, shared with other Qwen-VL backbones
    IMAGE_MAX_SIDE,
    IMAGE_MIN_SIDE,
    IMAGE_MULTIPLE,
    LORA_TARGETS,
    SYSTEM_PROMPT,
    answer_logprobs,
    generation_logprobs,
    normalize_image_size,
    teacher_forcing_inputs,
    understanding_inputs,
    understanding_messages,
)
from asg.errors import ConfigError, DataError

if TYPE_CHECKING:  # transformers is imported lazily: importing this module stays cheap
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

__all__ = ["Blip3oExtras", "Blip3oModel", "CHAT_TEMPLATE", "FULL_CONFIG_JSON", "FULL_TOKEN_IDS", "IMAGE_MAX_SIDE",
           "IMAGE_MIN_SIDE", "IMAGE_MULTIPLE", "LORA_TARGETS", "SPECIAL_TOKENS", "SYSTEM_PROMPT", "TINY_TOKEN_IDS",
           "answer_logprobs", "blip3o_config", "build_vlm", "full_config", "generation_logprobs", "load_tokenizer",
           "make_processor", "normalize_image_size", "teacher_forcing_inputs", "tiny_config", "tiny_config_json",
           "tiny_tokenizer", "understanding_inputs", "understanding_messages"]

# --------------------------------------------------------------------------------------------------
# Tokens and prompt
# --------------------------------------------------------------------------------------------------

SPECIAL_TOKENS: tuple[str, ...] = (
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "[IMG]", "[/IMG]", "<image>",
)
"""Qwen2.5-VL's chat/vision tokens plus the three BLIP3o adds (``[IMG]`` opens image generation)."""

FULL_TOKEN_IDS: Mapping[str, int] = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
    "[IMG]": 151665, "[/IMG]": 151666, "<image>": 151667,
}
"""Ids in the BLIP3o-8B tokenizer (Qwen2.5-VL's 151665 tokens + the three BLIP3o tokens)."""

TINY_TOKEN_IDS: Mapping[str, int] = {
    "<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258, "<|vision_start|>": 259,
    "<|vision_end|>": 260, "<|image_pad|>": 261, "<|video_pad|>": 262, "[IMG]": 263, "[/IMG]": 264, "<image>": 265,
}
"""Ids in :func:`tiny_tokenizer` (256 byte symbols first); ``tiny_tokenizer`` checks it reproduces them."""

CHAT_TEMPLATE = qwen_vl.chat_template("BLIP3o")
"""ChatML as BLIP3o/Qwen2.5-VL use it (:func:`asg.backbones.qwen_vl.chat_template`): a default system turn
(``conv_qwen``), images as ``<|vision_start|><|image_pad|><|vision_end|>`` in place. Ours, so no hub template
is needed."""

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

FULL_CONFIG_JSON: Mapping[str, Any] = {
    "model_type": "blip3o_qwen",
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 32768,
    "max_window_layers": 28, "tie_word_embeddings": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
    },
    "gen_vision_tower": "eva-clip-E-14-plus", "n_query": 64, "gen_pooling": "early_pool2d_4",
    "vision_tower_pretrained": None, "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    "mm_patch_merge_type": "flat",
}
"""BLIP3o-8B's ``config.json`` in its own (transformers 4.51) layout: Qwen2.5-VL-7B-Instruct + BLIP3o's
training attributes, as recorded in the parameter manifest of the public checkpoint."""

# Root fields of the flat pre-v5 config that belong to the v5 text config.
_TEXT_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "hidden_act")
_TEXT_OPTIONAL = ("use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout", "bos_token_id",
                  "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "layer_types")
_ROOT_REQUIRED = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_VISION_REQUIRED = ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size", "patch_size",
                    "spatial_merge_size", "temporal_patch_size", "window_size", "fullatt_block_indexes")
_VISION_OPTIONAL = ("hidden_act", "tokens_per_second", "initializer_range", "in_channels")
_VISION_BOOKKEEPING = ("in_chans", "spatial_patch_size", "model_type", "torch_dtype", "dtype", "_name_or_path",
                       "transformers_version", "architectures", "rope_parameters")
# Written by BLIP3o/LLaVA training into config.json; they change no shape or computation here.
_BLIP3O_FIELDS = ("n_query", "gen_vision_tower", "gen_pooling", "vision_tower_pretrained", "gen_hidden_size",
                  "mm_use_im_start_end", "mm_use_im_patch_token", "mm_patch_merge_type", "mm_vision_tower",
                  "mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_vision_select_feature",
                  "mm_projector_lr", "use_mm_proj", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
                  "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_padding_side",
                  "tokenizer_model_max_length", "image_start_tag_id", "image_end_tag_id", "gen_projector_type")
_BOOKKEEPING = ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
                "vision_token_id", "auto_map", "is_encoder_decoder", "return_dict")
_MODEL_TYPES = ("blip3o_qwen", "blip3o_qwen_inference", "qwen2_5_vl")
_ROPE_FIELDS = ("rope_scaling", "rope_parameters", "rope_theta")


@dataclass(frozen=True)
class Blip3oExtras:
    """What BLIP3o adds to a Qwen2.5-VL config.

    ``n_query`` sizes ``latent_queries``; ``hidden_size`` is mirrored from the text config because v5's
    ``Qwen2_5_VLConfig`` has no root ``hidden_size`` (upstream code reads ``config.hidden_size``). The
    rest is kept verbatim (``metadata``) so nothing in ``config.json`` is silently lost.
    """

    n_query: int
    hidden_size: int
    gen_vision_tower: str | None = None
    gen_pooling: str | None = None
    model_type: str = "blip3o_qwen"
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _require(source: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in source]
    if missing:
        raise ConfigError(f"{where} lacks required field(s) {', '.join(missing)}")


def _rope_parameters(config_json: Mapping[str, Any], head_dim: int) -> dict[str, Any]:
    """v5 ``rope_parameters`` from the 4.x ``rope_scaling={'type': 'mrope', 'mrope_section': ...}`` + ``rope_theta``.

    v5 has no ``mrope`` rope type: multimodal rope is the default rotary with a ``mrope_section`` split of the
    head dimension into (temporal, height, width) halves, which must add up to ``head_dim / 2``.
    """
    scaling = config_json.get("rope_parameters", config_json.get("rope_scaling"))
    if not isinstance(scaling, Mapping):
        raise ConfigError("config.json lacks rope_scaling (Qwen2.5-VL's {'type': 'mrope', 'mrope_section': [...]})")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ("mrope", "default"):
        raise ConfigError(f"config.json rope_scaling type is {kind!r}; BLIP3o's Qwen2.5-VL uses 'mrope'")
    return qwen_vl.mrope_parameters(scaling, config_json, head_dim, model="Qwen2.5-VL")


def blip3o_config(config_json: Mapping[str, Any], *,
                  allow_unknown: bool = False) -> tuple[Qwen2_5_VLConfig, Blip3oExtras]:
    """Read BLIP3o's ``config.json`` (flat, transformers-4.51 layout) into a v5 ``Qwen2_5_VLConfig`` + extras.

    Every field is accounted for: text fields move into ``text_config``, ``vision_config`` is translated
    (``in_chans`` -> ``in_channels``), ``rope_scaling`` becomes ``rope_parameters``, BLIP3o's attributes go to
    :class:`Blip3oExtras`. A field we do not know is an error (it might change shapes or behaviour) unless
    ``allow_unknown``, which keeps it in ``extras.metadata``.
    """
    from transformers import Qwen2_5_VLConfig

    if not isinstance(config_json, Mapping):
        raise ConfigError(f"config.json must be an object, got {type(config_json).__name__}")
    model_type = config_json.get("model_type", "blip3o_qwen")
    if model_type not in _MODEL_TYPES:
        raise ConfigError(f"config.json model_type is {model_type!r}; expected one of {', '.join(_MODEL_TYPES)}")
    _require(config_json, (*_TEXT_REQUIRED, *_ROOT_REQUIRED, "vision_config", "n_query"), "config.json")
    known = {*_TEXT_REQUIRED, *_TEXT_OPTIONAL, *_ROOT_REQUIRED, *_ROPE_FIELDS, *_BLIP3O_FIELDS, *_BOOKKEEPING,
             "vision_config", "tie_word_embeddings"}
    unknown = sorted(set(config_json) - known)
    if unknown and not allow_unknown:
        raise ConfigError(f"config.json has field(s) this reader does not know: {', '.join(unknown)} "
                          "(pass allow_unknown=True to keep them as metadata)")

    n_heads = config_json["num_attention_heads"]
    hidden = config_json["hidden_size"]
    if not isinstance(hidden, int) or not isinstance(n_heads, int) or n_heads <= 0 or hidden % n_heads:
        raise ConfigError(f"config.json hidden_size {hidden!r} is not a multiple of num_attention_heads {n_heads!r}")
    if config_json.get("tie_word_embeddings", False):
        raise ConfigError("config.json tie_word_embeddings is true; BLIP3o's checkpoint has a separate lm_head")
    merge = config_json.get("mm_patch_merge_type", "flat")
    if "unpad" in str(merge):
        raise ConfigError(f"config.json mm_patch_merge_type {merge!r} needs an image_newline parameter this model lacks")
    n_query = config_json["n_query"]
    if not isinstance(n_query, int) or n_query <= 0:
        raise ConfigError(f"config.json n_query must be a positive int, found {n_query!r}")

    text = {k: config_json[k] for k in (*_TEXT_REQUIRED, *_TEXT_OPTIONAL) if k in config_json}
    text["rope_parameters"] = _rope_parameters(config_json, hidden // n_heads)
    vision = _vision_config(config_json["vision_config"], hidden)

    cfg = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False,
        **{k: config_json[k] for k in _ROOT_REQUIRED},
    )
    metadata = {k: v for k, v in config_json.items()
                if k in _BLIP3O_FIELDS or k in _BOOKKEEPING or k in unknown}
    extras = Blip3oExtras(n_query=n_query, hidden_size=hidden, gen_vision_tower=config_json.get("gen_vision_tower"),
                          gen_pooling=config_json.get("gen_pooling"), model_type=model_type, metadata=metadata)
    return cfg, extras


def _vision_config(vision_json: Any, text_hidden: int) -> dict[str, Any]:
    """v5 vision-config kwargs; ``out_hidden_size`` must equal the LLM width (the merger feeds it directly)."""
    if not isinstance(vision_json, Mapping):
        raise ConfigError(f"config.json vision_config must be an object, got {type(vision_json).__name__}")
    _require(vision_json, _VISION_REQUIRED, "config.json vision_config")
    unknown = sorted(set(vision_json) - {*_VISION_REQUIRED, *_VISION_OPTIONAL, *_VISION_BOOKKEEPING})
    if unknown:
        raise ConfigError(f"config.json vision_config has field(s) this reader does not know: {', '.join(unknown)}")
    out = {k: vision_json[k] for k in (*_VISION_REQUIRED, *_VISION_OPTIONAL) if k in vision_json}
    if "in_chans" in vision_json:
        if "in_channels" in vision_json and vision_json["in_channels"] != vision_json["in_chans"]:
            raise ConfigError(f"config.json vision_config in_chans {vision_json['in_chans']} != "
                              f"in_channels {vision_json['in_channels']}")
        out["in_channels"] = vision_json["in_chans"]
    spatial = vision_json.get("spatial_patch_size", out["patch_size"])
    if spatial != out["patch_size"]:
        raise ConfigError(f"config.json vision_config spatial_patch_size {spatial} != patch_size {out['patch_size']}")
    if out["out_hidden_size"] != text_hidden:
        raise ConfigError(f"config.json vision_config out_hidden_size {out['out_hidden_size']} != "
                          f"hidden_size {text_hidden} (the vision merger writes straight into the LLM)")
    out.setdefault("tokens_per_second", 2)  # Qwen2.5-VL-7B's value; v5's class default (4) would differ
    return out


def full_config(vocab_size: int = 152064) -> tuple[Qwen2_5_VLConfig, Blip3oExtras]:
    """BLIP3o-8B. ``vocab_size`` 151668 is the variant BLIP3o's training resize produces (151665 + 3 tokens)."""
    return blip3o_config({**FULL_CONFIG_JSON, "vocab_size": vocab_size})


def tiny_config_json(n_query: int = 4) -> dict[str, Any]:
    """A BLIP3o-shaped ``config.json`` small enough for CPU tests (text 64 wide, 2 layers; vision depth 2),
    with the token ids of :func:`tiny_tokenizer`. Read through :func:`blip3o_config`, like a real one."""
    ids = TINY_TOKEN_IDS
    return {
        "model_type": "blip3o_qwen", "vocab_size": 272, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
        "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "in_chans": 3,
                          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
                          "out_hidden_size": 64, "fullatt_block_indexes": [1], "tokens_per_second": 2},
        "n_query": n_query, "gen_vision_tower": "eva-clip-E-14-plus", "gen_pooling": "early_pool2d_4",
    }


def tiny_config(n_query: int = 4) -> tuple[Qwen2_5_VLConfig, Blip3oExtras]:
    """The tiny BLIP3o understanding config (see :func:`tiny_config_json`)."""
    return blip3o_config(tiny_config_json(n_query))


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def build_vlm(config: Qwen2_5_VLConfig) -> Qwen2_5_VLForConditionalGeneration:
    """The library's Qwen2.5-VL on the current default device (use ``torch.device('meta')`` to size it free)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration(config)


class Blip3oModel(nn.Module):
    """BLIP3o: Qwen2.5-VL, the latent queries it reads image-generation conditions from, and the DiT.

    Upstream puts ``latent_queries`` and ``dit`` inside its text decoder (checkpoint names
    ``model.latent_queries``, ``model.dit.*``); here they are siblings of ``vlm`` so the library class stays
    untouched, and ``checkpoint.py`` renames between the two layouts. ``dit`` may be None (understanding only).
    """

    def __init__(self, config: Qwen2_5_VLConfig, extras: Blip3oExtras, dit: nn.Module | None = None) -> None:
        super().__init__()
        hidden = config.text_config.hidden_size
        if extras.hidden_size != hidden:
            raise ConfigError(f"extras.hidden_size {extras.hidden_size} != text_config.hidden_size {hidden}")
        self.config = config
        self.extras = extras
        self.vlm = build_vlm(config)
        self.latent_queries = nn.Parameter(torch.randn(1, extras.n_query, hidden))  # upstream's N(0, 1) init
        self.dit = dit


# --------------------------------------------------------------------------------------------------
# Tokenizer and processor
# --------------------------------------------------------------------------------------------------


def tiny_tokenizer() -> Any:
    """A byte-level Qwen2 tokenizer built in memory (no files, no merges): the 256 byte symbols in sorted
    order, then ``<|endoftext|>`` (unk/pad) and :data:`SPECIAL_TOKENS`, with ids exactly :data:`TINY_TOKEN_IDS`
    (:func:`asg.backbones.qwen_vl.byte_level_tokenizer` checks it)."""
    symbols = qwen_vl.byte_symbols()
    byte_ids = {byte: i for i, byte in enumerate(sorted(symbols, key=symbols.__getitem__))}
    return qwen_vl.byte_level_tokenizer(byte_ids, TINY_TOKEN_IDS)


def load_tokenizer(folder: str | Path) -> Any:
    """The tokenizer saved in a BLIP3o checkpoint folder, from local files only; its BLIP3o tokens are checked."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise DataError(f"BLIP3o checkpoint folder {folder} has no tokenizer (tokenizer.json or vocab.json)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    missing = [t for t in SPECIAL_TOKENS if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)]
    if missing:
        raise DataError(f"tokenizer in {folder} lacks BLIP3o token(s) {', '.join(missing)}")
    return tok


def make_processor(tokenizer: Any, config: Qwen2_5_VLConfig | None = None, *,
                   with_video: bool = False) -> Qwen2_5_VLProcessor:
    """A ``Qwen2_5_VLProcessor`` from in-memory parts: no hub access (upstream fetched one from
    ``Qwen/Qwen2.5-VL-7B-Instruct`` because BLIP3o's folder ships a bare tokenizer).

    :func:`asg.backbones.qwen_vl.build_processor` with :data:`CHAT_TEMPLATE`: sizes from ``config.vision_config``
    (Qwen2.5-VL-7B's when None), the 7B-Instruct pixel bounds and CLIP normalisation, left padding; without
    ``with_video``, no video processor (that needs torchvision). The tokenizer must have the chat and vision
    tokens the prompt uses.
    """
    from transformers import Qwen2_5_VLProcessor

    for token in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"):
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise DataError(f"tokenizer {type(tokenizer).__name__} lacks {token}, which the Qwen2.5-VL prompt needs")
    return qwen_vl.build_processor(Qwen2_5_VLProcessor, tokenizer, config, chat_template=CHAT_TEMPLATE,
                                   image_only_name="Blip3oImageProcessor", with_video=with_video)
