"""Vision side of BAGEL: SigLIP-NaViT, connector, sin-cos position tables and the timestep embedder,
checked against the upstream tiny fixture, the full-size checkpoint manifest and hand-derived values."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import SiglipVisionConfig

from asg_bagel.vision import (
    Connector,
    SiglipNaViT,
    SinCosPositionTable,
    TimestepEmbedder,
    navit_config,
    navit_position_ids,
    packed_attention_mask,
    patchify,
    sincos_2d_table,
    timestep_frequencies,
)

PATCH = 14
TINY_MAX_PER_SIDE = 8  # BagelConfig.vit_max_num_patch_per_side of the tiny fixture
TINY_LLM_HIDDEN = 64
TINY_MAX_LATENT = 4  # BagelConfig.max_latent_size of the tiny fixture
MODULE_PREFIXES = ("vit_model.", "connector.", "vit_pos_embed.", "latent_pos_embed.", "time_embedder.")


def _tiny_vit_config(fixture_dir: Path) -> SiglipVisionConfig:
    """The tiny ViT config exactly as fixture.json records it (num_hidden_layers = layers built)."""
    tiny = json.loads((fixture_dir / "tiny" / "fixture.json").read_text())["tiny_config"]
    (vit,) = [v for k, v in tiny.items() if k.startswith("vit_config")]
    return SiglipVisionConfig(**vit)


def _sub_state(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def tiny_weights(fixture_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(fixture_dir / "tiny" / "weights.safetensors")


def _tiny_vit(fixture_dir: Path, weights: dict[str, torch.Tensor], attn: str) -> SiglipNaViT:
    vit = SiglipNaViT(_tiny_vit_config(fixture_dir), TINY_MAX_PER_SIDE, attn_implementation=attn)
    vit.load_state_dict(_sub_state(weights, "vit_model."), strict=True)
    return vit.eval()


# ---------------------------------------------------------------------------------------------------
# Parity with the upstream fixture (case a2: a 28x42 image = 2x3 patches)
# ---------------------------------------------------------------------------------------------------


def test_patchify_matches_upstream(io_tensors):
    """patchify of the 28x42 fixture image reproduces upstream's 6x588 packed ViT tokens exactly."""
    tokens = patchify(io_tensors["a2.image"], PATCH)
    assert tokens.shape == (6, 588)
    assert torch.equal(tokens, io_tensors["a2.packed_vit_tokens"])


def test_position_ids_match_upstream(io_tensors):
    """A 2x3 patch grid on an 8-wide position grid gets ids row*8+col = [0,1,2,8,9,10], as upstream."""
    ids = navit_position_ids(2, 3, TINY_MAX_PER_SIDE)
    assert ids.tolist() == [0, 1, 2, 8, 9, 10]
    assert torch.equal(ids, io_tensors["a2.packed_vit_position_ids"])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_vit_matches_upstream_last_hidden(fixture_dir, tiny_weights, io_tensors, attn):
    """The strictly loaded tiny SigLIP-NaViT reproduces upstream's post-layernorm hidden states."""
    # Measured max abs diff: sdpa 7.2e-07, eager 0.0.
    vit = _tiny_vit(fixture_dir, tiny_weights, attn)
    with torch.no_grad():
        hidden = vit(io_tensors["a2.packed_vit_tokens"], io_tensors["a2.packed_vit_position_ids"], [6])
    assert hidden.shape == (6, 32)
    assert (hidden - io_tensors["a2.vit_last_hidden"]).abs().max().item() < 1e-5


def test_connector_plus_position_matches_llm_space(tiny_weights, io_tensors):
    """connector(vit_last_hidden) + vit_pos_embed(ids) reproduces upstream's tokens in LLM space."""
    # Measured max abs diff: 0.0.
    connector = Connector(32, TINY_LLM_HIDDEN)
    connector.load_state_dict(_sub_state(tiny_weights, "connector."), strict=True)
    pos = SinCosPositionTable(TINY_MAX_PER_SIDE, TINY_LLM_HIDDEN)
    pos.load_state_dict(_sub_state(tiny_weights, "vit_pos_embed."), strict=True)
    with torch.no_grad():
        out = connector(io_tensors["a2.vit_last_hidden"]) + pos(io_tensors["a2.packed_vit_position_ids"])
    assert out.shape == (6, TINY_LLM_HIDDEN)
    assert (out - io_tensors["a2.vit_tokens_in_llm_space"]).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    ("key", "per_side"), [("vit_pos_embed.pos_embed", 8), ("latent_pos_embed.pos_embed", 4)]
)
def test_fresh_sincos_tables_equal_upstream(tiny_weights, key, per_side):
    """A freshly built sin-cos table equals the one upstream computed and stored in the fixture."""
    # Measured max abs diff: 0.0 for both tables.
    table = SinCosPositionTable(per_side, TINY_LLM_HIDDEN).pos_embed
    stored = tiny_weights[key]
    assert table.shape == stored.shape == (per_side * per_side, TINY_LLM_HIDDEN)
    assert (table - stored).abs().max().item() < 1e-6
    assert table.requires_grad is False


def test_sincos_table_encodes_column_in_first_half():
    """Grid id r*G+c holds sin/cos of the column in the first half and of the row in the second half."""
    table = sincos_2d_table(8, 64)  # quarters of 16 channels, w_i = 10000 ** (-i/16)
    r0c1, r1c0 = table[1], table[8]
    # (r=0, c=1): sin(1*w_0)=sin(1)=0.841471, cos(1)=0.540302, then sin(0)=0, cos(0)=1.
    assert r0c1[0].item() == pytest.approx(0.8414710, abs=1e-6)
    assert r0c1[16].item() == pytest.approx(0.5403023, abs=1e-6)
    assert r0c1[32].item() == pytest.approx(0.0, abs=1e-7)
    assert r0c1[48].item() == pytest.approx(1.0, abs=1e-7)
    # w_1 = 10000 ** (-1/16) = 0.562341, sin(0.562341) = 0.533168.
    assert r0c1[1].item() == pytest.approx(0.5331684, abs=1e-6)
    # (r=1, c=0): the same numbers moved to the second half.
    assert r1c0[:32].tolist() == pytest.approx([0.0] * 16 + [1.0] * 16, abs=1e-7)
    assert r1c0[32].item() == pytest.approx(0.8414710, abs=1e-6)
    assert r1c0[48].item() == pytest.approx(0.5403023, abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_images_equal_separate_calls(fixture_dir, tiny_weights, io_tensors, attn):
    """Three images of different shapes packed in one call give the same tokens as three separate calls."""
    # Measured max abs diff packed vs separate: sdpa 1.4e-06, eager 8.3e-07 (float32 reduction
    # order); without the mask the difference is 1.50.
    vit = _tiny_vit(fixture_dir, tiny_weights, attn)
    gen = torch.Generator().manual_seed(0)
    images = [
        io_tensors["a2.image"],  # 28x42 -> 2x3 patches
        torch.rand(3, 42, 28, generator=gen) * 2 - 1,  # 3x2 patches
        torch.rand(3, 14, 56, generator=gen) * 2 - 1,  # 1x4 patches
    ]
    patches = [patchify(img, PATCH) for img in images]
    ids = [vit.position_ids(img.shape[1] // PATCH, img.shape[2] // PATCH) for img in images]
    seqlens = [p.shape[0] for p in patches]
    assert seqlens == [6, 6, 4]
    with torch.no_grad():
        alone = torch.cat([vit(p, i, [p.shape[0]]) for p, i in zip(patches, ids)])  # (16, 32)
        packed = vit(torch.cat(patches), torch.cat(ids), seqlens)  # (16, 32)
        unmasked = vit(torch.cat(patches), torch.cat(ids), [16])  # all 16 tokens see each other
    assert packed.shape == (16, 32)
    assert (packed - alone).abs().max().item() < 1e-5
    # The mask matters: without it the images leak into each other by O(1).
    assert (unmasked - alone).abs().max().item() > 1e-2


def test_packed_attention_mask_is_block_diagonal():
    """seqlens [2, 1] give a 3x3 mask allowing exactly the pairs within each image."""
    allowed = packed_attention_mask([2, 1], additive_dtype=None)
    assert allowed.shape == (1, 1, 3, 3)
    assert allowed[0, 0].int().tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    additive = packed_attention_mask([2, 1], additive_dtype=torch.float32)[0, 0]
    assert additive[0, 1].item() == 0.0
    assert additive[0, 2].item() == torch.finfo(torch.float32).min


# ---------------------------------------------------------------------------------------------------
# Full-size build against the checkpoint manifest
# ---------------------------------------------------------------------------------------------------


def test_meta_full_size_keys_match_manifest(fixture_dir):
    """Built on meta at full size, our modules have exactly the checkpoint's vision/time keys and shapes."""
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    expected = {
        k: v["shape"]
        for k, v in manifest["checkpoint_files"]["ema.safetensors"]["tensors"].items()
        if k.startswith(MODULE_PREFIXES)
    }
    hub = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,  # hub vit_config.json; BAGEL builds one fewer
        num_attention_heads=16,
        num_channels=3,
        image_size=980,
        patch_size=14,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    start = time.perf_counter()
    with torch.device("meta"):
        modules = {
            "vit_model.": SiglipNaViT(navit_config(hub, drop_last_layer=True), max_patches_per_side=70),
            "connector.": Connector(1152, 3584),
            "vit_pos_embed.": SinCosPositionTable(70, 3584),
            "latent_pos_embed.": SinCosPositionTable(64, 3584),
            "time_embedder.": TimestepEmbedder(3584),
        }
    elapsed = time.perf_counter() - start
    got = {
        prefix + k: list(v.shape) for prefix, m in modules.items() for k, v in m.state_dict().items()
    }
    assert len(expected) == 4 + 4 + 3 + 26 * 16 + 2 + 1 + 1  # 431 keys
    assert got == expected
    assert modules["vit_model."].config.num_hidden_layers == 26
    assert hub.num_hidden_layers == 27  # the caller's config is not mutated
    assert elapsed < 10.0


# ---------------------------------------------------------------------------------------------------
# Timestep embedder
# ---------------------------------------------------------------------------------------------------


def test_timestep_frequencies_hand_values():
    """For t=0.5 the 256-dim embedding is [cos(t*f_i)]_i then [sin(t*f_i)]_i with f_i=10000**(-i/128)."""
    emb = timestep_frequencies(torch.tensor([0.5]), 256)[0]
    assert emb.shape == (256,)
    # f_0 = 1: cos(0.5) = 0.8775826, sin(0.5) = 0.4794255.
    assert emb[0].item() == pytest.approx(0.8775826, abs=1e-6)
    assert emb[128].item() == pytest.approx(0.4794255, abs=1e-6)
    # f_1 = 10000**(-1/128) = 0.9305720: cos(0.465286) = 0.8936933, sin(0.465286) = 0.4486784.
    assert emb[1].item() == pytest.approx(0.8936933, abs=1e-6)
    assert emb[129].item() == pytest.approx(0.4486784, abs=1e-6)
    # f_127 = 10000**(-127/128) = 1.0746e-4: cos ~ 1, sin(5.373e-5) = 5.373039e-5.
    assert emb[127].item() == pytest.approx(1.0, abs=1e-6)
    assert emb[255].item() == pytest.approx(5.373039e-5, rel=1e-4)
    assert math.isclose(emb[0].item() ** 2 + emb[128].item() ** 2, 1.0, abs_tol=1e-6)


def test_timestep_embedder_maps_batch_to_hidden(tiny_weights):
    """The embedder loads the fixture's time_embedder weights and maps t of shape (B,) to (B, hidden)."""
    embedder = TimestepEmbedder(TINY_LLM_HIDDEN)
    embedder.load_state_dict(_sub_state(tiny_weights, "time_embedder."), strict=True)
    t = torch.tensor([0.0, 0.25, 0.75])
    with torch.no_grad():
        out = embedder(t)
        by_hand = embedder.mlp[2](torch.nn.functional.silu(embedder.mlp[0](timestep_frequencies(t))))
    assert out.shape == (3, TINY_LLM_HIDDEN)
    assert (out - by_hand).abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------------------
# Errors name the culprit
# ---------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_with_the_culprit(fixture_dir):
    """Odd image sizes, oversized grids, unsupported attention and wrong seqlens raise naming the value."""
    with pytest.raises(ValueError, match="30x42"):
        patchify(torch.zeros(3, 30, 42), PATCH)
    with pytest.raises(ValueError, match="9x3"):
        navit_position_ids(9, 3, TINY_MAX_PER_SIDE)
    with pytest.raises(ValueError, match="flash_attention_2"):
        SiglipNaViT(_tiny_vit_config(fixture_dir), TINY_MAX_PER_SIDE, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="max_patches_per_side=9"):
        SiglipNaViT(_tiny_vit_config(fixture_dir), 9)
    vit = SiglipNaViT(_tiny_vit_config(fixture_dir), TINY_MAX_PER_SIDE)
    with pytest.raises(ValueError, match=r"\[4, 4\]"):
        vit(torch.zeros(6, 588), torch.zeros(6, dtype=torch.long), [4, 4])
