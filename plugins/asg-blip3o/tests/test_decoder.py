"""The diffusion decoder (UNet + VAE + Euler loop of pipeline_llava_gen): folder round trip without network,
output sizes, the grid-to-token adapter, classifier-free guidance against a hand computation, and errors."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from asg.backbones import checkpoint_io
from asg.errors import ConfigError
from asg_blip3o.decoder import (
    UPSTREAM_SCHEDULER_CONFIG,
    DecoderFolderError,
    DiffusionDecoder,
    as_tokens,
    cfg_combine,
    sdxl_time_ids,
)

WIDTH = 32  # tiny token width (1792 in the release)
SIDE = 16  # tiny image side in pixels; the tiny VAE down-samples 2x, so latents are 8x8


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images])


@pytest.fixture(scope="module")
def decoder() -> DiffusionDecoder:
    return DiffusionDecoder.tiny(feature_dim=WIDTH, seed=0)


@pytest.fixture(scope="module")
def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional tokens for a batch of 2 and one unconditional row, 64 tokens each as in the release."""
    gen = _seeded(7)
    return torch.randn(2, 64, WIDTH, generator=gen), torch.randn(1, 64, WIDTH, generator=gen)


@pytest.fixture(scope="module")
def saved(decoder: DiffusionDecoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return decoder.save(tmp_path_factory.mktemp("ckpt") / "diffusion-decoder")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set HF_HUB_OFFLINE=1 and make any socket connection fail, so a load that reaches for the network errors."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------------------------------------
# Folder round trip
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [None, "bf16"])
def test_round_trip_through_release_layout(decoder, tokens, tmp_path, no_network, variant):
    """A saved tiny decoder reloads offline from the release layout and decodes the same pixels for the same seed."""
    folder = decoder.save(tmp_path / "diffusion-decoder", variant=variant)
    weights = "diffusion_pytorch_model.safetensors" if variant is None else f"diffusion_pytorch_model.{variant}.safetensors"
    for part in ("unet/config.json", f"unet/{weights}", "vae/config.json", f"vae/{weights}",
                 "scheduler/scheduler_config.json", "model_index.json"):
        assert (folder / part).is_file(), part
    shared = 0o666 & ~checkpoint_io._umask()  # not safetensors' owner-only 0o600 (under the usual umask 022)
    assert all(os.stat(folder / f"{part}/{weights}").st_mode & 0o777 == shared for part in ("unet", "vae"))

    loaded = DiffusionDecoder.from_folder(folder, device="cpu", dtype=torch.float32)
    assert isinstance(loaded.scheduler, EulerDiscreteScheduler)
    assert loaded.scheduler.config.timestep_spacing == "leading"
    assert loaded.scheduler.config.steps_offset == 1
    assert loaded.feature_dim == WIDTH
    original_state = decoder.unet.state_dict()
    assert all(torch.equal(original_state[k], v) for k, v in loaded.unet.state_dict().items())

    cond, neg = tokens
    kwargs = dict(negative_tokens=neg, steps=2, guidance=3.0, height=SIDE, width=SIDE)
    expected = _pixels(decoder.decode(cond, generator=_seeded(1), **kwargs))
    got = _pixels(loaded.decode(cond, generator=_seeded(1), **kwargs))
    assert got.shape == (2, SIDE, SIDE, 3)
    assert np.array_equal(got, expected)


def test_from_folder_accepts_the_checkpoint_root(saved, no_network):
    """Pointing from_folder at the checkpoint folder finds its diffusion-decoder/ subfolder."""
    loaded = DiffusionDecoder.from_folder(saved.parent)
    assert loaded.feature_dim == WIDTH
    assert loaded.vae_scale_factor == 2


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("unet", "unet"),
        ("vae", "vae"),
        ("unet/config.json", "unet/config.json"),
        ("vae/diffusion_pytorch_model.safetensors", "vae"),  # no weights: the error names the folder searched
        ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
    ],
)
def test_missing_part_is_an_error_naming_it(saved, tmp_path, missing, named):
    """Removing unet/, vae/, a config or the weights makes from_folder fail with the missing path in the message."""
    folder = shutil.copytree(saved, tmp_path / "diffusion-decoder")
    target = folder / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DecoderFolderError) as info:
        DiffusionDecoder.from_folder(folder)
    assert repr(str(folder / named)) in str(info.value)


def test_missing_folder_is_an_error_naming_it(tmp_path):
    """A path that does not exist is reported by name."""
    with pytest.raises(DecoderFolderError, match="nowhere"):
        DiffusionDecoder.from_folder(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# Shapes and the feature adapter
# ------------------------------------------------------------------------------------------------


def test_as_tokens_reads_the_grid_row_major():
    """Grid cell (h, w) of a (B, C, 8, 8) grid becomes token h * 8 + w, as BLIP3o's view(B, C, -1).permute(0, 2, 1)."""
    grid = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = as_tokens(grid, 3)
    assert out.shape == (2, 64, 3)
    assert out[1, 2 * 8 + 5, 2].item() == grid[1, 2, 2, 5].item() == 1 * 192 + 2 * 64 + 2 * 8 + 5
    assert torch.equal(out, grid.view(2, 3, -1).permute(0, 2, 1))
    with pytest.raises(ConfigError, match=r"\(B, 4, H, W\)"):
        as_tokens(grid, 4)
    with pytest.raises(ConfigError, match=r"\(B, N, 5\)"):
        as_tokens(out, 5)


def test_decode_returns_requested_size_and_takes_grids(decoder, tokens):
    """decode gives B RGB images of width x height, and a (B, C, 8, 8) grid decodes exactly like its tokens."""
    cond, neg = tokens
    kwargs = dict(negative_tokens=neg, steps=2, guidance=2.0, height=SIDE, width=24)
    images = decoder.decode(cond, generator=_seeded(3), **kwargs)
    assert [image.size for image in images] == [(24, SIDE), (24, SIDE)]
    assert {image.mode for image in images} == {"RGB"}
    grid = cond.transpose(1, 2).reshape(2, WIDTH, 8, 8)
    from_grid = decoder.decode(grid, generator=_seeded(3), **kwargs)
    assert np.array_equal(_pixels(from_grid), _pixels(images))


def test_sdxl_time_ids_layout():
    """time_ids rows are original (h, w), crop (top, left), target (h, w), as pipeline_llava_gen builds them."""
    ids = sdxl_time_ids(3, original_size=(1024, 1024), crop_coords=(0, 0), target_size=(512, 768))
    assert ids.dtype == torch.long
    assert ids.tolist() == [[1024, 1024, 0, 0, 512, 768]] * 3


def test_bad_size_and_steps_are_errors(decoder, tokens):
    """A height the VAE cannot reach exactly (not a multiple of its scale factor), or zero steps, is rejected by name."""
    cond, neg = tokens
    with pytest.raises(ConfigError, match="height must be a positive multiple of the VAE scale factor 2"):
        decoder.decode(cond, negative_tokens=neg, height=17, width=SIDE)
    with pytest.raises(ConfigError, match="steps must be a positive int"):
        decoder.decode(cond, negative_tokens=neg, steps=0, height=SIDE, width=SIDE)


# ------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ------------------------------------------------------------------------------------------------


def test_guidance_one_runs_only_the_conditional_branch(decoder, tokens, monkeypatch):
    """At guidance 1.0 the UNet sees only the B conditional rows, so the negatives cannot change the pixels."""
    cond, neg = tokens
    seen: list[torch.Tensor] = []
    real_forward = decoder.unet.forward

    def spy(sample, timestep, encoder_hidden_states, **kwargs):
        seen.append(encoder_hidden_states.clone())
        return real_forward(sample, timestep, encoder_hidden_states, **kwargs)

    monkeypatch.setattr(decoder.unet, "forward", spy)
    kwargs = dict(steps=2, guidance=1.0, height=SIDE, width=SIDE)
    plain = _pixels(decoder.decode(cond, generator=_seeded(5), **kwargs))
    assert len(seen) == 2 and all(torch.equal(ehs, cond) for ehs in seen)
    with_neg = _pixels(decoder.decode(cond, negative_tokens=neg, generator=_seeded(5), **kwargs))
    with_other = _pixels(decoder.decode(cond, negative_tokens=neg + 1.0, generator=_seeded(5), **kwargs))
    assert np.array_equal(with_neg, plain) and np.array_equal(with_other, plain)
    guided = _pixels(decoder.decode(cond, negative_tokens=neg, generator=_seeded(5), steps=2, guidance=3.0,
                                    height=SIDE, width=SIDE))
    assert not np.array_equal(guided, plain)


def _hand_sigmas(timesteps: list[int]) -> list[float]:
    """Euler sigmas of the released scheduler config at the given integer timesteps, then the final 0."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigma = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    return [sigma[t].item() for t in timesteps] + [0.0]


def test_released_scheduler_config_gives_the_known_schedule():
    """The released Euler config, built from its JSON alone, gives 30 leading timesteps 958, 925, ..., 34, 1 and
    an initial noise scale sqrt(sigma(958)^2 + 1) = 11.5203."""
    scheduler = EulerDiscreteScheduler.from_config(UPSTREAM_SCHEDULER_CONFIG)
    scheduler.set_timesteps(30)
    assert scheduler.timesteps.tolist() == [958.0 - 33.0 * i for i in range(30)]
    sigma_958 = _hand_sigmas([958])[0]
    assert float(scheduler.init_noise_sigma) == pytest.approx((sigma_958**2 + 1) ** 0.5, rel=1e-5)
    assert float(scheduler.init_noise_sigma) == pytest.approx(11.5203, abs=1e-4)


def test_cfg_combination_matches_hand_computation(decoder, tokens, monkeypatch):
    """With a UNet that answers c for conditional rows and u for unconditional ones, the loop's latents equal a hand-run
    Euler integration of u + g * (c - u) from the same noise, with [cond; uncond] order and SDXL added conditions."""
    cond, neg = tokens
    guidance, steps = 2.5, 3
    latent_shape = (2, 4, SIDE // 2, SIDE // 2)
    gen = _seeded(11)
    c = torch.randn(latent_shape, generator=gen)
    u = torch.randn(latent_shape, generator=gen)
    calls: list[dict] = []

    def fake_unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=None, return_dict=True, **kwargs):
        rows = encoder_hidden_states.shape[0]
        is_cond = [torch.equal(encoder_hidden_states[i], cond[i % 2]) for i in range(rows)]
        out = torch.cat([c, u]) if is_cond == [True, True, False, False] else torch.full_like(sample, float("nan"))
        calls.append(dict(t=int(timestep), sample=sample.clone(), is_cond=is_cond, ehs=encoder_hidden_states.clone(),
                          added=dict(added_cond_kwargs)))
        return (out,)

    monkeypatch.setattr(decoder.unet, "forward", fake_unet)
    latents = decoder.sample_latents(cond, negative_tokens=neg, steps=steps, guidance=guidance, height=SIDE,
                                     width=SIDE, generator=_seeded(13))

    # leading spacing with steps_offset 1: (0, 333, 666) reversed, plus 1
    assert [call["t"] for call in calls] == [667, 334, 1]
    assert [call["is_cond"] for call in calls] == [[True, True, False, False]] * 3
    first = calls[0]
    assert torch.equal(first["ehs"], torch.cat([cond, neg.expand(2, -1, -1)]))
    assert torch.allclose(first["added"]["text_embeds"], first["ehs"].mean(dim=1))
    assert first["added"]["time_ids"].tolist() == [[1024, 1024, 0, 0, SIDE, SIDE]] * 4

    sigmas = _hand_sigmas([667, 334, 1])
    x = torch.randn(latent_shape, generator=_seeded(13)).double() * (sigmas[0] ** 2 + 1) ** 0.5
    assert torch.allclose(first["sample"].double(), torch.cat([x, x]) / (sigmas[0] ** 2 + 1) ** 0.5, atol=1e-5)
    eps = (u + guidance * (c - u)).double()
    for i in range(steps):
        x = x + (sigmas[i + 1] - sigmas[i]) * eps  # Euler step of an epsilon-prediction model
    assert latents.shape == latent_shape
    assert torch.allclose(latents.double(), x, rtol=1e-4, atol=1e-4)
    assert torch.allclose(cfg_combine(c, u, guidance), u + guidance * (c - u))


def test_guided_decode_needs_null_tokens(decoder, tokens):
    """Guidance above 1 without negatives is an error; set_null_tokens supplies them, like passing negative_tokens."""
    cond, neg = tokens
    fresh = DiffusionDecoder(decoder.unet, decoder.vae, EulerDiscreteScheduler.from_config(UPSTREAM_SCHEDULER_CONFIG))
    with pytest.raises(ConfigError, match="negative_tokens"):
        fresh.decode(cond, steps=1, guidance=3.0, height=SIDE, width=SIDE)
    kwargs = dict(steps=2, guidance=3.0, height=SIDE, width=SIDE)
    explicit = _pixels(fresh.decode(cond, negative_tokens=neg, generator=_seeded(2), **kwargs))
    fresh.set_null_tokens(neg.transpose(1, 2).reshape(1, WIDTH, 8, 8))  # a DiT-style grid works too
    stored = _pixels(fresh.decode(cond, generator=_seeded(2), **kwargs))
    assert np.array_equal(stored, explicit)
    with pytest.raises(ConfigError, match=r"does not fit clip_tokens \(2, 64, 32\)"):
        fresh.decode(cond, negative_tokens=neg[:, :10], **kwargs)


def test_interface_check_rejects_a_mismatched_unet(decoder):
    """A UNet whose pooled input width is not token width + 6 time ids is refused with both numbers named."""
    from diffusers import UNet2DConditionModel

    config = dict(decoder.unet.config)
    config["projection_class_embeddings_input_dim"] = WIDTH + 6 * 8 + 1
    bad = UNet2DConditionModel.from_config(config)
    with pytest.raises(ConfigError, match=r"projection_class_embeddings_input_dim is 81.*need 80"):
        DiffusionDecoder(bad, decoder.vae, decoder.scheduler)
