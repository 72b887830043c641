"""BLIP3o understanding side: config reading, checkpoint names and loading, tokenizer and processor.

The full-size checks build on the meta device and compare with the parameter manifest of the public
BLIP3o-8B checkpoint (fixtures/manifest.json); everything that runs uses the tiny config. The Qwen-VL pieces
BLIP3o shares with other backbones (image sizing, teacher forcing, log-probs, LoRA targets) are tested in
tests/test_qwen_vl.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from asg.errors import ConfigError
from asg.shapes import render, scene_for
from asg_blip3o import vlm
from asg_blip3o.checkpoint import (
    INDEX_FILE,
    CheckpointError,
    checkpoint_manifest,
    from_checkpoint_name,
    from_checkpoint_names,
    is_ignored,
    load_checkpoint,
    save_checkpoint,
    to_checkpoint_name,
    to_checkpoint_names,
)

# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifest(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def checkpoint_tensors(manifest: dict) -> dict:
    (entry,) = manifest["checkpoint_files"].values()
    return entry


@pytest.fixture(scope="module")
def tokenizer():
    return vlm.tiny_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    config, extras = vlm.tiny_config()
    torch.manual_seed(0)
    return vlm.Blip3oModel(config, extras).eval()


@pytest.fixture(scope="module")
def processor(tokenizer, tiny):
    return vlm.make_processor(tokenizer, tiny.config)


class StubDiT(nn.Module):
    """Stands in for NextDiTCrossAttn (keys ``dit.model.*``) so the mapping tests need no dit.py."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.ModuleDict({"x_embedder": nn.Linear(8, 32), "norm_out": nn.LayerNorm(32)})


def shapes_image(index: int = 0, size: int = 64):
    return render(scene_for("val", 0, index), size)


# --------------------------------------------------------------------------------------------------
# 1. config + full-size manifest
# --------------------------------------------------------------------------------------------------


def test_full_config_json_matches_manifest_header(manifest):
    """FULL_CONFIG_JSON holds exactly the Qwen2.5-VL kwargs and BLIP3o attributes the manifest was built with."""
    used = manifest["header"]["config_used"]
    qwen = used["Qwen2.5-VL-7B-Instruct (blip3oQwenConfig kwargs)"]
    blip = used["blip3o config attributes"]
    ours = dict(vlm.FULL_CONFIG_JSON)
    assert {k: ours[k] for k in qwen} == qwen
    assert {k: ours[k] for k in blip} == blip


def test_full_config_reads_into_v5_layout():
    """The flat 4.x config becomes a v5 text/vision config: mrope -> default rope with its section, in_chans -> in_channels."""
    config, extras = vlm.full_config()
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (3584, 28, 28, 4)
    assert (text.vocab_size, text.intermediate_size, text.rms_norm_eps) == (152064, 18944, 1e-6)
    assert text.rope_parameters == {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    assert (vision.depth, vision.hidden_size, vision.in_channels, vision.out_hidden_size) == (32, 1280, 3, 3584)
    assert (vision.tokens_per_second, vision.window_size, list(vision.fullatt_block_indexes)) == (2, 112, [7, 15, 23, 31])
    assert (config.image_token_id, config.vision_start_token_id, config.tie_word_embeddings) == (151655, 151652, False)
    assert (extras.n_query, extras.hidden_size, extras.gen_pooling) == (64, 3584, "early_pool2d_4")
    assert extras.metadata["gen_vision_tower"] == "eva-clip-E-14-plus"


def test_full_meta_manifest_equals_checkpoint_manifest(checkpoint_tensors):
    """The meta-built model, under checkpoint names, has exactly the public checkpoint's non-DiT keys, shapes and dtypes."""
    config, extras = vlm.full_config()
    with torch.device("meta"):
        model = vlm.Blip3oModel(config, extras)
    ours = checkpoint_manifest(model)
    theirs = {k: v for k, v in checkpoint_tensors["tensors"].items() if not k.startswith("model.dit.")}
    assert len(ours) == 730
    assert len(checkpoint_tensors["tensors"]) - len(theirs) == 642  # the DiT keys, left to dit.py
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == 9657406368 - 1365010336


def test_full_manifest_with_dit_equals_all_1372_keys(checkpoint_tensors):
    """With the DiT of asg_blip3o.dit attached, the meta-built model's manifest is the whole checkpoint's."""
    dit = pytest.importorskip("asg_blip3o.dit")
    config, extras = vlm.full_config()
    with torch.device("meta"):
        model = vlm.Blip3oModel(config, extras, dit=dit.NextDiTCrossAttn(dit.DiTConfig.blip3o_8b()))
    ours = checkpoint_manifest(model)
    assert len(ours) == checkpoint_tensors["num_keys"] == 1372
    assert ours == checkpoint_tensors["tensors"]


def test_vocab_151668_variant_shapes(checkpoint_tensors):
    """vocab 151668 (BLIP3o's training resize) changes only embed_tokens and lm_head, to the header's shapes."""
    config, extras = vlm.full_config(vocab_size=151668)
    with torch.device("meta"):
        model = vlm.Blip3oModel(config, extras)
    ours = checkpoint_manifest(model)
    variant = checkpoint_tensors["vocab_151668_variant_shapes"]
    assert {k: ours[k]["shape"] for k in variant} == variant == {
        "model.embed_tokens.weight": [151668, 3584], "lm_head.weight": [151668, 3584]}
    changed = {k for k, v in checkpoint_tensors["tensors"].items() if k in ours and ours[k] != v}
    assert changed == set(variant)


def test_config_errors_name_the_field():
    """Missing, unknown or inconsistent config.json fields are errors that name the field."""
    base = vlm.tiny_config_json()
    with pytest.raises(ConfigError, match="n_query"):
        vlm.blip3o_config({k: v for k, v in base.items() if k != "n_query"})
    with pytest.raises(ConfigError, match="rms_norm_eps"):
        vlm.blip3o_config({k: v for k, v in base.items() if k != "rms_norm_eps"})
    with pytest.raises(ConfigError, match="mystery_field"):
        vlm.blip3o_config({**base, "mystery_field": 1})
    _, extras = vlm.blip3o_config({**base, "mystery_field": 1}, allow_unknown=True)
    assert extras.metadata["mystery_field"] == 1
    with pytest.raises(ConfigError, match=r"mrope_section \[2, 3, 4\] sums to 9; expected head_dim/2 = 8"):
        vlm.blip3o_config({**base, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 4]}})
    with pytest.raises(ConfigError, match="out_hidden_size 48 != hidden_size 64"):
        vlm.blip3o_config({**base, "vision_config": {**base["vision_config"], "out_hidden_size": 48}})
    with pytest.raises(ConfigError, match="vision_config has field.*bogus"):
        vlm.blip3o_config({**base, "vision_config": {**base["vision_config"], "bogus": 0}})
    with pytest.raises(ConfigError, match="model_type is 'llava'"):
        vlm.blip3o_config({**base, "model_type": "llava"})


# --------------------------------------------------------------------------------------------------
# 2. names and strict loading
# --------------------------------------------------------------------------------------------------


def test_name_mapping_round_trips_every_family(tiny):
    """Every tiny-model name (vision, text, lm_head, latent queries, DiT) maps to a checkpoint key and back."""
    config, extras = vlm.tiny_config()
    model = vlm.Blip3oModel(config, extras, dit=StubDiT())
    state = model.state_dict()
    ckpt = to_checkpoint_names(state)
    assert from_checkpoint_names(ckpt).keys() == state.keys()
    families = {k.split(".")[0] if not k.startswith("model.") else ".".join(k.split(".")[:2]) for k in ckpt}
    assert families == {"visual", "model.embed_tokens", "model.layers", "model.norm", "lm_head",
                        "model.latent_queries", "model.dit"}
    assert to_checkpoint_name("vlm.model.language_model.layers.1.mlp.up_proj.weight") == "model.layers.1.mlp.up_proj.weight"
    assert from_checkpoint_name("visual.merger.mlp.0.weight") == "vlm.model.visual.merger.mlp.0.weight"
    assert from_checkpoint_name("model.latent_queries") == "latent_queries"
    assert from_checkpoint_name("model.dit.model.x_embedder.weight") == "dit.model.x_embedder.weight"
    assert len(ckpt) == len(state) == 62


def test_unknown_names_are_errors_naming_them():
    """A name no rule covers is an error listing it; the EVA-CLIP tower is recognised as ignored."""
    with pytest.raises(CheckpointError, match="model.image_newline"):
        from_checkpoint_names({"model.image_newline": 0, "lm_head.weight": 1})
    with pytest.raises(CheckpointError, match="vlm.model.extra.weight"):
        to_checkpoint_names({"vlm.model.extra.weight": 0})
    assert is_ignored("model.gen_vision_tower.vision_tower.model.cls_token")
    with pytest.raises(CheckpointError, match="ignored EVA-CLIP"):
        from_checkpoint_name("model.gen_vision_tower.vision_tower.model.cls_token")


def test_sharded_checkpoint_loads_back_and_reproduces_logits(tiny, tmp_path):
    """Two shards + index.json under checkpoint names load strictly into a fresh model with identical logits."""
    paths = save_checkpoint(tiny, tmp_path, shards=2)
    assert [p.name for p in paths] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert len(index["weight_map"]) == 58 and "model.latent_queries" in index["weight_map"]
    assert set(index["weight_map"].values()) == {p.name for p in paths}

    config, extras = vlm.tiny_config()
    torch.manual_seed(1)
    fresh = vlm.Blip3oModel(config, extras).eval()
    ids = torch.tensor([[257, 100, 101, 102, 258]])
    before = fresh.vlm(input_ids=ids).logits
    report = load_checkpoint(tmp_path, fresh)
    assert (report.loaded, report.ignored, report.files) == (58, (), tuple(p.name for p in paths))
    with torch.no_grad():
        expected = tiny.vlm(input_ids=ids).logits
        got = fresh.vlm(input_ids=ids).logits
    assert not torch.allclose(before, expected)
    assert torch.equal(got, expected)
    assert torch.equal(fresh.latent_queries, tiny.latent_queries)


def test_single_file_with_eva_keys_reports_them_ignored(tiny, tmp_path):
    """model.safetensors with extra model.gen_vision_tower.* keys loads; those keys come back as ignored."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in to_checkpoint_names(tiny.state_dict()).items()}
    tensors["model.gen_vision_tower.vision_tower.model.cls_token"] = torch.zeros(1, 1, 4)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config, extras = vlm.tiny_config()
    report = load_checkpoint(tmp_path, vlm.Blip3oModel(config, extras))
    assert report.loaded == 58
    assert report.ignored == ("model.gen_vision_tower.vision_tower.model.cls_token",)


def _rewrite_shard(folder: Path, change) -> str:
    """Apply ``change`` to the tensors of the second shard (keeping the index consistent); returns its name."""
    from safetensors.torch import load_file, save_file

    index_path = folder / INDEX_FILE
    index = json.loads(index_path.read_text())
    name = "model-00002-of-00002.safetensors"
    tensors = change(load_file(str(folder / name)))
    save_file(tensors, str(folder / name))
    index["weight_map"] = {k: f for k, f in index["weight_map"].items() if f != name} | {k: name for k in tensors}
    index_path.write_text(json.dumps(index))
    return name


def test_missing_key_and_wrong_shape_are_errors_naming_file_and_key(tiny, tmp_path):
    """A tensor missing from the shards, or with another shape, fails before loading and names file and key."""
    save_checkpoint(tiny, tmp_path / "missing", shards=2)
    _rewrite_shard(tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != "lm_head.weight"})
    config, extras = vlm.tiny_config()
    target = vlm.Blip3oModel(config, extras)
    snapshot = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"1 model tensor\(s\) missing from model-00001-of-00002.safetensors, "
                                              r"model-00002-of-00002.safetensors: lm_head.weight"):
        load_checkpoint(tmp_path / "missing", target)

    save_checkpoint(tiny, tmp_path / "shape", shards=2)
    name = _rewrite_shard(tmp_path / "shape", lambda t: {**t, "lm_head.weight": torch.zeros(270, 64)})
    with pytest.raises(CheckpointError, match=rf"{name}:lm_head.weight expected \[272, 64\] found \[270, 64\]"):
        load_checkpoint(tmp_path / "shape", target)

    save_checkpoint(tiny, tmp_path / "extra", shards=2)
    name = _rewrite_shard(tmp_path / "extra", lambda t: {**t, "model.mystery.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=rf"match no BLIP3o name rule: {name}:model.mystery.weight"):
        load_checkpoint(tmp_path / "extra", target)
    assert all(torch.equal(v, snapshot[k]) for k, v in target.state_dict().items())  # untouched by failed loads

    (tmp_path / "extra" / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing from .*: model-00001-of-00002.safetensors"):
        load_checkpoint(tmp_path / "extra", target)


def test_upstream_dit_weights_load_under_model_dit(tiny, fixture_dir, tmp_path):
    """The upstream tiny DiT weights (keys model.*), saved under model.dit.* beside the tiny VLM, load into dit.*."""
    dit = pytest.importorskip("asg_blip3o.dit")
    from safetensors.torch import load_file, save_file

    upstream = load_file(str(fixture_dir / "tiny" / "weights.safetensors"))
    tensors = {k: v.contiguous() for k, v in to_checkpoint_names(tiny.state_dict()).items()}
    tensors |= {f"model.dit.{k}": v for k, v in upstream.items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    config, extras = vlm.tiny_config()
    model = vlm.Blip3oModel(config, extras, dit=dit.NextDiTCrossAttn(dit.DiTConfig.tiny()))
    report = load_checkpoint(tmp_path, model)
    assert report.loaded == 58 + len(upstream)
    assert sum(v.numel() for v in upstream.values()) == 57200
    assert all(torch.equal(model.dit.state_dict()[k], v) for k, v in upstream.items())


def test_dit_keys_without_a_dit_are_unexpected(tmp_path):
    """A checkpoint with model.dit.* keys does not load into a model built without its DiT; the error says so."""
    config, extras = vlm.tiny_config()
    save_checkpoint(vlm.Blip3oModel(config, extras, dit=StubDiT()), tmp_path)
    with pytest.raises(CheckpointError, match=r"4 checkpoint key\(s\) have no place .*model.safetensors:model.dit.model"):
        load_checkpoint(tmp_path, vlm.Blip3oModel(config, extras))


# --------------------------------------------------------------------------------------------------
# 3. tokenizer and processor
# --------------------------------------------------------------------------------------------------


def test_tiny_tokenizer_layout(tokenizer):
    """The in-memory byte-level tokenizer has 266 tokens with Qwen's special-token order after the 256 bytes."""
    assert len(tokenizer) == 266
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in vlm.TINY_TOKEN_IDS} == dict(vlm.TINY_TOKEN_IDS)
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (258, 256)
    ids = tokenizer("héllo<|im_end|>").input_ids
    assert len(ids) == 7 and ids[-1] == 258
    assert tokenizer.decode(ids) == "héllo<|im_end|>"


def test_processor_encodes_blip3o_prompt(processor, tokenizer):
    """A ShapesWorld image + question become the ChatML prompt with 4 image tokens for a 56x56 image."""
    inputs = vlm.understanding_inputs(processor, [shapes_image()], ["What color is the circle?"])
    assert tokenizer.decode(inputs["input_ids"][0]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * 4 + "<|vision_end|>What color is the circle?<|im_end|>\n<|im_start|>assistant\n")
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert tuple(inputs["pixel_values"].shape) == (16, 3 * 2 * 14 * 14)
    assert inputs["mm_token_type_ids"].sum().item() == 4
    assert (inputs["mm_token_type_ids"][0] == 1).nonzero().flatten().tolist() == \
        (inputs["input_ids"][0] == 261).nonzero().flatten().tolist()
