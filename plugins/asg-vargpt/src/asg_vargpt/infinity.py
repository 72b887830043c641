"""VARGPT-v1.1's image head: the Infinity transformer (``vargpt_gen``), the two GenPatchMerger projectors and
``sos_embedding``, written so that the public checkpoint's tensors load by name.

Why our own module and not upstream's: upstream's ``VARGPTQwen2VLForConditionalGeneration.__init__``
hard-codes Infinity-2B (a CPU test would allocate 2.2 B parameters), imports flash-attn unconditionally, casts
its cross-attention to bf16, keeps the self-attention KV cache as hidden module state, and ships a
``torch.compile``'d AdaLN. Here the size comes from :class:`InfinityConfig`, attention is PyTorch SDPA, the
math stays in the parameters' dtype, and the per-scale KV cache is an explicit object (:class:`InfinityCache`)
the caller owns, so nothing survives a call by accident.

Names are facts about the checkpoint (``fixtures/manifest.json``), relative to the top of the checkpoint:

=================================  ==========================================================
``vargpt_gen.*``                   :class:`Infinity` (blocks in ``block_chunks.<i>.module.<j>``)
``image_gen_projector.*``          :class:`GenPatchMerger` Infinity width C -> LLM width
``image_gen_projector_out.*``      :class:`GenPatchMerger` LLM width -> C
``sos_embedding.weight``           ``image_gen_start_token_id + 1`` rows of width C
=================================  ==========================================================

What upstream computes, and we reproduce (fused AdaLN path, ``add_lvl_embeding_only_first_block=1``,
``rope2d_normalized_by_hw=2``, ``use_bit_label=1``, shared AdaLN, cosine self-attention):

* a block is ``x += gamma1 * SA(AdaLN(x; scale1, shift1))``, ``x += CA(LayerNorm(x), context)``,
  ``x += gamma2 * FFN(AdaLN(x; scale2, shift2))``, where ``(gamma1, gamma2, scale1, scale2, shift1, shift2)``
  is the block's ``ada_gss`` plus ``shared_ada_lin(cond)``;
* self-attention L2-normalises q and k, multiplies q by ``exp(min(scale_mul_1H11, log 100))``, rotates both with
  a 2-D rope and attends with scale 1 over every token of the scales so far (the KV cache);
* the head is ``head(AdaLN(h; head_nm.ada_lin(cond)))``: 2 logits for each of the ``codebook_dim`` bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asg.errors import ConfigError

ROPE_BASE = 10000.0
ROPE_MAX_SIDE = 2048 // 16
"""Rope tables cover positions 0..127 on each axis (2048 px at 16 px per token), as upstream precomputes."""

NUM_LEVELS = 15
"""Rows of ``vargpt_gen.lvl_embed``: one learned vector per scale index (upstream allocates 15)."""


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class InfinityConfig:
    """Sizes of the Infinity head. Upstream fixes them in code (``infinity_2b``); we take them as data."""

    embed_dim: int  # C: width of the Infinity blocks (and of the cross-attention context)
    depth: int  # number of CrossAttnBlocks
    num_heads: int  # self-/cross-attention heads in the blocks
    mlp_ratio: float  # FFN width = round(C * mlp_ratio / 256) * 256
    block_chunks: int  # blocks are grouped as block_chunks.<i>.module.<j> (checkpoint layout only)
    text_channels: int  # Ct5: width of the sos rows / uncond rows fed to text_norm and the attentive pool
    text_maxlen: int = 512  # rows of cfg_uncond: the longest context the unconditional branch can replace
    codebook_dim: int = 32  # bits per token (BSQ codebook dim); the head emits 2 logits per bit
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        c, h = self.embed_dim, self.num_heads
        if c <= 0 or h <= 0 or c % h:
            raise ConfigError(f"InfinityConfig.embed_dim {c} is not a positive multiple of num_heads {h}")
        if (c // h) % 4:
            raise ConfigError(f"InfinityConfig head dim {c // h} (embed_dim/num_heads) must be a multiple of 4: "
                              "the 2-D rope splits each head into (height, width) pairs")
        if self.depth <= 0 or self.block_chunks <= 0 or self.depth % self.block_chunks:
            raise ConfigError(f"InfinityConfig.depth {self.depth} is not a positive multiple of "
                              f"block_chunks {self.block_chunks}")
        if self.ffn_hidden <= 0:
            raise ConfigError(f"InfinityConfig FFN width round({c}*{self.mlp_ratio}/256)*256 is 0; "
                              "embed_dim * mlp_ratio must be at least 128")
        if self.text_channels != c:
            raise ConfigError(f"InfinityConfig.text_channels {self.text_channels} != embed_dim {c}: VARGPT feeds "
                              "sos_embedding rows (width C) to text_norm, so both must be equal")
        if self.text_channels < self.pool_head_dim or self.text_channels % self.pool_head_dim:
            raise ConfigError(f"InfinityConfig.text_channels {self.text_channels} must be a positive multiple of "
                              f"{self.pool_head_dim} (the attentive pool's head width), so embed_dim >= 128")
        if self.codebook_dim <= 0 or self.text_maxlen <= 0:
            raise ConfigError(f"InfinityConfig codebook_dim {self.codebook_dim} and text_maxlen "
                              f"{self.text_maxlen} must be positive")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        return round(self.embed_dim * self.mlp_ratio / 256) * 256

    @property
    def pool_head_dim(self) -> int:
        """Upstream's TextAttentivePool uses 128-wide heads (64 above width 4096)."""
        return 64 if self.embed_dim > 4096 else 128

    @property
    def pool_heads(self) -> int:
        return self.text_channels // self.pool_head_dim

    @property
    def bit_logits(self) -> int:
        """V: logits per token, 2 per bit (pairs ``(bit=0, bit=1)`` after ``view(..., codebook_dim, 2)``)."""
        return 2 * self.codebook_dim

    @property
    def blocks_per_chunk(self) -> int:
        return self.depth // self.block_chunks


def infinity_2b() -> InfinityConfig:
    """The head in the public checkpoint: Infinity-2B (depth 32, width 2048, 16 heads, MLP x4, 8 chunks)."""
    return InfinityConfig(embed_dim=2048, depth=32, num_heads=16, mlp_ratio=4.0, block_chunks=8,
                          text_channels=2048)


def infinity_tiny() -> InfinityConfig:
    """The tiny head of the upstream parity fixture (``fixtures/tiny/fixture.json``, ``model_kwargs``)."""
    return InfinityConfig(embed_dim=128, depth=4, num_heads=2, mlp_ratio=2.0, block_chunks=2, text_channels=128)


# ------------------------------------------------------------------------------------------ primitives


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """``x / rms(x) * weight`` over the last dim (upstream's FastRMSNorm without the fused kernel)."""
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * weight


def ada_layer_norm(x: Tensor, scale: Tensor, shift: Tensor, eps: float) -> Tensor:
    """Parameter-free LayerNorm in fp32, then ``* (1 + scale) + shift`` (upstream's fused AdaLN)."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    return normed * (scale + 1) + shift


class RMSNorm(nn.Module):
    """``vargpt_gen.text_norm``: RMSNorm with a learned gain (name ``weight``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps).to(x.dtype)


def _key_padding_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """[N, Lk] bool (True = attend) -> additive [N, 1, 1, Lk] bias for SDPA; None stays None."""
    if mask is None:
        return None
    if not bool(mask.any(dim=-1).all()):
        raise ConfigError("cross-attention context mask has a sample with no visible key")
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask, float("-inf"))[:, None, None, :]


# ------------------------------------------------------------------------------------------------ rope


def rope2d_cos_sin(head_dim: int, hw: tuple[int, int], extent: tuple[int, int], *,
                   device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of Infinity's 2-D rope for one scale of ``h x w`` tokens: each [h*w, head_dim // 2].

    Why "extent": positions are normalised to the schedule's largest ('1M') scale ``extent = (H, W)``
    (``rope2d_normalized_by_hw=2``): token (i, j) of an h x w scale sits at grid point
    ``(round(i * H / h), round(j * W / w))``, so every scale sees the same image-space frequencies. The first
    ``head_dim // 4`` rotation pairs of a head turn with the row, the rest with the column. Computed in fp32
    exactly as upstream builds its table (same operation order), so the angles agree bit for bit.
    """
    h, w = hw
    big_h, big_w = extent
    if not (0 < h <= big_h < ROPE_MAX_SIDE + 1 and 0 < w <= big_w < ROPE_MAX_SIDE + 1):
        raise ConfigError(f"rope scale {h}x{w} does not fit in extent {big_h}x{big_w} (max side {ROPE_MAX_SIDE})")
    half = head_dim // 2
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, half, 2, dtype=torch.int64) / half))  # [head_dim/4]
    rows = (torch.arange(h) * (big_h / h)).round().int()  # [h] grid rows
    cols = (torch.arange(w) * (big_w / w)).round().int()  # [w] grid cols
    ang_r = torch.outer(rows.to(inv_freq.dtype), inv_freq)  # [h, head_dim/4]
    ang_c = torch.outer(cols.to(inv_freq.dtype), inv_freq)  # [w, head_dim/4]
    angles = torch.cat([ang_r[:, None, :].expand(h, w, -1), ang_c[None, :, :].expand(h, w, -1)], dim=-1)
    angles = angles.reshape(h * w, half)  # [h*w, head_dim/2]
    return torch.cos(angles).to(device), torch.sin(angles).to(device)


def apply_rope2d(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs ``(x[2i], x[2i+1])`` of ``x`` [N, H, L, hd] by the angles of row L (cos/sin [L, hd/2])."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # [N, H, L, hd/2, 2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.reshape(x.shape).to(x.dtype)


# ---------------------------------------------------------------------------------------------- layers


class SelfAttention(nn.Module):
    """Cosine self-attention with a per-head learned temperature (``sa.*``); q/k biases as in the checkpoint.

    The key bias is a persistent zero buffer (``zero_k_bias``) because upstream saved it; keys get no bias.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.mat_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        self.proj = nn.Linear(dim, dim)
        self.max_scale_mul = math.log(100.0)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [N, L, C] (this scale's tokens) -> ([N, L, C], (k, v) of every scale so far, each [N, H, L_all, hd])."""
        n, length, c = x.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x, self.mat_qkv.weight, bias).view(n, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, H, L, hd]
        temp = self.scale_mul_1H11.clamp_max(self.max_scale_mul).exp()  # [1, H, 1, 1]
        q = F.normalize(q, dim=-1, eps=1e-12) * temp
        k = F.normalize(k, dim=-1, eps=1e-12)
        q, k = apply_rope2d(q, cos, sin), apply_rope2d(k, cos, sin)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # [N, H, L, hd]: later scales see all earlier
        return self.proj(out.transpose(1, 2).reshape(n, length, c)), (k, v)


class CrossAttention(nn.Module):
    """Attention from queries to a per-sample context (``ca.*`` in blocks, ``text_proj_for_sos.ca.*`` as a pool).

    As a pool (``for_pool``) the query is one learned vector per head (``mat_q`` [1, H, hd]) and the output is
    one row per sample; otherwise ``mat_q`` is a Linear over the block's tokens. Softmax scale 1/sqrt(hd).
    """

    def __init__(self, dim: int, kv_dim: int, num_heads: int, *, for_pool: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.for_pool = num_heads, dim // num_heads, for_pool
        if for_pool:
            self.mat_q = nn.Parameter(torch.zeros(1, num_heads, dim // num_heads))
        else:
            self.mat_q = nn.Linear(dim, dim)
        self.mat_kv = nn.Linear(kv_dim, 2 * dim, bias=False)
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor | None, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """x [N, L, C] (ignored as a pool), context [N, Lk, kv_dim], mask [N, Lk] bool -> [N, L or 1, C]."""
        n, lk, _ = context.shape
        kv = F.linear(context, self.mat_kv.weight, torch.cat((self.zero_k_bias, self.v_bias)))
        k, v = kv.view(n, lk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # [N, H, Lk, hd]
        if self.for_pool:
            q = self.mat_q.to(kv.dtype).unsqueeze(2).expand(n, -1, -1, -1)  # [N, H, 1, hd]
        else:
            if x is None:
                raise ConfigError("CrossAttention in a block needs query tokens x")
            q = self.mat_q(x).view(n, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # [N, H, L, hd]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_key_padding_bias(context_mask, q.dtype),
                                             scale=1.0 / math.sqrt(self.head_dim))
        return self.proj(out.transpose(1, 2).reshape(n, q.shape[2], -1))


class FFN(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CrossAttnBlock(nn.Module):
    """One Infinity block (``block_chunks.<i>.module.<j>``): AdaLN self-attention, cross-attention, AdaLN FFN."""

    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.eps = cfg.norm_eps
        self.ada_gss = nn.Parameter(torch.zeros(1, 1, 6, c))
        self.sa = SelfAttention(c, cfg.num_heads)
        self.ca = CrossAttention(c, c, cfg.num_heads)
        self.ffn = FFN(c, cfg.ffn_hidden)
        self.ca_norm = nn.LayerNorm(c, eps=cfg.norm_eps)

    def forward(self, x: Tensor, gss: Tensor, context: Tensor, context_mask: Tensor | None,
                cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x [N, L, C], gss [N, 1, 6, C] (shared_ada_lin(cond)) -> (x [N, L, C], updated self-attention KV)."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = (self.ada_gss + gss).unbind(2)  # each [N, 1, C]
        attn, kv = self.sa(ada_layer_norm(x, scale1, shift1, self.eps), cos, sin, past)
        x = x + attn * gamma1
        x = x + self.ca(self.ca_norm(x), context, context_mask)
        x = x + self.ffn(ada_layer_norm(x, scale2, shift2, self.eps)) * gamma2
        return x, kv


class BlockChunk(nn.Module):
    """A group of blocks; exists only so that names read ``block_chunks.<i>.module.<j>`` as in the checkpoint."""

    def __init__(self, blocks: Sequence[CrossAttnBlock]) -> None:
        super().__init__()
        self.module = nn.ModuleList(blocks)


class AdaLNBeforeHead(nn.Module):
    """``head_nm``: AdaLN whose (scale, shift) come from ``ada_lin = [SiLU, Linear(D, 2C)]`` of the condition."""

    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        self.dim, self.eps = cfg.embed_dim, cfg.norm_eps
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(cfg.embed_dim, 2 * cfg.embed_dim))

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)  # each [N, 1, C]
        return ada_layer_norm(h, scale, shift, self.eps)


class TextAttentivePool(nn.Module):
    """``text_proj_for_sos``: pools a sample's (normed) condition rows into one vector ``cond`` [N, D]."""

    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        self.ca = CrossAttention(cfg.embed_dim, cfg.text_channels, cfg.pool_heads, for_pool=True)

    def forward(self, rows: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.ca(None, rows, mask).squeeze(1)


@dataclass
class InfinityCache:
    """Self-attention keys/values of every block over the scales run so far; one per generation (never shared)."""

    kv: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)


class Infinity(nn.Module):
    """``vargpt_gen``: the Infinity transformer, its conditioning and its bitwise head, sized by ``cfg``."""

    def __init__(self, cfg: InfinityConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.cfg_uncond = nn.Parameter(torch.zeros(cfg.text_maxlen, cfg.text_channels))
        self.pos_start = nn.Parameter(torch.zeros(1, 1, c))
        self.text_norm = RMSNorm(cfg.text_channels, cfg.norm_eps)
        self.text_proj_for_sos = TextAttentivePool(cfg)
        # In the checkpoint and used by upstream's training forward; VARGPT's generation context bypasses it.
        self.text_proj_for_ca = nn.Sequential(nn.Linear(cfg.text_channels, c), nn.GELU(approximate="tanh"),
                                              nn.Linear(c, c))
        self.lvl_embed = nn.Embedding(NUM_LEVELS, c)
        self.word_embed = nn.Linear(cfg.codebook_dim, c)
        self.shared_ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))
        self.head_nm = AdaLNBeforeHead(cfg)
        self.head = nn.Linear(c, cfg.bit_logits)
        per = cfg.blocks_per_chunk
        self.block_chunks = nn.ModuleList(
            BlockChunk([CrossAttnBlock(cfg) for _ in range(per)]) for _ in range(cfg.block_chunks))

    @property
    def blocks(self) -> list[CrossAttnBlock]:
        return [b for chunk in self.block_chunks for b in chunk.module]  # type: ignore[union-attr]

    def condition(self, rows: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Condition rows [N, Lr, Ct5] (VARGPT: one sos row) -> (cond [N, D], AdaLN gss [N, 1, 6, C])."""
        cond = self.text_proj_for_sos(self.text_norm(rows), mask)
        gss = self.shared_ada_lin(cond).view(-1, 1, 6, self.cfg.embed_dim)
        return cond, gss

    def uncond_rows(self, length: int) -> Tensor:
        """The first ``length`` rows of ``cfg_uncond`` [length, Ct5]: the unconditional branch's context."""
        if not 0 < length <= self.cfg.text_maxlen:
            raise ConfigError(f"unconditional context of {length} rows; cfg_uncond has {self.cfg.text_maxlen} "
                              "(shorten the prompt)")
        return self.cfg_uncond[:length]

    def run_scale(self, x: Tensor, scale_index: int, gss: Tensor, context: Tensor, context_mask: Tensor | None,
                  cos: Tensor, sin: Tensor, cache: InfinityCache) -> Tensor:
        """One scale through every block: x [N, h*w, C] -> [N, h*w, C]; appends this scale's KV to ``cache``.

        The level embedding of ``scale_index`` is added once, before the first block.
        """
        if not 0 <= scale_index < NUM_LEVELS:
            raise ConfigError(f"scale index {scale_index} has no level embedding (lvl_embed has {NUM_LEVELS} rows)")
        blocks = self.blocks
        if not cache.kv:
            cache.kv = [None] * len(blocks)
        if len(cache.kv) != len(blocks):
            raise ConfigError(f"InfinityCache has {len(cache.kv)} entries for {len(blocks)} blocks")
        x = x + self.lvl_embed.weight[scale_index]
        for i, block in enumerate(blocks):
            x, cache.kv[i] = block(x, gss, context, context_mask, cos, sin, cache.kv[i])
        return x

    def logits(self, h: Tensor, cond: Tensor) -> Tensor:
        """Bit logits [N, L, 2 * codebook_dim] of hidden states h [N, L, C] under condition cond [N, D]."""
        return self.head(self.head_nm(h.to(cond.dtype), cond))


class GenPatchMerger(nn.Module):
    """``image_gen_projector`` (C -> LLM width) and ``image_gen_projector_out`` (LLM width -> C).

    ``ln_q`` is in the checkpoint but upstream's forward never applies it; we keep it (strict loading) and
    skip it likewise.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.ln_q = nn.LayerNorm(in_dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


class VargptImageHead(nn.Module):
    """Everything VARGPT adds on top of Qwen2-VL for painting, minus the BSQ-VAE; state-dict names are the
    checkpoint's (``vargpt_gen.*``, ``image_gen_projector*.*``, ``sos_embedding.weight``)."""

    def __init__(self, cfg: InfinityConfig, llm_hidden: int, image_gen_start_token_id: int) -> None:
        super().__init__()
        if llm_hidden <= 0 or image_gen_start_token_id < 0:
            raise ConfigError(f"VargptImageHead needs llm_hidden > 0 and image_gen_start_token_id >= 0, got "
                              f"{llm_hidden} and {image_gen_start_token_id}")
        self.cfg, self.llm_hidden = cfg, llm_hidden
        self.image_gen_start_token_id = image_gen_start_token_id
        self.vargpt_gen = Infinity(cfg)
        self.image_gen_projector = GenPatchMerger(cfg.embed_dim, llm_hidden)
        self.image_gen_projector_out = GenPatchMerger(llm_hidden, cfg.embed_dim)
        # Upstream sizes it image_gen_start_token_id + 1 and only ever reads that last row.
        self.sos_embedding = nn.Embedding(image_gen_start_token_id + 1, cfg.embed_dim)

    def sos_row(self) -> Tensor:
        """The start-of-image row [C] (``sos_embedding[image_gen_start_token_id]``)."""
        return self.sos_embedding.weight[self.image_gen_start_token_id]


def head_parameter_shapes(head: nn.Module) -> dict[str, tuple[int, ...]]:
    """Checkpoint names -> shapes of every persistent tensor of ``head`` (parameters and saved buffers)."""
    return {k: tuple(v.shape) for k, v in head.state_dict(keep_vars=True).items()}
