"""BLIP3o's flow-matching DiT head: ``NextDiTCrossAttn``, its sampler and its training loss.

BLIP3o-8B does not generate pixels from the LLM directly. The LLM reads 64 learned latent queries, and
their last hidden states (B, 64, 3584) condition a 1.37 B-parameter diffusion transformer. This DiT
denoises an 8x8 grid of 1792-wide EVA-CLIP features (the "CLIP latents"). It is a modified Lumina-Next
DiT (upstream ``blip3o/model/lumina_nextdit2d.py``), whose blocks differ from diffusers' stock
``LuminaNextDiTBlock`` in two ways:

* the caption goes through a ``PixArtAlphaTextProjection`` to the DiT width *before* the blocks, so
  cross-attention keys/values come from width ``dim``, not from the LLM width;
* self- and cross-attention share one output projection (``attn2.to_out.0``; ``attn1`` has none). The
  cross-attention is scaled by a per-head ``tanh(gate)`` and added to the self-attention.

The parameter names are those of the public checkpoint (``model.dit.model.*``). We build the maths from
diffusers' own Lumina classes, so the numerics are diffusers'. Two things had to be pinned:

* ``LuminaFeedForward``'s width. The checkpoint was written with diffusers 0.32, whose feed-forward took
  ``int(2 * inner_dim / 3)`` of the ``4 * dim`` it was given (4864 for dim 1792). diffusers >= 0.33
  dropped the 2/3 factor (7168), which no longer fits the weights. We compute the 0.32 width here
  (:func:`ffn_width`) and hand it to the installed class.
* the timestep. Training feeds float ``sigma * 1000``. Sampling feeds ``t`` *truncated to int64*
  (666.67 -> 666), as upstream's ``sample_images`` does. Both go through the same sinusoidal
  embedding; only the values differ.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, Protocol, overload

import attrs
import numpy as np
import torch
from diffusers.models.attention import LuminaFeedForward
from diffusers.models.attention_processor import Attention, LuminaAttnProcessor2_0
from diffusers.models.embeddings import (
    LuminaCombinedTimestepCaptionEmbedding,
    LuminaPatchEmbed,
    PixArtAlphaTextProjection,
    get_2d_rotary_pos_embed_lumina,
)
from diffusers.models.normalization import LuminaLayerNormContinuous, LuminaRMSNormZero, RMSNorm
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from asg.errors import ConfigError

ROPE_GRID = 384  # side of the 2-D rope table upstream precomputes (384x384 token positions)
NUM_TRAIN_TIMESTEPS = 1000  # the flow-matching scheduler's training grid: t = sigma * 1000
TIME_EMBED_CAP = 1024  # Lumina caps the timestep/caption conditioning width at min(dim, 1024)


@attrs.frozen(kw_only=True)
class DiTConfig:
    """The fields of upstream's ``NextDiTCrossAttnConfig``; defaults are BLIP3o-8B's head."""

    input_size: int = 8  # side of the CLIP-feature grid (8x8 = 64 tokens)
    patch_size: int = 1
    in_channels: int = 1792  # EVA-CLIP-E feature width
    dim: int = 1792
    n_layers: int = 24
    n_heads: int = 28
    n_kv_heads: int | None = 28  # None: as many as n_heads
    multiple_of: int = 256  # feed-forward width is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    latent_embedding_size: int = 3584  # width of the conditioning (the LLM's hidden size)
    learn_sigma: bool = False  # upstream refuses True; so do we
    qk_norm: bool = True  # LayerNorm over all heads of q and k

    def __attrs_post_init__(self) -> None:
        if self.learn_sigma:
            raise ConfigError("DiTConfig.learn_sigma=True is not supported (upstream NextDiTCrossAttn asserts False)")
        if self.dim % self.n_heads:
            raise ConfigError(f"DiTConfig.dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if (self.dim // self.n_heads) % 4:
            raise ConfigError(f"DiTConfig: head dim {self.dim // self.n_heads} must be divisible by 4 for the 2-D rope")
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"DiTConfig.n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.input_size % self.patch_size:
            raise ConfigError(f"DiTConfig.input_size={self.input_size} is not a multiple of patch_size={self.patch_size}")
        if self.input_size // self.patch_size > ROPE_GRID:
            raise ConfigError(f"DiTConfig: {self.input_size // self.patch_size} tokens per side exceed the rope grid {ROPE_GRID}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def cond_dim(self) -> int:
        """Width of the timestep + pooled-caption conditioning vector (``min(dim, 1024)``)."""
        return min(self.dim, TIME_EMBED_CAP)

    @classmethod
    def blip3o_8b(cls) -> DiTConfig:
        """The head of BLIP3o-8B (``build_dit`` passes only ``latent_embedding_size=3584``)."""
        return cls()

    @classmethod
    def tiny(cls) -> DiTConfig:
        """The tiny random head of the upstream parity fixture (``tests/fixtures/tiny``)."""
        return cls(input_size=2, patch_size=1, in_channels=8, dim=32, n_layers=2, n_heads=4, n_kv_heads=4,
                   multiple_of=16, latent_embedding_size=64)


def ffn_width(config: DiTConfig) -> int:
    """Feed-forward inner width as diffusers 0.32's ``LuminaFeedForward`` computed it from ``4 * dim``.

    The 2/3 factor keeps SwiGLU's parameter count near a 4x GELU MLP. diffusers 0.33 removed it, and the
    checkpoint's shapes (4864 at dim 1792) only come out with it.
    """
    width = int(2 * (4 * config.dim) / 3)
    if config.ffn_dim_multiplier is not None:
        width = int(config.ffn_dim_multiplier * width)
    m = config.multiple_of
    return m * ((width + m - 1) // m)


@functools.lru_cache(maxsize=4)
def rope_table(head_dim: int) -> Tensor:
    """Upstream's ``freqs_cis``: the complex 2-D rope table (384, 384, head_dim/2), always built on CPU.

    It is built on CPU even under a ``torch.device("meta")`` context. A meta model can then be
    materialised by loading weights, since the table is not a weight. It is cached because every
    instance of a size shares it (37.7 MB at head dim 64) and nobody writes to it.
    """
    with torch.device("cpu"):
        return get_2d_rotary_pos_embed_lumina(head_dim, ROPE_GRID, ROPE_GRID)


def _attention(config: DiTConfig, *, with_out_proj: bool) -> Attention:
    """A Lumina attention: no biases, optional LayerNorm across heads on q and k, SDPA via the Lumina processor.

    The processor returns (B, L, heads, head_dim) without an output projection; the block applies it.
    """
    return Attention(
        query_dim=config.dim,
        cross_attention_dim=None,  # keys come from the (already projected) width-`dim` caption too
        dim_head=config.head_dim,
        heads=config.n_heads,
        kv_heads=config.kv_heads,
        qk_norm="layer_norm_across_heads" if config.qk_norm else None,
        eps=1e-5,
        bias=False,
        out_bias=False,
        pre_only=not with_out_proj,  # attn1 has no to_out: the block uses attn2.to_out.0 for both
        processor=LuminaAttnProcessor2_0(),
    )


class NextDiTBlock(nn.Module):
    """One block: gated self+cross attention through a shared projection, then a gated SwiGLU.

    Modulation (Lumina's "RMSNorm zero"): the conditioning vector gives a scale for the attention input,
    a tanh gate for the attention output, and a scale and tanh gate for the feed-forward. Sandwich
    RMSNorms sit around both sub-layers.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(config.n_heads))  # per-head tanh gate of the cross-attention
        self.attn1 = _attention(config, with_out_proj=False)  # self-attention, rope on q and k
        self.attn2 = _attention(config, with_out_proj=True)  # cross-attention, rope on q only
        self.feed_forward = LuminaFeedForward(dim=config.dim, inner_dim=ffn_width(config),
                                              multiple_of=config.multiple_of, ffn_dim_multiplier=None)
        self.norm1 = LuminaRMSNormZero(embedding_dim=config.dim, norm_eps=config.norm_eps, norm_elementwise_affine=True)
        self.ffn_norm1 = RMSNorm(config.dim, eps=config.norm_eps)
        self.norm2 = RMSNorm(config.dim, eps=config.norm_eps)
        self.ffn_norm2 = RMSNorm(config.dim, eps=config.norm_eps)
        self.norm1_context = RMSNorm(config.dim, eps=config.norm_eps)

    def forward(self, x: Tensor, x_mask: Tensor, rope: Tensor, context: Tensor, context_mask: Tensor,
                cond: Tensor) -> Tensor:
        # x (B, L, dim); x_mask (B, L); rope (1, L, head_dim/2) complex; context (B, Q, dim);
        # context_mask (B, Q) bool; cond (B, cond_dim)
        h, gate_attn, scale_mlp, gate_mlp = self.norm1(x, cond)  # h (B, L, dim), the rest (B, dim)
        self_out = self.attn1(h, encoder_hidden_states=h, attention_mask=x_mask,
                              query_rotary_emb=rope, key_rotary_emb=rope)  # (B, L, heads, head_dim)
        cross_out = self.attn2(h, encoder_hidden_states=self.norm1_context(context), attention_mask=context_mask,
                               query_rotary_emb=rope, key_rotary_emb=None)  # (B, L, heads, head_dim)
        mixed = self_out + cross_out * self.gate.tanh().view(1, 1, -1, 1)
        attn = self.attn2.to_out[0](mixed.flatten(-2))  # (B, L, dim)
        x = x + gate_attn.unsqueeze(1).tanh() * self.norm2(attn)
        mlp = self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp.unsqueeze(1)))
        return x + gate_mlp.unsqueeze(1).tanh() * self.ffn_norm2(mlp)


class LuminaNextDiT(nn.Module):
    """The DiT body (upstream ``LuminaNextDiT2DModel``): patchify, condition, blocks, AdaLN head, unpatchify."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False  # upstream trains with it on; only acts in training mode
        self.caption_projection = PixArtAlphaTextProjection(in_features=config.latent_embedding_size,
                                                            hidden_size=config.dim)
        self.patch_embedder = LuminaPatchEmbed(patch_size=config.patch_size, in_channels=config.in_channels,
                                               embed_dim=config.dim, bias=True)
        self.time_caption_embed = LuminaCombinedTimestepCaptionEmbedding(hidden_size=config.cond_dim,
                                                                         cross_attention_dim=config.dim)
        self.layers = nn.ModuleList(NextDiTBlock(config) for _ in range(config.n_layers))
        self.norm_out = LuminaLayerNormContinuous(
            embedding_dim=config.dim, conditioning_embedding_dim=config.cond_dim, elementwise_affine=False,
            eps=1e-6, bias=True, out_dim=config.patch_size**2 * config.in_channels)

    def forward(self, x: Tensor, timestep: Tensor, context: Tensor, context_mask: Tensor, rope: Tensor) -> Tensor:
        # x (B, C, H, W); timestep (B,); context (B, Q, latent_embedding_size); context_mask (B, Q);
        # rope (>= H/p, >= W/p, head_dim/2) complex
        b, _, height, width = x.shape
        p = self.config.patch_size
        tokens, x_mask, _, rope = self.patch_embedder(x, rope)  # (B, L, dim), (B, L) int, _, (1, L, hd/2)
        context = self.caption_projection(context)  # (B, Q, dim)
        cond = self.time_caption_embed(timestep, context, context_mask)  # (B, cond_dim)
        context_mask = context_mask.bool()
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(layer, tokens, x_mask, rope, context, context_mask, cond, use_reentrant=False)
            else:
                tokens = layer(tokens, x_mask, rope, context, context_mask, cond)
        out = self.norm_out(tokens, cond)  # (B, L, p*p*C), features ordered (p_h, p_w, C) as upstream
        out = out.view(b, height // p, width // p, p, p, self.config.in_channels)
        return out.permute(0, 5, 1, 3, 2, 4).reshape(b, self.config.in_channels, height, width)


class NextDiTCrossAttn(nn.Module):
    """BLIP3o's DiT head: predicts the flow velocity ``eps - x0`` of CLIP latents given the latent-query states.

    The state dict holds ``model.*`` (``model.dit.model.*`` in the BLIP3o checkpoint). ``freqs_cis`` is
    a plain attribute, as upstream has it, so it is neither saved nor loaded.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LuminaNextDiT(config)
        self.freqs_cis = rope_table(config.head_dim)  # (384, 384, head_dim/2) complex64, on CPU

    def forward(self, x: Tensor, timestep: Tensor | float | int, z_latents: Tensor) -> Tensor:
        """Velocity (B, C, H, W) for noisy latents ``x`` (B, C, H, W) at ``timestep`` (B,) in [0, 1000].

        ``timestep`` may be float (training: ``sigma * 1000``) or integer (sampling truncates). A scalar
        is broadcast over the batch. ``z_latents`` (B, Q, latent_embedding_size) are all attended:
        upstream's conditioning mask is all ones.
        """
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"NextDiTCrossAttn: x must be (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        b, _, height, width = x.shape
        if height % cfg.patch_size or width % cfg.patch_size:
            raise ValueError(f"NextDiTCrossAttn: x grid {height}x{width} is not a multiple of patch {cfg.patch_size}")
        if max(height, width) // cfg.patch_size > ROPE_GRID:
            raise ValueError(f"NextDiTCrossAttn: x grid {height}x{width} exceeds the {ROPE_GRID}-token rope table")
        if z_latents.ndim != 3 or z_latents.shape[0] != b or z_latents.shape[2] != cfg.latent_embedding_size:
            raise ValueError(f"NextDiTCrossAttn: z_latents must be ({b}, Q, {cfg.latent_embedding_size}), "
                             f"got {tuple(z_latents.shape)}")
        t = torch.as_tensor(timestep, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"NextDiTCrossAttn: timestep must be a scalar or ({b},), got {tuple(t.shape)}")
        rope = self.freqs_cis[: height // cfg.patch_size, : width // cfg.patch_size].to(x.device)  # (H/p, W/p, hd/2)
        context_mask = torch.ones(z_latents.shape[:2], device=z_latents.device)  # (B, Q)
        return self.model(x, t, z_latents, context_mask, rope)


class VelocityModel(Protocol):
    """Anything called like :meth:`NextDiTCrossAttn.forward` (the loss accepts stand-ins for testing)."""

    def __call__(self, x: Tensor, timestep: Tensor, z_latents: Tensor) -> Tensor: ...


StepHook = Callable[[int, Tensor, Tensor, Tensor], None]
"""Called once per sampling step as ``hook(step, dit_timestep (2B,) int64, v_uncond (B,...), v_cond (B,...))``."""


def sampling_scheduler(steps: int) -> FlowMatchEulerDiscreteScheduler:
    """The scheduler of ``sample_images``, set to ``steps`` sigmas ``linspace(1, 1/steps, steps)`` (+ a final 0).

    Upstream loads it from ``Alpha-VLLM/Lumina-Next-SFT-diffusers``, whose config holds only
    ``num_train_timesteps=1000, shift=1.0``. We build it locally and never touch the hub.
    """
    if steps < 1:
        raise ValueError(f"sampling_scheduler: steps must be >= 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0)
    scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1.0 / steps, steps))  # float64, as upstream
    return scheduler


@overload
def flow_sample(dit: NextDiTCrossAttn, cond: Tensor, *, steps: int = ..., guidance: float = ...,
                generator: torch.Generator | None = ..., latents: Tensor | None = ...,
                return_noise: Literal[False] = ..., on_step: StepHook | None = ...) -> Tensor: ...
@overload
def flow_sample(dit: NextDiTCrossAttn, cond: Tensor, *, steps: int = ..., guidance: float = ...,
                generator: torch.Generator | None = ..., latents: Tensor | None = ...,
                return_noise: Literal[True], on_step: StepHook | None = ...) -> tuple[Tensor, Tensor]: ...


@torch.no_grad()
def flow_sample(dit: NextDiTCrossAttn, cond: Tensor, *, steps: int = 30, guidance: float = 3.0,
                generator: torch.Generator | None = None, latents: Tensor | None = None,
                return_noise: bool = False, on_step: StepHook | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """CLIP latents (B, C, S, S) for conditioning ``cond`` (B, Q, D): upstream's ``sample_images`` loop.

    The latents start from ``randn((B, C, input_size, input_size), generator)``, or from ``latents`` when
    given. Each Euler step runs the DiT once on the batch ``[zeros_like(cond); cond]``. It uses the
    timestep truncated to int64, as upstream does, so the DiT sees 666 where the scheduler holds 666.67.
    The two halves are combined as ``v_u + guidance * (v_c - v_u)``, and the step is
    ``x += (sigma_next - sigma) * v`` (``FlowMatchEulerDiscreteScheduler.step``). With
    ``return_noise=True`` the result is ``(final, initial)``.
    """
    cfg = dit.config
    if cond.ndim != 3:
        raise ValueError(f"flow_sample: cond must be (B, Q, D), got {tuple(cond.shape)}")
    b = cond.shape[0]
    shape = (b, cfg.in_channels, cfg.input_size, cfg.input_size)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=cond.device, dtype=cond.dtype)
    elif tuple(latents.shape) != shape:
        raise ValueError(f"flow_sample: latents must be {shape}, got {tuple(latents.shape)}")
    noise = latents
    scheduler = sampling_scheduler(steps)
    cond_in = torch.cat([torch.zeros_like(cond), cond], dim=0)  # (2B, Q, D): [uncond; cond]
    for i, t in enumerate(scheduler.timesteps):
        t_dit = t.expand(2 * b).to(cond.device, torch.long)  # (2B,) truncated, as upstream
        v = dit(latents.repeat(2, 1, 1, 1), t_dit, cond_in)  # (2B, C, S, S)
        v_u, v_c = v.chunk(2)
        if on_step is not None:
            on_step(i, t_dit, v_u, v_c)
        latents = scheduler.step(v_u + guidance * (v_c - v_u), t, latents).prev_sample
    return (latents, noise) if return_noise else latents


def flow_matching_loss(dit: VelocityModel, x0: Tensor, cond: Tensor, *, generator: torch.Generator | None,
                       cond_dropout: float = 0.1, weights: Tensor | None = None,
                       noise: Tensor | None = None) -> Tensor:
    """Per-sample flow-matching MSE (B,) of the DiT on clean CLIP latents ``x0`` (B, C, H, W).

    This is the image loss of upstream ``blip3o_qwen.py::forward``. The mean of the result over the batch
    equals its ``F.mse_loss(noise_pred, noise - latents)``. The steps are:

    * draw ``eps ~ N(0, I)`` (or take ``noise``);
    * draw a uniform index into the training scheduler's 1000 timesteps ``t`` (floats 1000, 999, ..., 1)
      and its ``sigma = t / 1000``;
    * form ``x_t = (1 - sigma) x0 + sigma eps``;
    * set the target to ``eps - x0``;
    * run the DiT at float ``t``;
    * zero the conditioning (B, Q, D) of each sample with probability ``cond_dropout``, as upstream
      ``mask_drop`` does, which trains the unconditional branch used by guidance.

    All draws come from ``generator``, in the order noise, timestep indices, dropout mask; upstream uses
    the global RNG. The error is computed in float32. ``weights`` multiply the squared error before the
    per-sample mean. They may be per sample (B,) or broadcastable to ``x0``, for example a per-sigma
    weighting; ``None`` is upstream's plain mean.
    """
    if x0.ndim != 4:
        raise ValueError(f"flow_matching_loss: x0 must be (B, C, H, W), got {tuple(x0.shape)}")
    b = x0.shape[0]
    if cond.shape[0] != b:
        raise ValueError(f"flow_matching_loss: cond batch {cond.shape[0]} != x0 batch {b}")
    if not 0.0 <= cond_dropout <= 1.0:
        raise ValueError(f"flow_matching_loss: cond_dropout must be in [0, 1], got {cond_dropout}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    if noise is None:
        noise = randn_tensor(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"flow_matching_loss: noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0)
    u = torch.rand(b, generator=generator, device=draw_device)
    idx = (u * NUM_TRAIN_TIMESTEPS).long().cpu()  # (B,) uniform over the 1000 training timesteps
    timesteps = scheduler.timesteps[idx].to(x0.device)  # (B,) float32: 1000 * sigma
    sigma = scheduler.sigmas[idx].to(x0.device, x0.dtype).view(b, 1, 1, 1)
    x_t = (1.0 - sigma) * x0 + sigma * noise
    keep = 1.0 - torch.bernoulli(torch.full((b,), float(cond_dropout), device=draw_device), generator=generator)
    z = cond * keep.to(cond.device, cond.dtype).view(b, *([1] * (cond.ndim - 1)))
    pred = dit(x_t, timesteps, z)
    sq = (pred.float() - (noise - x0).float()) ** 2  # (B, C, H, W)
    if weights is not None:
        w = weights.to(sq.device, torch.float32)
        sq = sq * (w.view(b, 1, 1, 1) if w.shape == (b,) else w)
    return sq.flatten(1).mean(dim=1)


def parameter_count(module: nn.Module) -> int:
    """Number of parameter values (works on meta-device modules)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "DiTConfig", "LuminaNextDiT", "NextDiTBlock", "NextDiTCrossAttn", "StepHook", "VelocityModel",
    "ffn_width", "flow_matching_loss", "flow_sample", "parameter_count", "rope_table", "sampling_scheduler",
]
