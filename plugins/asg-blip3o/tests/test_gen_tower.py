"""The EVA-CLIP-E generation tower: full-size layout, tiny features and pooling, postnorm by hand, strict loading."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from asg.errors import ConfigError
from asg.shapes import render, scene_for
from asg_blip3o.checkpoint import CheckpointError
from asg_blip3o.dit import DiTConfig
from asg_blip3o.gen_tower import (
    CLIP_MEAN,
    CLIP_STD,
    EvaConfig,
    EvaVisionTower,
    checkpoint_prefix,
    load_tower_file,
    load_tower_weights,
    parameter_count,
    preprocess_image,
)

FULL_PARAMS = 4_350_208_256  # manifest gen_vision_tower_eva_clip.num_parameters


@pytest.fixture(scope="module")
def eva_manifest(fixture_dir: Path) -> dict:
    return json.loads((fixture_dir / "manifest.json").read_text())["gen_vision_tower_eva_clip"]


@pytest.fixture(scope="module")
def meta_tower() -> EvaVisionTower:
    with torch.device("meta"):
        return EvaVisionTower(EvaConfig.eva_clip_e_14_plus())


def _tiny(seed: int) -> EvaVisionTower:
    torch.manual_seed(seed)
    return EvaVisionTower(EvaConfig.tiny())


def _images() -> list[Image.Image]:
    return [render(scene_for("val", 0, i), 64) for i in range(2)]


# ---------------------------------------------------------------------------------------------------------
# 1. full size
# ---------------------------------------------------------------------------------------------------------


def test_full_size_state_dict_matches_manifest(meta_tower: EvaVisionTower, eva_manifest: dict) -> None:
    """Prefixed with ``model.gen_vision_tower.``, the meta-built tower's keys and shapes are the manifest's 772."""
    mine = {checkpoint_prefix + k: list(v.shape) for k, v in meta_tower.state_dict().items()}
    ref = {k: v["shape"] for k, v in eva_manifest["tensors"].items()}
    assert len(mine) == eva_manifest["num_keys"] == 772
    assert sorted(mine.keys() - ref.keys()) == [] and sorted(ref.keys() - mine.keys()) == []
    assert mine == ref
    assert parameter_count(meta_tower) == eva_manifest["num_parameters"] == FULL_PARAMS


def test_full_size_config_from_upstream_json(eva_manifest: dict) -> None:
    """Upstream ``eva-clip-E-14-plus.json``'s vision_cfg derives our preset (16 heads, MLP 15360, 8x8 grid)."""
    cfg = EvaConfig.from_vision_cfg(eva_manifest["eva_config"]["vision_cfg"], pool=4)
    assert cfg == EvaConfig.eva_clip_e_14_plus()
    assert (cfg.heads, cfg.head_dim, cfg.mlp_hidden, cfg.tokens_per_side, cfg.grid) == (16, 112, 15360, 32, 8)
    dit = DiTConfig.blip3o_8b()
    assert (cfg.width, cfg.grid) == (dit.in_channels, dit.input_size) == (1792, 8)


def test_full_size_features_shape_on_meta(meta_tower: EvaVisionTower) -> None:
    """On the meta device, two 64 px images become a (2, 1792, 8, 8) target grid (448 px, 32x32 tokens pooled by 4)."""
    out = meta_tower.features(_images())
    assert tuple(out.shape) == (2, 1792, 8, 8)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------
# 2. tiny features, pooling and preprocessing
# ---------------------------------------------------------------------------------------------------------


def test_tiny_features_shape_deterministic_and_pooled_by_hand() -> None:
    """Tiny ``features`` is (2, 8, 2, 2), repeatable, and each cell is the mean of a 2x2 window of last-block tokens."""
    tower = _tiny(0)
    cfg = tower.config
    assert (cfg.width, cfg.grid) == (DiTConfig.tiny().in_channels, DiTConfig.tiny().input_size) == (8, 2)
    images = _images()
    out = tower.features(images)
    assert tuple(out.shape) == (2, 8, 2, 2)
    assert torch.equal(out, tower.features(images))
    assert torch.equal(out, _tiny(0).features(images))  # same seed, same tower
    assert not torch.allclose(out[0], out[1])  # the two scenes differ

    with torch.no_grad():
        tokens = tower.tokens(tower.preprocess(images))  # (2, 16, 8): 4x4 grid, row-major, cls dropped
        full = tower.vision_tower.model(tower.preprocess(images))  # (2, 17, 8): cls first
    assert tuple(tokens.shape) == (2, 16, 8)
    assert torch.equal(tokens, full[:, 1:])
    hand = torch.zeros(2, 8, 2, 2)
    for i in range(2):
        for j in range(2):
            window = [(2 * i + di) * 4 + (2 * j + dj) for di in range(2) for dj in range(2)]
            hand[:, :, i, j] = tokens[:, window].mean(dim=1)
    torch.testing.assert_close(out, hand, atol=1e-6, rtol=0)


def test_preprocess_resize_crop_normalize() -> None:
    """A 80x40 image is resized to 64x32 (bicubic), center-cropped at x=16..48, then scaled by CLIP mean/std."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(40, 80, 3), dtype=np.uint8))  # width 80, height 40
    x = preprocess_image(img, 32)
    assert tuple(x.shape) == (3, 32, 32)
    ref = np.asarray(img.resize((64, 32), Image.BICUBIC).crop((16, 0, 48, 32)), dtype=np.float32) / 255.0
    mean, std = np.array(CLIP_MEAN, dtype=np.float32), np.array(CLIP_STD, dtype=np.float32)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), (ref - mean) / std, atol=1e-6)
    # a square image already at size is not resampled: pixel (0, 0) of channel 0 is (v/255 - 0.48145466)/0.26862954
    sq = Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    v = np.asarray(sq)[0, 0, 0]
    assert preprocess_image(sq, 32)[0, 0, 0].item() == pytest.approx((v / 255.0 - 0.48145466) / 0.26862954, abs=1e-6)


def test_preprocess_transparent_is_white() -> None:
    """A fully transparent RGBA pixel becomes white, i.e. (1 - mean) / std = (1.9303, 2.0749, 2.1459)."""
    img = Image.new("RGBA", (32, 32), (10, 20, 30, 0))
    x = preprocess_image(img, 32)
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    torch.testing.assert_close(x[:, 5, 7], expected, atol=1e-6, rtol=0)
    assert expected.tolist() == pytest.approx([1.9303, 2.0749, 2.1459], abs=1e-4)


def test_bad_inputs_are_named() -> None:
    """Wrong pixel shapes and inconsistent configs raise ConfigError naming the culprit."""
    tower = _tiny(0)
    with pytest.raises(ConfigError, match=r"\(2, 3, 16, 16\)"):
        tower(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ConfigError, match="heads=3"):
        EvaConfig(width=8, heads=3)
    with pytest.raises(ConfigError, match="pool=3"):
        EvaConfig(width=8, layers=1, heads=2, mlp_hidden=8, patch=8, image=32, pool=3)
    with pytest.raises(ConfigError, match="no images"):
        tower.features([])


# ---------------------------------------------------------------------------------------------------------
# 3. postnorm by hand
# ---------------------------------------------------------------------------------------------------------


def _hand_tower(postnorm: bool) -> tuple[EvaVisionTower, torch.Tensor]:
    """A 1-layer width-4 tower whose sublayers output constants, so the block's arithmetic is visible."""
    cfg = EvaConfig(width=4, layers=1, heads=2, mlp_hidden=8, patch=8, image=16, pool=2, postnorm=postnorm)
    tower = EvaVisionTower(cfg)
    vit = tower.vision_tower.model
    blk = vit.blocks[0]
    torch.manual_seed(3)
    r = torch.randn(1, 5, 4)  # the residual stream before the block: pos_embed (patch embed and cls are zero)
    with torch.no_grad():
        for p in tower.parameters():
            p.zero_()
        vit.pos_embed.copy_(r)
        blk.norm1.weight.fill_(1.0)
        blk.norm2.weight.fill_(1.0)
        blk.attn.qkv.bias[8:] = torch.tensor([3.0, -3.0, 3.0, -3.0])  # q = k = 0, v = (3, -3, 3, -3) everywhere
        blk.attn.proj.weight.copy_(torch.eye(4))
        blk.mlp.fc2.bias.copy_(torch.tensor([2.0, 2.0, -2.0, -2.0]))  # fc1 = 0 -> gelu(0) = 0 -> mlp = fc2.bias
    return tower, r


@pytest.mark.parametrize("postnorm", [True, False])
def test_postnorm_arithmetic_by_hand(postnorm: bool) -> None:
    """Postnorm adds LN(sublayer) = (2, 0, 0, -2) to each token; prenorm adds the raw sublayer sum (5, -1, 1, -5).

    q = k = 0, so attention is uniform and returns the mean of v = a = (3, -3, 3, -3) (proj is identity); the
    MLP returns m = (2, 2, -2, -2) whatever its input. With postnorm ``x + LN(a) + LN(m)`` and LN (gain 1,
    bias 0, eps 1e-6) of a zero-mean +-c vector is +-c / sqrt(c^2 + eps): 3/sqrt(9 + 1e-6)(1, -1, 1, -1)
    + 2/sqrt(4 + 1e-6)(1, 1, -1, -1) ~= (2, 0, 0, -2). With prenorm ``x + a + m`` = x + (5, -1, 1, -5).
    """
    tower, r = _hand_tower(postnorm)
    a = torch.tensor([3.0, -3.0, 3.0, -3.0])
    m = torch.tensor([2.0, 2.0, -2.0, -2.0])
    if postnorm:
        delta = a / math.sqrt(9 + 1e-6) + m / math.sqrt(4 + 1e-6)
        assert delta.tolist() == pytest.approx([2.0, 0.0, 0.0, -2.0], abs=1e-6)
    else:
        delta = a + m
        assert delta.tolist() == [5.0, -1.0, 1.0, -5.0]
    with torch.no_grad():
        pixels = torch.randn(1, 3, 16, 16)  # ignored: the patch embedding is zero
        tokens = tower.tokens(pixels)  # (1, 4, 4)
        pooled = tower(pixels)  # (1, 4, 1, 1): mean of the 2x2 tokens
    torch.testing.assert_close(tokens, r[:, 1:] + delta, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[:, :, 0, 0], r[:, 1:].mean(dim=1) + delta, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# 4. strict loading
# ---------------------------------------------------------------------------------------------------------


def _assert_same(a: EvaVisionTower, b: EvaVisionTower) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_from_checkpoint_prefix_ignores_other_modules() -> None:
    """All 28 tiny tensors load from ``model.gen_vision_tower.*``; keys of other modules are left alone."""
    src, dst = _tiny(0), _tiny(1)
    state = {checkpoint_prefix + k: v for k, v in src.state_dict().items()}
    assert len(state) == 4 + 2 * 12 == 28
    state["model.dit.x_embedder.weight"] = torch.zeros(3)
    load_tower_weights(dst, state)
    _assert_same(src, dst)
    torch.testing.assert_close(dst.features(_images()), src.features(_images()), atol=0, rtol=0)


def test_load_errors_name_the_keys() -> None:
    """A missing, an unexpected and a wrong-shape key are each a CheckpointError naming the key."""
    src, dst = _tiny(0), _tiny(1)
    good = {checkpoint_prefix + k: v for k, v in src.state_dict().items()}
    missing_key = checkpoint_prefix + "vision_tower.model.blocks.1.mlp.fc2.bias"
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): " + missing_key.replace(".", r"\.")):
        load_tower_weights(dst, {k: v for k, v in good.items() if k != missing_key})
    extra = checkpoint_prefix + "vision_tower.model.norm.weight"
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): " + extra.replace(".", r"\.")):
        load_tower_weights(dst, {**good, extra: torch.ones(8)})
    pos = checkpoint_prefix + "vision_tower.model.pos_embed"
    with pytest.raises(CheckpointError, match=pos.replace(".", r"\.") + r" \(1, 16, 8\) != \(1, 17, 8\)"):
        load_tower_weights(dst, {**good, pos: torch.zeros(1, 16, 8)})
    _assert_same(_tiny(1), dst)  # a failed load changes nothing


def test_load_tower_file_round_trips(tmp_path: Path) -> None:
    """``.bin`` (tower layout, or bare ViT nested under ``module`` with ``module.`` names) and ``.safetensors``
    files load back to identical weights; ``skip`` drops an extra key as upstream's skip_list does."""
    src = _tiny(0)
    own = src.state_dict()

    torch.save(own, tmp_path / "tower.bin")
    dst = _tiny(1)
    load_tower_weights(dst, load_tower_file(tmp_path / "tower.bin"), prefix="")
    _assert_same(src, dst)

    bare = {"module." + k: v for k, v in src.vision_tower.model.state_dict().items()}
    bare["module.head.weight"] = torch.zeros(2, 8)  # not in BLIP3o's tower
    torch.save({"module": bare}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"unexpected key\(s\): vision_tower\.model\.head\.weight"):
        load_tower_weights(_tiny(1), load_tower_file(tmp_path / "pytorch_model.bin"), prefix="")
    state = load_tower_file(tmp_path / "pytorch_model.bin", skip={"module.head.weight"})
    assert sorted(state) == sorted(own)
    dst = _tiny(1)
    load_tower_weights(dst, state, prefix="")
    _assert_same(src, dst)

    save_file({checkpoint_prefix + k: v.contiguous() for k, v in own.items()}, str(tmp_path / "tower.safetensors"))
    dst = _tiny(1)
    load_tower_weights(dst, load_tower_file(tmp_path / "tower.safetensors"), prefix="")
    _assert_same(src, dst)

    with pytest.raises(CheckpointError, match="nope.bin does not exist"):
        load_tower_file(tmp_path / "nope.bin")
