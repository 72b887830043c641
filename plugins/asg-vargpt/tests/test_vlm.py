"""VARGPT-v1.1 understanding side: config reading, checkpoint names and strict loading, tokenizer, processor,
prompts, scoring inputs and LoRA targets.

Full-size checks build on the meta device and compare with the parameter manifest of the public checkpoint
(fixtures/manifest.json); everything that runs uses the tiny upstream fixture's config and weights. The Qwen-VL
pieces VARGPT shares with other backbones (image sizing, teacher forcing, log-probs, the LoRA regex on the bare
Qwen2-VL) are tested in tests/test_qwen_vl.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from asg.backbones import qwen_vl
from asg.errors import ConfigError, DataError
from asg.shapes import render, scene_for
from asg_vargpt import vlm
from asg_vargpt.checkpoint import (
    INDEX_FILE,
    CheckpointError,
    checkpoint_manifest,
    from_checkpoint_name,
    from_checkpoint_names,
    load_checkpoint,
    save_checkpoint,
    to_checkpoint_name,
    to_checkpoint_names,
)
from asg_vargpt.infinity import infinity_2b, infinity_tiny

CHECKPOINT = "model*.safetensors (HF sharded, VARGPT-family/VARGPT-v1.1)"

# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def checkpoint_tensors(manifest: dict) -> dict:
    return manifest["checkpoint_files"][CHECKPOINT]


@pytest.fixture(scope="module")
def tiny_fixture(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "tiny" / "fixture.json").read_text())


@pytest.fixture(scope="module")
def fixture_weights(fixture_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(fixture_dir / "tiny" / "weights.safetensors")


@pytest.fixture(scope="module")
def tokenizer():
    return vlm.tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    config, extras = vlm.tiny_config()
    torch.manual_seed(0)
    return vlm.VargptModel(config, extras).eval()


@pytest.fixture(scope="module")
def processor(tokenizer, tiny):
    return vlm.make_processor(tokenizer, tiny.config, tiny.extras)


def shapes_image(index: int = 0, size: int = 64):
    return render(scene_for("val", 0, index), size)


def fresh_tiny(seed: int) -> vlm.VargptModel:
    config, extras = vlm.tiny_config()
    torch.manual_seed(seed)
    return vlm.VargptModel(config, extras).eval()


def non_vae(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if not k.startswith("vae_local.")}


# --------------------------------------------------------------------------------------------------
# 1. config + full-size manifest
# --------------------------------------------------------------------------------------------------


def test_full_config_json_matches_manifest_header(manifest):
    """FULL_CONFIG_JSON is exactly the config and special tokens the public checkpoint's manifest was built with."""
    used = manifest["header"]["config_used"]
    qwen = used["VARGPTQwen2VLConfig(**prepare_vargpt_v1_1.cfg)"]
    ours = dict(vlm.FULL_CONFIG_JSON)
    assert {k: v for k, v in ours.items() if k != "special_tokens"} == qwen
    assert ours["special_tokens"] == used["special_tokens"]


def test_tiny_config_json_matches_fixture(tiny_fixture):
    """tiny_config_json() is exactly the tiny fixture's VARGPTQwen2VLConfig kwargs plus its special_tokens."""
    cfg = tiny_fixture["tiny_config"]
    ours = vlm.tiny_config_json()
    assert {k: v for k, v in ours.items() if k != "special_tokens"} == cfg["VARGPTQwen2VLConfig kwargs"]
    assert ours["special_tokens"] == cfg["config.special_tokens"]


def test_full_config_reads_into_v5_layout():
    """The flat 4.x config becomes v5 text/vision configs; image-gen ids and Infinity-2B land in the extras."""
    config, extras = vlm.full_config()
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (3584, 28, 28)
    assert (text.num_key_value_heads, text.vocab_size, text.intermediate_size) == (4, 152064, 18944)
    assert (text.rms_norm_eps, text.sliding_window) == (1e-6, None)
    assert text.rope_parameters == {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    assert (vision.depth, vision.embed_dim, vision.hidden_size) == (32, 1280, 3584)
    assert (vision.mlp_ratio, vision.in_channels) == (4, 3)
    assert vision.hidden_act == "quick_gelu"
    assert (config.image_token_id, config.vision_start_token_id, config.tie_word_embeddings) == (151655, 151652, False)
    assert extras.image_gen_token_ids == {"<|image_gen_start|>": 151657, "<|image_gen_end|>": 151658,
                                          "<|image_gen_pad|>": 151659}
    assert (extras.hidden_size, extras.vision_token_id, extras.head) == (3584, 151654, infinity_2b())
    assert extras.metadata["torch_dtype"] == "bfloat16"


def test_mrope_spelling_of_prepare_script_reads_the_same():
    """Upstream's prepare script spells rope_scaling {'type': 'mrope'}; it reads to the same v5 rope parameters."""
    mrope = {**vlm.FULL_CONFIG_JSON, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
    config, _ = vlm.vargpt_config(mrope)
    assert config.text_config.rope_parameters == vlm.full_config()[0].text_config.rope_parameters


def test_full_meta_manifest_equals_checkpoint_manifest(checkpoint_tensors):
    """The meta-built model (vlm + head, no VAE), under checkpoint names, has exactly the 1437 non-VAE keys."""
    config, extras = vlm.full_config()
    with torch.device("meta"):
        model = vlm.VargptModel(config, extras)
    assert model.vae_local is None
    ours = checkpoint_manifest(model)
    theirs = {k: v for k, v in checkpoint_tensors["tensors"].items() if not k.startswith("vae_local.")}
    assert checkpoint_tensors["num_keys"] == 1706
    assert len(theirs) == 1706 - 269 == 1437
    assert ours == theirs
    # the header's vae_local. count (110118083) includes the 32-element quantizer.lfq.mask buffer
    assert sum(p.numel() for p in model.parameters()) == 10948395235 - (110118083 - 32) == 10838277184
    assert list(ours["sos_embedding.weight"]["shape"]) == [151657 + 1, 2048]


def test_special_token_ids_are_read_from_the_config():
    """Moving image_gen_start in config.json moves the extras' ids and resizes sos_embedding to id + 1 rows."""
    base = vlm.tiny_config_json()
    special = {**base["special_tokens"], "image_gen_start_token_id": 200}
    config, extras = vlm.vargpt_config({**base, "special_tokens": special}, head=infinity_tiny())
    assert extras.image_gen_start_token_id == 200
    with torch.device("meta"):
        model = vlm.VargptModel(config, extras)
    assert tuple(model.head.sos_embedding.weight.shape) == (201, 128)


def test_config_errors_name_the_field():
    """Missing, unknown or inconsistent config.json fields are errors that name the field."""
    base = vlm.tiny_config_json()
    with pytest.raises(ConfigError, match="special_tokens"):
        vlm.vargpt_config({k: v for k, v in base.items() if k != "special_tokens"})
    with pytest.raises(ConfigError, match="image_gen_pad_token_id"):
        vlm.vargpt_config({**base, "special_tokens": {k: v for k, v in base["special_tokens"].items()
                                                     if k != "image_gen_pad_token_id"}})
    with pytest.raises(ConfigError, match=r"image_gen_end_token_id must be an int in \[0, vocab_size=256\), found 300"):
        vlm.vargpt_config({**base, "special_tokens": {**base["special_tokens"], "image_gen_end_token_id": 300}})
    with pytest.raises(ConfigError, match="collide.*image_token_id"):
        vlm.vargpt_config({**base, "special_tokens": {**base["special_tokens"], "image_gen_pad_token_id": 245}})
    with pytest.raises(ConfigError, match="special_tokens has field.*image_gen_mask"):
        vlm.vargpt_config({**base, "special_tokens": {**base["special_tokens"], "image_gen_mask": "x"}})
    with pytest.raises(ConfigError, match="rms_norm_eps"):
        vlm.vargpt_config({k: v for k, v in base.items() if k != "rms_norm_eps"})
    with pytest.raises(ConfigError, match="mystery_field"):
        vlm.vargpt_config({**base, "mystery_field": 1})
    _, extras = vlm.vargpt_config({**base, "mystery_field": 1}, allow_unknown=True)
    assert extras.metadata["mystery_field"] == 1
    with pytest.raises(ConfigError, match=r"mrope_section \[2, 3, 4\] sums to 9; expected head_dim/2 = 8"):
        vlm.vargpt_config({**base, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 4]}})
    with pytest.raises(ConfigError, match="rope_scaling type is \\['yarn'\\]"):
        vlm.vargpt_config({**base, "rope_scaling": {"type": "yarn", "mrope_section": [2, 3, 3]}})
    with pytest.raises(ConfigError, match="vision_config hidden_size 48 != hidden_size 64"):
        vlm.vargpt_config({**base, "vision_config": {**base["vision_config"], "hidden_size": 48}})
    with pytest.raises(ConfigError, match="vision_config has field.*window_size"):
        vlm.vargpt_config({**base, "vision_config": {**base["vision_config"], "window_size": 112}})
    with pytest.raises(ConfigError, match="model_type is 'llava'"):
        vlm.vargpt_config({**base, "model_type": "llava"})


# --------------------------------------------------------------------------------------------------
# 2. names and strict loading
# --------------------------------------------------------------------------------------------------


def test_name_mapping_round_trips_every_family(tiny):
    """Every tiny-model name (vision, text, lm_head, Infinity, projectors, sos) maps to a checkpoint key and back."""
    state = tiny.state_dict()
    ckpt = to_checkpoint_names(state)
    assert from_checkpoint_names(ckpt).keys() == state.keys()
    families = {".".join(k.split(".")[:2]) if k.startswith("model.") else k.split(".")[0] for k in ckpt}
    assert families == {"visual", "model.embed_tokens", "model.layers", "model.norm", "lm_head", "vargpt_gen",
                        "image_gen_projector", "image_gen_projector_out", "sos_embedding"}
    assert len(ckpt) == len(state) == 177
    assert to_checkpoint_name("vlm.model.language_model.layers.1.mlp.up_proj.weight") == \
        "model.layers.1.mlp.up_proj.weight"
    assert to_checkpoint_name("head.vargpt_gen.cfg_uncond") == "vargpt_gen.cfg_uncond"
    assert to_checkpoint_name("vae_local.decoder.conv_in.weight") == "vae_local.decoder.conv_in.weight"
    assert from_checkpoint_name("visual.merger.mlp.0.weight") == "vlm.model.visual.merger.mlp.0.weight"
    assert from_checkpoint_name("sos_embedding.weight") == "head.sos_embedding.weight"
    assert from_checkpoint_name("vae_local.encoder.conv_in.bias") == "vae_local.encoder.conv_in.bias"


def test_unknown_names_are_errors_naming_them():
    """A name no rule covers, or a name under the wrong component, is an error listing it."""
    with pytest.raises(CheckpointError, match="model.image_newline"):
        from_checkpoint_names({"model.image_newline": 0, "lm_head.weight": 1})
    with pytest.raises(CheckpointError, match="vlm.model.extra.weight"):
        to_checkpoint_names({"vlm.model.extra.weight": 0})
    with pytest.raises(CheckpointError, match="vlm.vargpt_gen.x.*head part, not llm"):
        to_checkpoint_name("vlm.vargpt_gen.x")
    with pytest.raises(CheckpointError, match="head.lm_head.weight.*llm part, not head"):
        to_checkpoint_name("head.lm_head.weight")


def test_fixture_weights_load_strictly_and_reproduce_upstream_prefill(fixture_weights, io_tensors, tmp_path):
    """The fixture's 177 non-VAE tensors load strictly; the prompt's logits and hidden states equal upstream's."""
    save_file(non_vae(fixture_weights), str(tmp_path / "model.safetensors"))
    model = fresh_tiny(1)
    report = load_checkpoint(tmp_path, model)
    assert (report.loaded, report.files, report.ignored) == (177, ("model.safetensors",), ())
    ids = io_tensors["prompt_ids"]
    assert ids.tolist() == [[240, 12, 34, 56, 78, 90, 111, 222, 250]]
    with torch.no_grad():
        out = model.vlm(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(out.logits, io_tensors["prefill.logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.hidden_states[-1], io_tensors["prefill.hidden_states"], atol=1e-5, rtol=0)
        ctx = model.head.image_gen_projector_out(io_tensors["ctx.kv_compact_in"])
        torch.testing.assert_close(ctx, io_tensors["ctx.kv_compact_C"], atol=1e-5, rtol=0)


def test_vae_keys_need_a_vae_or_ignore_parts(fixture_weights, fixture_dir, tmp_path):
    """The full fixture file (181 vae_local keys) is refused without a VAE, and loads with ignore_parts=('vae',)."""
    save_file(fixture_weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"181 checkpoint key\(s\) have no place .*BSQ-VAE attached.*"
                                              r"model.safetensors:vae_local\."):
        load_checkpoint(tmp_path, fresh_tiny(1))
    report = load_checkpoint(tmp_path, fresh_tiny(1), ignore_parts=("vae",))
    assert (report.loaded, len(report.ignored)) == (177, 181)
    assert all(k.startswith("vae_local.") for k in report.ignored)


def test_sharded_checkpoint_round_trip_reproduces_logits(tiny, processor, tmp_path):
    """Two shards + index.json under checkpoint names load strictly into a fresh model with identical outputs."""
    paths = save_checkpoint(tiny, tmp_path, shards=2)
    assert [p.name for p in paths] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert len(index["weight_map"]) == 177 and len(set(index["weight_map"].values())) == 2
    other = fresh_tiny(123)
    inputs = vlm.understanding_inputs(processor, [shapes_image()], ["What is shown?"])
    x = torch.randn(3, 128)
    with torch.no_grad():
        before = other.vlm(**inputs).logits
        report = load_checkpoint(tmp_path, other)
        assert report.loaded == 177 and report.files == tuple(p.name for p in paths)
        after, want = other.vlm(**inputs).logits, tiny.vlm(**inputs).logits
        assert not torch.equal(before, want)
        assert torch.equal(after, want)
        assert torch.equal(other.head.image_gen_projector(x), tiny.head.image_gen_projector(x))
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), tiny.state_dict().values()))


def test_missing_wrong_shape_and_unknown_keys_are_errors_naming_file_and_key(tiny, tmp_path):
    """A missing key, a wrong shape and an unknown key each fail before copying, naming the file and key."""
    ckpt = {k: v.contiguous() for k, v in to_checkpoint_names(tiny.state_dict()).items()}
    target = fresh_tiny(7)
    snapshot = {k: v.clone() for k, v in target.state_dict().items()}

    missing = tmp_path / "missing"
    missing.mkdir()
    save_file({k: v for k, v in ckpt.items() if k != "model.norm.weight"}, str(missing / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 model tensor\(s\) missing from model.safetensors: model.norm.weight"):
        load_checkpoint(missing, target)

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    save_file({**ckpt, "sos_embedding.weight": torch.zeros(250, 128)}, str(wrong / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model.safetensors:sos_embedding.weight expected \[251, 128\] "
                                              r"found \[250, 128\]"):
        load_checkpoint(wrong, target)

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    save_file({**ckpt, "model.image_newline": torch.zeros(64)}, str(unknown / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 checkpoint key\(s\) match no VARGPT name rule: "
                                              r"model.safetensors:model.image_newline"):
        load_checkpoint(unknown, target)

    stray = tmp_path / "stray"
    stray.mkdir()
    save_file({**ckpt, "vargpt_gen.extra": torch.zeros(1)}, str(stray / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 checkpoint key\(s\) have no place in the model: "
                                              r"model.safetensors:vargpt_gen.extra"):
        load_checkpoint(stray, target)
    assert all(torch.equal(snapshot[k], v) for k, v in target.state_dict().items())  # nothing was copied


def test_index_and_folder_errors_name_the_file(tiny, tmp_path):
    """An index naming an absent shard, or a folder without weights, is an error naming the files."""
    save_checkpoint(tiny, tmp_path, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing from .*model-00002-of-00002.safetensors"):
        load_checkpoint(tmp_path, fresh_tiny(1))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="neither model.safetensors.index.json nor model.safetensors"):
        load_checkpoint(empty, fresh_tiny(1))


def test_meta_model_is_refused(tiny, tmp_path):
    """Loading into a model built on meta is refused: its rotary buffers would stay unmaterialised."""
    save_checkpoint(tiny, tmp_path)
    config, extras = vlm.tiny_config()
    with torch.device("meta"):
        model = vlm.VargptModel(config, extras)
    with pytest.raises(CheckpointError, match="on the meta device"):
        load_checkpoint(tmp_path, model)


# --------------------------------------------------------------------------------------------------
# 3. tokenizer, processor, prompts, generation, scoring
# --------------------------------------------------------------------------------------------------


def test_tiny_tokenizer_layout(tokenizer):
    """The in-memory byte-level tokenizer has exactly 256 ids with the fixture's special ids, and round-trips UTF-8."""
    assert len(tokenizer) == 256
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in vlm.TINY_TOKEN_IDS} == dict(vlm.TINY_TOKEN_IDS)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (241, 240)
    text = "héllo 😀<|im_end|>"
    ids = tokenizer(text).input_ids
    assert ids == [104, 195, 169, 108, 108, 111, 32, 248, 159, 152, 128, 241]
    assert tokenizer.decode(ids) == text


def test_load_tokenizer_reads_a_saved_folder_and_checks_ids(tokenizer, tmp_path):
    """A saved tokenizer loads from local files; image-gen ids that differ from config.json are an error."""
    tokenizer.save_pretrained(tmp_path)
    _, extras = vlm.tiny_config()
    loaded = vlm.load_tokenizer(tmp_path, extras)
    assert len(loaded) == 256 and loaded.convert_tokens_to_ids("<|image_gen_start|>") == 250
    base = vlm.tiny_config_json()
    special = {**base["special_tokens"], "image_gen_start_token_id": 253}
    _, moved = vlm.vargpt_config({**base, "special_tokens": special}, head=infinity_tiny())
    with pytest.raises(DataError, match="'<\\|image_gen_start\\|>': 250.*differ from config.json.*253"):
        vlm.load_tokenizer(tmp_path, moved)
    with pytest.raises(DataError, match="has no tokenizer"):
        vlm.load_tokenizer(tmp_path / "nothing")


def test_processor_encodes_understanding_prompt(processor, tokenizer):
    """A ShapesWorld image + question become the Qwen2-VL ChatML prompt with 4 image tokens for a 56x56 image."""
    inputs = vlm.understanding_inputs(processor, [shapes_image()], ["What color is the circle?"])
    assert tokenizer.decode(inputs["input_ids"][0]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * 4 + "<|vision_end|>What color is the circle?<|im_end|>\n<|im_start|>assistant\n")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(inputs["pixel_values"].shape) == (16, 3 * 2 * 14 * 14)
    assert inputs["mm_token_type_ids"].sum().item() == 4
    assert (inputs["mm_token_type_ids"][0] == 1).nonzero().flatten().tolist() == \
        (inputs["input_ids"][0] == 245).nonzero().flatten().tolist()


def test_make_processor_checks_the_tokenizer_against_the_config(tokenizer):
    """A config whose image-gen ids the tokenizer does not have is refused by make_processor."""
    base = vlm.tiny_config_json()
    special = {**base["special_tokens"], "image_gen_pad_token_id": 253}
    config, moved = vlm.vargpt_config({**base, "special_tokens": special}, head=infinity_tiny())
    with pytest.raises(DataError, match="differ from config.json special_tokens"):
        vlm.make_processor(tokenizer, config, moved)


def test_generation_prompt_ends_with_image_gen_start(processor, tokenizer, tiny):
    """The image request is upstream's 'Can you depict a scene of ...' user turn, the assistant turn, then id 250."""
    inputs = vlm.generation_prompt_inputs(processor, ["a red circle above a blue square."], extras=tiny.extras)
    assert tokenizer.decode(inputs["input_ids"][0]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Can you depict a scene of a red circle above a blue square.<|im_end|>\n<|im_start|>assistant\n"
        "<|image_gen_start|>")
    # 84 chat tokens (system turn 38, "<|im_start|>user\n" 6, "Can you depict a scene of " 26, end 2, assistant 11,
    # start 1) + one byte-token per caption character (33)
    assert inputs["input_ids"][0, -1].item() == 250 and inputs["input_ids"].shape == (1, 84 + 33)
    assert inputs["mm_token_type_ids"].sum().item() == 0 and bool(inputs["attention_mask"].all())
    two = vlm.generation_prompt_inputs(processor, ["a cat", "a big dog"], extras=tiny.extras,
                                       assistant_prefix="Here it is: ")
    assert two["input_ids"][:, -1].tolist() == [250, 250]
    assert two["attention_mask"].sum(1).tolist() == [84 + 5 + 12, 84 + 9 + 12]  # 12 = len("Here it is: ")
    assert two["attention_mask"][0, :4].tolist() == [0, 0, 0, 0]  # left-padded


def test_scoring_helpers_use_qwen2_vl_inputs(processor, tiny):
    """teacher_forcing_inputs and answer_logprobs are the shared Qwen-VL ones restricted to Qwen2-VL's inputs:
    Qwen2.5-VL's second_per_grid_ts is refused, and the log-probs are exactly the shared function's."""
    prompt = vlm.understanding_inputs(processor, [shapes_image()], ["How many shapes?"])
    answer = torch.tensor([[50, 51, 52]])
    assert vlm.VISION_INPUTS == qwen_vl.QWEN2_VL_INPUTS
    timed = {**prompt, "second_per_grid_ts": torch.ones(1)}
    with pytest.raises(ConfigError, match="does not know how to extend prompt input.*second_per_grid_ts"):
        vlm.teacher_forcing_inputs(timed, answer)
    with pytest.raises(ConfigError, match="does not know how to extend prompt input.*second_per_grid_ts"):
        vlm.answer_logprobs(tiny.vlm, timed, answer)
    with torch.no_grad():
        ours = vlm.answer_logprobs(tiny.vlm, prompt, answer)
        shared = qwen_vl.answer_logprobs(tiny.vlm, prompt, answer, vision_inputs=qwen_vl.QWEN2_VL_INPUTS)
    assert torch.equal(ours, shared) and ours.shape == (1, 3)


# --------------------------------------------------------------------------------------------------
# 4. LoRA targets
# --------------------------------------------------------------------------------------------------


def test_lora_regex_keeps_the_image_head_out(tiny):
    """Over the whole VargptModel tree, LORA_TARGETS matches the 2 layers x 7 LLM projections only: nothing in the
    vision tower or the Infinity head (whose blocks also have projection layers)."""
    names = [n for n, _ in tiny.named_modules()]
    matched = [n for n in names if re.fullmatch(vlm.LORA_TARGETS, n)]
    assert len(matched) == 14
    assert not [n for n in matched if "visual" in n or n.startswith("head.")]
    assert {n.rsplit(".", 1)[-1] for n in matched} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                       "down_proj"}
