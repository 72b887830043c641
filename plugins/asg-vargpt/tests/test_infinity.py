"""The Infinity head, the projectors, sos_embedding, the scale schedule, the next-scale loop with the LLM in it,
and the key mapping, checked against the upstream tiny parity fixture and the full-size manifest.

The tiny LLM is transformers v5's native ``Qwen2VLForConditionalGeneration`` built from the fixture's config and
loaded (strictly) through :mod:`asg_vargpt.keys`; the head is ours, loaded strictly with the same weights file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from asg.errors import ConfigError
from asg_vargpt.generate import (
    GenerationOutput,
    bit_log_prob,
    cfg_mix,
    generate_bits,
    prefill,
    rope_extent,
    scale_schedule,
)
from asg_vargpt.infinity import InfinityConfig, VargptImageHead, infinity_2b, infinity_tiny
from asg_vargpt.keys import (
    KeyMappingError,
    checkpoint_to_modules,
    modules_to_checkpoint,
    part_of,
    to_checkpoint_name,
    to_module_name,
)

HEAD_PREFIXES = ("vargpt_gen.", "image_gen_projector.", "image_gen_projector_out.", "sos_embedding.")
N_SCALES = 3  # the fixture stores the first 3 scales (1x1, 2x2, 4x4) of the '0.25M' square schedule
_TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "use_sliding_window",
                "sliding_window", "max_window_layers", "bos_token_id", "eos_token_id")
_ROOT_FIELDS = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")


def qwen2vl_config(flat: dict[str, Any]) -> Any:
    """A v5 ``Qwen2VLConfig`` from upstream's flat 4.46 config kwargs (test helper; SDPA attention)."""
    from transformers import Qwen2VLConfig

    vision = dict(flat["vision_config"])
    vision["in_channels"] = vision.pop("in_chans")
    vision.pop("spatial_patch_size")
    text = {k: flat[k] for k in _TEXT_FIELDS}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": flat["rope_theta"],
                               "mrope_section": list(flat["rope_scaling"]["mrope_section"])}
    cfg = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                        **{k: flat[k] for k in _ROOT_FIELDS})
    cfg._attn_implementation = "sdpa"
    return cfg


@pytest.fixture(scope="module")
def fixture_json(fixture_dir: Path) -> dict[str, Any]:
    return json.loads((fixture_dir / "tiny" / "fixture.json").read_text())


@pytest.fixture(scope="module")
def manifest(fixture_dir: Path) -> dict[str, Any]:
    return json.loads((fixture_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny(fixture_dir: Path, fixture_json: dict[str, Any]) -> tuple[Any, VargptImageHead]:
    """The fixture's tiny VARGPT: native v5 Qwen2-VL + our head, both strictly loaded from weights.safetensors."""
    from transformers import Qwen2VLForConditionalGeneration

    conf = fixture_json["tiny_config"]
    weights = load_file(fixture_dir / "tiny" / "weights.safetensors")
    torch.manual_seed(0)
    vlm = Qwen2VLForConditionalGeneration(qwen2vl_config(conf["VARGPTQwen2VLConfig kwargs"])).eval()
    vlm.load_state_dict(checkpoint_to_modules(weights, "llm"), strict=True)
    start_id = conf["config.special_tokens"]["image_gen_start_token_id"]
    head = VargptImageHead(infinity_tiny(), vlm.config.text_config.hidden_size, start_id).eval()
    head.load_state_dict(checkpoint_to_modules(weights, "head"), strict=True)
    return vlm, head


def _forced(io: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [io[f"scale{i}.sampled_bits"] for i in range(N_SCALES)]


@pytest.fixture(scope="module")
def forced_run(tiny: tuple[Any, VargptImageHead], io_tensors: dict) -> tuple[GenerationOutput, dict]:
    """The 3 fixture scales, teacher-forced with the stored bits, with every intermediate recorded."""
    vlm, head = tiny
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out = generate_bits(vlm, head, prefill(vlm, io_tensors["prompt_ids"]), num_scales=N_SCALES,
                            forced_bits=_forced(io_tensors), record=record)
    return out, record


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"{tuple(a.shape)} != {tuple(b.shape)}"
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------ parity


def test_tiny_config_matches_fixture(fixture_json: dict[str, Any]) -> None:
    """infinity_tiny() is the fixture's Infinity: width 128, 4 blocks in 2 chunks, 2 heads, FFN 256, 64 bit-logits."""
    conf = fixture_json["tiny_config"]
    kw = conf["Infinity (vargpt_gen) model_kwargs"]
    cfg = infinity_tiny()
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.block_chunks) == (
        kw["embed_dim"], kw["depth"], kw["num_heads"], kw["mlp_ratio"], kw["block_chunks"])
    assert cfg.text_channels == conf["Infinity text_channels"] == 128
    assert (cfg.ffn_hidden, cfg.bit_logits, cfg.pool_heads, cfg.text_maxlen) == (256, 64, 1, 512)


def test_prefill_hidden_matches_upstream(tiny: tuple[Any, VargptImageHead], io_tensors: dict) -> None:
    """The native v5 LLM's prompt hidden states equal upstream's past_hidden_states (measured 1.1e-6)."""
    vlm, _ = tiny
    with torch.no_grad():
        state = prefill(vlm, io_tensors["prompt_ids"])
    assert state.cache.get_seq_length() == 9
    assert _maxdiff(state.hidden, io_tensors["prefill.hidden_states"]) < 1e-5


def test_scale0_bit_logits_parity(tiny: tuple[Any, VargptImageHead], io_tensors: dict) -> None:
    """scale0.bit_logits_raw ([cond; uncond], 64 logits) matches upstream to 1e-5 (measured 9.5e-7)."""
    vlm, head = tiny
    record: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        out = generate_bits(vlm, head, prefill(vlm, io_tensors["prompt_ids"]), num_scales=1,
                            generator=torch.Generator().manual_seed(0), record=record)
    assert out.raw_logits[0].shape == (2, 1, 64)
    assert _maxdiff(out.raw_logits[0], io_tensors["scale0.bit_logits_raw"]) < 1e-5  # measured 9.5e-7
    # The stages leading there: the context (9.5e-7), the LLM inputs (exact) and the head input (7.2e-7).
    assert _maxdiff(record["ctx.kv_compact_C"], io_tensors["ctx.kv_compact_C"]) < 1e-5
    assert _maxdiff(record["scale0.llm_inputs_embeds_cond"], io_tensors["scale0.llm_inputs_embeds_cond"]) < 1e-6
    assert _maxdiff(record["scale0.llm_inputs_embeds_uncond"], io_tensors["scale0.llm_inputs_embeds_uncond"]) < 1e-6
    assert _maxdiff(record["scale0.head_input_C"], io_tensors["scale0.head_input_C"]) < 1e-5


def test_teacher_forced_scales_parity(forced_run: tuple[GenerationOutput, dict], io_tensors: dict) -> None:
    """With the stored bits forced, every scale's raw logits and LLM hidden states match upstream to 1e-5."""
    out, record = forced_run
    # measured max |diff| of raw logits per scale: 9.5e-7, 1.9e-6, 1.9e-6
    for i in range(N_SCALES):
        assert _maxdiff(out.raw_logits[i], io_tensors[f"scale{i}.bit_logits_raw"]) < 1e-5, f"scale {i}"
        for name in ("llm_inputs_embeds_cond", "llm_inputs_embeds_uncond", "llm_last_hidden_cond",
                     "llm_last_hidden_uncond", "head_input_C"):
            key = f"scale{i}.{name}"
            assert _maxdiff(record[key], io_tensors[key]) < 1e-5, key  # measured <= 1.7e-6
        assert torch.equal(out.bits[i], io_tensors[f"scale{i}.sampled_bits"])
    assert [tuple(b.shape) for b in out.bits] == [(1, 1, 1, 1, 32), (1, 1, 2, 2, 32), (1, 1, 4, 4, 32)]
    assert out.summed_codes is not None and out.summed_codes.shape == (1, 32, 1, 32, 32)


def test_cfg_mixed_logits_match(forced_run: tuple[GenerationOutput, dict], io_tensors: dict) -> None:
    """The sampler's logits 3*c/0.5 - 2*u/0.5 match the stored ones; the formula itself is exact on stored raw."""
    out, _ = forced_run
    for i in range(N_SCALES):
        stored = io_tensors[f"scale{i}.bit_logits_cfg3_tau0.5"]
        # Our mix of upstream's raw logits is upstream's mix, bit for bit.
        assert torch.equal(cfg_mix(io_tensors[f"scale{i}.bit_logits_raw"], 3.0, 0.5), stored)
        # Mixing multiplies a raw-logit error by (3 + 2) / 0.5 = 10, so the 1e-5 raw bound becomes 1e-4 here;
        # measured 7.6e-6, 1.5e-5, 1.3e-5 on values up to 26.
        assert _maxdiff(out.logits[i], stored) < 1e-4, f"scale {i}"


def test_seeded_sampling_reproduces_upstream_bits(tiny: tuple[Any, VargptImageHead], io_tensors: dict) -> None:
    """Sampling (top-k 900, top-p 0.97) from a Generator seeded 0 draws exactly upstream's 3 x 32-bit scales."""
    vlm, head = tiny
    with torch.no_grad():
        out = generate_bits(vlm, head, prefill(vlm, io_tensors["prompt_ids"]), num_scales=N_SCALES,
                            generator=torch.Generator().manual_seed(0))
    for i in range(N_SCALES):
        assert torch.equal(out.bits[i], io_tensors[f"scale{i}.sampled_bits"]), f"scale {i}"
    assert out.log_prob.shape == (1,) and out.log_prob.item() < 0


def test_batch_rows_are_independent(tiny: tuple[Any, VargptImageHead], io_tensors: dict,
                                    forced_run: tuple[GenerationOutput, dict]) -> None:
    """In a batch of 2 prompts, row 0 reproduces the single-prompt run and each row has its own log-prob."""
    vlm, head = tiny
    ids = io_tensors["prompt_ids"]
    other = ids.clone()
    other[0, 1:4] = torch.tensor([7, 8, 9])
    flipped = [1 - b for b in _forced(io_tensors)]
    forced = [torch.cat([a, f]) for a, f in zip(_forced(io_tensors), flipped)]
    with torch.no_grad():
        out = generate_bits(vlm, head, prefill(vlm, torch.cat([ids, other])), num_scales=N_SCALES,
                            forced_bits=forced)
    single, _ = forced_run
    for i in range(N_SCALES):
        assert _maxdiff(out.raw_logits[i][0], single.raw_logits[i][0]) < 1e-5  # cond row of prompt 0
        assert _maxdiff(out.raw_logits[i][2], single.raw_logits[i][1]) < 1e-5  # uncond row of prompt 0
    assert out.log_prob.shape == (2,)
    assert abs(out.log_prob[0].item() - single.log_prob[0].item()) < 1e-3
    assert abs(out.log_prob[0].item() - out.log_prob[1].item()) > 1.0


# ------------------------------------------------------------------------------------------ the log-prob


def test_bit_log_prob_hand_example() -> None:
    """2 tokens x 2 bits: the per-sample value is the hand sum of pair log-softmaxes, one value per sample."""
    ln3 = math.log(3.0)
    # logits [B=2, L=2, 2*d=4]: per token the pairs (bit0 logit, bit1 logit) of bits 0 and 1.
    # log_softmax((0, ln3)) = (ln 1/4, ln 3/4); log_softmax((0, 0)) = (ln 1/2, ln 1/2); (ln3, 0) -> (ln 3/4, ln 1/4)
    logits = torch.tensor([[[0.0, ln3, 0.0, 0.0], [ln3, 0.0, 0.0, ln3]]]).repeat(2, 1, 1)
    bits = torch.tensor([
        [[1, 0], [0, 0]],  # sample 0: ln 3/4 + ln 1/2 + ln 3/4 + ln 1/4 = ln(9/128) = -2.6548
        [[0, 1], [1, 1]],  # sample 1: ln 1/4 + ln 1/2 + ln 1/4 + ln 3/4 = ln(3/128) = -3.7534
    ])
    got = bit_log_prob(logits, bits)
    assert got.shape == (2,)
    assert abs(got[0].item() - math.log(9 / 128)) < 1e-6
    assert abs(got[1].item() - math.log(3 / 128)) < 1e-6
    assert abs(got[0].item() - got[1].item()) > 1.0  # per sample, not a batch mean
    with pytest.raises(ConfigError, match="do not pair up"):
        bit_log_prob(logits, bits[:, :1])


def test_loop_log_probs_are_sums_over_scales(forced_run: tuple[GenerationOutput, dict], io_tensors: dict) -> None:
    """The loop's log_prob is bit_log_prob of the stored CFG logits summed over scales, cond_log_prob of raw cond."""
    out, _ = forced_run
    want = sum(bit_log_prob(io_tensors[f"scale{i}.bit_logits_cfg3_tau0.5"],
                            io_tensors[f"scale{i}.sampled_bits"].reshape(1, -1, 32)) for i in range(N_SCALES))
    want_cond = sum(bit_log_prob(io_tensors[f"scale{i}.bit_logits_raw"][:1],
                                 io_tensors[f"scale{i}.sampled_bits"].reshape(1, -1, 32)) for i in range(N_SCALES))
    assert abs(out.log_prob.item() - want.item()) < 1e-3  # measured ~ -113.42 on both sides
    assert abs(out.cond_log_prob.item() - want_cond.item()) < 1e-3


def test_teacher_forced_log_prob_has_gradients(tiny: tuple[Any, VargptImageHead], io_tensors: dict) -> None:
    """Teacher-forced log-probs backpropagate into the Infinity head, both projectors and the LLM's layers."""
    vlm, head = tiny
    out = generate_bits(vlm, head, prefill(vlm, io_tensors["prompt_ids"]), num_scales=2,
                        forced_bits=_forced(io_tensors)[:2])
    out.cond_log_prob.sum().backward()
    try:
        grads = {
            "head": head.vargpt_gen.head.weight.grad,
            "block": head.vargpt_gen.blocks[0].sa.mat_qkv.weight.grad,
            "proj_in": head.image_gen_projector.mlp[0].weight.grad,
            "proj_out": head.image_gen_projector_out.mlp[2].weight.grad,
            "llm": vlm.model.language_model.layers[1].mlp.up_proj.weight.grad,
        }
        for name, grad in grads.items():
            assert grad is not None and grad.abs().sum().item() > 0, name
        assert head.image_gen_projector.ln_q.weight.grad is None  # in the checkpoint, never used
    finally:
        vlm.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------- full-size layout


def test_full_size_head_matches_manifest(manifest: dict[str, Any]) -> None:
    """Infinity-2B + projectors + sos_embedding built on meta: 707 keys, shapes, buffers and counts as the manifest."""
    header = manifest["header"]
    tensors = next(iter(manifest["checkpoint_files"].values()))["tensors"]
    flat = header["config_used"]["VARGPTQwen2VLConfig(**prepare_vargpt_v1_1.cfg)"]
    start_id = header["config_used"]["special_tokens"]["image_gen_start_token_id"]
    with torch.device("meta"):
        head = VargptImageHead(infinity_2b(), flat["hidden_size"], start_id)
    ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    want = {k: tuple(v["shape"]) for k, v in tensors.items() if k.startswith(HEAD_PREFIXES)}
    assert len(want) == 707
    assert ours == want
    assert {k for k, _ in head.named_buffers()} == {k for k in want if tensors[k]["kind"] == "buffer"}
    assert ours["sos_embedding.weight"] == (151658, 2048)  # image_gen_start_token_id + 1 rows
    counts = header["component_parameter_counts"]
    for prefix in HEAD_PREFIXES:
        n = sum(v.numel() for k, v in head.state_dict().items() if k.startswith(prefix))
        assert n == counts[prefix], prefix  # vargpt_gen. 2,204,697,152 (buffers included, as the manifest counts)


def test_keys_map_full_checkpoint_to_v5_layout(manifest: dict[str, Any]) -> None:
    """All 1706 checkpoint keys round-trip; the 730 LLM keys land exactly on a meta-built v5 Qwen2-VL-7B."""
    from transformers import Qwen2VLForConditionalGeneration

    tensors = next(iter(manifest["checkpoint_files"].values()))["tensors"]
    assert len(tensors) == 1706
    for key in tensors:
        assert to_checkpoint_name(to_module_name(key)) == key
    parts = {p: sum(part_of(k) == p for k in tensors) for p in ("llm", "head", "vae")}
    assert parts == {"llm": 730, "head": 707, "vae": 269}
    flat = manifest["header"]["config_used"]["VARGPTQwen2VLConfig(**prepare_vargpt_v1_1.cfg)"]
    with torch.device("meta"):
        vlm = Qwen2VLForConditionalGeneration(qwen2vl_config(flat))
    ours = {k: tuple(v.shape) for k, v in vlm.state_dict().items()}
    mapped = {to_module_name(k): tuple(v["shape"]) for k, v in tensors.items() if part_of(k) == "llm"}
    assert mapped == ours
    assert modules_to_checkpoint(dict.fromkeys(ours, 0)).keys() == {k for k in tensors if part_of(k) == "llm"}


def test_keys_reject_unknown_names() -> None:
    """A key no rule covers is an error naming it, in both directions; prefixes never match half a word."""
    assert to_module_name("model.layers.3.mlp.up_proj.weight") == "model.language_model.layers.3.mlp.up_proj.weight"
    assert to_checkpoint_name("model.visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    with pytest.raises(KeyMappingError, match="'model.normx.weight'"):
        to_module_name("model.normx.weight")
    with pytest.raises(KeyMappingError, match="'model.layers.0.x'"):
        to_checkpoint_name("model.layers.0.x")  # a checkpoint name is not a module name
    with pytest.raises(KeyMappingError, match="'gen_head.weight'"):
        checkpoint_to_modules({"gen_head.weight": 0})


# ------------------------------------------------------------------------------------ schedule, config


def test_scale_schedule_025m() -> None:
    """'0.25M' square: 10 scales 1..32 tokens a side, 2521 tokens, 512 px; the rope extent is the 1M grid 64x64."""
    sched = scale_schedule("0.25M")
    assert [h for _, h, _ in sched] == [1, 2, 4, 6, 8, 12, 16, 20, 24, 32]
    assert all(t == 1 and h == w for t, h, w in sched)
    assert sum(h * w for _, h, w in sched) == 2521
    assert sched[-1][1] * 16 == 512
    assert rope_extent(sched) == (64, 64)
    assert len(scale_schedule("1M")) == 13 and scale_schedule("0.06M")[-1] == (1, 16, 16)
    assert scale_schedule("0.25M", h_div_w=0.5)[3] == (1, 3, 6)  # landscape = transposed portrait grid
    with pytest.raises(ConfigError, match="not a prefix"):
        rope_extent([(1, 1, 1), (1, 3, 3)])
    with pytest.raises(ConfigError, match="unknown schedule"):
        scale_schedule("2M")


def test_config_rejects_sizes_upstream_cannot_build() -> None:
    """Width 32 (backbones.md's first tiny guess) fails with the reason: FFN width 0 / pool heads of 128."""
    with pytest.raises(ConfigError, match="FFN width"):
        InfinityConfig(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, block_chunks=1, text_channels=32)
    with pytest.raises(ConfigError, match="multiple of 128"):
        InfinityConfig(embed_dim=64, depth=2, num_heads=2, mlp_ratio=4, block_chunks=1, text_channels=64)
    with pytest.raises(ConfigError, match="block_chunks"):
        InfinityConfig(embed_dim=128, depth=3, num_heads=2, mlp_ratio=2, block_chunks=2, text_channels=128)
