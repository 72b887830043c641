"""The BSQ-VAE (``vae_local``): checkpoint names and sizes against the full-size manifest, a strict load of the
tiny fixture's weights, decoding, and the image -> per-scale bits path checked by hand and against the
generation loop's own accumulation of teacher-forced bits.

There is no IO fixture for the VAE. Parity with upstream's own code was measured once outside the suite (its
bsq_vae + bitwise_self_correction files run on CPU with these tiny weights, images 64x64, 256x256 and 320x240):
decoder output, encoder features, ``flip_requant`` labels at noise strength 0, ``decode_from_indices`` summed
codes and images were all bit-identical to ours.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from asg.errors import ConfigError, DataError
from asg_vargpt.bsq_vae import (
    BSQVAE,
    BSQVAEConfig,
    from_images,
    to_images,
    vae_parameter_shapes,
)
from asg_vargpt.generate import PromptState, bits_to_codes, generate_bits, scale_schedule
from asg_vargpt.infinity import VargptImageHead, infinity_tiny

S = 1 / math.sqrt(32)  # magnitude of every BSQ code entry


@pytest.fixture(scope="module")
def manifest_vae(fixture_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vae_local.* tensor entries, header component counts) of the full-size manifest."""
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    (entry,) = manifest["checkpoint_files"].values()
    tensors = {k: v for k, v in entry["tensors"].items() if k.startswith("vae_local.")}
    return tensors, manifest["header"]["component_parameter_counts"]


@pytest.fixture(scope="module")
def weights(fixture_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(fixture_dir / "tiny" / "weights.safetensors")


@pytest.fixture(scope="module")
def tiny_vae(weights: dict[str, torch.Tensor]) -> BSQVAE:
    vae = BSQVAE(BSQVAEConfig.tiny()).eval()
    vae.load_checkpoint_state(weights)
    return vae


def _image(h: int, w: int, seed: int) -> torch.Tensor:
    """A [2, 3, h, w] test image in [-1, 1]: one smooth row, one noise row."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    smooth = torch.stack([torch.sin(3 * xx + yy), torch.cos(2 * yy), xx * yy])
    noise = torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.stack([smooth, noise])


# --------------------------------------------------------------------------------------- names and sizes


def test_full_size_matches_manifest(manifest_vae: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """The full-size VAE (built on meta) has exactly the manifest's 269 vae_local.* names, shapes and dtypes."""
    entries, counts = manifest_vae
    with torch.device("meta"):
        vae = BSQVAE(BSQVAEConfig.full())
    assert len(entries) == 269
    assert vae_parameter_shapes(vae) == {k: tuple(v["shape"]) for k, v in entries.items()}
    dtypes = {"vae_local." + k: str(t.dtype).removeprefix("torch.") for k, t in vae.state_dict().items()}
    assert dtypes == {k: v["dtype"] for k, v in entries.items()}
    # Parameters: encoder 45,025,696 + decoder 65,092,355; the manifest's 110,118,083 adds the 32-entry mask.
    n_enc = sum(p.numel() for p in vae.encoder.parameters())
    n_dec = sum(p.numel() for p in vae.decoder.parameters())
    assert (n_enc, n_dec) == (counts["vae_local.encoder."], counts["vae_local.decoder."]) == (45_025_696, 65_092_355)
    assert sum(p.numel() for p in vae.parameters()) == 110_118_051
    assert sum(t.numel() for t in vae.state_dict().values()) == counts["vae_local."] == 110_118_083
    assert [name for name, _ in vae.named_buffers()] == ["quantizer.lfq.mask"]


def test_tiny_config_matches_fixture(fixture_dir: Path) -> None:
    """BSQVAEConfig.tiny() carries the fixture's "BSQ-VAE overrides"; full() is vae.py's 128 / 2 / [1,2,4,4,4]."""
    over = json.loads((fixture_dir / "tiny" / "fixture.json").read_text())["tiny_config"]["BSQ-VAE overrides"]
    tiny, full = BSQVAEConfig.tiny(), BSQVAEConfig.full()
    assert (tiny.base_ch, tiny.num_res_blocks) == (over["base_ch"], over["num_res_blocks"]) == (32, 1)
    assert list(tiny.encoder_ch_mult) == over["encoder_ch_mult"]
    assert list(tiny.decoder_ch_mult) == over["decoder_ch_mult"]
    assert (full.base_ch, full.num_res_blocks, full.encoder_ch_mult, full.codebook_dim, full.patch_size) == (
        128, 2, (1, 2, 4, 4, 4), 32, 16)
    assert (tiny.codebook_dim, tiny.patch_size, tiny.num_halvings) == (32, 16, 4)


def test_tiny_weights_load_strictly(tiny_vae: BSQVAE, weights: dict[str, torch.Tensor]) -> None:
    """All 181 vae_local.* tensors of the tiny fixture load strictly, values intact; the mask is 2^31 ... 2^0."""
    vae_keys = [k for k in weights if k.startswith("vae_local.")]
    assert len(vae_keys) == len(tiny_vae.state_dict()) == 181
    state = tiny_vae.state_dict()
    assert all(torch.equal(state[k[len("vae_local."):]], weights[k]) for k in vae_keys)
    assert torch.equal(tiny_vae.quantizer.lfq.mask, 2 ** torch.arange(31, -1, -1))
    assert tiny_vae.quantizer.lfq.mask[0].item() == 2_147_483_648


def test_load_names_missing_and_unexpected_keys(weights: dict[str, torch.Tensor]) -> None:
    """Loading the tiny weights into a 2-block VAE is a DataError that names a missing prefixed key."""
    vae = BSQVAE(BSQVAEConfig(base_ch=32, num_res_blocks=2, encoder_ch_mult=(1,) * 5, decoder_ch_mult=(1,) * 5))
    with pytest.raises(DataError, match=r"missing \[vae_local\.decoder\.up\.0\.block\.2\."):
        vae.load_checkpoint_state(weights)


def test_config_rejects_sizes_upstream_cannot_build() -> None:
    """A width GroupNorm(32 or 24) cannot split, a non-power-of-2 patch, or too few levels is a ConfigError."""
    with pytest.raises(ConfigError, match="multiple of 32 or 24"):
        BSQVAEConfig(base_ch=20)
    with pytest.raises(ConfigError, match="power of 2"):
        BSQVAEConfig(patch_size=12)
    with pytest.raises(ConfigError, match="encoder_ch_mult"):
        BSQVAEConfig(encoder_ch_mult=(1, 2, 4))
    assert BSQVAEConfig(base_ch=48).base_ch == 48  # 48 % 24 == 0: upstream's GroupNorm(24) case


# -------------------------------------------------------------------------------------------- decoding


def test_decode_shape_and_range(tiny_vae: BSQVAE) -> None:
    """Codes [B,32,1,h,w] (or [B,32,h,w]) decode to [B,3,16h,16w] clamped to [-1,1]; wrong shapes are refused."""
    codes = torch.randn(2, 32, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        px = tiny_vae.decode(codes)
        px4 = tiny_vae.decode(codes.squeeze(2))
    assert px.shape == (2, 3, 32, 48)
    assert torch.equal(px, px4)
    assert px.min().item() >= -1.0 and px.max().item() <= 1.0
    assert px.std().item() > 0  # not a constant image
    with pytest.raises(ConfigError, match=r"summed codes \[B, 32, 1, h, w\]"):
        tiny_vae.decode(torch.zeros(1, 16, 1, 2, 2))


def test_to_images_truncates_like_upstream() -> None:
    """to_images maps -1 -> 0, 1 -> 255 and 0 -> 127 (upstream's truncating uint8 cast), RGB order kept."""
    px = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    (img,) = to_images(px)
    assert img.mode == "RGB" and img.size == (2, 2)
    assert img.getpixel((0, 0)) == (0, 127, 255)
    with pytest.raises(ConfigError, match=r"pixels \[B, 3, H, W\]"):
        to_images(torch.zeros(3, 4, 4))


def test_from_images_inverts_to_images_and_crops() -> None:
    """from_images(to_images(p)) is within one grey level of p; resolution= gives upstream's square centre crop."""
    px = _image(32, 48, seed=1)
    back = from_images(to_images(px))
    assert back.shape == (2, 3, 32, 48)
    assert (back - px).abs().max().item() <= 2 / 255 + 1e-6
    cropped = from_images(to_images(px), resolution=16)  # shorter side 32 -> 18, then a 16 x 16 centre crop
    assert cropped.shape == (2, 3, 16, 16)
    assert cropped.min().item() >= -1.0 and cropped.max().item() <= 1.0
    with pytest.raises(DataError, match="different sizes"):
        from_images(to_images(px[:1]) + to_images(_image(16, 16, seed=2)[:1]))


# -------------------------------------------------------------------------------------------- encoding


def test_bits_by_hand_on_constructed_features(tiny_vae: BSQVAE) -> None:
    """On hand-made 2x2 features, scale-0 bits are the signs of the channel means (0 -> bit 0) and scale-1 bits
    the signs of the features minus the scale-0 codes +-1/sqrt(32)."""
    f = torch.zeros(1, 32, 1, 2, 2)  # channels 5..31 stay 0
    f[0, 0] = 1.0
    f[0, 1] = -1.0
    f[0, 2] = 0.1  # mean > 0 but below 1/sqrt(32): the scale-1 residual turns negative
    f[0, 3] = torch.tensor([[0.5, -0.5], [0.5, -0.5]])  # mean exactly 0 -> bit 0
    f[0, 4] = torch.tensor([[3.0, -1.0], [-1.0, -1.0]])  # mean exactly 0 -> bit 0
    bits, summed = tiny_vae.quantizer.encode(f, [(1, 1, 1), (1, 2, 2)])
    assert [tuple(b.shape) for b in bits] == [(1, 1, 1, 1, 32), (1, 1, 2, 2, 32)]
    assert bits[0].dtype == torch.int64
    assert bits[0][0, 0, 0, 0].tolist() == [1, 0, 1, 0, 0] + [0] * 27
    b1 = bits[1][0, 0]  # [2, 2, 32]
    assert b1[..., 0].tolist() == [[1, 1], [1, 1]]  # 1 - s > 0
    assert b1[..., 1].tolist() == [[0, 0], [0, 0]]  # -1 + s < 0
    assert b1[..., 2].tolist() == [[0, 0], [0, 0]]  # 0.1 - s < 0
    assert b1[..., 3].tolist() == [[1, 0], [1, 0]]  # +-0.5 + s
    assert b1[..., 4].tolist() == [[1, 0], [0, 0]]  # 3 + s, -1 + s
    assert b1[..., 5:].eq(1).all()  # 0 + s > 0
    # Summed codes by hand: (2*bit0 - 1) * s broadcast over the grid, plus (2*bit1 - 1) * s.
    hand = ((2 * bits[0].float() - 1) * S + (2 * bits[1].float() - 1) * S).permute(0, 4, 1, 2, 3)
    assert summed.shape == (1, 32, 1, 2, 2)
    assert (summed - hand).abs().max().item() < 1e-6


def test_scale0_bits_are_signs_of_the_encoder_mean(tiny_vae: BSQVAE) -> None:
    """For an image, scale-0 bits are exactly (mean over the token grid of the encoder output > 0), per channel."""
    px = _image(64, 64, seed=3)
    enc = tiny_vae.encode_bits(px, [(1, 1, 1), (1, 2, 2), (1, 4, 4)])
    assert enc.features.shape == (2, 32, 1, 4, 4)
    expected = (enc.features.mean(dim=(2, 3, 4)) > 0).long()  # [2, 32]
    assert torch.equal(enc.bits[0].view(2, 32), expected)
    assert 0 < expected.sum().item() < 64  # both signs occur
    assert set(torch.cat([b.flatten() for b in enc.bits]).unique().tolist()) == {0, 1}


class _EchoLM(nn.Module):
    """A stand-in text decoder that returns its input embeddings: the loop's accumulation needs no real LLM."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(1, hidden)
        self.layers = nn.ModuleList()

    def forward(self, inputs_embeds: torch.Tensor, **_: Any) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=inputs_embeds)


def test_encoded_bits_teacher_force_the_generation_loop(tiny_vae: BSQVAE) -> None:
    """Forcing a 256x256 image's 7 '0.06M' scales of bits through generate_bits gives exactly our summed codes
    (values and layout), a hand accumulation agrees, and both decode to the same pixels."""
    sched = scale_schedule("0.06M")
    assert [s[1:] for s in sched] == [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16)]
    px = _image(256, 256, seed=4)
    enc = tiny_vae.encode_bits(px, sched)
    assert [tuple(b.shape) for b in enc.bits] == [(2, 1, h, w, 32) for _, h, w in sched]
    assert enc.summed_codes.shape == (2, 32, 1, 16, 16)

    torch.manual_seed(0)
    head = VargptImageHead(infinity_tiny(), llm_hidden=64, image_gen_start_token_id=0).eval()
    prompt = PromptState(hidden=torch.randn(2, 3, 64), cache=None)
    with torch.no_grad():
        out = generate_bits(_EchoLM(64), head, prompt, schedule=sched, cfg=1.0, forced_bits=enc.bits)
    assert all(torch.equal(a, b) for a, b in zip(out.bits, enc.bits))
    assert out.summed_codes is not None
    assert torch.equal(out.summed_codes, enc.summed_codes)
    assert out.summed_codes.stride() == enc.summed_codes.stride()

    # The accumulation rule written out: codes l2norm(2*b*s - s), trilinear up to the last scale, summed.
    hand = torch.zeros(2, 32, 1, 16, 16)
    for b in enc.bits:
        codes = F.normalize(b.float() * 2 * S - S, dim=-1).permute(0, 4, 1, 2, 3)
        hand += F.interpolate(codes, size=sched[-1], mode="trilinear")
    assert (hand - enc.summed_codes).abs().max().item() < 1e-6
    assert (bits_to_codes(enc.bits[0]).abs() - S).abs().max().item() < 1e-7  # every entry is +-1/sqrt(32)

    with torch.no_grad():
        ours, loop = tiny_vae.decode(enc.summed_codes), tiny_vae.decode(out.summed_codes)
    assert ours.shape == (2, 3, 256, 256)
    assert torch.equal(ours, loop)


def test_encode_bits_refuses_mismatched_schedule(tiny_vae: BSQVAE) -> None:
    """A schedule not ending at the image's token grid, a non-(1,h,w) entry, or a side not a multiple of 16 fails."""
    px = _image(64, 64, seed=5)
    with pytest.raises(ConfigError, match=r"last scale \(2, 2\) is not the encoder's token grid \(4, 4\)"):
        tiny_vae.encode_bits(px, [(1, 1, 1), (1, 2, 2)])
    with pytest.raises(ConfigError, match=r"must be \(1, h, w\)"):
        tiny_vae.encode_bits(px, [(2, 4, 4)])
    with pytest.raises(ConfigError, match="multiples of 16"):
        tiny_vae.encode_bits(px[..., :60], [(1, 4, 4)])
