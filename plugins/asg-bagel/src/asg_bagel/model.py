"""The BAGEL module: language model (two experts), SigLIP-NaViT, connector, latent projections.

One ``Bagel`` holds every tensor of ``ema.safetensors`` under the checkpoint's own names
(``language_model.*``, ``vit_model.*``, ``connector.*``, ``vit_pos_embed.*``, ``time_embedder.*``,
``vae2llm.*``, ``llm2vae.*``, ``latent_pos_embed.*``). The autoencoder (``ae.safetensors``) is separate.

Sequence layout (BAGEL's, no chat roles):

- text: ``<|im_start|> text <|im_end|>``, causal, one rope position per token;
- an image to understand: ``<|vision_start|> ViT tokens <|vision_end|>``, attending fully within
  itself, all at *one* rope position (the next text continues at that position + 1);
- an image to generate: ``<|vision_start|> latent tokens <|vision_end|>`` at one rope position, the
  latent tokens through the generation expert. Each latent token is ``vae2llm(x_t) +
  time_embedder(t) + latent_pos_embed(row * max_latent_size + col)``; the velocity is ``llm2vae(h)``
  and points from data to noise (``x_t = (1 - t) x_0 + t eps``, ``v = eps - x_0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch import nn
from transformers import Qwen2Config, SiglipVisionConfig

from asg.errors import ConfigError

from asg_bagel.autoencoder import AEParams
from asg_bagel.language import KVCache, Qwen2MoTForCausalLM
from asg_bagel.vision import Connector, SiglipNaViT, SinCosPositionTable, TimestepEmbedder, navit_position_ids

__all__ = ["Bagel", "BagelConfig", "SpecialTokens", "cfg_combine", "flow_timesteps"]


@attrs.frozen(kw_only=True)
class SpecialTokens:
    """Ids of the four tokens BAGEL adds to the Qwen2 vocabulary."""

    bos: int  # <|im_start|>: opens every text segment
    eos: int  # <|im_end|>: closes it; generation stops here
    start_of_image: int  # <|vision_start|>
    end_of_image: int  # <|vision_end|>


@attrs.frozen(kw_only=True, eq=False)
class BagelConfig:
    """Everything that fixes BAGEL's architecture (the hub's llm_config.json + vit_config.json + the
    constants the upstream notebook passes)."""

    llm: Qwen2Config  # Qwen2.5-7B sizes for the release; qk-norm and untied lm_head always
    vit: SiglipVisionConfig  # num_hidden_layers = layers *built* (the hub file says one more)
    ae: AEParams
    tokens: SpecialTokens
    vit_max_num_patch_per_side: int = 70  # NaViT position grid (980 px / 14)
    latent_patch_size: int = 2  # latent tokens are p x p patches of the 8x-down AE latent
    max_latent_size: int = 64  # latent position grid per side (1024 px / 16)
    connector_act: str = "gelu_pytorch_tanh"
    # Generation defaults of the release (BAGEL README / inference notebook).
    num_timesteps: int = 50
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    cfg_renorm_min: float = 0.0
    cfg_renorm_type: str = "global"

    @property
    def hidden_size(self) -> int:
        return self.llm.hidden_size

    @property
    def latent_channels(self) -> int:
        return self.ae.z_channels

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token side: the AE's down-sampling times the latent patch."""
        return self.ae.downsample * self.latent_patch_size

    @property
    def latent_token_dim(self) -> int:
        return self.latent_patch_size ** 2 * self.ae.z_channels


def flow_timesteps(num_timesteps: int, shift: float) -> torch.Tensor:
    """The ``num_timesteps`` sampling times from 1 (noise) to 0 (data), shifted toward noise:
    ``t' = s t / (1 + (s - 1) t)``. The Euler loop steps from each to the next (num_timesteps - 1 steps)."""
    t = torch.linspace(1.0, 0.0, num_timesteps)
    return shift * t / (1 + (shift - 1) * t)


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float, *, renorm: str = "global",
                renorm_min: float = 0.0, v_uncond_img: torch.Tensor | None = None, img_scale: float = 1.0) -> torch.Tensor:
    """Classifier-free guidance with BAGEL's norm rescaling, for the latent tokens of *one* image (n, c).

    ``v = v_u + s (v_c - v_u)`` (then the image branch ``v_iu + s_img (v - v_iu)`` when given), rescaled
    by ``clamp(||v_c|| / ||v||, renorm_min, 1)`` so guidance never makes the velocity longer than the
    conditional one. ``global`` takes the norms over the whole image, ``channel`` per token, and
    ``text_channel`` rescales per token before the image branch. Upstream takes the global norm over a
    whole packed batch, which couples the images of a batch; here it is always per image.
    """
    if renorm not in ("global", "channel", "text_channel"):
        raise ValueError(f"cfg renorm type {renorm!r} is not one of global, channel, text_channel")
    eps = 1e-8
    guided = v_uncond + scale * (v_cond - v_uncond)
    if renorm == "text_channel":
        factor = (v_cond.norm(dim=-1, keepdim=True) / (guided.norm(dim=-1, keepdim=True) + eps)).clamp(renorm_min, 1.0)
        guided = guided * factor
        if v_uncond_img is not None and img_scale > 1.0:
            guided = v_uncond_img + img_scale * (guided - v_uncond_img)
        return guided
    if v_uncond_img is not None and img_scale > 1.0:
        guided = v_uncond_img + img_scale * (guided - v_uncond_img)
    if renorm == "global":
        factor = (v_cond.norm() / (guided.norm() + eps)).clamp(renorm_min, 1.0)
    else:
        factor = (v_cond.norm(dim=-1, keepdim=True) / (guided.norm(dim=-1, keepdim=True) + eps)).clamp(renorm_min, 1.0)
    return guided * factor


class Bagel(nn.Module):
    """The tensors of ``ema.safetensors`` and the computations that use them."""

    def __init__(self, config: BagelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.language_model = Qwen2MoTForCausalLM(config.llm)
        self.vit_model = SiglipNaViT(config.vit, max_patches_per_side=config.vit_max_num_patch_per_side)
        self.connector = Connector(config.vit.hidden_size, d, config.connector_act)
        self.vit_pos_embed = SinCosPositionTable(config.vit_max_num_patch_per_side, d)
        self.time_embedder = TimestepEmbedder(d)
        self.vae2llm = nn.Linear(config.latent_token_dim, d)
        self.llm2vae = nn.Linear(d, config.latent_token_dim)
        self.latent_pos_embed = SinCosPositionTable(config.max_latent_size, d)

    # -- token blocks ---------------------------------------------------------------------------------
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.model.embed_tokens(ids.to(self.vae2llm.weight.device))

    def _marked(self, inner: torch.Tensor) -> torch.Tensor:
        """``<|vision_start|> inner <|vision_end|>`` as embeddings (n + 2, D)."""
        t = self.config.tokens
        marks = self.embed_ids(torch.tensor([t.start_of_image, t.end_of_image]))
        return torch.cat([marks[:1], inner.to(marks.dtype), marks[1:]])

    def vit_block(self, patches: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Understanding blocks of several images: patches (n_i, 14*14*3) on (h_i, w_i) patch grids ->
        per image (n_i + 2, D) embeddings, markers included. The images share one ViT pass."""
        pos = torch.cat([navit_position_ids(h, w, self.config.vit_max_num_patch_per_side) for h, w in grids])
        pos = pos.to(self.vae2llm.weight.device)
        packed = torch.cat(list(patches)).to(self.vae2llm.weight)
        hidden = self.vit_model(packed, pos, [p.shape[0] for p in patches])
        tokens = self.connector(hidden) + self.vit_pos_embed(pos)
        return [self._marked(part) for part in tokens.split([p.shape[0] for p in patches])]

    def latent_positions(self, h: int, w: int) -> torch.Tensor:
        """Row-major ids of an h x w latent-token grid in the ``latent_pos_embed`` table."""
        if h > self.config.max_latent_size or w > self.config.max_latent_size:
            raise ValueError(f"a {h}x{w} latent grid exceeds max_latent_size {self.config.max_latent_size} "
                             f"(images up to {self.config.max_latent_size * self.config.latent_downsample} px per side)")
        return navit_position_ids(h, w, self.config.max_latent_size)

    def latent_block(self, x_t: torch.Tensor, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Generation block of one image: x_t (h*w, p*p*c) at time t (scalar or (h*w,)) -> (h*w + 2, D)."""
        pos = self.latent_positions(h, w).to(x_t.device)
        t = t.to(x_t).expand(x_t.shape[0]) if t.dim() == 0 else t.to(x_t)
        inner = self.vae2llm(x_t) + self.time_embedder(t) + self.latent_pos_embed(pos)
        return self._marked(inner)

    # -- flow -----------------------------------------------------------------------------------------
    def velocity(self, x_t: Sequence[torch.Tensor], t: torch.Tensor, grids: Sequence[tuple[int, int]],
                 cache: KVCache | None, positions: Sequence[int]) -> list[torch.Tensor]:
        """Predicted velocity of each image's latent tokens, given its context.

        ``x_t[i]`` is (h_i*w_i, p*p*c); ``cache`` holds each image's context (None = empty context, the
        unconditional branch); ``positions[i]`` is the rope position of image i's block (its context
        length in rope positions). The cache is read, never extended."""
        blocks = [self.latent_block(x, t, h, w) for x, (h, w) in zip(x_t, grids)]
        lens = [b.shape[0] for b in blocks]
        gen = torch.cat([torch.tensor([False] + [True] * (n - 2) + [False]) for n in lens]).to(blocks[0].device)
        pos = torch.cat([torch.full((n,), p, dtype=torch.long) for n, p in zip(lens, positions)])
        hidden = self.language_model(torch.cat(blocks), lens, pos, gen=gen, full=torch.ones_like(gen),
                                     cache=cache, update_cache=False)
        return list(self.llm2vae(hidden[gen]).split([n - 2 for n in lens]))

    def extra_repr(self) -> str:
        c = self.config
        return (f"hidden={c.hidden_size}, layers={c.llm.num_hidden_layers}, vit_layers={c.vit.num_hidden_layers}, "
                f"latent_patch={c.latent_patch_size}, max_latent={c.max_latent_size}")


def llm_config(data: dict[str, Any]) -> Qwen2Config:
    """A Qwen2Config from an ``llm_config.json`` dict; BAGEL's own keys (qk_norm, layer_module,
    freeze_und) are accepted and must describe the MoT layout this plugin implements."""
    data = dict(data)
    if not data.pop("qk_norm", True):
        raise ConfigError("llm_config.json: qk_norm=false is not BAGEL-7B-MoT's layout (this plugin needs qk_norm)")
    layer = data.pop("layer_module", "Qwen2MoTDecoderLayer")
    if layer != "Qwen2MoTDecoderLayer":
        raise ConfigError(f"llm_config.json: layer_module {layer!r} is not supported; valid: Qwen2MoTDecoderLayer")
    data.pop("freeze_und", None)
    data.pop("_attn_implementation", None)
    data["tie_word_embeddings"] = False
    return Qwen2Config(**data)
