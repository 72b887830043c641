"""asg.backbones.qwen_vl on tiny Qwen2-VL and Qwen2.5-VL models built here from transformers configs.

The two generations are the ones the BLIP3o (Qwen2.5-VL) and VARGPT (Qwen2-VL) plugins use; every test that
runs a model is parametrised over both. The tiny sizes follow the plugins' tiny presets (text 64 wide, 2
layers; vision depth 2), and the two tokenizer id layouts are the plugins' two: specials after the 256 bytes
(Qwen2.5-VL here) and specials among the byte ids (Qwen2-VL here).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn

from asg.backbones import qwen_vl
from asg.backbones.base import AdapterBackbone
from asg.errors import ConfigError, DataError
from asg.shapes import render, scene_for
from asg.types import Prompt, SamplingParams

QWEN2, QWEN2_5 = "Qwen2-VL", "Qwen2.5-VL"
KINDS = (QWEN2, QWEN2_5)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>")


def appended_layout() -> tuple[dict[int, int], dict[str, int]]:
    """Bytes at 0..255 in sorted-symbol order, the specials after them (256..262)."""
    symbols = qwen_vl.byte_symbols()
    byte_ids = {byte: i for i, byte in enumerate(sorted(symbols, key=symbols.__getitem__))}
    return byte_ids, {t: 256 + i for i, t in enumerate(SPECIALS)}


def interleaved_layout() -> tuple[dict[int, int], dict[str, int]]:
    """Bytes 0x00-0xEF at their own value, the specials at 240-246 (im_start last), lead bytes 0xF0-0xF4 after."""
    order = ("<|endoftext|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
             "<|im_start|>")
    byte_ids = {byte: byte for byte in range(0xF0)} | {0xF0 + i: 247 + i for i in range(5)}
    return byte_ids, {t: 240 + i for i, t in enumerate(order)}


LAYOUTS = {QWEN2: interleaved_layout, QWEN2_5: appended_layout}


def tiny_model(kind: str, ids: dict[str, int]) -> nn.Module:
    """A randomly initialised tiny ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VLForConditionalGeneration``."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    text = {"vocab_size": 272 if kind == QWEN2_5 else 256, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rms_norm_eps": 1e-6, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|im_start|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    tokens = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}
    torch.manual_seed(0)
    if kind == QWEN2_5:
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
                  "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56, "out_hidden_size": 64,
                  "fullatt_block_indexes": [1], "in_channels": 3}
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)
        return Qwen2_5_VLForConditionalGeneration(config).eval()
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, "num_heads": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)
    return Qwen2VLForConditionalGeneration(config).eval()


class Tiny:
    """One generation's tokenizer, processor, model and the vision inputs teacher forcing passes through."""

    def __init__(self, kind: str) -> None:
        from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

        self.kind = kind
        byte_ids, self.ids = LAYOUTS[kind]()
        self.tokenizer = qwen_vl.byte_level_tokenizer(byte_ids, self.ids)
        self.model = tiny_model(kind, self.ids)
        processor_class = Qwen2_5_VLProcessor if kind == QWEN2_5 else Qwen2VLProcessor
        self.processor = qwen_vl.build_processor(processor_class, self.tokenizer, self.model.config,
                                                 chat_template=qwen_vl.chat_template("Tiny"),
                                                 image_only_name="TinyImageProcessor")
        self.vision_inputs = qwen_vl.QWEN2_5_VL_INPUTS if kind == QWEN2_5 else qwen_vl.QWEN2_VL_INPUTS


@pytest.fixture(scope="module", params=KINDS)
def tiny(request: pytest.FixtureRequest) -> Tiny:
    return Tiny(request.param)


def shapes_image(index: int = 0, size: int = 64) -> Image.Image:
    return render(scene_for("val", 0, index), size)


# --------------------------------------------------------------------------------------------------
# tokenizer, template, processor
# --------------------------------------------------------------------------------------------------


def test_byte_level_tokenizer_appended_layout() -> None:
    """Specials after the 256 bytes become added tokens at exactly their ids; text with specials round-trips."""
    byte_ids, special = appended_layout()
    tok = qwen_vl.byte_level_tokenizer(byte_ids, special)
    assert len(tok) == 263
    assert {t: tok.convert_tokens_to_ids(t) for t in special} == special
    assert (tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (258, 256, 256)
    ids = tok("héllo<|im_end|>").input_ids
    assert len(ids) == 7 and ids[-1] == 258
    assert tok.decode(ids) == "héllo<|im_end|>"


def test_byte_level_tokenizer_interleaved_layout() -> None:
    """Specials among the byte ids keep their ids; 4-byte UTF-8 lead bytes take the ids given, so emoji round-trip."""
    byte_ids, special = interleaved_layout()
    tok = qwen_vl.byte_level_tokenizer(byte_ids, special)
    assert len(tok) == 252
    assert {t: tok.convert_tokens_to_ids(t) for t in special} == special
    assert (tok.eos_token_id, tok.pad_token_id) == (241, 240)
    text = "héllo 😀<|im_end|>"
    ids = tok(text).input_ids
    assert ids == [104, 195, 169, 108, 108, 111, 32, 247, 159, 152, 128, 241]
    assert tok.decode(ids) == text


def test_byte_level_tokenizer_refuses_a_bad_layout() -> None:
    """Ids that are not exactly 0..n-1, or specials without eos, are errors that say which."""
    byte_ids, special = appended_layout()
    with pytest.raises(RuntimeError, match=r"not exactly 0\.\.262"):
        qwen_vl.byte_level_tokenizer(byte_ids, {**special, "<|video_pad|>": 300})
    with pytest.raises(ValueError, match=r"lacks <\|im_end\|>"):
        qwen_vl.byte_level_tokenizer(byte_ids, {t: i for t, i in special.items() if t != "<|im_end|>"})


def test_chat_template_names_the_model_in_its_error(tiny: Tiny) -> None:
    """A content part the template does not know is refused with the model's name and the part's type."""
    messages = [{"role": "user", "content": [{"type": "video", "video": None}]}]
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="Tiny chat template: unsupported content type video"):
        tiny.processor.apply_chat_template(messages, tokenize=False)


def test_processor_encodes_the_chatml_prompt(tiny: Tiny) -> None:
    """A ShapesWorld image + question become the ChatML prompt with 4 image tokens for a 56x56 image."""
    inputs = qwen_vl.understanding_inputs(tiny.processor, [shapes_image()], ["What color is the circle?"])
    assert tiny.tokenizer.decode(inputs["input_ids"][0]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * 4 + "<|vision_end|>What color is the circle?<|im_end|>\n<|im_start|>assistant\n")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(inputs["pixel_values"].shape) == (16, 3 * 2 * 14 * 14)
    assert inputs["mm_token_type_ids"].sum().item() == 4
    assert (inputs["mm_token_type_ids"][0] == 1).nonzero().flatten().tolist() == \
        (inputs["input_ids"][0] == tiny.ids["<|image_pad|>"]).nonzero().flatten().tolist()


def test_image_only_processor_class_is_one_class_per_base(tiny: Tiny) -> None:
    """The image-only subclass is cached per (base, name), carries the name and has no video processor."""
    base = type(tiny.processor).__mro__[1]
    assert type(tiny.processor).__name__ == "TinyImageProcessor"
    assert qwen_vl.image_only_processor_class(base, "TinyImageProcessor") is type(tiny.processor)
    assert getattr(tiny.processor, "video_processor", None) is None
    assert tiny.tokenizer.padding_side == "left"


def test_understanding_inputs_check_their_arguments(tiny: Tiny) -> None:
    """Unequal image and question counts, or no question at all, are errors that say so."""
    with pytest.raises(ConfigError, match="1 images for 2 questions"):
        qwen_vl.understanding_inputs(tiny.processor, [None], ["a", "b"])
    with pytest.raises(ConfigError, match="at least one question"):
        qwen_vl.understanding_inputs(tiny.processor, [], [])


@pytest.mark.parametrize(("size", "expected"), [((64, 64), (56, 56)), ((2000, 500), (1008, 252)),
                                                 ((30, 90), (56, 168)), ((100, 57), (84, 56)),
                                                 ((10, 5000), (56, 1008))])
def test_normalize_image_size(size: tuple[int, int], expected: tuple[int, int]) -> None:
    """Sides become multiples of 28 inside [56, 1024], aspect kept where the bounds allow."""
    assert qwen_vl.normalize_image_size(Image.new("RGB", size)).size == expected


def test_normalize_image_size_errors_name_the_problem() -> None:
    """A non-image and bounds with no multiple inside are errors that say which."""
    with pytest.raises(DataError, match="expected a PIL image, got str"):
        qwen_vl.normalize_image_size("image.png")
    with pytest.raises(ConfigError, match=r"no multiple of 28 lies in \[100, 101\]"):
        qwen_vl.normalize_image_size(Image.new("RGB", (64, 64)), min_side=100, max_side=101)


def test_mrope_parameters_check_the_section() -> None:
    """mrope_section must be 3 ints summing to head_dim/2 and rope_theta must be present; errors name the field."""
    assert qwen_vl.mrope_parameters({"mrope_section": [2, 3, 3]}, {"rope_theta": 1e6}, 16, model="Qwen2-VL") == {
        "rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}
    with pytest.raises(ConfigError, match=r"mrope_section \[2, 3, 4\] sums to 9; expected head_dim/2 = 8"):
        qwen_vl.mrope_parameters({"mrope_section": [2, 3, 4]}, {"rope_theta": 1e6}, 16, model="Qwen2-VL")
    with pytest.raises(ConfigError, match="must be 3 ints, found"):
        qwen_vl.mrope_parameters({"mrope_section": [8, 8]}, {"rope_theta": 1e6}, 32, model="Qwen2-VL")
    with pytest.raises(ConfigError, match="lacks rope_theta .*Qwen2.5-VL's rotary"):
        qwen_vl.mrope_parameters({"mrope_section": [2, 3, 3]}, {}, 16, model="Qwen2.5-VL")


# --------------------------------------------------------------------------------------------------
# teacher forcing and log-probs
# --------------------------------------------------------------------------------------------------


def test_teacher_forcing_inputs_extend_token_types(tiny: Tiny) -> None:
    """Appending an answer extends input_ids, attention_mask and mm_token_type_ids (with zeros) together."""
    prompt = qwen_vl.understanding_inputs(tiny.processor, [shapes_image()], ["How many shapes?"])
    answer = torch.tensor([[50, 51, 52]])
    tf = qwen_vl.teacher_forcing_inputs(prompt, answer, vision_inputs=tiny.vision_inputs)
    length = prompt["input_ids"].shape[1]
    assert {k: tf[k].shape[1] for k in ("input_ids", "attention_mask", "mm_token_type_ids")} == dict.fromkeys(
        ("input_ids", "attention_mask", "mm_token_type_ids"), length + 3)
    assert tf["mm_token_type_ids"][0, -3:].tolist() == [0, 0, 0] and tf["mm_token_type_ids"].sum().item() == 4
    assert torch.equal(tf["pixel_values"], prompt["pixel_values"])
    with pytest.raises(ConfigError, match="no mm_token_type_ids"):
        qwen_vl.teacher_forcing_inputs({k: v for k, v in prompt.items() if k != "mm_token_type_ids"}, answer,
                                       vision_inputs=tiny.vision_inputs)


def test_teacher_forcing_inputs_refuse_what_they_cannot_extend(tiny: Tiny) -> None:
    """Right padding, a bad answer shape and an input outside ``vision_inputs`` are errors naming the problem."""
    prompt = dict(qwen_vl.understanding_inputs(tiny.processor, [shapes_image()], ["How many shapes?"]))
    answer = torch.tensor([[50, 51, 52]])
    timing = {**prompt, "second_per_grid_ts": torch.ones(1)}
    if tiny.kind == QWEN2:
        with pytest.raises(ConfigError, match="does not know how to extend prompt input.*second_per_grid_ts"):
            qwen_vl.teacher_forcing_inputs(timing, answer, vision_inputs=tiny.vision_inputs)
    else:
        assert "second_per_grid_ts" in qwen_vl.teacher_forcing_inputs(timing, answer, vision_inputs=tiny.vision_inputs)
    with pytest.raises(ConfigError, match="does not know how to extend prompt input.*bogus"):
        qwen_vl.teacher_forcing_inputs({**prompt, "bogus": torch.ones(1)}, answer)
    with pytest.raises(ConfigError, match=r"answer_ids must be \(batch=1, length\), found \(2, 3\)"):
        qwen_vl.teacher_forcing_inputs(prompt, answer.repeat(2, 1))
    with pytest.raises(ConfigError, match="answer_mask shape"):
        qwen_vl.teacher_forcing_inputs(prompt, answer, answer[:, :2])
    right = {**prompt, "attention_mask": torch.cat([prompt["attention_mask"][:, 1:], torch.zeros(1, 1, dtype=torch.long)], 1)}
    with pytest.raises(ConfigError, match="ends in padding"):
        qwen_vl.teacher_forcing_inputs(right, answer)
    with pytest.raises(ConfigError, match="prompt inputs lack 'attention_mask'"):
        qwen_vl.teacher_forcing_inputs({"input_ids": prompt["input_ids"]}, answer)


def test_teacher_forced_logprobs_equal_generate_logits(tiny: Tiny) -> None:
    """Greedy generate on a padded batch of two images; teacher-forced log-probs equal generate's per-step ones."""
    prompt = qwen_vl.understanding_inputs(tiny.processor, [shapes_image(0), shapes_image(1, size=120)],
                                          ["What color is the square?", "Is there a triangle?"])
    assert prompt["image_grid_thw"].tolist() == [[1, 4, 4], [1, 8, 8]]
    assert (prompt["attention_mask"][0] == 0).sum().item() == 7  # (16 image + 20 text) - (4 image + 25 text)
    with torch.no_grad():
        out = tiny.model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                  output_logits=True, output_scores=True, return_dict_in_generate=True)
        answer = out.sequences[:, prompt["input_ids"].shape[1]:]
        assert tuple(answer.shape) == (2, 6) and len(out.logits) == 6
        # greedy over the processed scores (min_new_tokens masks eos); logits are the raw ones we score
        assert torch.equal(answer, torch.stack([s.argmax(-1) for s in out.scores], 1))
        from_generate = qwen_vl.generation_logprobs(out)
        forced = qwen_vl.answer_logprobs(tiny.model, prompt, answer, vision_inputs=tiny.vision_inputs)
    assert forced.shape == (2, 6)
    torch.testing.assert_close(forced, from_generate, atol=1e-4, rtol=0)
    assert bool((forced < 0).all())
    with pytest.raises(ConfigError, match="generate output has no logits"):
        qwen_vl.generation_logprobs(object())


# --------------------------------------------------------------------------------------------------
# LoRA targets
# --------------------------------------------------------------------------------------------------


def test_lora_regex_matches_only_llm_projections(tiny: Tiny) -> None:
    """LORA_TARGETS matches the 2 layers x 7 LLM projections and nothing in the vision tower; PEFT wraps the same 14."""
    from peft import LoraConfig, get_peft_model

    names = [n for n, _ in tiny.model.named_modules()]
    matched = [n for n in names if re.fullmatch(qwen_vl.LORA_TARGETS, n)]
    assert len(matched) == 14
    assert not [n for n in matched if "visual" in n]
    assert {n.rsplit(".", 1)[-1] for n in matched} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                       "down_proj"}
    suffix = [n for n in names if n.rsplit(".", 1)[-1] in {"q_proj", "k_proj", "v_proj", "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"}]
    # what plain suffix targets would hit: Qwen2.5-VL's vision blocks add 2 x 3 SwiGLU projections
    assert len(suffix) == (20 if tiny.kind == QWEN2_5 else 14)

    peft_model = get_peft_model(tiny_model(tiny.kind, tiny.ids),
                                LoraConfig(r=4, lora_alpha=8, target_modules=qwen_vl.LORA_TARGETS))
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert len(wrapped) == 14
    assert not [n for n in wrapped if "visual" in n]


# --------------------------------------------------------------------------------------------------
# the backbone mixin
# --------------------------------------------------------------------------------------------------


class TinyBackbone(qwen_vl.QwenVLUnderstanding, AdapterBackbone):
    """The least a backbone must provide for :class:`QwenVLUnderstanding`: the model, processor, tokenizer, ids."""

    name = "tiny-qwen-vl"
    roles = ("solver",)

    def __init__(self, tiny: Tiny) -> None:
        self.net = nn.ModuleDict({"vlm": tiny.model})
        self.adapters = None
        self.processor, self.tokenizer = tiny.processor, tiny.tokenizer
        self.eos_id, self.pad_id = tiny.ids["<|im_end|>"], tiny.ids["<|endoftext|>"]
        self._suppress = [tiny.ids[t] for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")]
        self.embedding_dim = 64
        self.vision_inputs = tiny.vision_inputs

    @property
    def vlm(self) -> Any:
        return self.net["vlm"]


def test_mixin_scores_what_answer_logprobs_computes(tiny: Tiny) -> None:
    """score's teacher-forced log-probs (both kernel paths) equal answer_logprobs on the same prompts and tokens."""
    bb = TinyBackbone(tiny)
    prompts = [Prompt("What color is the square?", image=shapes_image(0)), Prompt("Name a shape.", system="Be brief.")]
    out = bb.score(prompts, ["red", [5, 6, 7, 8, 9]])
    with_logits = bb.score(prompts, ["red", [5, 6, 7, 8, 9]], return_logits=True)
    ids = torch.tensor([[*tiny.tokenizer.encode("red", add_special_tokens=False), bb.eos_id, bb.pad_id, bb.pad_id],
                        [5, 6, 7, 8, 9, bb.eos_id]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = qwen_vl.answer_logprobs(tiny.model, bb._inputs(prompts), ids, mask, vision_inputs=bb.vision_inputs)
    assert out.mask.tolist() == mask.bool().tolist()
    torch.testing.assert_close(out.logprobs[out.mask], expected[mask.bool()], atol=1e-5, rtol=0)
    torch.testing.assert_close(with_logits.logprobs, out.logprobs, atol=1e-5, rtol=0)
    assert with_logits.logits.shape == (2, 6, tiny.model.config.text_config.vocab_size)
    assert bool((out.entropy[~out.mask] == 0).all()) and bool((out.entropy[out.mask] > 0).all())
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        bb.score(prompts, ["red"])
    with pytest.raises(TypeError, match=r"prompts\[0\] must be an asg.types.Prompt, got str"):
        bb.score(["red?"], ["red"])


def test_mixin_generates_and_embeds(tiny: Tiny) -> None:
    """generate_text never emits a suppressed vision token; embeddings are unit-norm rows of embedding_dim."""
    bb = TinyBackbone(tiny)
    prompts = [Prompt("Is there a triangle?", image=shapes_image(1)), Prompt("Name a shape.")]
    done = bb.generate_text(prompts, SamplingParams(temperature=1.5, max_new_tokens=6), seed=3)
    assert len(done) == 2 and all(1 <= len(c.token_ids) <= 6 for c in done)
    assert not {t for c in done for t in c.token_ids} & set(bb._suppress)
    assert bb.generate_text([], SamplingParams()) == []
    text = bb.embed_text(["a red circle", "two blue squares"])
    image = bb.embed_image([shapes_image(0)])
    assert text.shape == (2, 64) and image.shape == (1, 64)
    torch.testing.assert_close(torch.cat([text, image]).norm(dim=-1), torch.ones(3))
    assert bb.embed_text([]).shape == (0, 64) and bb.embed_image([]).shape == (0, 64)
    with pytest.raises(ValueError, match="1 images but 2 texts"):
        bb.embed_image([shapes_image(0)], ["a", "b"])
