"""VARGPT-v1.1's BSQ-VAE (``vae_local``): decode summed BSQ codes into pixels, and encode a real image into the
per-scale bits the Infinity head can be teacher-forced with.

Upstream files (VARGPT-family/VARGPT-v1.1 @ 8c67c26, under ``vargpt_qwen_v1_1/var_model/``):

* ``infinity/models/bsq_vae/flux_vqgan.py``: ``Normalize``, ``swish``, ``ResnetBlock``, ``Downsample``,
  ``Upsample``, ``Encoder``, ``Decoder``, ``AutoEncoder`` (``encode_for_raw_features``, ``decode``);
* ``infinity/models/bsq_vae/conv.py``: ``Conv`` (the ``.conv`` wrapper around ``nn.Conv2d``);
* ``infinity/models/bsq_vae/multiscale_bsq.py``: ``MultiScaleBSQ`` (``z_interplote_down='area'``,
  ``z_interplote_up='trilinear'``) and ``BSQ`` (``lfq``: ``quantize_new``, ``indices_to_codes``, ``mask``);
* ``infinity/models/bsq_vae/vae.py``: ``vae_model``'s Namespace (the sizes below);
* ``infinity/models/bitwise_self_correction.py``: ``flip_requant``, the training path that turns an image's
  encoder features into per-scale bit labels (called by ``get_vae_gt_xin_v1_1`` in
  ``vargpt_qwen_v1_1/modeling_vargpt_qwen2_vl.py``).

Architecture facts reproduced here (all from ``flux_vqgan.py`` / ``conv.py`` unless stated):

* every norm is ``nn.GroupNorm(32 groups, or 24 when channels % 32 != 0, eps 1e-6, affine)`` wrapped as
  ``<name>.norm``; every conv is ``nn.Conv2d`` wrapped as ``<name>.conv`` (``cnn_type='2d'``);
* the activation is ``swish(x) = x * sigmoid(x)`` (written that way upstream; we keep the same expression);
* a ResnetBlock is ``x' + conv2(swish(norm2(conv1(swish(norm1(x))))))`` with ``x'`` = ``nin_shortcut`` (1x1
  conv) of ``x`` when the width changes, else ``x``;
* Downsample: zero-pad right and bottom by 1, then 3x3 conv stride 2 padding 0; it follows encoder level ``i``
  when ``i < log2(patch_size)``. Upsample: nearest x2 then 3x3 conv; it follows decoder level ``i`` when
  ``1 <= i <= log2(patch_size)``. Encoder levels hold ``num_res_blocks`` blocks, decoder levels one more;
* the middle is ``block_1`` then ``block_2``, no attention (``cnn_attention='no'`` in ``vae.py``);
* the encoder ends ``conv_out(swish(norm_out(h)))`` with ``codebook_dim`` channels (``use_vae=False``); the
  decoder starts ``conv_in`` from ``codebook_dim`` channels and ends ``conv_out(swish(norm_out(h)))`` to RGB;
* ``AutoEncoder.decode`` is ``clamp(decoder(z), -1, 1)``: no scale/shift (``scale_factor``/``shift_factor`` are
  set but never used on this path); ``encode_for_raw_features`` returns the encoder output cast to float32;
* the quantizer has no projections (``codebook_dim == dim == 32``) and no LayerNorm (``ln_before_quant=False``).
  Its only tensor is ``quantizer.lfq.mask = 2 ** arange(d-1, -1, -1)`` (MSB-first weights of integer labels,
  unused with bit labels but part of the checkpoint); ``quantizer.lfq.zero`` is non-persistent and unused.

Why a hand-written module and not diffusers' ``Encoder``/``Decoder``: the checkpoint's names wrap every conv and
norm (``conv_in.conv.weight``, ``norm1.norm.weight``), number decoder levels bottom-up (``up.0`` is the
full-resolution level, as in the Flux/LDM layout, not diffusers' top-down ``up_blocks``), and use a right/bottom
pad before the stride-2 conv; mapping all of that onto diffusers would need a rename table bigger than the
module itself.

Pixels are RGB in [-1, 1], ``x / 255 * 2 - 1`` (``normalize_01_into_pm1`` in upstream's data pipeline).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asg._validate import number
from asg.errors import ConfigError, DataError

from .generate import bits_to_codes
from .keys import missing_and_unexpected

CHECKPOINT_PREFIX = "vae_local."
"""The VAE's keys in the VARGPT-v1.1 checkpoint start with this; :class:`BSQVAE`'s own names do not."""


# ----------------------------------------------------------------------------------------------- config


def _mult(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


@attrs.frozen(kw_only=True)
class BSQVAEConfig:
    """Sizes of the BSQ-VAE. Upstream fixes them in ``vae.py`` / ``run_infinity.load_visual_tokenizer``."""

    base_ch: int = attrs.field(default=128, validator=number(1, None, integer=True))
    num_res_blocks: int = attrs.field(default=2, validator=number(1, None, integer=True))  # decoder: one more
    encoder_ch_mult: tuple[int, ...] = attrs.field(default=(1, 2, 4, 4, 4), converter=_mult)
    decoder_ch_mult: tuple[int, ...] = attrs.field(default=(1, 2, 4, 4, 4), converter=_mult)
    codebook_dim: int = attrs.field(default=32, validator=number(1, None, integer=True))  # bits per token
    patch_size: int = attrs.field(default=16, validator=number(1, None, integer=True))  # pixels per token side
    image_channels: int = attrs.field(default=3, validator=number(1, None, integer=True))

    def __attrs_post_init__(self) -> None:
        p = self.patch_size
        if p & (p - 1):
            raise ConfigError(f"BSQVAEConfig.patch_size must be a power of 2, got {p}")
        for name in ("encoder_ch_mult", "decoder_ch_mult"):
            mult = getattr(self, name)
            if len(mult) < self.num_halvings + 1 or any(m <= 0 for m in mult):
                raise ConfigError(f"BSQVAEConfig.{name}={mult}: need at least log2(patch_size)+1="
                                  f"{self.num_halvings + 1} positive levels (one resampling between levels)")
            for m in mult:
                _groups(self.base_ch * m, f"BSQVAEConfig.{name} (base_ch {self.base_ch} x {m})")

    @property
    def num_halvings(self) -> int:
        """log2(patch_size): the encoder's stride-2 steps and the decoder's x2 steps."""
        return int(math.log2(self.patch_size))

    @classmethod
    def full(cls) -> BSQVAEConfig:
        """The released VAE (``vae_type=32``, ``apply_spatial_patchify=0``): 110,118,051 parameters."""
        return cls()

    @classmethod
    def tiny(cls) -> BSQVAEConfig:
        """The tiny parity fixture's VAE (fixture.json ``tiny_config`` -> "BSQ-VAE overrides")."""
        return cls(base_ch=32, num_res_blocks=1, encoder_ch_mult=(1, 1, 1, 1, 1), decoder_ch_mult=(1, 1, 1, 1, 1))


def _groups(channels: int, culprit: str) -> int:
    """GroupNorm groups of ``Normalize``: 32, else 24 when 32 does not divide ``channels`` (upstream raises)."""
    if channels % 32 == 0:
        return 32
    if channels % 24 == 0:
        return 24
    raise ConfigError(f"{culprit}: {channels} channels; upstream's GroupNorm needs a multiple of 32 or 24")


# ---------------------------------------------------------------------------------------------- modules


def swish(x: Tensor) -> Tensor:
    """``x * sigmoid(x)``, the expression upstream's ``flux_vqgan.swish`` evaluates."""
    return x * torch.sigmoid(x)


class Conv(nn.Module):
    """``conv.py``'s ``Conv`` for images: an ``nn.Conv2d`` stored as ``.conv`` (so keys end ``.conv.weight``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Normalize(nn.Module):
    """``flux_vqgan.Normalize`` (group norm over space): an ``nn.GroupNorm`` stored as ``.norm``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels, "Normalize"), channels, eps=1e-6, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class ResnetBlock(nn.Module):
    """``flux_vqgan.ResnetBlock``: two norm-swish-conv3x3 steps plus a (1x1-projected when widths differ) skip."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = Normalize(c_in)
        self.conv1 = Conv(c_in, c_out, 3, padding=1)
        self.norm2 = Normalize(c_out)
        self.conv2 = Conv(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = Conv(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class Downsample(nn.Module):
    """``flux_vqgan.Downsample``: pad right/bottom by one zero, 3x3 conv stride 2: [B,C,H,W] -> [B,C,H/2,W/2]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    """``flux_vqgan.Upsample`` (``use_pxsf=False``): nearest x2, then 3x3 conv: [B,C,H,W] -> [B,C,2H,2W]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class MidBlock(nn.Module):
    """The middle of encoder and decoder: ``block_1`` then ``block_2`` at constant width, no attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.block_1(x))


class Level(nn.Module):
    """One resolution level: ``block.<i>`` ResnetBlocks, then an optional ``downsample`` or ``upsample``."""

    def __init__(self, widths: Sequence[tuple[int, int]], resample: nn.Module | None, kind: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in widths)
        if resample is not None:
            setattr(self, kind, resample)  # "downsample" or "upsample": the checkpoint's name
        self._kind = kind

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.block:
            x = blk(x)
        resample = getattr(self, self._kind, None)
        return resample(x) if resample is not None else x


class Encoder(nn.Module):
    """``flux_vqgan.Encoder`` (2-D, no attention): pixels [B,3,H,W] -> features [B,d,H/p,W/p]."""

    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_ch, cfg.encoder_ch_mult
        self.conv_in = Conv(cfg.image_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            block_in = ch * ((1,) + mult)[i]  # upstream's in_ch_mult = (1,) + ch_mult
            widths = [(block_in if j == 0 else ch * m, ch * m) for j in range(cfg.num_res_blocks)]
            block_in = ch * m
            down = Downsample(block_in) if i < cfg.num_halvings else None
            self.down.append(Level(widths, down, "downsample"))
        self.mid = MidBlock(block_in)
        self.norm_out = Normalize(block_in)
        self.conv_out = Conv(block_in, cfg.codebook_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)  # [B, ch, H, W]
        for level in self.down:
            h = level(h)
        h = self.mid(h)  # [B, ch*mult[-1], H/p, W/p]
        return self.conv_out(swish(self.norm_out(h)))  # [B, d, H/p, W/p]


class Decoder(nn.Module):
    """``flux_vqgan.Decoder`` (2-D, no attention): codes [B,d,h,w] -> pixels [B,3,p*h,p*w] (not clamped).

    ``up.<i>`` is level ``i`` counted from full resolution (upstream builds them top-down and prepends), and
    runs from ``i = L-1`` down to 0.
    """

    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        ch, mult = cfg.base_ch, cfg.decoder_ch_mult
        block_in = ch * mult[-1]
        self.conv_in = Conv(cfg.codebook_dim, block_in, 3, padding=1)
        self.mid = MidBlock(block_in)
        levels: list[Level] = []
        for i in reversed(range(len(mult))):
            out = ch * mult[i]
            widths = [(block_in if j == 0 else out, out) for j in range(cfg.num_res_blocks + 1)]
            block_in = out
            up = Upsample(block_in) if 1 <= i <= cfg.num_halvings else None
            levels.insert(0, Level(widths, up, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(block_in)
        self.conv_out = Conv(block_in, cfg.image_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))  # [B, ch*mult[-1], h, w]
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))  # [B, 3, p*h, p*w]


class BSQ(nn.Module):
    """``multiscale_bsq.BSQ`` at inference (``new_quant=True``, no projections): sign bits of L2-normalised tokens.

    A token ``z`` (d channels) is L2-normalised, then quantised to ``sign(z)/sqrt(d)`` (``quantize_new``, with
    ``z > 0`` strict: a zero gives bit 0); its bit is ``quantised > 0``, i.e. ``z > 0``. Codes from bits are
    ``l2norm(bits * 2s - s)``, ``s = 1/sqrt(d)`` (``indices_to_codes(label_type='bit_label')``; this is
    :func:`asg_vargpt.generate.bits_to_codes`).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # MSB-first integer weights of the bits (int labels only); persistent, so it is in the checkpoint.
        self.register_buffer("mask", 2 ** torch.arange(dim - 1, -1, -1), persistent=True)

    def bits(self, z: Tensor) -> Tensor:
        """Residual tokens [B, d, 1, h, w] -> bits [B, 1, h, w, d] int64 (0/1), as upstream's ``bit_indices``."""
        if z.ndim != 5 or z.shape[1] != self.dim:
            raise ConfigError(f"BSQ.bits expects [B, {self.dim}, T, h, w] tokens, got {tuple(z.shape)}")
        tokens = F.normalize(z.float().permute(0, 2, 3, 4, 1), dim=-1)  # [B, 1, h, w, d], force_quantization_f32
        # Fresh row-major strides (size-1 dims included), like upstream's bit_indices and the sampler's bits: the
        # codes derived from them, and so the summed codes, then get upstream's memory layout. Trilinear resampling
        # (1 ulp) and the decoder's convolutions (1e-5) round differently on other layouts.
        bits = torch.empty(tokens.shape, dtype=torch.long, device=tokens.device)
        return bits.copy_(tokens > 0)


class MultiScaleBSQ(nn.Module):
    """``multiscale_bsq.MultiScaleBSQ``: holds ``lfq`` and the residual next-scale quantisation (:meth:`encode`)."""

    interp_down = "area"  # z_interplote_down
    interp_up = "trilinear"  # z_interplote_up

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lfq = BSQ(dim)

    def encode(self, features: Tensor, schedule: Sequence[tuple[int, int, int]]) -> tuple[list[Tensor], Tensor]:
        """Per-scale bits of encoder features [B, d, 1, H, W] (or [B, d, H, W]) -> (bits, summed codes).

        ``bitwise_self_correction.flip_requant`` with its noise at strength 0 (the deterministic path):

        * at scale ``si``: ``residual = features - summed``, area-resampled to ``(1, h, w)`` (except at the last
          scale, which must be the feature grid and is used as is); ``bits = lfq(residual)``;
        * ``codes = indices_to_codes(bits)`` (``noise_apply_requant=1`` re-derives the codes from the bits), and
          ``summed += trilinear(codes -> (1, H, W))``.

        Returned: bits [B, 1, h, w, d] int64 per scale, and the summed codes [B, d, 1, H, W] float32. The summation
        follows :func:`asg_vargpt.generate.generate_bits` literally (the last scale's codes are added without
        the identity resample upstream performs), so teacher-forcing these bits makes the loop's
        ``summed_codes`` equal ours, bit for bit and in memory layout. The loop's next-scale inputs then equal
        ``flip_requant``'s ``x_BLC_wo_prefix`` to 1.2e-7, not exactly: ``flip_requant`` resamples a contiguous
        copy of the running sum, upstream's inference loop (like ours) the channels-last sum itself.
        """
        x = features.unsqueeze(2) if features.ndim == 4 else features
        if x.ndim != 5 or x.shape[1] != self.lfq.dim or x.shape[2] != 1:
            raise ConfigError(f"MultiScaleBSQ.encode expects features [B, {self.lfq.dim}, 1, H, W] or "
                              f"[B, {self.lfq.dim}, H, W], got {tuple(features.shape)}")
        sched = _check_schedule(schedule, (x.shape[-2], x.shape[-1]))
        x = x.float()
        final = sched[-1]
        # Starts as the number 0, as in the generation loop, so the sum's values and memory layout are the loop's
        # (the decoder's convolutions differ at the 1e-5 level between contiguous and channels-last inputs).
        summed: Tensor | float = 0.0
        bits_per_scale: list[Tensor] = []
        for si, size in enumerate(sched):
            # Contiguous, as in flip_requant (whose running sum is made contiguous): the area resampling's rounding
            # depends on the layout, and a bit can flip on a residual within 1 ulp of 0.
            residual = (x - summed).contiguous()
            if si != len(sched) - 1:
                residual = F.interpolate(residual, size=size, mode=self.interp_down)  # [B, d, 1, h, w]
            bits = self.lfq.bits(residual)  # [B, 1, h, w, d]
            bits_per_scale.append(bits)
            codes = bits_to_codes(bits)  # [B, d, 1, h, w], entries +-1/sqrt(d)
            if si == len(sched) - 1:
                summed = summed + codes
            else:
                summed = summed + F.interpolate(codes, size=final, mode=self.interp_up)  # [B, d, 1, H, W]
        assert isinstance(summed, Tensor)
        return bits_per_scale, summed


def _check_schedule(schedule: Sequence[Sequence[int]], grid: tuple[int, int],
                    patch: int = 16) -> list[tuple[int, int, int]]:
    """Schedule as a list of ``(1, h, w)`` whose last entry is the feature grid ``(H, W)`` (``patch`` px a token)."""
    sched = [tuple(int(v) for v in s) for s in schedule]
    if not sched or any(len(s) != 3 or s[0] != 1 or s[1] <= 0 or s[2] <= 0 for s in sched):
        raise ConfigError(f"scale schedule entries must be (1, h, w) with h, w > 0 (images); got {sched}")
    if tuple(sched[-1][1:]) != tuple(grid):
        h, w = sched[-1][1:]
        raise ConfigError(f"the schedule's last scale {(h, w)} is not the encoder's token grid {tuple(grid)}; "
                          f"resize the image to {patch * h}x{patch * w} px ({patch} px per token) or pick the "
                          "schedule that ends at its grid")
    return [(1, s[1], s[2]) for s in sched]


# ------------------------------------------------------------------------------------------------- VAE


@dataclass
class BitEncoding:
    """What :meth:`BSQVAE.encode_bits` returns; lists have one entry per scale of ``schedule``.

    bits:         [B, 1, h, w, d] int64 0/1: the labels (``gt_ms_idx_Bl``), ready as ``forced_bits``
    summed_codes: [B, d, 1, H, W] float32: the codes those bits imply, summed at the last scale (decoder input)
    features:     [B, d, 1, H, W] float32: the raw encoder output the bits were computed from
    """

    schedule: list[tuple[int, int, int]]
    bits: list[Tensor]
    summed_codes: Tensor
    features: Tensor


class BSQVAE(nn.Module):
    """The BSQ-VAE with the checkpoint's names (``encoder.*``, ``decoder.*``, ``quantizer.lfq.mask``).

    In the VARGPT-v1.1 checkpoint every key carries the prefix ``vae_local.`` (:data:`CHECKPOINT_PREFIX`);
    :meth:`load_checkpoint_state` strips it.
    """

    def __init__(self, cfg: BSQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantizer = MultiScaleBSQ(cfg.codebook_dim)

    # ------------------------------------------------------------------------------------------ loading

    def load_checkpoint_state(self, state: Mapping[str, Tensor], *, prefix: str = CHECKPOINT_PREFIX) -> None:
        """Load, strictly, every ``prefix``-ed tensor of a checkpoint state dict (other keys are ignored).

        Raises :class:`asg.errors.DataError` naming the missing and unexpected keys (prefixed) on a mismatch.
        """
        mine = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = missing_and_unexpected(self.state_dict().keys(), mine.keys())
        if missing or unexpected:
            def show(keys: list[str]) -> str:
                return ", ".join(prefix + k for k in keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            raise DataError(f"BSQ-VAE checkpoint keys do not match {type(self).__name__}({self.cfg}): "
                            f"missing [{show(missing)}], unexpected [{show(unexpected)}]")
        self.load_state_dict(mine, strict=True)

    # ------------------------------------------------------------------------------------------ decoding

    def decode(self, summed_codes: Tensor) -> Tensor:
        """Summed codes [B, d, 1, h, w] or [B, d, h, w] -> pixels [B, 3, p*h, p*w] in [-1, 1].

        Upstream: ``vae_local.decode(summed_codes.squeeze(-3))`` = ``clamp(decoder(z), -1, 1)``. The codes are
        cast to the parameters' dtype (upstream casts them to the model dtype first).
        """
        d = self.cfg.codebook_dim
        z = summed_codes
        if z.ndim == 5 and z.shape[2] == 1:
            z = z.squeeze(2)
        if z.ndim != 4 or z.shape[1] != d:
            raise ConfigError(f"BSQVAE.decode expects summed codes [B, {d}, 1, h, w] or [B, {d}, h, w], "
                              f"got {tuple(summed_codes.shape)}")
        param = next(self.decoder.parameters())
        return self.decoder(z.to(device=param.device, dtype=param.dtype)).clamp(-1, 1)

    # ------------------------------------------------------------------------------------------ encoding

    def encode_features(self, pixels: Tensor) -> Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> raw encoder features [B, d, H/p, W/p] float32
        (``AutoEncoder.encode_for_raw_features``)."""
        self._check_pixels(pixels)
        param = next(self.encoder.parameters())
        return self.encoder(pixels.to(device=param.device, dtype=param.dtype)).float()

    def _check_pixels(self, pixels: Tensor) -> None:
        p, c = self.cfg.patch_size, self.cfg.image_channels
        if pixels.ndim != 4 or pixels.shape[1] != c or pixels.shape[2] % p or pixels.shape[3] % p:
            raise ConfigError(f"BSQVAE expects pixels [B, {c}, H, W] with H and W multiples of {p}, "
                              f"got {tuple(pixels.shape)}")

    @torch.no_grad()
    def encode_bits(self, pixels: Tensor, schedule: Sequence[tuple[int, int, int]]) -> BitEncoding:
        """Pixels [B, 3, H, W] in [-1, 1] -> per-scale bits [B, 1, h, w, d] for the scales ``(1, h, w)`` of
        ``schedule`` (its last scale must be ``(H/16, W/16)``), and the summed codes they imply.

        This is upstream's training-label path (``get_vae_gt_xin_v1_1`` -> ``encode_for_raw_features`` ->
        ``BitwiseSelfCorrection.flip_requant``) **without** its bitwise self-correction noise. Upstream, at every
        scale (``noise_apply_layers=13``), draws a strength from ``{0, 0.01, ..., 0.30}``
        (``noise_apply_strength=0.3``), flips each bit with that probability and re-derives the codes from the
        flipped bits (``noise_apply_requant=1``), so later residuals, labels and inputs depend on the draw; the
        labels are the unflipped bits of those residuals. Strength 0 (one of the 31 equally likely draws) is the
        deterministic path implemented here: the labels are then exactly the bits whose codes the generation loop
        accumulates, which is what an exact teacher-forced log-probability of a real image needs. No gradients
        flow (bits are discrete).
        """
        self._check_pixels(pixels)
        p = self.cfg.patch_size
        sched = _check_schedule(schedule, (pixels.shape[2] // p, pixels.shape[3] // p), p)  # before the encoder
        features = self.encode_features(pixels).unsqueeze(2)  # [B, d, 1, H/p, W/p]
        bits, summed = self.quantizer.encode(features, sched)
        return BitEncoding(schedule=sched, bits=bits, summed_codes=summed, features=features)


# ------------------------------------------------------------------------------------------------ images


def to_images(pixels: Tensor) -> list[Any]:
    """Pixels [B, 3, H, W] in [-1, 1] -> RGB ``PIL.Image`` list.

    Upstream (``autoregressive_infer_cfg``): ``((img + 1) / 2).mul(255).to(uint8)``, i.e. truncation, in the
    pixels' dtype; it then flips RGB to BGR only because it writes with ``cv2``; we keep RGB.
    """
    from PIL import Image

    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ConfigError(f"to_images expects pixels [B, 3, H, W], got {tuple(pixels.shape)}")
    arr = ((pixels.detach().clamp(-1, 1) + 1) / 2).mul(255).to(torch.uint8)  # [B, 3, H, W]
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()  # [B, H, W, 3]
    return [Image.fromarray(a) for a in arr]  # uint8 [H, W, 3] -> mode "RGB"


def from_images(images: Sequence[Any], resolution: int | None = None) -> Tensor:
    """RGB ``PIL.Image`` list -> pixels [B, 3, H, W] float32 in [-1, 1] (``ToTensor`` then ``x + x - 1``).

    With ``resolution``, each image first goes through upstream's evaluation transform (``mm_plugin.py``
    ``build_transforms`` val branch): shorter side resized (LANCZOS) to ``round(1.125 * resolution)``, then a
    centre crop of ``resolution x resolution``. Without it, images must already share one size.
    """
    import numpy as np
    from PIL import Image

    if not images:
        raise DataError("from_images got no images")
    out = []
    for i, img in enumerate(images):
        if not isinstance(img, Image.Image):
            raise DataError(f"from_images: item {i} is a {type(img).__name__}, not a PIL.Image")
        img = img.convert("RGB")
        if resolution is not None:
            img = _resize_center_crop(img, resolution)
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        out.append(t.add(t).add_(-1))  # normalize_01_into_pm1
    sizes = {tuple(t.shape) for t in out}
    if len(sizes) != 1:
        raise DataError(f"from_images: images have different sizes {sorted(sizes)}; pass resolution=")
    return torch.stack(out)


def _resize_center_crop(img: Any, resolution: int) -> Any:
    """torchvision ``Resize(round(1.125 * r), LANCZOS)`` + ``CenterCrop(r)`` on a PIL image, without torchvision."""
    from PIL import Image

    if resolution <= 0:
        raise ConfigError(f"from_images: resolution must be positive, got {resolution}")
    mid = round(1.125 * resolution)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = mid, int(mid * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != (w, h):
        img = img.resize(size, Image.Resampling.LANCZOS)
    w, h = img.size
    top, left = int(round((h - resolution) / 2.0)), int(round((w - resolution) / 2.0))
    return img.crop((left, top, left + resolution, top + resolution))


# ------------------------------------------------------------------------------------------- utilities


def vae_parameter_shapes(vae: nn.Module, prefix: str = CHECKPOINT_PREFIX) -> dict[str, tuple[int, ...]]:
    """Checkpoint names (``prefix`` + module name) -> shapes of every persistent tensor of ``vae``."""
    return {prefix + k: tuple(v.shape) for k, v in vae.state_dict(keep_vars=True).items()}
