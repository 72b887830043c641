"""The assembled BAGEL against the upstream generation fixture (case b, b3), and the sampler's maths by hand."""

from __future__ import annotations

import math

import pytest
import torch

from asg_bagel.backbone import BagelBackbone
from asg_bagel.model import cfg_combine, flow_timesteps


@pytest.fixture(scope="module")
def upstream(upstream_folder) -> BagelBackbone:
    """The upstream tiny weights loaded through the plugin's own checkpoint loader (strict keys)."""
    return BagelBackbone.load(preset="tiny", model=upstream_folder, adapters=False)


def _context(bb: BagelBackbone, io_tensors):
    lm = bb.bagel.language_model
    cache = lm.new_cache(1)
    lm(bb.bagel.embed_ids(io_tensors["b.context_text_ids"]), [10], io_tensors["b.context_position_ids"], cache=cache, update_cache=True)
    return cache


def test_velocity_matches_upstream_with_and_without_context(upstream, io_tensors) -> None:
    """One flow prediction for a 2x3 latent block equals upstream's, after a text context and against an empty one."""
    with torch.no_grad():
        cache = _context(upstream, io_tensors)
        v = upstream.bagel.velocity([io_tensors["b.x_t"]], torch.tensor(0.75), [(2, 3)], cache, [10])[0]
        v_u = upstream.bagel.velocity([io_tensors["b.x_t"]], torch.tensor(0.75), [(2, 3)], None, [0])[0]
    # measured: 9.5e-7 and 1.3e-6 max abs difference
    torch.testing.assert_close(v, io_tensors["b.v_t"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_u, io_tensors["b.v_t_uncond_textcfg_branch"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cfg_combine(v, v_u, 4.0), io_tensors["b.v_t_cfg_text4_global"], atol=1e-5, rtol=1e-5)
    assert cache.lengths() == [10], "a velocity query must not extend the context cache"


def test_three_guided_euler_steps_match_upstream(upstream, io_tensors) -> None:
    """BAGEL's sampler (4 shifted times, CFG 4 in (0.4, 1]) moves the latent exactly as upstream's."""
    ts = flow_timesteps(4, 3.0)
    x = io_tensors["b.x_t"]
    with torch.no_grad():
        cache = _context(upstream, io_tensors)
        for i in range(3):
            v = upstream.bagel.velocity([x], ts[i], [(2, 3)], cache, [10])[0]
            if 0.4 < float(ts[i]) <= 1.0:
                v = cfg_combine(v, upstream.bagel.velocity([x], ts[i], [(2, 3)], None, [0])[0], 4.0)
            x = x - v * (ts[i] - ts[i + 1])
    torch.testing.assert_close(x, io_tensors["b3.latent_after_3_euler_steps"], atol=1e-5, rtol=1e-5)  # measured 2.9e-6


def test_autoencoder_of_the_folder_decodes_like_upstream(upstream, io_tensors) -> None:
    """The folder's ae.safetensors, loaded through the plugin, decodes the fixture latent as upstream does."""
    from asg_bagel.autoencoder import decode

    with torch.no_grad():
        out = decode(upstream.net["vae"], io_tensors["c.z"])
    torch.testing.assert_close(out, io_tensors["c.decoded"], atol=1e-4, rtol=1e-4)


def test_flow_timesteps_by_hand() -> None:
    """linspace(1, 0, 4) = 1, 2/3, 1/3, 0 shifted by 3 t / (1 + 2 t) gives 1, 6/7, 3/5, 0."""
    torch.testing.assert_close(flow_timesteps(4, 3.0), torch.tensor([1.0, 6 / 7, 3 / 5, 0.0]))
    torch.testing.assert_close(flow_timesteps(3, 1.0), torch.tensor([1.0, 0.5, 0.0]))


def test_cfg_combine_by_hand() -> None:
    """Guidance extrapolates from the unconditional velocity and is rescaled to the conditional norm."""
    v_c = torch.tensor([[3.0, 4.0]])  # |v_c| = 5
    v_u = torch.tensor([[0.0, 0.0]])
    # v = 0 + 2 (v_c - 0) = (6, 8), |v| = 10 -> rescaled by 5 / 10 back to (3, 4)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 2.0), torch.tensor([[3.0, 4.0]]), atol=1e-6, rtol=0)
    # a guided velocity shorter than the conditional one is not stretched (factor clamped at 1):
    # v_u = (4, 0), v = 4 + 0.5 (3 - 4), 0 + 0.5 (4 - 0) = (3.5, 2), |v| = 4.03 < 5
    torch.testing.assert_close(cfg_combine(v_c, torch.tensor([[4.0, 0.0]]), 0.5), torch.tensor([[3.5, 2.0]]))
    # renorm_min raises the floor: with min 1 the factor is exactly 1 (no rescale)
    torch.testing.assert_close(cfg_combine(v_c, v_u, 2.0, renorm_min=1.0), torch.tensor([[6.0, 8.0]]))
    # per-token ("channel") rescaling treats each row on its own
    two = cfg_combine(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.zeros(2, 2), 3.0, renorm="channel")
    torch.testing.assert_close(two, torch.tensor([[3.0, 4.0], [1.0, 0.0]]), atol=1e-6, rtol=0)
    assert math.isclose(float(cfg_combine(v_c, v_u, 1.0).norm()), 5.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="renorm type 'bogus'"):
        cfg_combine(v_c, v_u, 2.0, renorm="bogus")
