"""The BLIP3o DiT head against the upstream tiny fixture, the full-size layout, and the training loss by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention import LuminaFeedForward
from safetensors.torch import load_file

from asg.errors import ConfigError
from asg_blip3o.dit import (
    DiTConfig,
    NextDiTCrossAttn,
    ffn_width,
    flow_matching_loss,
    flow_sample,
    parameter_count,
    sampling_scheduler,
)

ATOL = 1e-5


@pytest.fixture(scope="module")
def tiny_dit(fixture_dir: Path) -> NextDiTCrossAttn:
    """The fixture's tiny DiT, its 70 upstream weights loaded strictly."""
    dit = NextDiTCrossAttn(DiTConfig.tiny())
    result = dit.load_state_dict(load_file(fixture_dir / "tiny" / "weights.safetensors"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return dit.eval()


def test_tiny_config_is_the_fixtures(fixture_dir: Path) -> None:
    """DiTConfig.tiny() holds exactly the NextDiTCrossAttnConfig fields recorded in fixture.json."""
    recorded = json.loads((fixture_dir / "tiny" / "fixture.json").read_text())["tiny_config"]["NextDiTCrossAttnConfig"]
    tiny = DiTConfig.tiny()
    assert {k: getattr(tiny, k) for k in recorded} == recorded


def test_state_dict_keys_are_the_fixtures(tiny_dit: NextDiTCrossAttn, fixture_dir: Path) -> None:
    """The module's state dict has the fixture's 70 'model.*' keys and 57,200 values, and no rope table."""
    keys = set(tiny_dit.state_dict())
    assert keys == set(load_file(fixture_dir / "tiny" / "weights.safetensors"))
    assert len(keys) == 70 and parameter_count(tiny_dit) == 57_200
    assert tuple(tiny_dit.freqs_cis.shape) == (384, 384, 4) and tiny_dit.freqs_cis.dtype == torch.complex64


def test_velocity_matches_upstream_for_float_int_and_zero_conditioning(tiny_dit: NextDiTCrossAttn, io_tensors) -> None:
    """One velocity prediction equals upstream's for float timesteps, int64 timesteps and all-zero conditioning."""
    x, z = io_tensors["a.x_t"], io_tensors["a.z_latents"]
    with torch.no_grad():
        v_float = tiny_dit(x, io_tensors["a.timestep_float"], z)
        v_long = tiny_dit(x, io_tensors["a.timestep_long"], z)
        v_zero = tiny_dit(x, io_tensors["a.timestep_long"], torch.zeros_like(z))
    # measured max abs diff: 6.0e-7 (float t), 7.7e-7 (int64 t), 6.3e-7 (zero conditioning)
    torch.testing.assert_close(v_float, io_tensors["a.v_float_t"], atol=ATOL, rtol=0)
    torch.testing.assert_close(v_long, io_tensors["a.v_long_t"], atol=ATOL, rtol=0)
    torch.testing.assert_close(v_zero, io_tensors["a.v_long_t_zero_cond"], atol=ATOL, rtol=0)
    assert (v_long - v_zero).abs().max() > 0.1, "the conditioning must change the velocity"


def test_scalar_timestep_broadcasts_over_the_batch(tiny_dit: NextDiTCrossAttn, io_tensors) -> None:
    """A 0-d timestep gives the same velocity as the same value repeated per sample."""
    x, z = io_tensors["a.x_t"], io_tensors["a.z_latents"]
    with torch.no_grad():
        torch.testing.assert_close(tiny_dit(x, 500.0, z), tiny_dit(x, torch.tensor([500.0, 500.0]), z), atol=0, rtol=0)


def test_sampling_scheduler_matches_upstream(io_tensors) -> None:
    """Three sampling steps use upstream's timesteps 1000, 666.67, 333.33 and sigmas 1, 2/3, 1/3, 0 exactly."""
    scheduler = sampling_scheduler(3)
    torch.testing.assert_close(scheduler.timesteps, io_tensors["b.scheduler_timesteps"], atol=0, rtol=0)
    torch.testing.assert_close(scheduler.sigmas, io_tensors["b.scheduler_sigmas"], atol=0, rtol=0)


def test_sampling_loop_matches_upstream_step_by_step(tiny_dit: NextDiTCrossAttn, io_tensors) -> None:
    """From the stored noise, 3 guided Euler steps reproduce upstream's int timesteps, both velocity halves and final latents."""
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    final = flow_sample(tiny_dit, io_tensors["b.img_hidden_states"], steps=3, guidance=3.0,
                        latents=io_tensors["b.initial_latents"], on_step=lambda i, t, vu, vc: seen.append((t, vu, vc)))
    assert len(seen) == 3
    for i, (t, v_u, v_c) in enumerate(seen):
        assert t.dtype == torch.int64 and t.tolist() == io_tensors[f"b.step{i}.dit_timestep_long"].tolist()
        # measured max abs diff over the 3 steps: 1.0e-6 (v_uncond), 8.9e-7 (v_cond)
        torch.testing.assert_close(v_u, io_tensors[f"b.step{i}.v_uncond"], atol=ATOL, rtol=0)
        torch.testing.assert_close(v_c, io_tensors[f"b.step{i}.v_cond"], atol=ATOL, rtol=0)
    assert [t[0].item() for t, _, _ in seen] == [1000, 666, 333]
    # measured max abs diff: 8.3e-7
    torch.testing.assert_close(final, io_tensors["b.final_latents"], atol=ATOL, rtol=0)


def test_sampling_from_seed_draws_upstreams_noise(tiny_dit: NextDiTCrossAttn, io_tensors) -> None:
    """With generator seed 123 the sampler draws upstream's initial noise bit for bit and ends at its latents."""
    final, noise = flow_sample(tiny_dit, io_tensors["b.img_hidden_states"], steps=3,
                               generator=torch.Generator().manual_seed(123), return_noise=True)
    torch.testing.assert_close(noise, io_tensors["b.initial_latents"], atol=0, rtol=0)
    torch.testing.assert_close(final, io_tensors["b.final_latents"], atol=ATOL, rtol=0)


def test_ffn_width_follows_diffusers_0_32() -> None:
    """The feed-forward width is 0.32's ceil_m(int(2*4*dim/3)): 4864 at dim 1792, 96 tiny; 0.42 alone would give 7168."""
    assert ffn_width(DiTConfig.blip3o_8b()) == 4864
    assert ffn_width(DiTConfig.tiny()) == 96
    assert LuminaFeedForward(dim=1792, inner_dim=4 * 1792, multiple_of=256).linear_1.out_features == 7168


def test_full_size_meta_build_matches_manifest(fixture_dir: Path) -> None:
    """On meta, the BLIP3o-8B head's keys and shapes under 'model.dit.' equal the manifest's 642 entries (1,365,010,336 values)."""
    manifest = json.loads((fixture_dir / "manifest.json").read_text())
    (entry,) = manifest["checkpoint_files"].values()
    expected = {k: list(v["shape"]) for k, v in entry["tensors"].items() if k.startswith("model.dit.")}
    with torch.device("meta"):
        dit = NextDiTCrossAttn(DiTConfig.blip3o_8b())
    got = {f"model.dit.{k}": list(v.shape) for k, v in dit.state_dict().items()}
    assert sorted(set(got) ^ set(expected)) == []
    assert got == expected
    assert len(got) == 642
    assert parameter_count(dit) == sum(math.prod(s) for s in expected.values()) == 1_365_010_336
    assert dit.freqs_cis.device.type == "cpu" and tuple(dit.freqs_cis.shape) == (384, 384, 32)


def test_loss_is_the_per_sample_mse_by_hand() -> None:
    """With the DiT replaced by a constant, the per-sample MSE, and its weighted forms, equal the hand-computed values."""
    x0 = torch.tensor([[1.0, 2.0], [0.0, 0.0]]).view(2, 2, 1, 1)
    eps = torch.tensor([[1.0, 1.0], [3.0, -1.0]]).view(2, 2, 1, 1)
    known = torch.tensor([[2.0, 1.0], [3.0, 0.0]]).view(2, 2, 1, 1)
    cond = torch.ones(2, 3, 4)

    def constant(x: torch.Tensor, timestep: torch.Tensor, z_latents: torch.Tensor) -> torch.Tensor:
        return known

    g = torch.Generator().manual_seed(0)
    # target eps - x0 = [[0, -1], [3, -1]]; known - target = [[2, 2], [0, 1]]; squares [[4, 4], [0, 1]]
    # -> per-sample mean [4, 0.5]
    loss = flow_matching_loss(constant, x0, cond, generator=g, noise=eps)
    torch.testing.assert_close(loss, torch.tensor([4.0, 0.5]), atol=0, rtol=0)
    # per-sample weights [0.5, 2] -> [2, 1]
    weighted = flow_matching_loss(constant, x0, cond, generator=g, noise=eps, weights=torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(weighted, torch.tensor([2.0, 1.0]), atol=0, rtol=0)
    # element weights [[1, 0], [0, 1]] -> squares [[4, 0], [0, 1]] -> [2, 0.5]
    masked = flow_matching_loss(constant, x0, cond, generator=g, noise=eps,
                                weights=torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1))
    torch.testing.assert_close(masked, torch.tensor([2.0, 0.5]), atol=0, rtol=0)


def _replay(seed: int, shape: tuple[int, ...], p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss's documented draws from one generator: noise, timestep indices, dropout mask (1 = dropped)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=g)
    idx = (torch.rand(shape[0], generator=g) * 1000).long()
    dropped = torch.bernoulli(torch.full((shape[0],), p), generator=g)
    return noise, idx, dropped


def test_cond_dropout_zeroes_exactly_the_drawn_samples() -> None:
    """Conditioning dropout zeroes the conditioning of exactly the samples the mask drew and leaves the others intact."""
    b, shape = 16, (16, 2, 1, 1)
    cond = torch.randn(b, 3, 4, generator=torch.Generator().manual_seed(1)) + 5.0  # no row is zero by chance
    seen: list[torch.Tensor] = []

    def recorder(x: torch.Tensor, timestep: torch.Tensor, z_latents: torch.Tensor) -> torch.Tensor:
        seen.append(z_latents)
        return torch.zeros_like(x)

    for p in (0.5, 0.0, 1.0):
        seen.clear()
        flow_matching_loss(recorder, torch.zeros(shape), cond, generator=torch.Generator().manual_seed(7), cond_dropout=p)
        dropped = _replay(7, shape, p)[2].bool()
        z = seen[0]
        assert torch.equal(z[dropped], torch.zeros_like(cond[dropped]))
        assert torch.equal(z[~dropped], cond[~dropped])
        if p == 0.5:
            assert 0 < int(dropped.sum()) < b, "seed 7 must drop some samples and keep others"
        else:
            assert int(dropped.sum()) == (b if p == 1.0 else 0)


def test_loss_matches_upstream_image_loss_on_the_tiny_dit(tiny_dit: NextDiTCrossAttn, io_tensors) -> None:
    """The batch mean of the loss equals upstream's F.mse_loss on the same draws, with float timesteps t = 1000 sigma."""
    x0, cond = io_tensors["a.x_t"], io_tensors["a.z_latents"]
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor, timestep: torch.Tensor, z_latents: torch.Tensor) -> torch.Tensor:
        seen.extend([x, timestep])
        return tiny_dit(x, timestep, z_latents)

    with torch.no_grad():
        loss = flow_matching_loss(spy, x0, cond, generator=torch.Generator().manual_seed(3), cond_dropout=0.5)
        noise, idx, dropped = _replay(3, tuple(x0.shape), 0.5)
        timesteps = torch.from_numpy(np.linspace(1, 1000, 1000, dtype=np.float32)[::-1].copy())[idx]
        sigma = (timesteps / 1000).view(-1, 1, 1, 1)
        noisy = (1 - sigma) * x0 + sigma * noise
        pred = tiny_dit(noisy, timesteps, cond * (1 - dropped).view(-1, 1, 1))
        upstream = F.mse_loss(pred, noise - x0, reduction="mean")
    assert loss.shape == (2,)
    assert seen[1].dtype == torch.float32 and torch.equal(seen[1], timesteps)
    torch.testing.assert_close(seen[0], noisy, atol=1e-6, rtol=0)
    torch.testing.assert_close(loss.mean(), upstream, atol=1e-6, rtol=1e-6)


def test_gradient_checkpointing_keeps_outputs_and_gradients(tiny_dit: NextDiTCrossAttn, io_tensors) -> None:
    """In training mode, checkpointed blocks give the same velocity and parameter gradients as plain blocks."""
    x, t, z = io_tensors["a.x_t"], io_tensors["a.timestep_float"], io_tensors["a.z_latents"]
    dit = NextDiTCrossAttn(DiTConfig.tiny())
    dit.load_state_dict(tiny_dit.state_dict())
    dit.train()
    grads = []
    for use_ckpt in (False, True):
        dit.zero_grad()
        dit.model.gradient_checkpointing = use_ckpt
        v = dit(x, t, z)
        v.square().mean().backward()
        grads.append((v.detach(), dit.model.layers[0].gate.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=0, rtol=0)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-7, rtol=0)
    assert grads[0][1].abs().sum() > 0


def test_bad_config_and_inputs_name_the_culprit(tiny_dit: NextDiTCrossAttn, io_tensors) -> None:
    """Unsupported configs and mis-shaped inputs raise errors that name the offending field or argument."""
    with pytest.raises(ConfigError, match="learn_sigma"):
        DiTConfig(learn_sigma=True)
    with pytest.raises(ConfigError, match="n_heads"):
        DiTConfig(dim=30, n_heads=4)
    with pytest.raises(ValueError, match="x must be"):
        tiny_dit(torch.zeros(1, 7, 2, 2), torch.tensor([1.0]), torch.zeros(1, 4, 64))
    with pytest.raises(ValueError, match="z_latents"):
        tiny_dit(torch.zeros(1, 8, 2, 2), torch.tensor([1.0]), torch.zeros(1, 4, 63))
    with pytest.raises(ValueError, match="timestep"):
        tiny_dit(torch.zeros(1, 8, 2, 2), torch.tensor([1.0, 2.0]), torch.zeros(1, 4, 64))
    with pytest.raises(ValueError, match="cond_dropout"):
        flow_matching_loss(tiny_dit, torch.zeros(1, 8, 2, 2), torch.zeros(1, 4, 64), generator=None, cond_dropout=1.5)
