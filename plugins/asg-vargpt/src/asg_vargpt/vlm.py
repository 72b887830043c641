"""VARGPT-v1.1's understanding side: the Qwen2-VL backbone, its config, tokenizer, processor, prompts, scoring.

VARGPT-v1.1 answers questions with an unmodified Qwen2-VL-7B (its ``forward`` only branches away for image
generation), so this module builds transformers v5's native ``Qwen2VLForConditionalGeneration`` and adds what
the library does not know: how to read VARGPT's ``config.json`` (pre-v5, flat, with a ``special_tokens`` block
holding the three image-generation tokens), a processor made from in-memory parts (no hub), the chat prompts
for understanding and for image generation, and the log-prob helpers the self-evolving recipes need. The
Qwen-VL pieces it shares with other backbones (chat template, processor, image sizing, teacher forcing, log-probs)
are :mod:`asg.backbones.qwen_vl`'s, re-exported here under the names callers use.

Module tree (``checkpoint.py`` relies on these names)::

    VargptModel
      vlm        Qwen2VLForConditionalGeneration   (vlm.model.visual, vlm.model.language_model, vlm.lm_head)
      head       VargptImageHead                   (head.vargpt_gen, head.image_gen_projector[_out], head.sos_embedding)
      vae_local  BSQ-VAE or None                   (vae_local.*; attached by the caller)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from asg.backbones import qwen_vl
from asg.backbones.qwen_vl import (  # re-exported: VARGPT's understanding API, shared with other Qwen-VL backbones
    IMAGE_MAX_SIDE,
    IMAGE_MIN_SIDE,
    IMAGE_MULTIPLE,
    LORA_TARGETS,
    SYSTEM_PROMPT,
    generation_logprobs,
    normalize_image_size,
    understanding_inputs,
    understanding_messages,
)
from asg.errors import ConfigError, DataError

from .infinity import InfinityConfig, VargptImageHead, infinity_2b, infinity_tiny

if TYPE_CHECKING:  # transformers is imported lazily: importing this module stays cheap
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

__all__ = ["CHAT_TEMPLATE", "CHAT_TOKENS", "FULL_CONFIG_JSON", "GENERATION_INSTRUCTION", "IMAGE_GEN_FIELDS",
           "IMAGE_MAX_SIDE", "IMAGE_MIN_SIDE", "IMAGE_MULTIPLE", "LORA_TARGETS", "SYSTEM_PROMPT", "TINY_TOKEN_IDS",
           "VISION_INPUTS", "VargptExtras", "VargptModel", "answer_logprobs", "build_vlm", "check_tokenizer",
           "full_config", "generation_logprobs", "generation_prompt_inputs", "generation_prompt_text",
           "load_tokenizer", "make_processor", "normalize_image_size", "teacher_forcing_inputs", "tiny_config",
           "tiny_config_json", "tiny_tokenizer", "understanding_inputs", "understanding_messages", "vargpt_config"]

# --------------------------------------------------------------------------------------------------
# Tokens and prompts
# --------------------------------------------------------------------------------------------------

CHAT_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
)
"""The Qwen2-VL tokens the prompts and the processor use (a tokenizer must have all of them)."""

IMAGE_GEN_FIELDS: tuple[str, ...] = ("image_gen_start", "image_gen_end", "image_gen_pad")
"""Names of VARGPT's image-generation tokens in ``config.special_tokens`` (each with a ``_token_id`` twin)."""

TINY_TOKEN_IDS: Mapping[str, int] = {
    "<|endoftext|>": 240, "<|im_end|>": 241, "<|vision_start|>": 242, "<|vision_end|>": 243, "<|vision_pad|>": 244,
    "<|image_pad|>": 245, "<|video_pad|>": 246, "<|im_start|>": 247,
    "<|image_gen_start|>": 250, "<|image_gen_end|>": 251, "<|image_gen_pad|>": 252,
}
"""Special ids of :func:`tiny_tokenizer`. All but ``<|im_start|>`` are fixed by the tiny upstream fixture's
config (bos 240 = Qwen's ``<|endoftext|>``, eos 241 = ``<|im_end|>``, vision/image/video 242-246, image-gen
250-252); ``<|im_start|>``, which that config does not name, takes the first free id."""

_TINY_BYTE_SLOTS: Mapping[int, int] = {0xF0: 248, 0xF1: 249, 0xF2: 253, 0xF3: 254, 0xF4: 255}
"""Where :func:`tiny_tokenizer` puts the UTF-8 lead bytes of 4-byte characters (ids the specials leave free).
Bytes 0x00-0xEF have id = byte; 0xF5-0xFF never occur in UTF-8 and have no id. So every text round-trips."""

CHAT_TEMPLATE = qwen_vl.chat_template("VARGPT")
"""ChatML as Qwen2-VL (and so VARGPT's processor) writes it (:func:`asg.backbones.qwen_vl.chat_template`): the
default system turn, each image as ``<|vision_start|><|image_pad|><|vision_end|>`` in place. Ours, so no hub
template is needed; images only (VARGPT never feeds video here)."""

GENERATION_INSTRUCTION = "Can you depict a scene of {prompt}"
"""The user turn that asks VARGPT for an image: the first wording of the upstream README's inference example
("Can you depict a scene of A power metal album cover ..."); the caption follows verbatim."""

VISION_INPUTS = qwen_vl.QWEN2_VL_INPUTS
"""Prompt inputs teacher forcing passes through: Qwen2-VL's (no Qwen2.5-VL ``second_per_grid_ts``)."""

# LORA_TARGETS (re-exported above) is REF's LLaMA-Factory target list (q_proj, ..., down_proj, visual excluded)
# as a regex: Qwen2-VL's vision blocks have attn.qkv/mlp.fc1, so suffixes would miss them anyway, but the regex
# also keeps the Infinity head out.

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------

FULL_CONFIG_JSON: Mapping[str, Any] = {
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
    "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28,
    "model_type": "vargpt_qwen2_vl", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
    "rope_scaling": {"type": "default", "mrope_section": [16, 24, 24], "rope_type": "default"},
    "vocab_size": 152064,
    "special_tokens": {
        "image_gen_start": "<|image_gen_start|>", "image_gen_start_token_id": 151657,
        "image_gen_end": "<|image_gen_end|>", "image_gen_end_token_id": 151658,
        "image_gen_pad": "<|image_gen_pad|>", "image_gen_pad_token_id": 151659,
    },
}
"""VARGPT-v1.1's config as the parameter manifest of the public checkpoint records it (upstream's
``prepare_vargpt_v1_1.cfg`` after ``VARGPTQwen2VLConfig`` normalised ``rope_scaling``, plus ``special_tokens``).
The image-gen ids assume Qwen2-VL-7B-Instruct's tokenizer + 3 tokens; a downloaded ``config.json`` is the
authority (read it with :func:`vargpt_config`)."""

# Root fields of the flat pre-v5 config that belong to the v5 text config.
_TEXT_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "hidden_act")
_TEXT_OPTIONAL = ("use_sliding_window", "sliding_window", "max_window_layers", "attention_dropout", "bos_token_id",
                  "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "layer_types")
_ROOT_REQUIRED = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_VISION_REQUIRED = ("depth", "embed_dim", "mlp_ratio", "num_heads", "hidden_size", "patch_size",
                    "spatial_merge_size", "temporal_patch_size")
_VISION_OPTIONAL = ("hidden_act", "in_channels", "initializer_range")
_VISION_BOOKKEEPING = ("in_chans", "spatial_patch_size", "model_type", "torch_dtype", "dtype", "_name_or_path",
                       "transformers_version", "architectures")
# Written into config.json by upstream's prepare_vargpt_qwen2vl_v1_1 / PretrainedConfig; no shape or math
# depends on them.
_BOOKKEEPING = ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
                "auto_map", "vision_token_id", "train_from_scratch", "padding_side", "is_encoder_decoder",
                "return_dict")
_MODEL_TYPES = ("vargpt_qwen2_vl", "qwen2_vl")
_ROPE_FIELDS = ("rope_scaling", "rope_parameters", "rope_theta")


@dataclass(frozen=True)
class VargptExtras:
    """What VARGPT adds to a Qwen2-VL config.

    The three image-generation tokens with their ids (``special_tokens`` in ``config.json``: they size
    ``sos_embedding`` and delimit generated images, so they are read, never assumed), the Infinity head's sizes
    (not in ``config.json`` at all: upstream hard-codes Infinity-2B), ``hidden_size`` mirrored from the text
    config, and everything else kept verbatim in ``metadata`` so nothing in ``config.json`` is silently lost.
    """

    image_gen_start: str
    image_gen_start_token_id: int
    image_gen_end: str
    image_gen_end_token_id: int
    image_gen_pad: str
    image_gen_pad_token_id: int
    hidden_size: int
    head: InfinityConfig
    vision_token_id: int | None = None
    model_type: str = "vargpt_qwen2_vl"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def image_gen_token_ids(self) -> dict[str, int]:
        """``{token: id}`` of the three image-generation tokens."""
        return {self.image_gen_start: self.image_gen_start_token_id, self.image_gen_end: self.image_gen_end_token_id,
                self.image_gen_pad: self.image_gen_pad_token_id}


def _require(source: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in source]
    if missing:
        raise ConfigError(f"{where} lacks required field(s) {', '.join(missing)}")


def _rope_parameters(config_json: Mapping[str, Any], head_dim: int) -> dict[str, Any]:
    """v5 ``rope_parameters`` from 4.x ``rope_scaling`` (``{'type': 'mrope'|'default', 'mrope_section': ...}``).

    VARGPT's saved config already carries the 4.46 normalisation (``type`` 'mrope' rewritten to 'default');
    upstream's ``prepare`` script still has 'mrope'. Both mean the default rotary with a ``mrope_section``
    split of the head dimension into (temporal, height, width) parts, which must add up to ``head_dim / 2``.
    """
    scaling = config_json.get("rope_parameters", config_json.get("rope_scaling"))
    if not isinstance(scaling, Mapping):
        raise ConfigError("config.json lacks rope_scaling (Qwen2-VL's {'type': 'mrope', 'mrope_section': [...]})")
    kinds = {scaling.get(k) for k in ("rope_type", "type") if k in scaling}
    if not kinds or not kinds <= {"mrope", "default"}:
        raise ConfigError(f"config.json rope_scaling type is {sorted(map(str, kinds))}; "
                          "VARGPT's Qwen2-VL uses 'mrope' (= 'default' with mrope_section)")
    unknown = sorted(set(scaling) - {"type", "rope_type", "mrope_section", "rope_theta"})
    if unknown:
        raise ConfigError(f"config.json rope_scaling has field(s) this reader does not know: {', '.join(unknown)}")
    return qwen_vl.mrope_parameters(scaling, config_json, head_dim, model="Qwen2-VL")


def _vision_config(vision_json: Any, text_hidden: int) -> dict[str, Any]:
    """v5 Qwen2-VL vision kwargs. ``hidden_size`` there is the merger's *output* width, so it must equal the
    LLM width; ``embed_dim`` is the ViT width (4.x ``in_chans`` becomes ``in_channels``)."""
    if not isinstance(vision_json, Mapping):
        raise ConfigError(f"config.json vision_config must be an object, got {type(vision_json).__name__}")
    _require(vision_json, _VISION_REQUIRED, "config.json vision_config")
    unknown = sorted(set(vision_json) - {*_VISION_REQUIRED, *_VISION_OPTIONAL, *_VISION_BOOKKEEPING})
    if unknown:
        raise ConfigError(f"config.json vision_config has field(s) this reader does not know: {', '.join(unknown)}")
    out = {k: vision_json[k] for k in (*_VISION_REQUIRED, *_VISION_OPTIONAL) if k in vision_json}
    chans = vision_json.get("in_chans", out.get("in_channels", 3))
    if out.setdefault("in_channels", chans) != chans:
        raise ConfigError(f"config.json vision_config in_chans {chans} != in_channels {out['in_channels']}")
    spatial = vision_json.get("spatial_patch_size", out["patch_size"])
    if spatial != out["patch_size"]:
        raise ConfigError(f"config.json vision_config spatial_patch_size {spatial} != patch_size {out['patch_size']}")
    if out["hidden_size"] != text_hidden:
        raise ConfigError(f"config.json vision_config hidden_size {out['hidden_size']} != hidden_size {text_hidden} "
                          "(Qwen2-VL's patch merger writes straight into the LLM)")
    if out["embed_dim"] % out["num_heads"]:
        raise ConfigError(f"config.json vision_config embed_dim {out['embed_dim']} is not a multiple of "
                          f"num_heads {out['num_heads']}")
    return out


def _special_tokens(value: Any, vocab_size: int) -> dict[str, Any]:
    """The image-generation tokens of ``config.special_tokens``: all six fields, ids distinct and in the vocabulary."""
    where = "config.json special_tokens"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be an object with image_gen_start/_end/_pad and their _token_id, "
                          f"found {type(value).__name__}")
    fields = [f for name in IMAGE_GEN_FIELDS for f in (name, f"{name}_token_id")]
    _require(value, fields, where)
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(f"{where} has field(s) this reader does not know: {', '.join(unknown)}")
    for name in IMAGE_GEN_FIELDS:
        token, tid = value[name], value[f"{name}_token_id"]
        if not isinstance(token, str) or not token:
            raise ConfigError(f"{where}.{name} must be a token string, found {token!r}")
        if not isinstance(tid, int) or isinstance(tid, bool) or not 0 <= tid < vocab_size:
            raise ConfigError(f"{where}.{name}_token_id must be an int in [0, vocab_size={vocab_size}), found {tid!r}")
    ids = [value[f"{n}_token_id"] for n in IMAGE_GEN_FIELDS]
    if len(set(ids)) != 3:
        raise ConfigError(f"{where} ids must be distinct, found {ids}")
    return {f: value[f] for f in fields}


def vargpt_config(config_json: Mapping[str, Any], *, head: InfinityConfig | None = None,
                  allow_unknown: bool = False) -> tuple[Qwen2VLConfig, VargptExtras]:
    """Read VARGPT-v1.1's ``config.json`` (flat, transformers-4.4x layout) into a v5 ``Qwen2VLConfig`` + extras.

    Every field is accounted for: text fields move into ``text_config``; ``vision_config`` is translated;
    ``rope_scaling`` becomes ``rope_parameters``; ``special_tokens`` goes to :class:`VargptExtras`. A field we do
    not know is an error (it might change shapes or behaviour) unless ``allow_unknown``, which keeps it in
    ``extras.metadata``. ``head`` sizes the Infinity head (default Infinity-2B, which upstream hard-codes).
    """
    from transformers import Qwen2VLConfig

    if not isinstance(config_json, Mapping):
        raise ConfigError(f"config.json must be an object, got {type(config_json).__name__}")
    model_type = config_json.get("model_type", "vargpt_qwen2_vl")
    if model_type not in _MODEL_TYPES:
        raise ConfigError(f"config.json model_type is {model_type!r}; expected one of {', '.join(_MODEL_TYPES)}")
    _require(config_json, (*_TEXT_REQUIRED, *_ROOT_REQUIRED, "vision_config", "special_tokens"), "config.json")
    known = {*_TEXT_REQUIRED, *_TEXT_OPTIONAL, *_ROOT_REQUIRED, *_ROPE_FIELDS, *_BOOKKEEPING,
             "vision_config", "special_tokens", "tie_word_embeddings"}
    unknown = sorted(set(config_json) - known)
    if unknown and not allow_unknown:
        raise ConfigError(f"config.json has field(s) this reader does not know: {', '.join(unknown)} "
                          "(pass allow_unknown=True to keep them as metadata)")

    n_heads, hidden = config_json["num_attention_heads"], config_json["hidden_size"]
    if not isinstance(hidden, int) or not isinstance(n_heads, int) or n_heads <= 0 or hidden % n_heads:
        raise ConfigError(f"config.json hidden_size {hidden!r} is not a multiple of num_attention_heads {n_heads!r}")
    if config_json.get("tie_word_embeddings", False):
        raise ConfigError("config.json tie_word_embeddings is true; VARGPT's checkpoint has a separate lm_head")
    special = _special_tokens(config_json["special_tokens"], config_json["vocab_size"])
    clash = {n: config_json[n] for n in (*_ROOT_REQUIRED, "vision_token_id") if config_json.get(n) in
             {special[f"{g}_token_id"] for g in IMAGE_GEN_FIELDS}}
    if clash:
        raise ConfigError(f"config.json special_tokens ids collide with Qwen2-VL token id(s) {clash}")

    text = {k: config_json[k] for k in (*_TEXT_REQUIRED, *_TEXT_OPTIONAL) if k in config_json}
    text["rope_parameters"] = _rope_parameters(config_json, hidden // n_heads)
    vision = _vision_config(config_json["vision_config"], hidden)
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                        **{k: config_json[k] for k in _ROOT_REQUIRED})
    metadata = {k: v for k, v in config_json.items() if k in _BOOKKEEPING or k in unknown}
    extras = VargptExtras(**special, hidden_size=hidden, head=head if head is not None else infinity_2b(),
                          vision_token_id=config_json.get("vision_token_id"), model_type=model_type, metadata=metadata)
    return cfg, extras


def full_config(*, head: InfinityConfig | None = None) -> tuple[Qwen2VLConfig, VargptExtras]:
    """VARGPT-v1.1 as the public checkpoint's manifest records it (Qwen2-VL-7B + Infinity-2B)."""
    return vargpt_config(FULL_CONFIG_JSON, head=head)


def tiny_config_json() -> dict[str, Any]:
    """The tiny upstream fixture's ``VARGPTQwen2VLConfig`` kwargs + ``special_tokens`` (``fixtures/tiny/fixture.json``):
    text 64 wide, 2 layers, vocabulary 256; vision depth 2, width 32. Read through :func:`vargpt_config`."""
    ids = TINY_TOKEN_IDS
    return {
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 512,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": False, "use_sliding_window": False,
        "sliding_window": 512, "max_window_layers": 2,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {"depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3,
                          "hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                          "temporal_patch_size": 2},
        "special_tokens": {
            "image_gen_start": "<|image_gen_start|>", "image_gen_start_token_id": ids["<|image_gen_start|>"],
            "image_gen_end": "<|image_gen_end|>", "image_gen_end_token_id": ids["<|image_gen_end|>"],
            "image_gen_pad": "<|image_gen_pad|>", "image_gen_pad_token_id": ids["<|image_gen_pad|>"],
        },
    }


def tiny_config() -> tuple[Qwen2VLConfig, VargptExtras]:
    """The tiny VARGPT of the upstream fixture, with its Infinity head (width 128, depth 4, 2 chunks)."""
    return vargpt_config(tiny_config_json(), head=infinity_tiny())


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def build_vlm(config: Qwen2VLConfig) -> Qwen2VLForConditionalGeneration:
    """The library's Qwen2-VL on the current default device (use ``torch.device('meta')`` to size it free)."""
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration(config)


class VargptModel(nn.Module):
    """VARGPT-v1.1: Qwen2-VL (``vlm``), the Infinity image head (``head``) and the BSQ-VAE (``vae_local``).

    Upstream puts all of them in one flat module (checkpoint names ``visual.*``, ``model.*``, ``vargpt_gen.*``,
    ...); here the library class stays untouched and ``checkpoint.py`` renames between the two layouts.
    ``vae_local`` may be None (understanding, or generating bits without decoding them).
    """

    def __init__(self, config: Qwen2VLConfig, extras: VargptExtras, vae_local: nn.Module | None = None) -> None:
        super().__init__()
        hidden = config.text_config.hidden_size
        if extras.hidden_size != hidden:
            raise ConfigError(f"extras.hidden_size {extras.hidden_size} != text_config.hidden_size {hidden}")
        self.config = config
        self.extras = extras
        self.vlm = build_vlm(config)
        self.head = VargptImageHead(extras.head, hidden, extras.image_gen_start_token_id)
        self.vae_local = vae_local


# --------------------------------------------------------------------------------------------------
# Tokenizer and processor
# --------------------------------------------------------------------------------------------------


def tiny_tokenizer() -> Any:
    """A byte-level Qwen2 tokenizer built in memory (no files, no merges) with exactly 256 ids, the tiny
    fixture's vocabulary: bytes 0x00-0xEF at ids 0-239, the specials at :data:`TINY_TOKEN_IDS`, the 4-byte UTF-8
    lead bytes at :data:`_TINY_BYTE_SLOTS` (:func:`asg.backbones.qwen_vl.byte_level_tokenizer` checks it)."""
    byte_ids = {byte: byte for byte in range(0xF0)} | dict(_TINY_BYTE_SLOTS)
    return qwen_vl.byte_level_tokenizer(byte_ids, TINY_TOKEN_IDS)


def check_tokenizer(tokenizer: Any, extras: VargptExtras | None = None, *, where: str = "tokenizer") -> None:
    """Raise unless ``tokenizer`` has the Qwen2-VL chat/vision tokens and VARGPT's image-generation tokens,
    the latter at the ids ``extras`` (i.e. ``config.json``) gives."""
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [t for t in CHAT_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, unk) and t != "<|endoftext|>"]
    if missing:
        raise DataError(f"{where} lacks Qwen2-VL token(s) {', '.join(missing)}")
    if extras is None:
        return
    found = {t: tokenizer.convert_tokens_to_ids(t) for t in extras.image_gen_token_ids}
    if found != extras.image_gen_token_ids:
        raise DataError(f"{where} image-generation token ids {found} differ from config.json special_tokens "
                        f"{extras.image_gen_token_ids}")


def load_tokenizer(folder: str | Path, extras: VargptExtras | None = None) -> Any:
    """The tokenizer saved in a VARGPT checkpoint folder, from local files only; its Qwen2-VL tokens and (with
    ``extras``) its image-generation token ids are checked against the config."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise DataError(f"VARGPT checkpoint folder {folder} has no tokenizer (tokenizer.json or vocab.json)")
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    check_tokenizer(tok, extras, where=f"tokenizer in {folder}")
    return tok


def make_processor(tokenizer: Any, config: Qwen2VLConfig | None = None, extras: VargptExtras | None = None, *,
                   with_video: bool = False) -> Qwen2VLProcessor:
    """A ``Qwen2VLProcessor`` from in-memory parts, no hub access (upstream loads VARGPT's own processor files).

    :func:`asg.backbones.qwen_vl.build_processor` with :data:`CHAT_TEMPLATE`: sizes from ``config.vision_config``
    (Qwen2-VL-7B's when None), Qwen2-VL-7B-Instruct's pixel bounds and CLIP normalisation, left padding; without
    ``with_video``, no video processor (that needs torchvision). The tokenizer is checked first: its Qwen2-VL
    tokens, its image-generation ids against ``extras`` and its ``<|image_pad|>`` id against ``config``.
    """
    from transformers import Qwen2VLProcessor

    check_tokenizer(tokenizer, extras, where=f"tokenizer {type(tokenizer).__name__}")
    if config is not None and tokenizer.convert_tokens_to_ids("<|image_pad|>") != config.image_token_id:
        raise DataError(f"tokenizer <|image_pad|> id {tokenizer.convert_tokens_to_ids('<|image_pad|>')} != "
                        f"config image_token_id {config.image_token_id}")
    return qwen_vl.build_processor(Qwen2VLProcessor, tokenizer, config, chat_template=CHAT_TEMPLATE,
                                   image_only_name="VargptImageProcessor", with_video=with_video)


def generation_prompt_text(processor: Qwen2VLProcessor, prompt: str, *, image_gen_start: str = "<|image_gen_start|>",
                           instruction: str = GENERATION_INSTRUCTION, assistant_prefix: str = "") -> str:
    """The chat text that asks for an image and opens it: user turn ``instruction``, then the assistant turn,
    ``assistant_prefix`` and ``image_gen_start``.

    Upstream lets the LLM write a short reply ("Here's a ... of ...") and sample ``<|image_gen_start|>``
    itself; forcing the token makes the start deterministic. Pass that reply as ``assistant_prefix`` (e.g.
    from a text ``generate`` stopped at the token) to condition the image on it as upstream does.
    """
    if "{prompt}" not in instruction:
        raise ConfigError(f"generation instruction {instruction!r} has no {{prompt}} slot")
    messages = [{"role": "user", "content": [{"type": "text", "text": instruction.format(prompt=prompt)}]}]
    chat = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return chat + assistant_prefix + image_gen_start


def generation_prompt_inputs(processor: Qwen2VLProcessor, prompts: Sequence[str], *,
                             extras: VargptExtras | None = None, instruction: str = GENERATION_INSTRUCTION,
                             assistant_prefix: str = "") -> Any:
    """Tokenised image-generation prompts (:func:`generation_prompt_text`), each ending in ``<|image_gen_start|>``
    so the Infinity loop can start right after the prefill.

    The start token is ``extras.image_gen_start`` (from ``config.json``) when given; its id is checked to be the
    last of every row. Rows are left-padded; the generation loop needs same-length rows (no padding), which
    prompts of equal token length give.
    """
    if not prompts:
        raise ConfigError("generation_prompt_inputs needs at least one prompt")
    start = extras.image_gen_start if extras is not None else "<|image_gen_start|>"
    texts = [generation_prompt_text(processor, p, image_gen_start=start, instruction=instruction,
                                    assistant_prefix=assistant_prefix) for p in prompts]
    inputs = processor(text=texts, return_tensors="pt", padding=True)
    start_id = processor.tokenizer.convert_tokens_to_ids(start)
    if extras is not None and start_id != extras.image_gen_start_token_id:
        raise DataError(f"tokenizer {start} id {start_id} != config image_gen_start_token_id "
                        f"{extras.image_gen_start_token_id}")
    if not bool((inputs["input_ids"][:, -1] == start_id).all()):
        raise DataError(f"generation prompts do not end in {start} (id {start_id}): the tokenizer split it")
    return inputs


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

def teacher_forcing_inputs(prompt: Mapping[str, torch.Tensor], answer_ids: torch.Tensor,
                           answer_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Prompt + answer as one forward's inputs (:func:`asg.backbones.qwen_vl.teacher_forcing_inputs` with
    Qwen2-VL's :data:`VISION_INPUTS`: a Qwen2.5-VL-only input is refused rather than passed to the model)."""
    return qwen_vl.teacher_forcing_inputs(prompt, answer_ids, answer_mask, vision_inputs=VISION_INPUTS)


def answer_logprobs(vlm: nn.Module, prompt: Mapping[str, torch.Tensor], answer_ids: torch.Tensor,
                    answer_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token log p(answer | prompt) by teacher forcing, ``(batch, answer_len)`` float32, 0 where masked
    (:func:`asg.backbones.qwen_vl.answer_logprobs` with :data:`VISION_INPUTS`). A fresh forward without cache:
    nothing carries over between calls (upstream's model kept ``past_hidden_states`` across calls)."""
    return qwen_vl.answer_logprobs(vlm, prompt, answer_ids, answer_mask, vision_inputs=VISION_INPUTS)
