"""BLIP3o's generation vision tower: EVA-CLIP-E-14-plus, which turns a real image into the DiT's target grid.

BLIP3o-8B trains its DiT to produce CLIP features, not pixels. For a real image those features come from a
frozen EVA-CLIP-E ViT (``--gen_vision_tower eva-clip-E-14-plus --gen_pooling early_pool2d_4`` in upstream
``run.sh``/``sft.sh``). This module re-implements that tower; all facts below are from JiuhaiChen/BLIP3o
at commit 4689ec3 (branch ``main``), paths under ``blip3o/model/``:

* shape (``multimodal_encoder/eva_clip/model_configs/eva-clip-E-14-plus.json``): width 1792, 64 layers,
  head_width 112 (16 heads), mlp_ratio 8.5714 (``int(1792 * 8.5714) = 15360``), patch 14, image 448
  (a 32x32 token grid, ``pos_embed`` of 1 + 1024 rows), ``qkv_bias`` and ``postnorm`` true.
* block (``multimodal_encoder/eva_clip/eva_vit.py``, ``Block.forward``): with ``postnorm`` the norm is
  applied to the *sublayer output* before the residual add, ``x = x + norm1(attn(x))``,
  ``x = x + norm2(mlp(x))`` -- the sublayers see the raw stream. LayerNorm eps 1e-6
  (``create_norm_layer_factory``), exact-erf GELU (``nn.GELU``), one fused ``qkv`` projection with bias,
  softmax attention scaled by ``head_dim ** -0.5`` (``xattn`` only picks xformers' kernel for the same
  maths), no rope, no layer scale, no rel-pos bias, no patch dropout at inference.
* output (``EVAVisionTransformer.forward`` returns ``forward_features``; ``EVAEncoderWrapper.forward``):
  the *last block's output*, with **no final norm and no head** (the copy has neither module, which is
  why the state dict has only ``cls_token``, ``pos_embed``, ``patch_embed`` and ``blocks``), and the cls
  token dropped (``[:, 1:, :]``).
* pooling (``blip3o_arch.py``, ``pool_img``): the (B, 1024, C) tokens are laid out row-major as a
  (B, C, 32, 32) grid and ``F.avg_pool2d`` with kernel = stride = 4 (the number after the last ``_`` of
  ``early_pool2d_4``) gives (B, C, 8, 8). The 4-D grid is the target as is (the flattening back to
  tokens is commented out upstream) -- it matches the DiT's ``input_size=8, in_channels=1792``.
* preprocessing (``multimodal_encoder/eva_clip/eva_clip_processors.py``, ``EvaClipImageTrainProcessor``):
  convert to RGB, ``Resize(448)`` of the shorter side (bicubic), ``CenterCrop(448)``, to [0, 1], then
  CLIP mean/std. Training uses ``image_aspect_ratio="square"`` (``train/train.py`` default; none of the
  launch scripts override it), so no padding to square.

State-dict names are those of upstream's ``EvaClipVisionTower`` (``vision_tower.model.<...>``), so a
BLIP3o checkpoint that carries the tower has them under :data:`checkpoint_prefix`. Upstream itself reads
them from the hub repo ``jiuhai/eva_clip_vision_tower`` (``pytorch_model.bin``, loaded straight into the
``EVAVisionTransformer``, i.e. without our ``vision_tower.model.`` prefix); :func:`load_tower_file`
accepts both layouts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from asg.backbones.checkpoint_io import listing
from asg.errors import ConfigError
from asg_blip3o.checkpoint import CheckpointError

checkpoint_prefix = "model.gen_vision_tower."
"""Where a BLIP3o checkpoint keeps the tower: ``checkpoint_prefix + key`` for every ``key`` of
:class:`EvaVisionTower`'s state dict (the fixture manifest's ``gen_vision_tower_eva_clip`` tensors)."""

MODEL_PREFIX = "vision_tower.model."
"""Prefix of the ViT inside :class:`EvaVisionTower`; a bare ``EVAVisionTransformer`` state dict (as the hub
file ``jiuhai/eva_clip_vision_tower/pytorch_model.bin`` is loaded upstream) lacks it."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # eva_clip_processors.py EvaClipImageBaseProcessor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@attrs.frozen(kw_only=True)
class EvaConfig:
    """Shape of an EVA-CLIP vision tower plus the pooling that makes the DiT's target grid.

    ``pool`` is the avg-pool stride (``early_pool2d_<pool>``); ``grid = image // patch // pool`` must equal
    the DiT's ``input_size`` and ``width`` its ``in_channels``.
    """

    width: int = 1792
    layers: int = 64
    heads: int = 16  # width // head_width (1792 // 112)
    mlp_hidden: int = 15360  # int(width * mlp_ratio)
    patch: int = 14
    image: int = 448
    pool: int = 4
    postnorm: bool = True
    qkv_bias: bool = True
    eps: float = 1e-6

    def __attrs_post_init__(self) -> None:
        for name in ("width", "layers", "heads", "mlp_hidden", "patch", "image", "pool"):
            if getattr(self, name) < 1:
                raise ConfigError(f"EvaConfig.{name}={getattr(self, name)} must be >= 1")
        if self.width % self.heads:
            raise ConfigError(f"EvaConfig.width={self.width} is not divisible by heads={self.heads}")
        if self.image % self.patch:
            raise ConfigError(f"EvaConfig.image={self.image} is not a multiple of patch={self.patch}")
        if self.tokens_per_side % self.pool:
            raise ConfigError(f"EvaConfig: {self.tokens_per_side} tokens per side are not a multiple of "
                              f"pool={self.pool}")

    @property
    def tokens_per_side(self) -> int:
        """Side of the patch-token grid (32 at 448 px / patch 14)."""
        return self.image // self.patch

    @property
    def num_patches(self) -> int:
        return self.tokens_per_side ** 2

    @property
    def grid(self) -> int:
        """Side of the pooled target grid (8 for BLIP3o-8B)."""
        return self.tokens_per_side // self.pool

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @classmethod
    def from_vision_cfg(cls, vision_cfg: Mapping[str, Any], pool: int = 4) -> EvaConfig:
        """From an upstream ``model_configs/*.json`` ``vision_cfg``, deriving heads and MLP width as
        ``_build_vision_tower`` does (``width // head_width``, ``int(width * mlp_ratio)``)."""
        unsupported = {k: vision_cfg[k] for k in ("rope", "subln", "naiveswiglu", "ls_init_value")
                       if vision_cfg.get(k)}
        if unsupported:
            raise ConfigError(f"EvaConfig.from_vision_cfg: unsupported EVA options {unsupported}")
        width = int(vision_cfg["width"])
        return cls(width=width, layers=int(vision_cfg["layers"]), heads=width // int(vision_cfg["head_width"]),
                   mlp_hidden=int(width * float(vision_cfg["mlp_ratio"])), patch=int(vision_cfg["patch_size"]),
                   image=int(vision_cfg["image_size"]), pool=pool, postnorm=bool(vision_cfg.get("postnorm", False)),
                   qkv_bias=bool(vision_cfg.get("qkv_bias", True)))

    @classmethod
    def eva_clip_e_14_plus(cls) -> EvaConfig:
        """BLIP3o-8B's tower (``eva-clip-E-14-plus``, pooled ``early_pool2d_4`` to 8x8x1792)."""
        return cls()

    @classmethod
    def tiny(cls) -> EvaConfig:
        """A tiny tower whose output fits ``DiTConfig.tiny()`` (2x2 grid, 8 channels): width 8 *is* the
        DiT's ``in_channels``; 32 px / patch 8 = a 4x4 token grid, avg-pooled by 2 to 2x2."""
        return cls(width=8, layers=2, heads=2, mlp_hidden=32, patch=8, image=32, pool=2)


class _Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection (upstream ``Attention``, subln off)."""

    def __init__(self, config: EvaConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=config.qkv_bias)
        self.proj = nn.Linear(config.width, config.width)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C) -> (B, N, C)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))`` with exact-erf GELU (upstream ``Mlp``, subln off so ``ffn_ln`` is identity)."""

    def __init__(self, config: EvaConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.width, config.mlp_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.mlp_hidden, config.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    """One EVA block. ``postnorm``: ``x + norm(sublayer(x))``; otherwise the usual ``x + sublayer(norm(x))``."""

    def __init__(self, config: EvaConfig) -> None:
        super().__init__()
        self.postnorm = config.postnorm
        self.norm1 = nn.LayerNorm(config.width, eps=config.eps)
        self.attn = _Attention(config)
        self.norm2 = nn.LayerNorm(config.width, eps=config.eps)
        self.mlp = _Mlp(config)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, C) -> (B, N, C)
        if self.postnorm:
            x = x + self.norm1(self.attn(x))
            return x + self.norm2(self.mlp(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, config: EvaConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, config.width, kernel_size=config.patch, stride=config.patch)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, (H/p)*(W/p), C), row-major over the grid
        return self.proj(x).flatten(2).transpose(1, 2)


class EvaViT(nn.Module):
    """The EVA ViT trunk (upstream ``EVAVisionTransformer`` as BLIP3o builds it: no final norm, no head)."""

    def __init__(self, config: EvaConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = _PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.width))
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))

    def forward(self, pixels: Tensor) -> Tensor:  # (B, 3, image, image) -> (B, 1 + N, C), last block output
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


class _Encoder(nn.Module):
    """Holds the ViT as ``model`` so names match upstream's ``EVAEncoderWrapper`` (``vision_tower.model.*``)."""

    def __init__(self, config: EvaConfig) -> None:
        super().__init__()
        self.model = EvaViT(config)


class EvaVisionTower(nn.Module):
    """Frozen EVA-CLIP tower: images -> (B, width, grid, grid) DiT targets (see the module docstring)."""

    def __init__(self, config: EvaConfig | None = None) -> None:
        super().__init__()
        self.config = config or EvaConfig.eva_clip_e_14_plus()
        self.vision_tower = _Encoder(self.config)
        self._init_weights()
        self.requires_grad_(False)  # upstream load_model: vision_tower.requires_grad_(False)

    @property
    def image(self) -> int:
        """Input side in pixels."""
        return self.config.image

    @property
    def grid(self) -> int:
        return self.config.grid

    @torch.no_grad()
    def _init_weights(self) -> None:
        """A random init for towers that are not loaded (tiny tests): truncated normal (std 0.02) for the
        linear/conv weights and the cls/pos embeddings, zero biases, unit norms -- the usual ViT init. A
        meta-device build skips the work."""
        for name, p in self.named_parameters():
            if p.is_meta:
                continue
            if name.endswith("bias"):
                p.zero_()
            elif ".norm" in name:
                p.fill_(1.0)
            else:
                nn.init.trunc_normal_(p, std=0.02)

    def tokens(self, pixels: Tensor) -> Tensor:
        """(B, 3, image, image) normalized pixels -> (B, N, width) last-block patch tokens, cls dropped."""
        size = self.config.image
        if pixels.ndim != 4 or pixels.shape[1] != 3 or pixels.shape[-2:] != (size, size):
            raise ConfigError(f"EvaVisionTower: pixels of shape {tuple(pixels.shape)}, expected (B, 3, {size}, {size})")
        return self.vision_tower.model(pixels)[:, 1:, :]

    def pool(self, tokens: Tensor) -> Tensor:
        """(B, N, C) row-major tokens -> (B, C, grid, grid): ``early_pool2d_<pool>`` (avg pool, kernel = stride)."""
        b, n, c = tokens.shape
        side = self.config.tokens_per_side
        if n != side * side:
            raise ConfigError(f"EvaVisionTower.pool: {n} tokens, expected {side}x{side}")
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)  # (B, C, 32, 32)
        return F.avg_pool2d(grid, kernel_size=self.config.pool, stride=self.config.pool)  # (B, C, 8, 8)

    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, image, image) normalized pixels -> (B, width, grid, grid), in the tower's dtype."""
        return self.pool(self.tokens(pixels))

    def preprocess(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> (B, 3, image, image) float32, as ``EvaClipImageTrainProcessor`` does."""
        return torch.stack([preprocess_image(img, self.config.image) for img in images])

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image]) -> Tensor:
        """PIL images -> (B, width, grid, grid) float32 DiT targets (8x8x1792 at full size).

        Runs on the tower's device and dtype (upstream casts the tower to bf16 for training) and returns
        float32.
        """
        if not images:
            raise ConfigError("EvaVisionTower.features: no images")
        ref = self.vision_tower.model.pos_embed
        pixels = self.preprocess(images).to(device=ref.device, dtype=ref.dtype)
        return self(pixels).float()


def _to_rgb(image: Image.Image) -> Image.Image:
    """transformers' ``convert_to_rgb``: RGB stays; anything else is composited onto white via RGBA."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def preprocess_image(image: Image.Image, size: int) -> Tensor:
    """One PIL image -> (3, size, size) float32: RGB, shorter side to ``size`` (bicubic), center crop,
    [0, 1], CLIP mean/std. Sizes and crop offsets follow torchvision's ``Resize(int)``/``CenterCrop`` on
    PIL input (long side ``int(size * long / short)``, offset ``round((h - size) / 2)``)."""
    image = _to_rgb(image)
    w, h = image.size
    if min(w, h) < 1:
        raise ConfigError(f"preprocess_image: empty image of size {w}x{h}")
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0  # (3, size, size)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def load_tower_weights(tower: EvaVisionTower, state: Mapping[str, Tensor], prefix: str = checkpoint_prefix) -> None:
    """Copy ``state[prefix + key]`` into every ``key`` of ``tower``'s state dict, strictly.

    Only keys of ``state`` that start with ``prefix`` are considered, so a whole BLIP3o checkpoint can be
    passed with the default prefix; among those, a missing key, an unexpected key or a shape mismatch is a
    :class:`CheckpointError` naming them. Values are cast to the tower's dtype and device.
    """
    own = tower.state_dict()
    given = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing = own.keys() - given.keys()
    unexpected = given.keys() - own.keys()
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {listing([prefix + k for k in missing])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {listing([prefix + k for k in unexpected])}")
    bad_shape = [f"{prefix + k} {tuple(given[k].shape)} != {tuple(own[k].shape)}"
                 for k in sorted(own.keys() & given.keys()) if tuple(given[k].shape) != tuple(own[k].shape)]
    if bad_shape:
        problems.append(f"{len(bad_shape)} shape mismatch(es): {listing(bad_shape)}")
    if problems:
        raise CheckpointError("EVA-CLIP tower weights do not fit: " + "; ".join(problems))
    with torch.no_grad():
        for k, target in own.items():
            target.copy_(given[k].to(device=target.device, dtype=target.dtype))


def load_tower_file(path: str | Path, skip: Collection[str] = ()) -> dict[str, Tensor]:
    """Read a separate tower file (``pytorch_model.bin`` via ``torch.load(weights_only=True)``, or
    ``.safetensors``) into a state dict keyed like :class:`EvaVisionTower` (load it with ``prefix=""``).

    Mirrors upstream ``eva_vit.py`` ``load_state_dict``: a dict nested under ``model``/``module``/
    ``state_dict`` is unwrapped, a ``module.`` prefix stripped and the exact keys in ``skip`` dropped
    (upstream's ``skip_list``). Keys of a bare ``EVAVisionTransformer`` (how upstream loads the hub file)
    get :data:`MODEL_PREFIX`; keys that already have it, or the full :data:`checkpoint_prefix`, are kept
    relative to the tower.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"EVA-CLIP tower file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: Any = load_file(str(path))
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "module", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise CheckpointError(f"EVA-CLIP tower file {path} does not hold a flat state dict of tensors")
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if key in skip:
            continue
        key = key.removeprefix("module.").removeprefix(checkpoint_prefix)
        state[key if key.startswith(MODEL_PREFIX) else MODEL_PREFIX + key] = value
    return state


def parameter_count(tower: nn.Module) -> int:
    """Number of parameter elements (meta-built towers cost nothing)."""
    return sum(p.numel() for p in tower.parameters())
