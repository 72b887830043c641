"""Understanding pieces shared by backbones built on transformers' Qwen-VL models (Qwen2-VL, Qwen2.5-VL).

Backbones such as BLIP3o (Qwen2.5-VL) and VARGPT (Qwen2-VL) answer questions with the library's model
unchanged, so the chat prompt, the in-memory processor and tokenizer, image sizing, teacher forcing and the
backbone methods over it are the same code for both; what differs (config readers, token-id tables, module
trees, checkpoint names) stays in the plugin. Everything here is parametrised by what differs: the processor
class, the tokenizer's id layout, the set of vision inputs a prompt may carry.

transformers, tokenizers and PIL are imported inside the functions that need them, so importing this module
(and the plugin modules built on it) costs only torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from asg.errors import ConfigError, DataError
from asg.kernels import linear_token_stats, token_stats
from asg.types import Completion, Prompt, SamplingParams, ScoreOutput

if TYPE_CHECKING:
    from PIL import Image

# --------------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------------

SYSTEM_PROMPT = "You are a helpful assistant."
"""The default ChatML system turn of Qwen2-VL and Qwen2.5-VL (and BLIP3o's ``conv_qwen``)."""

EMBED_IMAGE_PROBE = "Describe the image."
"""The question an image is read with when :meth:`QwenVLUnderstanding.embed_image` is given no text."""


def chat_template(model: str) -> str:
    """ChatML as Qwen-VL writes it: a default system turn (:data:`SYSTEM_PROMPT`), each image as
    ``<|vision_start|><|image_pad|><|vision_end|>`` in place (the processor expands the pad to one token per
    merged 2x2 patch), then the assistant header when asked. Ours, so no hub template is needed; images only.

    ``model`` names the backbone in the error an unsupported content type raises, so the message says whose
    template refused it.
    """
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}"
        "{% else %}{{ raise_exception('" + model + " chat template: unsupported content type ' + part['type']) }}"
        "{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


LORA_TARGETS = r"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)"
"""PEFT ``target_modules`` regex: the language model's attention and MLP projections only. Suffix lists
(``q_proj``, ..., ``down_proj``) would also wrap Qwen2.5-VL's vision SwiGLU MLP (``visual.blocks.N.mlp.*``) and
any sibling head with such names; the regex keeps LoRA on the LLM."""

IMAGE_MULTIPLE = 28  # patch 14 x spatial merge 2: one merged vision token per 28x28 pixels
IMAGE_MIN_SIDE = 56
IMAGE_MAX_SIDE = 1024

QWEN2_VL_INPUTS: tuple[str, ...] = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")
"""Vision inputs of a Qwen2-VL prompt that teacher forcing passes through unchanged."""

QWEN2_5_VL_INPUTS: tuple[str, ...] = (*QWEN2_VL_INPUTS, "second_per_grid_ts")
"""Qwen2.5-VL's: Qwen2-VL's plus the video timing ``second_per_grid_ts``."""

# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def mrope_parameters(scaling: Mapping[str, Any], config_json: Mapping[str, Any], head_dim: int, *,
                     model: str) -> dict[str, Any]:
    """v5 ``rope_parameters`` from a 4.x ``rope_scaling`` whose type the caller has checked.

    v5 has no ``mrope`` rope type: multimodal rope is the default rotary with a ``mrope_section`` split of the
    head dimension into (temporal, height, width) parts, which must add up to ``head_dim / 2``. ``rope_theta``
    comes from ``scaling`` or the config root. ``model`` (e.g. "Qwen2-VL") names whose rotary needs it.
    """
    section = scaling.get("mrope_section")
    if not isinstance(section, (list, tuple)) or len(section) != 3 or not all(isinstance(s, int) for s in section):
        raise ConfigError(f"config.json rope_scaling.mrope_section must be 3 ints, found {section!r}")
    if sum(section) * 2 != head_dim:
        raise ConfigError(f"config.json rope_scaling.mrope_section {list(section)} sums to {sum(section)}; "
                          f"expected head_dim/2 = {head_dim // 2} (hidden_size / num_attention_heads / 2)")
    theta = scaling.get("rope_theta", config_json.get("rope_theta"))
    if theta is None:
        raise ConfigError(f"config.json lacks rope_theta (needed for {model}'s rotary embedding)")
    return {"rope_type": "default", "rope_theta": float(theta), "mrope_section": list(section)}


# --------------------------------------------------------------------------------------------------
# Tokenizer and processor
# --------------------------------------------------------------------------------------------------


def byte_symbols() -> dict[int, str]:
    """Byte -> the printable symbol byte-level BPE uses for it: printable Latin-1 bytes stand for themselves,
    the other 68 take code points 256, 257, ... in byte order (the GPT-2 convention ``ByteLevel`` follows)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)}
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return symbols


def byte_level_tokenizer(byte_ids: Mapping[int, int], special_ids: Mapping[str, int]) -> Any:
    """A byte-level Qwen2 tokenizer built in memory (no files, no merges), for tiny test models.

    ``byte_ids`` gives each byte that has a token its id (bytes left out, e.g. ones UTF-8 never uses, get none)
    and ``special_ids`` each special token's, ``<|endoftext|>`` (unk and pad) and ``<|im_end|>`` (eos) among
    them; together the ids must be exactly 0..n-1. Specials whose ids lie among the byte ids sit in the BPE
    vocabulary, so registering them keeps their ids; those above every byte id are added tokens, numbered after
    the vocabulary as a real Qwen tokenizer's are (so they must follow it in id order). Specials are registered
    in ``special_ids`` order. The result is checked to reproduce the layout.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    symbols = byte_symbols()
    if set(symbols.values()) != set(ByteLevel.alphabet()):
        raise RuntimeError("byte-level tokenizer: byte symbols differ from tokenizers' ByteLevel alphabet")
    for token in ("<|endoftext|>", "<|im_end|>"):
        if token not in special_ids:
            raise ValueError(f"byte-level tokenizer: special_ids lacks {token}")
    n = len(byte_ids) + len(special_ids)
    if sorted([*byte_ids.values(), *special_ids.values()]) != list(range(n)):
        raise RuntimeError(f"byte-level tokenizer ids are not exactly 0..{n - 1} "
                           f"({len(byte_ids)} bytes, {len(special_ids)} specials)")
    top = max(byte_ids.values())
    vocab = {symbols[b]: i for b, i in byte_ids.items()}
    vocab.update({t: i for t, i in special_ids.items() if i < top})
    # eos goes on after the specials are registered: naming an absent <|im_end|> here would add it first
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|endoftext|>",
                         pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [t for t in special_ids if t != "<|endoftext|>"]})
    tok.eos_token = "<|im_end|>"
    found = {t: tok.convert_tokens_to_ids(t) for t in special_ids}
    if found != dict(special_ids) or len(tok) != n:
        raise RuntimeError(f"byte-level tokenizer ids changed: expected {dict(special_ids)}, found {found}, "
                           f"{len(tok)} tokens")
    return tok


@functools.cache
def image_only_processor_class(base: type, name: str) -> type:
    """``base`` (a Qwen-VL ``ProcessorMixin`` class) without the video slot, as a subclass called ``name``.

    The library's video processor imports torchvision (not a dependency) and ``ProcessorMixin`` rejects a None
    video processor; these backbones are never fed video, so the subclass drops that attribute from the
    signature ``ProcessorMixin.get_attributes`` reads. Everything else (image-pad expansion,
    ``mm_token_type_ids``) is the library's. Cached, so every processor built for one base has the same class.
    """

    class ImageOnlyProcessor(base):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                     **kwargs: Any) -> None:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = name
    return ImageOnlyProcessor


def build_processor(processor_class: type, tokenizer: Any, config: Any = None, *, chat_template: str,
                    image_only_name: str, with_video: bool = False) -> Any:
    """A ``processor_class`` (``Qwen2VLProcessor`` or ``Qwen2_5_VLProcessor``) from in-memory parts, no hub.

    The image processor takes patch/merge/temporal sizes from ``config.vision_config`` (the 7B models' when
    None) and the 7B-Instruct pixel bounds and CLIP normalisation (the library defaults). Without
    ``with_video`` the processor is :func:`image_only_processor_class` (named ``image_only_name``); with it,
    the library's video processor, which needs torchvision, is added. The tokenizer is switched to left
    padding, which batched scoring needs (every row's answer then starts at the same column). Checking the
    tokenizer's tokens is the caller's job: which ones matter is model-specific.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = config.vision_config if config is not None else None
    sizes = {"patch_size": getattr(vision, "patch_size", 14), "merge_size": getattr(vision, "spatial_merge_size", 2),
             "temporal_patch_size": getattr(vision, "temporal_patch_size", 2)}
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=12845056, **sizes)
    tokenizer.padding_side = "left"
    if not with_video:
        return image_only_processor_class(processor_class, image_only_name)(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)
    try:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    except ImportError as err:
        raise ConfigError(f"make_processor(with_video=True) needs torchvision for Qwen2VLVideoProcessor: {err}") from err
    return processor_class(image_processor=image_processor, tokenizer=tokenizer,
                           video_processor=Qwen2VLVideoProcessor(**sizes), chat_template=chat_template)


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def normalize_image_size(image: Image.Image, *, multiple: int = IMAGE_MULTIPLE, min_side: int = IMAGE_MIN_SIDE,
                         max_side: int = IMAGE_MAX_SIDE) -> Image.Image:
    """Resize so both sides are multiples of ``multiple`` within [min_side, max_side] (as the reference
    recipe does before the processor), keeping the aspect ratio where the bounds allow.

    A long side above ``max_side`` scales the image down; a short side below ``min_side`` scales it up; each
    side is then floored to a multiple and clamped. The processor then needs no resize of its own, so the
    number of image tokens is predictable: (w/28) * (h/28).
    """
    from PIL import Image as PILImage

    if not isinstance(image, PILImage.Image):
        raise DataError(f"expected a PIL image, got {type(image).__name__}")
    w, h = image.size
    if w <= 0 or h <= 0:
        raise DataError(f"image has an empty side: {w}x{h}")
    lo = math.ceil(min_side / multiple) * multiple
    hi = (max_side // multiple) * multiple
    if lo > hi:
        raise ConfigError(f"no multiple of {multiple} lies in [{min_side}, {max_side}]")
    scale = 1.0
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
    if min(w, h) * scale < min_side:
        scale = min_side / min(w, h)

    def side(s: int) -> int:
        return min(hi, max(lo, int(round(s * scale)) // multiple * multiple))

    new = (side(w), side(h))
    image = image.convert("RGB")
    return image if new == (w, h) else image.resize(new, PILImage.BICUBIC)


def understanding_messages(question: str, image: Image.Image | None = None) -> list[dict[str, Any]]:
    """The understanding turn (upstream READMEs and eval wrappers of both models): the user message holds
    the image first, then the question."""
    content: list[dict[str, Any]] = [{"type": "image", "image": image}] if image is not None else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def understanding_inputs(processor: Any, images: Sequence[Image.Image | None], questions: Sequence[str]) -> Any:
    """Model inputs for a batch of (image, question) prompts, ending in the assistant generation prompt.

    Images are size-normalised first (:func:`normalize_image_size`); prompts are left-padded. Returns the
    processor's ``BatchFeature`` (``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``pixel_values``,
    ``image_grid_thw``).
    """
    if len(images) != len(questions):
        raise ConfigError(f"{len(images)} images for {len(questions)} questions")
    if not questions:
        raise ConfigError("understanding_inputs needs at least one question")
    texts, pixels = [], []
    for image, question in zip(images, questions):
        texts.append(processor.apply_chat_template(understanding_messages(question, image), tokenize=False,
                                                   add_generation_prompt=True))
        if image is not None:
            pixels.append(normalize_image_size(image))
    return processor(text=texts, images=pixels or None, return_tensors="pt", padding=True)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def teacher_forcing_inputs(prompt: Mapping[str, torch.Tensor], answer_ids: torch.Tensor,
                           answer_mask: torch.Tensor | None = None, *,
                           vision_inputs: Collection[str] = QWEN2_5_VL_INPUTS) -> dict[str, torch.Tensor]:
    """Prompt + answer as one forward's inputs.

    ``input_ids`` and ``attention_mask`` get the answer appended; ``mm_token_type_ids`` gets zeros (answer
    tokens are text). Without that extension v5 Qwen-VL either raises a shape error in ``get_rope_index`` or,
    if the ids are dropped, silently falls back to 1-D positions for an image prompt. ``vision_inputs`` pass
    through unchanged (:data:`QWEN2_VL_INPUTS` for Qwen2-VL); any other prompt input is an error, since it
    might need extending too. Prompts must be left-padded so every row's answer starts at the same column.
    """
    for key in ("input_ids", "attention_mask"):
        if key not in prompt:
            raise ConfigError(f"prompt inputs lack {key!r}")
    ids, mask = prompt["input_ids"], prompt["attention_mask"]
    if answer_ids.dim() != 2 or answer_ids.shape[0] != ids.shape[0]:
        raise ConfigError(f"answer_ids must be (batch={ids.shape[0]}, length), found {tuple(answer_ids.shape)}")
    if bool((mask[:, -1] == 0).any()):
        raise ConfigError("prompt attention_mask ends in padding: prompts must be left-padded "
                          "(make_processor sets tokenizer.padding_side='left')")
    if answer_mask is None:
        answer_mask = torch.ones_like(answer_ids)
    if answer_mask.shape != answer_ids.shape:
        raise ConfigError(f"answer_mask shape {tuple(answer_mask.shape)} != answer_ids shape {tuple(answer_ids.shape)}")
    has_vision = any(prompt.get(k) is not None for k in ("pixel_values", "pixel_values_videos"))
    if has_vision and "mm_token_type_ids" not in prompt:
        raise ConfigError("prompt has pixel values but no mm_token_type_ids: the image tokens' 3-D rope "
                          "positions cannot be computed")
    unknown = sorted(set(prompt) - {"input_ids", "attention_mask", "mm_token_type_ids", *vision_inputs})
    if unknown:
        raise ConfigError(f"teacher_forcing_inputs does not know how to extend prompt input(s) {', '.join(unknown)}")
    answer_ids = answer_ids.to(ids.device, ids.dtype)
    out = {"input_ids": torch.cat([ids, answer_ids], 1),
           "attention_mask": torch.cat([mask, answer_mask.to(mask.device, mask.dtype)], 1)}
    if "mm_token_type_ids" in prompt:
        types = prompt["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(answer_ids, dtype=types.dtype)], 1)
    out.update({k: prompt[k] for k in vision_inputs if prompt.get(k) is not None})
    return out


def answer_logprobs(vlm: nn.Module, prompt: Mapping[str, torch.Tensor], answer_ids: torch.Tensor,
                    answer_mask: torch.Tensor | None = None, *,
                    vision_inputs: Collection[str] = QWEN2_5_VL_INPUTS) -> torch.Tensor:
    """Per-token log p(answer | prompt) by teacher forcing, ``(batch, answer_len)`` float32, 0 where masked.

    A fresh forward without cache, so nothing carries over between calls. Only the last ``answer_len + 1``
    positions go through ``lm_head`` (``logits_to_keep``), which matters with a 152k vocabulary. Gradients
    flow when called outside ``no_grad`` (policy updates use this).
    """
    inputs = teacher_forcing_inputs(prompt, answer_ids, answer_mask, vision_inputs=vision_inputs)
    length = answer_ids.shape[1]
    logits = vlm(**inputs, logits_to_keep=length + 1, use_cache=False).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = inputs["input_ids"][:, -length:]
    picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return picked * inputs["attention_mask"][:, -length:].to(picked.dtype)


def generation_logprobs(output: Any) -> torch.Tensor:
    """Log-probs of the tokens ``generate(output_logits=True, return_dict_in_generate=True)`` produced, from
    its raw (pre-processor) logits: ``(batch, steps)`` float32. Finished rows' padding steps are scored too;
    mask them with the eos position."""
    if getattr(output, "logits", None) is None:
        raise ConfigError("generate output has no logits: call "
                          "generate(output_logits=True, return_dict_in_generate=True)")
    logits = torch.stack(output.logits, dim=1).float()
    tokens = output.sequences[:, -logits.shape[1]:]
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# Backbone methods
# --------------------------------------------------------------------------------------------------


class QwenVLUnderstanding:
    """The understanding half of the backbone protocol over a transformers Qwen-VL model.

    Mix it in before :class:`~asg.backbones.base.AdapterBackbone` (whose ``use_role``, ``_device`` and
    ``_param_dtype`` it uses). The backbone provides ``vlm`` (the ``Qwen2VLForConditionalGeneration`` /
    ``Qwen2_5_VLForConditionalGeneration``, typically a property into its module tree), ``processor`` (from
    :func:`build_processor`), ``tokenizer``, ``eos_id``, ``pad_id``, ``_suppress`` (token ids a completion
    must never contain) and ``embedding_dim``. ``vision_inputs`` is the set :func:`teacher_forcing_inputs`
    passes through.
    """

    vision_inputs: ClassVar[tuple[str, ...]] = QWEN2_5_VL_INPUTS
    vlm: nn.Module
    processor: Any
    tokenizer: Any
    eos_id: int
    pad_id: int
    _suppress: Sequence[int]
    embedding_dim: int

    def _inputs(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """The chat prompts as model inputs on the model's device, pixel values in its dtype; a system text
        goes in front of the question (the ChatML system turn stays the default one)."""
        for i, p in enumerate(prompts):
            if not isinstance(p, Prompt):
                raise TypeError(f"prompts[{i}] must be an asg.types.Prompt, got {type(p).__name__}")
        texts = [p.text if not p.system else f"{p.system}\n{p.text}" for p in prompts]
        batch = understanding_inputs(self.processor, [p.image for p in prompts], texts)
        out = {k: v.to(self._device()) for k, v in batch.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self._param_dtype())
        return out

    def generate_text(self, prompts: Sequence[Prompt], sampling: SamplingParams | Sequence[SamplingParams], *,
                      seed: int | None = None, return_stats: bool = True) -> list[Completion]:
        from asg.backbones.hf import generate_with_stats, to_completions

        if not prompts:
            return []
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        inputs = self._inputs(prompts)
        with torch.no_grad():
            rows = generate_with_stats(self.vlm, inputs, params, eos_token_ids=[self.eos_id], pad_token_id=self.pad_id,
                                       seed=seed, return_stats=return_stats, suppress_token_ids=self._suppress)
        return to_completions(rows, params, self.tokenizer)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str | Sequence[int]], *, grad: bool = False,
              return_logits: bool = False, append_eos: bool = True) -> ScoreOutput:
        """Teacher-forced statistics of each completion after its chat prompt, (B, T) right-padded."""
        if len(prompts) != len(completions):
            raise ValueError(f"score got {len(prompts)} prompts but {len(completions)} completions")
        comp = [list(self.tokenizer.encode(c, add_special_tokens=False)) if isinstance(c, str) else list(c) for c in completions]
        comp = [c + [self.eos_id] if append_eos else c for c in comp]
        if any(not c for c in comp):
            raise ValueError("cannot score an empty completion")
        T = max(len(c) for c in comp)
        ids = torch.full((len(comp), T), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(comp), T, dtype=torch.long)
        for b, c in enumerate(comp):
            ids[b, :len(c)], mask[b, :len(c)] = torch.tensor(c), 1
        prompt = self._inputs(prompts)
        device = self._device()
        inputs = teacher_forcing_inputs(prompt, ids.to(device), mask.to(device), vision_inputs=self.vision_inputs)
        P = prompt["input_ids"].shape[1]
        vlm = self.vlm
        with torch.set_grad_enabled(grad):
            hidden = vlm.model(**inputs, use_cache=False).last_hidden_state[:, P - 1:P - 1 + T]  # (B, T, H) predicts the answer
            targets = torch.where(mask.bool(), ids, torch.full_like(ids, -100)).to(hidden.device)
            logits = None
            if return_logits:
                logits = vlm.lm_head(hidden)
                stats = token_stats(logits, targets, ignore_index=-100)
            else:
                stats = linear_token_stats(hidden, vlm.lm_head.weight, targets, ignore_index=-100)
            valid = mask.bool().to(hidden.device)
            entropy = torch.where(valid, stats.entropy, torch.zeros_like(stats.entropy))
        return ScoreOutput(logprobs=stats.logprob, entropy=entropy, mask=valid, logits=logits)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm mean of the language model's last hidden states over each text (no chat template)."""
        from asg.backbones.hf import mean_pool

        if not texts:
            return torch.empty(0, self.embedding_dim)
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
        device = self._device()
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        with torch.no_grad(), self.use_role(None):
            lm = self.vlm.model.language_model
            hidden = lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).last_hidden_state
        return mean_pool(hidden, mask)

    def embed_image(self, images: Sequence[Image.Image], texts: Sequence[str] | None = None) -> torch.Tensor:
        """Unit-norm mean of the hidden states of each image's chat prompt (with ``texts`` or
        :data:`EMBED_IMAGE_PROBE` as the question)."""
        from asg.backbones.hf import mean_pool

        if not images:
            return torch.empty(0, self.embedding_dim)
        probes = list(texts) if texts is not None else [EMBED_IMAGE_PROBE] * len(images)
        if len(probes) != len(images):
            raise ValueError(f"embed_image got {len(images)} images but {len(probes)} texts")
        inputs = self._inputs([Prompt(t, image=im) for t, im in zip(probes, images)])
        with torch.no_grad(), self.use_role(None):
            hidden = self.vlm.model(**inputs, use_cache=False).last_hidden_state
        return mean_pool(hidden, inputs["attention_mask"])
