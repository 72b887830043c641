"""BAGEL's vision side: the SigLIP-NaViT encoder, the ViT->LLM connector, the frozen 2-D sin-cos
position tables and the flow-timestep embedder.

The transformer layers are transformers' own ``SiglipEncoder`` (so the checkpoint's
``encoder.layers.N.*`` names come for free); only the embedding differs from stock SigLIP. BAGEL feeds
the ViT a *packed* sequence: every image is cut into 14x14 patches, each patch flattened in
(row-in-patch, col-in-patch, channel) order and sent through a Linear (not a Conv2d), and several images
are concatenated along the token axis. Each patch's position embedding row is ``row * max_per_side +
col`` on a fixed grid, so any aspect ratio up to the grid fits without interpolation. Images in one
pack must not see each other; upstream uses flash-attn's varlen kernel for that, here a block-diagonal
mask drives SDPA (or eager) attention, so no CUDA-only kernel is needed.

Module attribute names and parameter names match BAGEL's ``ema.safetensors`` exactly; the top-level
model holds these as ``vit_model``, ``connector``, ``vit_pos_embed``, ``latent_pos_embed`` and
``time_embedder``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import SiglipVisionConfig
from transformers.activations import ACT2FN
from transformers.models.siglip.modeling_siglip import SiglipEncoder

__all__ = [
    "Connector",
    "NaViTEmbeddings",
    "NaViTVisionTransformer",
    "SiglipNaViT",
    "SinCosPositionTable",
    "TimestepEmbedder",
    "navit_config",
    "navit_position_ids",
    "packed_attention_mask",
    "patchify",
    "sincos_2d_table",
    "timestep_frequencies",
]

# Attention back-ends that run everywhere (CPU included). flash-attn is deliberately not among them.
SUPPORTED_ATTENTION = ("sdpa", "eager")


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


def navit_config(
    config: SiglipVisionConfig,
    *,
    drop_last_layer: bool = False,
    attn_implementation: str = "sdpa",
) -> SiglipVisionConfig:
    """A private copy of a SigLIP vision config, ready for :class:`SiglipNaViT`.

    BAGEL's hub ``vit_config.json`` lists 27 layers, but BAGEL builds the encoder with one fewer (the
    checkpoint holds layers 0..25): pass ``drop_last_layer=True`` for a hub config. The attention
    back-end is pinned here because transformers' ``SiglipAttention`` reads it from the config; the
    caller's config object is never mutated.
    """
    if attn_implementation not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} is not supported; use one of {SUPPORTED_ATTENTION}"
            " (the packed mask needs SDPA or eager attention, flash-attn is never required)"
        )
    if getattr(config, "rope", False):
        raise NotImplementedError(
            "vit_config.rope=True (2-D rotary ViT) is not implemented; BAGEL-7B-MoT uses rope=False"
        )
    out = copy.deepcopy(config)
    if drop_last_layer:
        if out.num_hidden_layers < 2:
            raise ValueError(f"drop_last_layer needs >= 2 layers, config has {out.num_hidden_layers}")
        out.num_hidden_layers -= 1
    out._attn_implementation = attn_implementation
    return out


# ----------------------------------------------------------------------------------------------------
# Patches and NaViT positions
# ----------------------------------------------------------------------------------------------------


def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut one image into flattened patches, the layout the Linear patch embedding was trained on.

    ``image`` is (C, H, W) with H and W multiples of ``patch_size``. Rows come out in raster order
    (patch-row, patch-col); each row's features are ordered (row-in-patch, col-in-patch, channel), which
    is the Conv2d weight permuted to (out, kh, kw, in) that BAGEL's checkpoint stores.
    """
    if image.dim() != 3:
        raise ValueError(f"patchify expects an image (C, H, W), got shape {tuple(image.shape)}")
    c, height, width = image.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"patchify: image size {height}x{width} is not a multiple of patch_size={patch_size}"
        )
    h, w = height // patch_size, width // patch_size
    x = image.reshape(c, h, patch_size, w, patch_size)  # (c, h, p, w, q)
    x = x.permute(1, 3, 2, 4, 0)  # (h, w, p, q, c)
    return x.reshape(h * w, patch_size * patch_size * c)  # (h*w, p*p*c)


def navit_position_ids(h_patches: int, w_patches: int, max_per_side: int) -> torch.Tensor:
    """Flattened grid positions ``row * max_per_side + col`` of an ``h_patches x w_patches`` image.

    This is BAGEL's "extrapolate" variant: a small image uses the top-left corner of the fixed
    ``max_per_side`` grid rather than a resampled copy of it. Returns (h*w,) int64 in raster order,
    matching :func:`patchify`.
    """
    if not (0 < h_patches <= max_per_side and 0 < w_patches <= max_per_side):
        raise ValueError(
            f"navit_position_ids: a {h_patches}x{w_patches} patch grid does not fit the"
            f" {max_per_side}x{max_per_side} position grid"
        )
    rows = torch.arange(h_patches, dtype=torch.long)
    cols = torch.arange(w_patches, dtype=torch.long)
    return (rows[:, None] * max_per_side + cols[None, :]).reshape(-1)  # (h*w,)


def packed_attention_mask(
    seqlens: Sequence[int],
    *,
    additive_dtype: torch.dtype | None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Block-diagonal mask (1, 1, N, N) for a pack of images: each image attends fully to itself only.

    With ``additive_dtype=None`` the mask is boolean (True = may attend), which SDPA takes directly at a
    quarter of the memory. With a float dtype it is additive (0 or the dtype's most negative value),
    which is what transformers' eager attention adds to the scores.
    """
    if len(seqlens) == 0 or any(int(n) <= 0 for n in seqlens):
        raise ValueError(f"packed_attention_mask: seqlens must be positive, got {list(seqlens)}")
    sample = torch.repeat_interleave(
        torch.arange(len(seqlens), device=device),
        torch.tensor([int(n) for n in seqlens], device=device),
    )  # (N,) index of the image each token belongs to
    allowed = sample[:, None] == sample[None, :]  # (N, N)
    if additive_dtype is None:
        return allowed[None, None]
    mask = torch.zeros(allowed.shape, dtype=additive_dtype, device=device)
    mask.masked_fill_(~allowed, torch.finfo(additive_dtype).min)
    return mask[None, None]  # (1, 1, N, N)


# ----------------------------------------------------------------------------------------------------
# SigLIP-NaViT
# ----------------------------------------------------------------------------------------------------


class NaViTEmbeddings(nn.Module):
    """Linear patch embedding plus a learned position row looked up by flattened NaViT position id.

    Stock SigLIP uses a Conv2d and adds all positions of a square grid; BAGEL converted the conv to a
    Linear over (p, q, c)-flattened patches and indexes the (grid*grid, D) table per patch instead.
    """

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.grid_per_side = config.image_size // config.patch_size
        self.num_positions = self.grid_per_side**2
        self.patch_embedding = nn.Linear(
            config.num_channels * config.patch_size**2, config.hidden_size, bias=True
        )
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)

    def forward(self, packed_pixel_values: torch.Tensor, packed_position_ids: torch.Tensor) -> torch.Tensor:
        """(N, p*p*C) patches and (N,) position ids -> (N, D) token embeddings."""
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(packed_pixel_values.to(weight.dtype))  # (N, D)
        return patches + self.position_embedding(packed_position_ids)  # (N, D)


class NaViTVisionTransformer(nn.Module):
    """Embeddings, transformers' ``SiglipEncoder`` and the final LayerNorm (no pooling head: BAGEL
    uses every patch token)."""

    def __init__(self, config: SiglipVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = NaViTEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        packed_pixel_values: torch.Tensor,
        packed_position_ids: torch.Tensor,
        seqlens: Sequence[int],
    ) -> torch.Tensor:
        """See :meth:`SiglipNaViT.forward`."""
        hidden = self.embeddings(packed_pixel_values, packed_position_ids)  # (N, D)
        if len(seqlens) == 1:
            mask = None  # one image: plain full attention, no mask to build
        elif self.config._attn_implementation == "sdpa":
            mask = packed_attention_mask(seqlens, additive_dtype=None, device=hidden.device)
        else:
            mask = packed_attention_mask(seqlens, additive_dtype=hidden.dtype, device=hidden.device)
        # SiglipEncoder works on (batch, seq, D): the whole pack is one batch row, and the mask keeps
        # the images apart.
        out = self.encoder(inputs_embeds=hidden[None], attention_mask=mask).last_hidden_state  # (1, N, D)
        return self.post_layernorm(out[0])  # (N, D)


class SiglipNaViT(nn.Module):
    """BAGEL's SigLIP-NaViT vision encoder (``vit_model`` in the checkpoint).

    Parameters live under ``vision_model.{embeddings, encoder.layers.N, post_layernorm}``, exactly as
    in ``ema.safetensors``. ``config`` is a ``transformers.SiglipVisionConfig`` whose
    ``num_hidden_layers`` is the number of layers to *build* (see :func:`navit_config` for the hub
    config's extra layer). ``max_patches_per_side`` is the row stride of the position ids (BAGEL's
    ``vit_max_num_patch_per_side``, 70 for the release); it must fit the ``image_size // patch_size``
    position grid.
    """

    def __init__(
        self,
        config: SiglipVisionConfig,
        max_patches_per_side: int | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        super().__init__()
        impl = attn_implementation or config._attn_implementation or "sdpa"
        config = navit_config(config, attn_implementation=impl)
        grid = config.image_size // config.patch_size
        self.max_patches_per_side = grid if max_patches_per_side is None else int(max_patches_per_side)
        if self.max_patches_per_side > grid:
            raise ValueError(
                f"max_patches_per_side={self.max_patches_per_side} exceeds the position table's grid"
                f" image_size // patch_size = {config.image_size} // {config.patch_size} = {grid}"
            )
        self.config = config
        self.patch_size = config.patch_size
        self.vision_model = NaViTVisionTransformer(config)

    def position_ids(self, h_patches: int, w_patches: int) -> torch.Tensor:
        """(h*w,) position ids of one image on this encoder's grid (see :func:`navit_position_ids`)."""
        return navit_position_ids(h_patches, w_patches, self.max_patches_per_side)

    def forward(
        self,
        packed_pixel_values: torch.Tensor,
        packed_position_ids: torch.Tensor,
        seqlens: Sequence[int],
    ) -> torch.Tensor:
        """Encode a pack of images: (N, p*p*C) patches, (N,) position ids, per-image token counts
        summing to N -> (N, hidden) after ``post_layernorm``."""
        seqlens = [int(n) for n in seqlens]
        n_tokens = packed_pixel_values.shape[0]
        in_features = self.vision_model.embeddings.patch_embedding.in_features
        if packed_pixel_values.dim() != 2 or packed_pixel_values.shape[1] != in_features:
            raise ValueError(
                f"packed_pixel_values must be (N, {in_features}) flattened patches,"
                f" got {tuple(packed_pixel_values.shape)}"
            )
        if packed_position_ids.shape != (n_tokens,):
            raise ValueError(
                f"packed_position_ids must be ({n_tokens},), got {tuple(packed_position_ids.shape)}"
            )
        if sum(seqlens) != n_tokens or min(seqlens, default=0) <= 0:
            raise ValueError(f"seqlens {seqlens} must be positive and sum to the {n_tokens} packed tokens")
        return self.vision_model(packed_pixel_values, packed_position_ids, seqlens)


# ----------------------------------------------------------------------------------------------------
# Connector, position tables, timestep embedder
# ----------------------------------------------------------------------------------------------------


class Connector(nn.Module):
    """Two-layer MLP mapping ViT tokens into the LLM's hidden space (``connector.fc1/fc2``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_act: str = "gelu_pytorch_tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = ACT2FN[hidden_act]
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> (N, out_dim)."""
        return self.fc2(self.act(self.fc1(hidden)))


def sincos_2d_table(max_per_side: int, dim: int) -> torch.Tensor:
    """The MAE/DiT 2-D sin-cos table BAGEL freezes into ``*_pos_embed.pos_embed``: (G*G, dim) float32.

    Row ``r * G + c`` holds, in four equal quarters, ``sin(c*w), cos(c*w), sin(r*w), cos(r*w)`` with
    ``w_i = 10000 ** (-i / (dim/4))``. The *column* comes first: MAE builds its grid with
    ``meshgrid(w, h)`` and encodes component 0 first, although its comment says "h". Computed in
    float64 and rounded once, as upstream (numpy, float64) does.
    """
    if dim % 4:
        raise ValueError(f"sincos_2d_table: dim={dim} must be a multiple of 4")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    coords = torch.arange(max_per_side, dtype=torch.float64)
    rows = coords.repeat_interleave(max_per_side)  # (G*G,) r of index r*G + c
    cols = coords.repeat(max_per_side)  # (G*G,) c of index r*G + c
    col_arg = cols[:, None] * omega[None, :]  # (G*G, dim/4)
    row_arg = rows[:, None] * omega[None, :]  # (G*G, dim/4)
    table = torch.cat([col_arg.sin(), col_arg.cos(), row_arg.sin(), row_arg.cos()], dim=1)  # (G*G, dim)
    return table.float()


class SinCosPositionTable(nn.Module):
    """Frozen 2-D sin-cos position table looked up by flattened grid id (``vit_pos_embed``,
    ``latent_pos_embed``).

    ``pos_embed`` is a Parameter with ``requires_grad=False`` rather than a buffer because that is how
    BAGEL registered it, so it is a state-dict key of the checkpoint.
    """

    def __init__(self, max_per_side: int, dim: int) -> None:
        super().__init__()
        self.max_per_side = max_per_side
        self.dim = dim
        self.pos_embed = nn.Parameter(sincos_2d_table(max_per_side, dim), requires_grad=False)  # (G*G, D)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        """(N,) flattened grid ids -> (N, dim) rows of the table."""
        return self.pos_embed[position_ids]


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """DiT/GLIDE sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim) float32.

    Entry ``i < dim/2`` is ``cos(t * f_i)`` and entry ``dim/2 + i`` is ``sin(t * f_i)``, with
    ``f_i = max_period ** (-i / (dim/2))``; cosines first, as BAGEL's ``TimestepEmbedder`` does. An odd
    ``dim`` gets a trailing zero.
    """
    if t.dim() != 1:
        raise ValueError(f"timestep_frequencies expects t of shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)  # (B, dim)
    return emb


class TimestepEmbedder(nn.Module):
    """Flow timestep -> LLM hidden vector: sinusoidal features, Linear, SiLU, Linear (``time_embedder``).

    BAGEL feeds t in [0, 1] directly (no x1000 scaling), so only the lowest frequencies move much.
    """

    def __init__(self, hidden: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B, hidden)."""
        t_freq = timestep_frequencies(t, self.freq_dim)  # (B, freq_dim) float32
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (B, hidden)
