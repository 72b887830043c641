"""The FLUX autoencoder as a diffusers AutoencoderKL: parity with upstream BAGEL, the BFL <-> diffusers
key mapping, the real checkpoint's manifest, latent (un)patchify and encode."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from asg.errors import ConfigError
from asg_bagel.autoencoder import (
    AECheckpointError,
    AEParams,
    build_autoencoder,
    checkpoint_manifest,
    decode,
    encode,
    from_checkpoint_names,
    load_autoencoder,
    patchify_latent,
    to_checkpoint_names,
    unpatchify_latent,
)

AE_PARAMS_KEY = "ae_params (modeling.autoencoder.AutoEncoderParams)"


@pytest.fixture(scope="module")
def tiny_params(fixture_dir: Path) -> AEParams:
    config = json.loads((fixture_dir / "tiny" / "fixture.json").read_text())["tiny_config"]
    return AEParams.from_dict(config[AE_PARAMS_KEY])


@pytest.fixture(scope="module")
def tiny_ae_path(fixture_dir: Path) -> Path:
    return fixture_dir / "tiny" / "ae.safetensors"


@pytest.fixture(scope="module")
def tiny_ae(tiny_ae_path: Path, tiny_params: AEParams):
    return load_autoencoder(tiny_ae_path, tiny_params)


# ------------------------------------------------------------------------------------------------
# Parity with the upstream fixture
# ------------------------------------------------------------------------------------------------


def test_tiny_params_are_the_fixture_config(tiny_params: AEParams) -> None:
    """The fixture's upstream AutoEncoderParams load into AEParams unchanged (ch_mult list -> tuple)."""
    assert tiny_params == AEParams(
        resolution=64, in_channels=3, downsample=8, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1),
        num_res_blocks=1, z_channels=16, scale_factor=0.3611, shift_factor=0.1159,
    )


@torch.no_grad()
def test_decode_matches_upstream(tiny_ae, io_tensors: dict) -> None:
    """decode(scaled latent) reproduces upstream AutoEncoder.decode on the random 16x8x8 latent."""
    image = decode(tiny_ae, io_tensors["c.z"])
    assert image.shape == (1, 3, 64, 64)
    # measured max abs diff: 2.5e-6 (values up to ~3)
    assert (image - io_tensors["c.decoded"]).abs().max().item() < 1e-4


@torch.no_grad()
def test_unpatchify_then_decode_matches_upstream(tiny_ae, io_tensors: dict) -> None:
    """The b3 latent tokens unpatchify exactly as the upstream inferencer does, and decode to its image."""
    latent = unpatchify_latent(io_tensors["b3.latent_after_3_euler_steps"], 2, 3, 2, 16)  # (1, 16, 4, 6)
    assert torch.equal(latent, io_tensors["c2.unpatchified_latent"])
    image = decode(tiny_ae, latent)
    assert image.shape == (1, 3, 32, 48)
    # measured max abs diff: 1.7e-6 (values up to ~2.9)
    assert (image - io_tensors["c2.decoded"]).abs().max().item() < 1e-4


# ------------------------------------------------------------------------------------------------
# The real checkpoint
# ------------------------------------------------------------------------------------------------


def test_manifest_matches_real_checkpoint(fixture_dir: Path) -> None:
    """The meta-built FLUX module, under checkpoint names, has exactly the keys and shapes of ae.safetensors."""
    reference = json.loads((fixture_dir / "manifest.json").read_text())["checkpoint_files"]["ae.safetensors"]["tensors"]
    manifest = checkpoint_manifest(AEParams.flux())
    assert len(manifest) == len(reference) == 244
    assert set(manifest) == set(reference)
    wrong = {k: (manifest[k]["shape"], reference[k]["shape"]) for k in reference if manifest[k]["shape"] != reference[k]["shape"]}
    assert wrong == {}
    assert {v["dtype"] for v in manifest.values()} == {"float32"}
    assert {v["kind"] for v in manifest.values()} == {"parameter"}
    assert sum(math.prod(v["shape"]) for v in manifest.values()) == 83_819_683


def test_build_on_meta_is_configured_like_flux() -> None:
    """build_autoencoder(flux, 'meta') allocates nothing and records FLUX's latent scale/shift, with no quant convs."""
    ae = build_autoencoder(AEParams.flux(), device="meta")
    assert all(p.is_meta for p in ae.parameters())
    assert ae.quant_conv is None and ae.post_quant_conv is None
    assert ae.config.scaling_factor == 0.3611 and ae.config.shift_factor == 0.1159
    assert list(ae.config.block_out_channels) == [128, 256, 512, 512]
    assert ae.config.latent_channels == 16 and ae.config.norm_num_groups == 32
    assert sum(p.numel() for p in ae.parameters()) == 83_819_683


@pytest.mark.parametrize(
    ("module_key", "checkpoint_key", "checkpoint_shape"),
    [
        ("encoder.down_blocks.0.resnets.0.conv1.weight", "encoder.down.0.block.0.conv1.weight", [128, 128, 3, 3]),
        ("encoder.down_blocks.1.resnets.0.conv_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.weight", [256, 128, 1, 1]),
        ("encoder.down_blocks.2.downsamplers.0.conv.bias", "encoder.down.2.downsample.conv.bias", [512]),
        ("encoder.mid_block.attentions.0.to_q.weight", "encoder.mid.attn_1.q.weight", [512, 512, 1, 1]),
        ("encoder.mid_block.attentions.0.to_out.0.weight", "encoder.mid.attn_1.proj_out.weight", [512, 512, 1, 1]),
        ("encoder.mid_block.attentions.0.group_norm.weight", "encoder.mid.attn_1.norm.weight", [512]),
        ("encoder.mid_block.resnets.1.norm2.bias", "encoder.mid.block_2.norm2.bias", [512]),
        ("encoder.conv_norm_out.weight", "encoder.norm_out.weight", [512]),
        ("encoder.conv_out.weight", "encoder.conv_out.weight", [32, 512, 3, 3]),
        ("decoder.up_blocks.0.upsamplers.0.conv.weight", "decoder.up.3.upsample.conv.weight", [512, 512, 3, 3]),
        ("decoder.up_blocks.2.resnets.0.conv_shortcut.weight", "decoder.up.1.block.0.nin_shortcut.weight", [256, 512, 1, 1]),
        ("decoder.up_blocks.3.resnets.2.conv2.weight", "decoder.up.0.block.2.conv2.weight", [128, 128, 3, 3]),
        ("decoder.mid_block.resnets.0.conv1.weight", "decoder.mid.block_1.conv1.weight", [512, 512, 3, 3]),
        ("decoder.conv_in.weight", "decoder.conv_in.weight", [512, 16, 3, 3]),
    ],
)
def test_named_examples_of_the_mapping(module_key: str, checkpoint_key: str, checkpoint_shape: list[int]) -> None:
    """Representative diffusers keys map to the named BFL key and shape, and back (FLUX sizes, 4 levels)."""
    module_sd = build_autoencoder(AEParams.flux(), device="meta").state_dict()
    (name, tensor), = to_checkpoint_names({module_key: module_sd[module_key]}, num_levels=4).items()
    assert (name, list(tensor.shape)) == (checkpoint_key, checkpoint_shape)
    (back, back_tensor), = from_checkpoint_names({name: tensor}, num_levels=4).items()
    assert (back, back_tensor.shape) == (module_key, module_sd[module_key].shape)


# ------------------------------------------------------------------------------------------------
# The mapping
# ------------------------------------------------------------------------------------------------


def test_mapping_round_trips_module_state_dict(tiny_ae) -> None:
    """from_checkpoint_names(to_checkpoint_names(sd)) returns every key of the tiny module with equal values."""
    sd = tiny_ae.state_dict()
    back = from_checkpoint_names(to_checkpoint_names(sd))
    assert list(back) == list(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_mapping_round_trips_checkpoint(tiny_ae_path: Path) -> None:
    """to_checkpoint_names(from_checkpoint_names(file)) returns the 172 tensors of the tiny ae.safetensors unchanged."""
    checkpoint = load_file(tiny_ae_path)
    back = to_checkpoint_names(from_checkpoint_names(checkpoint))
    assert len(back) == len(checkpoint) == 172
    assert set(back) == set(checkpoint)
    assert all(torch.equal(back[k], checkpoint[k]) for k in checkpoint)


def test_loaded_attention_weight_is_the_conv_kernel(tiny_ae, tiny_ae_path: Path) -> None:
    """The module's linear to_q weight is the checkpoint's 1x1-conv q kernel with its two unit dims dropped."""
    checkpoint = load_file(tiny_ae_path)
    kernel = checkpoint["decoder.mid.attn_1.q.weight"]  # (32, 32, 1, 1)
    linear = tiny_ae.decoder.mid_block.attentions[0].to_q.weight  # (32, 32)
    assert kernel.shape == (32, 32, 1, 1) and linear.shape == (32, 32)
    assert torch.equal(linear, kernel[:, :, 0, 0])
    # and the decoder's first up block (diffusers order) holds BFL's last level
    assert torch.equal(tiny_ae.decoder.up_blocks[0].upsamplers[0].conv.weight, checkpoint["decoder.up.3.upsample.conv.weight"])


def test_unknown_key_is_named_by_the_renames() -> None:
    """A key that no rule knows is an error naming it, in both directions."""
    with pytest.raises(AECheckpointError, match=r"encoder\.down\.0\.block\.0\.conv3\.weight"):
        from_checkpoint_names({"encoder.down.0.block.0.conv3.weight": torch.zeros(1)})
    with pytest.raises(AECheckpointError, match=r"encoder\.quant_conv\.weight"):
        to_checkpoint_names({"encoder.quant_conv.weight": torch.zeros(1)})


def test_non_unit_attention_kernel_is_refused() -> None:
    """An attention weight that is not a 1x1 kernel is an error naming the key and its shape."""
    with pytest.raises(AECheckpointError, match=r"decoder\.mid\.attn_1\.k\.weight.*\(4, 4, 3, 3\)"):
        from_checkpoint_names({"decoder.mid.attn_1.k.weight": torch.zeros(4, 4, 3, 3)})


def _write_modified(tmp_path: Path, source: Path, drop: str | None = None, add: str | None = None) -> Path:
    tensors = load_file(source)
    if drop is not None:
        del tensors[drop]
    if add is not None:
        tensors[add] = torch.zeros(32)
    out = tmp_path / "ae.safetensors"
    save_file(tensors, out)
    return out


def test_missing_key_is_named_with_the_file(tmp_path: Path, tiny_ae_path: Path, tiny_params: AEParams) -> None:
    """Loading a checkpoint that lacks one tensor fails, naming the key and the file."""
    path = _write_modified(tmp_path, tiny_ae_path, drop="decoder.up.2.block.1.norm2.bias")
    with pytest.raises(AECheckpointError, match=r"1 missing key\(s\): decoder\.up\.2\.block\.1\.norm2\.bias") as err:
        load_autoencoder(path, tiny_params)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("extra", ["encoder.down.0.block.1.conv1.bias", "encoder.mystery.weight"])
def test_extra_key_is_named_with_the_file(tmp_path: Path, tiny_ae_path: Path, tiny_params: AEParams, extra: str) -> None:
    """Loading a checkpoint with one tensor too many (well-formed or not) fails, naming the key and the file."""
    path = _write_modified(tmp_path, tiny_ae_path, add=extra)
    with pytest.raises(AECheckpointError, match=r"1 unexpected key\(s\): " + extra.replace(".", r"\.")) as err:
        load_autoencoder(path, tiny_params)
    assert str(path) in str(err.value)


def test_wrong_shape_is_named(tmp_path: Path, tiny_ae_path: Path, tiny_params: AEParams) -> None:
    """Loading a checkpoint with a mis-shaped tensor fails, naming the key, expected and found shapes."""
    tensors = load_file(tiny_ae_path)
    tensors["encoder.conv_in.bias"] = torch.zeros(64)
    path = tmp_path / "ae.safetensors"
    save_file(tensors, path)
    with pytest.raises(AECheckpointError, match=r"encoder\.conv_in\.bias: expected \[32\], found \[64\]"):
        load_autoencoder(path, tiny_params)


def test_load_casts_to_requested_dtype(tiny_ae_path: Path, tiny_params: AEParams) -> None:
    """dtype=bfloat16 gives bf16 weights equal to the rounded file values; dtype=None keeps float32."""
    ae = load_autoencoder(tiny_ae_path, tiny_params, dtype=torch.bfloat16)
    checkpoint = load_file(tiny_ae_path)
    assert {p.dtype for p in ae.parameters()} == {torch.bfloat16}
    assert torch.equal(ae.decoder.conv_out.weight, checkpoint["decoder.conv_out.weight"].to(torch.bfloat16))
    assert {p.dtype for p in load_autoencoder(tiny_ae_path, tiny_params).parameters()} == {torch.float32}


# ------------------------------------------------------------------------------------------------
# Params
# ------------------------------------------------------------------------------------------------


def test_flux_params() -> None:
    """AEParams.flux() holds the values upstream load_ae hard-codes."""
    p = AEParams.flux()
    assert (p.resolution, p.in_channels, p.downsample, p.ch, p.out_ch) == (256, 3, 8, 128, 3)
    assert (p.ch_mult, p.num_res_blocks, p.z_channels) == ((1, 2, 4, 4), 2, 16)
    assert (p.scale_factor, p.shift_factor) == (0.3611, 0.1159)


def test_params_validation_names_the_field() -> None:
    """A downsample that disagrees with ch_mult, a ch not divisible by 32, or an unknown key is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"downsample \(16\).*= 8"):
        AEParams(downsample=16)
    with pytest.raises(ConfigError, match=r"ch \(48\).*multiple of 32"):
        AEParams(ch=48)
    with pytest.raises(ConfigError, match=r"'z_chanels'"):
        AEParams.from_dict({"z_chanels": 16})


# ------------------------------------------------------------------------------------------------
# Latent tokens and encode
# ------------------------------------------------------------------------------------------------


def test_patchify_unpatchify_are_inverse() -> None:
    """unpatchify(patchify(z)) == z and patchify(unpatchify(t)) == t on random tensors."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 16, 6, 10, generator=gen)  # h=3, w=5 at p=2
    tokens = patchify_latent(z, 2)
    assert tokens.shape == (3, 15, 64)
    assert torch.equal(unpatchify_latent(tokens, 3, 5, 2, 16), z)
    t = torch.randn(2, 15, 64, generator=gen)
    assert torch.equal(patchify_latent(unpatchify_latent(t, 3, 5, 2, 16), 2), t)


def test_patchify_feature_order_is_p_q_c() -> None:
    """One 2x2 patch becomes one token with features ordered (p, q, c): row, then column, then channel fastest."""
    one_channel = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    assert patchify_latent(one_channel, 2).tolist() == [[[1.0, 2.0, 3.0, 4.0]]]
    # value = 100*c + 10*p + q, two channels
    two_channels = torch.tensor([[[[0.0, 1.0], [10.0, 11.0]], [[100.0, 101.0], [110.0, 111.0]]]])  # (1, 2, 2, 2)
    assert patchify_latent(two_channels, 2).tolist() == [[[0.0, 100.0, 1.0, 101.0, 10.0, 110.0, 11.0, 111.0]]]


def test_patchify_token_order_is_row_major() -> None:
    """Tokens run along a row first: the 2x3 patch grid's token k holds patch (k // 3, k % 3)."""
    z = torch.arange(4 * 6, dtype=torch.float32).reshape(1, 1, 4, 6)  # value = 6*row + col
    tokens = patchify_latent(z, 2)  # (1, 6, 4)
    first_value = [int(v) for v in tokens[0, :, 0]]  # the top-left pixel of each patch
    assert first_value == [6 * 2 * (k // 3) + 2 * (k % 3) for k in range(6)] == [0, 2, 4, 12, 14, 16]


@torch.no_grad()
def test_encode_shape_and_determinism(tiny_ae) -> None:
    """encode gives (B, 16, H/8, W/8); the mean is deterministic, a sample repeats with the same generator seed."""
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mean = encode(tiny_ae, x)
    assert mean.shape == (2, 16, 4, 6)
    assert torch.equal(encode(tiny_ae, x), mean)
    a = encode(tiny_ae, x, sample=True, generator=torch.Generator().manual_seed(7))
    b = encode(tiny_ae, x, sample=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert (a - mean).abs().max().item() > 1e-3


@torch.no_grad()
def test_encode_applies_shift_then_scale(tiny_ae) -> None:
    """encode returns (posterior mean - 0.1159) * 0.3611, so decode(encode(x)) feeds the decoder that mean."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    raw_mean = tiny_ae.encode(x).latent_dist.mean  # (1, 16, 2, 2)
    assert torch.allclose(encode(tiny_ae, x), (raw_mean - 0.1159) * 0.3611, atol=1e-6, rtol=0)
    assert torch.allclose(decode(tiny_ae, encode(tiny_ae, x)), tiny_ae.decode(raw_mean).sample, atol=1e-5, rtol=0)
