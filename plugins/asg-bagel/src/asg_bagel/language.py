"""BAGEL's language model: a Qwen2 decoder whose every layer holds two experts (mixture of transformers).

Each layer has an *understanding* expert (the Qwen2.5-7B weights: ``q_proj``, ``mlp``, ``input_layernorm``
...) and a *generation* expert with the same shapes (``q_proj_moe_gen``, ``mlp_moe_gen``,
``input_layernorm_moe_gen`` ...). A token is routed by its type, not by a learned gate: text and ViT
tokens go through the understanding expert, noisy VAE-latent tokens through the generation expert.
All tokens of a sample share one attention over both experts' keys and values, so the latent tokens
read the prompt and the prompt never reads the latents (they come after it).

Sequences are *packed*: several samples sit back to back in one ``(N, D)`` tensor with their lengths
given separately, and each sample may continue a key/value cache of its own. Inside a sample the
tokens form blocks: a block is causal (text) or attends fully within itself (an image), and every
block sees all earlier blocks and the whole cache. The attention runs on PyTorch's
``scaled_dot_product_attention`` on any device; no flash-attention import exists.

Parameter names are the checkpoint's (``language_model.model.layers.N.self_attn.q_proj_moe_gen.weight``
...). The RMS norms, the SwiGLU MLPs and the rotary embedding are transformers' own Qwen2 classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RMSNorm, Qwen2RotaryEmbedding, apply_rotary_pos_emb


class KVCache:
    """Keys and values per layer and per sample: ``keys[layer][sample]`` is ``(L_sample, kv_heads, head_dim)``.

    Keys are stored after their q/k norm and rotary embedding, as attention consumes them. A cache is
    owned by one caller; :meth:`select` and :meth:`copy` make independent ones (for classifier-free
    guidance branches or for decoding a subset of samples)."""

    def __init__(self, num_layers: int, num_samples: int) -> None:
        self.keys: list[list[torch.Tensor | None]] = [[None] * num_samples for _ in range(num_layers)]
        self.values: list[list[torch.Tensor | None]] = [[None] * num_samples for _ in range(num_layers)]

    @property
    def num_samples(self) -> int:
        return len(self.keys[0])

    def lengths(self, layer: int = -1) -> list[int]:
        """Cached tokens per sample (in ``layer``; all layers agree between forward calls)."""
        return [0 if k is None else k.shape[0] for k in self.keys[layer]]

    def select(self, samples: Sequence[int]) -> KVCache:
        """A cache holding only ``samples`` (in that order; a sample may repeat). Tensors are shared,
        which is safe because updates replace tensors instead of writing into them."""
        out = KVCache(len(self.keys), len(samples))
        for layer in range(len(self.keys)):
            out.keys[layer] = [self.keys[layer][i] for i in samples]
            out.values[layer] = [self.values[layer][i] for i in samples]
        return out

    def copy(self) -> KVCache:
        return self.select(range(self.num_samples))


def _attention_mask(lens: Sequence[int], cached: Sequence[int], blocks: torch.Tensor, full: torch.Tensor,
                    device: torch.device) -> torch.Tensor:
    """Boolean mask (B, 1, Lq, Lk) for padded per-sample attention; True = may attend.

    Query i of a sample sees every cached key, and a new key j when j's block is earlier than i's, or
    the same block and (the block is full or j <= i). Padded query rows see their own padded key so
    that softmax stays finite (their outputs are dropped)."""
    B, Lq = len(lens), max(lens)
    Lk = max(c + n for c, n in zip(cached, lens))
    mask = torch.zeros(B, Lq, Lk, dtype=torch.bool, device=device)
    start = 0
    for b, (n, c) in enumerate(zip(lens, cached)):
        blk, fl = blocks[start:start + n], full[start:start + n]
        start += n
        pos = torch.arange(n, device=device)
        same = blk[:, None] == blk[None, :]
        new = (blk[None, :] < blk[:, None]) | (same & (fl[:, None] | (pos[None, :] <= pos[:, None])))
        mask[b, :n, :c] = True
        mask[b, :n, c:c + n] = new
        if n < Lq:  # padding rows: attend to one key so the row is not all -inf
            mask[b, n:, 0] = True
    return mask[:, None]


def _pad(rows: torch.Tensor, lens: Sequence[int], length: int) -> torch.Tensor:
    """(N, ...) packed rows -> (B, length, ...) zero-padded."""
    out = rows.new_zeros((len(lens), length, *rows.shape[1:]))
    for b, part in enumerate(rows.split(list(lens))):
        out[b, :part.shape[0]] = part
    return out


def _unpad(padded: torch.Tensor, lens: Sequence[int]) -> torch.Tensor:
    return torch.cat([padded[b, :n] for b, n in enumerate(lens)])


def _route(und: Callable[[torch.Tensor], torch.Tensor], gen_fn: Callable[[torch.Tensor], torch.Tensor],
           x: torch.Tensor, gen: torch.Tensor | None) -> torch.Tensor:
    """Apply ``und`` to the understanding tokens of ``x`` and ``gen_fn`` to the generation tokens."""
    if gen is None or not bool(gen.any()):
        return und(x)
    if bool(gen.all()):
        return gen_fn(x)
    und_out = und(x[~gen])
    out = und_out.new_zeros((x.shape[0], *und_out.shape[1:]))
    out[~gen] = und_out
    out[gen] = gen_fn(x[gen]).to(out.dtype)
    return out


class PackedAttentionMoT(nn.Module):
    """Grouped-query attention with per-head RMS-normed queries and keys, and one projection set per expert."""

    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        width, q_out, kv_out = config.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        for suffix in ("", "_moe_gen"):
            setattr(self, f"q_proj{suffix}", nn.Linear(width, q_out, bias=True))
            setattr(self, f"k_proj{suffix}", nn.Linear(width, kv_out, bias=True))
            setattr(self, f"v_proj{suffix}", nn.Linear(width, kv_out, bias=True))
            setattr(self, f"o_proj{suffix}", nn.Linear(q_out, width, bias=False))
            setattr(self, f"q_norm{suffix}", Qwen2RMSNorm(self.head_dim, eps=config.rms_norm_eps))
            setattr(self, f"k_norm{suffix}", Qwen2RMSNorm(self.head_dim, eps=config.rms_norm_eps))

    def _qkv(self, h: torch.Tensor, suffix: str) -> torch.Tensor:
        """One expert's normed queries, normed keys and values, concatenated over heads: (n, H + 2 KV, hd)."""
        q = getattr(self, f"q_norm{suffix}")(getattr(self, f"q_proj{suffix}")(h).view(-1, self.num_heads, self.head_dim))
        k = getattr(self, f"k_norm{suffix}")(getattr(self, f"k_proj{suffix}")(h).view(-1, self.num_kv_heads, self.head_dim))
        v = getattr(self, f"v_proj{suffix}")(h).view(-1, self.num_kv_heads, self.head_dim)
        return torch.cat([q, k, v], dim=1)

    def _project(self, x: torch.Tensor, gen: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """(N, D) -> q (N, H, hd), k (N, KV, hd), v (N, KV, hd), each expert on its own tokens."""
        qkv = _route(lambda h: self._qkv(h, ""), lambda h: self._qkv(h, "_moe_gen"), x, gen)
        return qkv.split([self.num_heads, self.num_kv_heads, self.num_kv_heads], dim=1)

    def forward(self, x: torch.Tensor, lens: Sequence[int], cos_sin: tuple[torch.Tensor, torch.Tensor],
                gen: torch.Tensor | None, blocks: torch.Tensor, full: torch.Tensor,
                cache: KVCache | None, update_cache: bool) -> torch.Tensor:
        q, k, v = self._project(x, gen)
        cos, sin = cos_sin
        q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        cached = cache.lengths(self.layer_idx) if cache is not None else [0] * len(lens)
        # Per sample: keys = cached keys then the new ones.
        k_parts, v_parts = k.split(list(lens)), v.split(list(lens))
        if cache is not None:
            ck, cv = cache.keys[self.layer_idx], cache.values[self.layer_idx]
            k_parts = [kp if c is None else torch.cat([c.to(kp.dtype), kp]) for c, kp in zip(ck, k_parts)]
            v_parts = [vp if c is None else torch.cat([c.to(vp.dtype), vp]) for c, vp in zip(cv, v_parts)]
            if update_cache:
                cache.keys[self.layer_idx] = list(k_parts)
                cache.values[self.layer_idx] = list(v_parts)
        Lq = max(lens)
        Lk = max(c + n for c, n in zip(cached, lens))
        qp = _pad(q, lens, Lq).transpose(1, 2)  # (B, H, Lq, hd)
        kp = _pad(torch.cat(k_parts), [c + n for c, n in zip(cached, lens)], Lk).transpose(1, 2)  # (B, KV, Lk, hd)
        vp = _pad(torch.cat(v_parts), [c + n for c, n in zip(cached, lens)], Lk).transpose(1, 2)
        groups = self.num_heads // self.num_kv_heads
        kp, vp = kp.repeat_interleave(groups, dim=1), vp.repeat_interleave(groups, dim=1)
        mask = _attention_mask(lens, cached, blocks, full, x.device)
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask)  # (B, H, Lq, hd)
        out = _unpad(out.transpose(1, 2), lens).reshape(x.shape[0], -1)  # (N, H * hd)
        return _route(self.o_proj, self.o_proj_moe_gen, out, gen)


class Qwen2MoTDecoderLayer(nn.Module):
    """Pre-norm residual block: attention then SwiGLU MLP, norms and MLP per expert."""

    def __init__(self, config: Qwen2Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = PackedAttentionMoT(config, layer_idx)
        self.mlp = Qwen2MLP(config)
        self.mlp_moe_gen = Qwen2MLP(config)
        self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.input_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, lens: Sequence[int], cos_sin: tuple[torch.Tensor, torch.Tensor],
                gen: torch.Tensor | None, blocks: torch.Tensor, full: torch.Tensor,
                cache: KVCache | None, update_cache: bool) -> torch.Tensor:
        h = _route(self.input_layernorm, self.input_layernorm_moe_gen, x, gen)
        x = x + self.self_attn(h, lens, cos_sin, gen, blocks, full, cache, update_cache)
        h = _route(self.post_attention_layernorm, self.post_attention_layernorm_moe_gen, x, gen)
        return x + _route(self.mlp, self.mlp_moe_gen, h, gen)


class Qwen2MoTModel(nn.Module):
    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Qwen2MoTDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.norm_moe_gen = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)  # inv_freq: a non-persistent buffer


class Qwen2MoTForCausalLM(nn.Module):
    """``model`` (embeddings, layers, final norms) and the untied ``lm_head``."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen2MoTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @property
    def num_layers(self) -> int:
        return len(self.model.layers)

    def new_cache(self, num_samples: int) -> KVCache:
        return KVCache(self.num_layers, num_samples)

    def forward(
        self,
        embeds: torch.Tensor,  # (N, D) packed input embeddings
        lens: Sequence[int],  # tokens per sample, sum = N
        position_ids: torch.Tensor,  # (N,) rotary positions
        *,
        gen: torch.Tensor | None = None,  # (N,) bool: token goes through the generation expert
        blocks: torch.Tensor | None = None,  # (N,) block index of each token within its sample
        full: torch.Tensor | None = None,  # (N,) bool: the token's block attends fully within itself
        cache: KVCache | None = None,  # per-sample keys/values these tokens continue
        update_cache: bool = False,  # append these tokens' keys/values to ``cache``
    ) -> torch.Tensor:
        """Final hidden states ``(N, D)``, each token through its expert's final norm.

        Without ``blocks`` each sample is one block; without ``full`` every block is causal."""
        lens = [int(n) for n in lens]
        if sum(lens) != embeds.shape[0]:
            raise ValueError(f"packed lengths {lens} sum to {sum(lens)}, but {embeds.shape[0]} tokens were given")
        if cache is not None and cache.num_samples != len(lens):
            raise ValueError(f"the cache holds {cache.num_samples} samples, but {len(lens)} were given")
        if gen is not None and not bool(gen.any()):
            gen = None
        device = embeds.device
        if blocks is None:
            blocks = torch.zeros(embeds.shape[0], dtype=torch.long, device=device)
        if full is None:
            full = torch.zeros(embeds.shape[0], dtype=torch.bool, device=device)
        cos, sin = self.model.rotary_emb(embeds[None], position_ids[None].to(device))
        cos_sin = (cos[0].to(embeds.dtype), sin[0].to(embeds.dtype))  # (N, hd)
        x = embeds
        for layer in self.model.layers:
            x = layer(x, lens, cos_sin, gen, blocks, full, cache, update_cache)
        return _route(self.model.norm, self.model.norm_moe_gen, x, gen)
