"""The FLUX autoencoder that BAGEL ships as ``ae.safetensors``, as a diffusers ``AutoencoderKL``.

BAGEL uses the Black-Forest-Labs FLUX.1 autoencoder unchanged: an 8x down-sampling KL autoencoder
with 16 latent channels, no quant convs, and a latent normalisation ``(z - shift) * scale``. Rather
than re-writing its convolutions we configure diffusers' ``AutoencoderKL`` to the same architecture
and translate parameter names between the two layouts:

- the checkpoint (and upstream BAGEL) uses the original BFL names: ``encoder.down.0.block.0.conv1``,
  ``encoder.mid.attn_1.q`` (a 1x1 ``Conv2d``, weight ``(C, C, 1, 1)``), ``decoder.up.3.upsample.conv``;
- diffusers uses ``encoder.down_blocks.0.resnets.0.conv1``, ``encoder.mid_block.attentions.0.to_q``
  (a ``Linear``, weight ``(C, C)``), and numbers the decoder's up blocks in execution order, so BFL
  ``decoder.up.i`` is diffusers ``decoder.up_blocks.{L-1-i}`` (``L`` = number of resolution levels).

The latents the language model reads and writes are the *scaled* ones, ``(mean - shift) * scale``;
:func:`encode` and :func:`decode` take care of that. :func:`patchify_latent` and
:func:`unpatchify_latent` turn the ``(B, 16, h*p, w*p)`` latent into ``(B, h*w, p*p*16)`` tokens and
back, in the (row, col) token order and (p, q, c) feature order of upstream BAGEL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from diffusers import AutoencoderKL

from asg.config import from_dict
from asg.errors import ConfigError, DataError

__all__ = [
    "AEParams",
    "AECheckpointError",
    "GROUPNORM_GROUPS",
    "build_autoencoder",
    "autoencoder_config",
    "to_checkpoint_names",
    "from_checkpoint_names",
    "load_autoencoder",
    "checkpoint_manifest",
    "decode",
    "encode",
    "patchify_latent",
    "unpatchify_latent",
]

GROUPNORM_GROUPS = 32  # every GroupNorm in the FLUX AE has 32 groups (hard-coded upstream)
_MAX_NAMES_IN_ERROR = 20


class AECheckpointError(DataError):
    """An autoencoder checkpoint or state dict does not match the architecture (keys or shapes)."""


# --------------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AEParams:
    """FLUX ``AutoEncoderParams`` (same field names as upstream, so a config dict loads unchanged).

    ``downsample`` is redundant with ``ch_mult`` (one 2x step between consecutive levels); it is kept
    because BAGEL's config carries it, and validated so that the two can never disagree.
    """

    resolution: int = 256
    in_channels: int = 3
    downsample: int = 8
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = attrs.field(default=(1, 2, 4, 4), converter=tuple)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    def __attrs_post_init__(self) -> None:
        for name in ("resolution", "in_channels", "downsample", "ch", "out_ch", "num_res_blocks", "z_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"AEParams.{name} must be a positive integer, got {value!r}")
        if not self.ch_mult or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise ConfigError(f"AEParams.ch_mult must be a non-empty tuple of positive integers, got {self.ch_mult!r}")
        for name in ("scale_factor", "shift_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"AEParams.{name} must be a finite number, got {value!r}")
        if self.scale_factor == 0:
            raise ConfigError("AEParams.scale_factor must be non-zero (decode divides by it)")
        expected = 2 ** (len(self.ch_mult) - 1)
        if self.downsample != expected:
            raise ConfigError(
                f"AEParams.downsample ({self.downsample}) must be 2**(len(ch_mult)-1) = {expected} "
                f"for ch_mult {self.ch_mult}: each level after the first halves the resolution"
            )
        if self.ch % GROUPNORM_GROUPS:
            raise ConfigError(
                f"AEParams.ch ({self.ch}) must be a multiple of {GROUPNORM_GROUPS}: every GroupNorm "
                f"in the FLUX autoencoder has {GROUPNORM_GROUPS} groups"
            )

    @classmethod
    def flux(cls) -> AEParams:
        """The FLUX.1 autoencoder that BAGEL-7B-MoT ships (upstream ``load_ae`` hard-codes these)."""
        return cls(
            resolution=256, in_channels=3, downsample=8, ch=128, out_ch=3, ch_mult=(1, 2, 4, 4),
            num_res_blocks=2, z_channels=16, scale_factor=0.3611, shift_factor=0.1159,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AEParams:
        """From an upstream-style mapping (``ch_mult`` may be a list); unknown keys are a ConfigError."""
        return from_dict(cls, data)

    @property
    def num_levels(self) -> int:
        """Number of resolution levels (encoder down blocks = decoder up blocks)."""
        return len(self.ch_mult)


def autoencoder_config(params: AEParams) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` keyword arguments that reproduce the FLUX architecture.

    No quant / post-quant 1x1 convs (FLUX has none), a single-head mid-block attention (diffusers'
    VAE default: head dim = channel count), 32-group GroupNorms, and the latent scale/shift recorded
    in the config so that :func:`encode` / :func:`decode` can read them from the module.
    """
    n = params.num_levels
    return dict(
        in_channels=params.in_channels,
        out_channels=params.out_ch,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(params.ch * m for m in params.ch_mult),
        layers_per_block=params.num_res_blocks,
        act_fn="silu",
        latent_channels=params.z_channels,
        norm_num_groups=GROUPNORM_GROUPS,
        sample_size=params.resolution,
        scaling_factor=params.scale_factor,
        shift_factor=params.shift_factor,
        force_upcast=True,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


def build_autoencoder(params: AEParams, device: str | torch.device | None = None) -> AutoencoderKL:
    """A randomly initialised ``AutoencoderKL`` shaped like ``params`` (``device="meta"``: no memory)."""
    config = autoencoder_config(params)
    if device is None:
        ae = AutoencoderKL(**config)
    else:
        with torch.device(device):
            ae = AutoencoderKL(**config)
    return ae.eval()


# --------------------------------------------------------------------------------------------------
# Key mapping: BFL checkpoint names <-> diffusers module names
# --------------------------------------------------------------------------------------------------

# Sub-layers of a ResnetBlock (BFL name -> diffusers name). nin_shortcut is a 1x1 conv in both.
_RESNET_LAYERS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}
# Sub-layers of the mid-block attention (BFL name -> diffusers name).
_ATTN_LAYERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# Attention projections: 1x1 Conv2d weights (C, C, 1, 1) in BFL, Linear weights (C, C) in diffusers.
_ATTN_MATRICES = ("q", "k", "v", "proj_out")


@attrs.frozen
class _Rule:
    """One module-path correspondence; ``{i}``/``{r}`` are the level in BFL/diffusers, ``{j}`` the block.

    The two level numbers are equal except where ``reversed_levels`` is set, where ``r = L - 1 - i``.

    ``reversed_levels`` marks the decoder's up blocks, which BFL numbers from the lowest resolution
    level (``up.0`` runs last) and diffusers numbers in execution order (``up_blocks.0`` runs first).
    """

    bfl: str
    diffusers: str
    reversed_levels: bool = False
    attn_matrix: bool = False  # weight needs the (C, C, 1, 1) <-> (C, C) reshape

    def pattern(self, side: str) -> re.Pattern[str]:
        template = self.bfl if side == "bfl" else self.diffusers
        regex = re.escape(template)
        for field in ("i", "r", "j"):
            regex = regex.replace(re.escape("{" + field + "}"), rf"(?P<{field}>\d+)")
        return re.compile(rf"{regex}\.(?P<leaf>weight|bias)")


def _rules() -> tuple[_Rule, ...]:
    rules: list[_Rule] = []
    for part in ("encoder", "decoder"):
        rules += [
            _Rule(f"{part}.conv_in", f"{part}.conv_in"),
            _Rule(f"{part}.conv_out", f"{part}.conv_out"),
            _Rule(f"{part}.norm_out", f"{part}.conv_norm_out"),
        ]
        for bfl_block, diff_block in (("block_1", "resnets.0"), ("block_2", "resnets.1")):
            for bfl_sub, diff_sub in _RESNET_LAYERS.items():
                rules.append(_Rule(f"{part}.mid.{bfl_block}.{bfl_sub}", f"{part}.mid_block.{diff_block}.{diff_sub}"))
        for bfl_sub, diff_sub in _ATTN_LAYERS.items():
            rules.append(_Rule(f"{part}.mid.attn_1.{bfl_sub}", f"{part}.mid_block.attentions.0.{diff_sub}",
                               attn_matrix=bfl_sub in _ATTN_MATRICES))
    for bfl_sub, diff_sub in _RESNET_LAYERS.items():
        rules.append(_Rule(f"encoder.down.{{i}}.block.{{j}}.{bfl_sub}", f"encoder.down_blocks.{{r}}.resnets.{{j}}.{diff_sub}"))
        rules.append(_Rule(f"decoder.up.{{i}}.block.{{j}}.{bfl_sub}", f"decoder.up_blocks.{{r}}.resnets.{{j}}.{diff_sub}",
                           reversed_levels=True))
    rules.append(_Rule("encoder.down.{i}.downsample.conv", "encoder.down_blocks.{r}.downsamplers.0.conv"))
    rules.append(_Rule("decoder.up.{i}.upsample.conv", "decoder.up_blocks.{r}.upsamplers.0.conv", reversed_levels=True))
    return tuple(rules)


_RULES = _rules()
_BFL_PATTERNS = tuple((rule, rule.pattern("bfl")) for rule in _RULES)
_DIFFUSERS_PATTERNS = tuple((rule, rule.pattern("diffusers")) for rule in _RULES)
_LEVEL_IN_KEY = re.compile(r"^(?:encoder\.down|decoder\.up|encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.")


def _name_list(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_IN_ERROR])
    more = len(names) - _MAX_NAMES_IN_ERROR
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _infer_levels(keys: list[str], num_levels: int | None) -> int:
    """The number of resolution levels: given, or one more than the largest level index in the keys."""
    if num_levels is not None:
        if num_levels < 1:
            raise ConfigError(f"num_levels must be >= 1, got {num_levels}")
        return num_levels
    found = [int(m.group(1)) for key in keys if (m := _LEVEL_IN_KEY.match(key))]
    return max(found) + 1 if found else 1


def _translate(
    state_dict: Mapping[str, torch.Tensor], num_levels: int | None, to_bfl: bool
) -> dict[str, torch.Tensor]:
    keys = list(state_dict)
    n = _infer_levels(keys, num_levels)
    patterns = _DIFFUSERS_PATTERNS if to_bfl else _BFL_PATTERNS
    source, target = ("diffusers", "checkpoint (BFL)") if to_bfl else ("checkpoint (BFL)", "diffusers")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key in keys:
        tensor = state_dict[key]
        for rule, pattern in patterns:
            match = pattern.fullmatch(key)
            if match is not None:
                break
        else:
            unknown.append(key)
            continue
        groups = match.groupdict()
        if "i" in groups or "r" in groups:  # a per-level layer: BFL level i <-> diffusers level r
            level = int(groups["r" if to_bfl else "i"])
            if level >= n:
                raise AECheckpointError(f"{source} key {key!r}: level {level} is out of range for {n} levels")
            other = n - 1 - level if rule.reversed_levels else level
            groups["i" if to_bfl else "r"] = str(other)
        name = (rule.bfl if to_bfl else rule.diffusers).format(**groups) + "." + groups["leaf"]
        if rule.attn_matrix and groups["leaf"] == "weight":
            tensor = _attn_weight_to_bfl(key, tensor) if to_bfl else _attn_weight_from_bfl(key, tensor)
        out[name] = tensor
    if unknown:
        raise AECheckpointError(
            f"{len(unknown)} {source} key(s) have no {target} counterpart in the FLUX autoencoder: {_name_list(unknown)}"
        )
    return out


def _attn_weight_from_bfl(key: str, weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 1, 1) 1x1-conv weight -> (C_out, C_in) linear weight (the same matrix)."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise AECheckpointError(f"checkpoint key {key!r}: expected a 1x1 conv weight (C, C, 1, 1), found shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], weight.shape[1])  # (C, C)


def _attn_weight_to_bfl(key: str, weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in) linear weight -> (C_out, C_in, 1, 1) 1x1-conv weight."""
    if weight.ndim != 2:
        raise AECheckpointError(f"diffusers key {key!r}: expected a linear weight (C, C), found shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], weight.shape[1], 1, 1)  # (C, C, 1, 1)


def to_checkpoint_names(
    state_dict: Mapping[str, torch.Tensor], num_levels: int | None = None
) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict -> BFL checkpoint names (attention weights to 1x1 convs).

    ``num_levels`` (``len(ch_mult)``) is needed to reverse the decoder's level numbering; when not
    given it is inferred from the largest level index present, which is right for a full state dict
    only (pass it for a partial one). An unknown key is an error naming it; a missing key is not (the
    renames are per key; :func:`load_autoencoder` checks completeness).
    """
    return _translate(state_dict, num_levels, to_bfl=True)


def from_checkpoint_names(
    state_dict: Mapping[str, torch.Tensor], num_levels: int | None = None
) -> dict[str, torch.Tensor]:
    """BFL checkpoint state dict -> diffusers ``AutoencoderKL`` names (1x1-conv attention to linear).

    The inverse of :func:`to_checkpoint_names`; same ``num_levels`` rule, same error for unknown keys.
    """
    return _translate(state_dict, num_levels, to_bfl=False)


# --------------------------------------------------------------------------------------------------
# Loading and listing
# --------------------------------------------------------------------------------------------------


def checkpoint_manifest(params: AEParams) -> dict[str, dict[str, Any]]:
    """``{checkpoint_key: {"shape", "dtype", "kind"}}`` of the module under BFL names (built on meta)."""
    ae = build_autoencoder(params, device="meta")
    parameter_names = {name for name, _ in ae.named_parameters()}
    module_sd = ae.state_dict()
    checkpoint_sd = to_checkpoint_names(module_sd, params.num_levels)  # same order, one key for one key
    out: dict[str, dict[str, Any]] = {}
    for name, (ckpt_key, tensor) in zip(module_sd, checkpoint_sd.items(), strict=True):
        out[ckpt_key] = {
            "shape": list(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "kind": "parameter" if name in parameter_names else "buffer",
        }
    return out


def load_autoencoder(
    path: str | Path,
    params: AEParams,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> AutoencoderKL:
    """An ``AutoencoderKL`` holding the weights of a BFL-named ``ae.safetensors`` (strict).

    Every checkpoint key must be used and every module key filled, with matching shapes; otherwise
    the error names the file and the offending keys. ``dtype=None`` keeps the file's dtype (as
    upstream's ``load_state_dict(..., assign=True)`` does). The module is built on meta and the
    loaded tensors are assigned, so the weights are allocated once.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise AECheckpointError(f"autoencoder checkpoint {str(path)!r} does not exist")
    checkpoint = load_file(str(path), device=str(device))
    ae = build_autoencoder(params, device="meta")
    expected = {k: tuple(v.shape) for k, v in to_checkpoint_names(ae.state_dict(), params.num_levels).items()}
    missing = sorted(set(expected) - set(checkpoint))
    unexpected = sorted(set(checkpoint) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_name_list(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_name_list(unexpected)}")
        raise AECheckpointError(
            f"{path}: does not match the FLUX autoencoder for {params!r}: " + "; ".join(parts)
        )
    wrong = [
        f"{k}: expected {list(shape)}, found {list(checkpoint[k].shape)}"
        for k, shape in expected.items() if tuple(checkpoint[k].shape) != shape
    ]
    if wrong:
        raise AECheckpointError(f"{path}: {len(wrong)} tensor(s) have the wrong shape: {_name_list(wrong)}")
    module_sd = from_checkpoint_names(checkpoint, params.num_levels)
    if dtype is not None:
        module_sd = {k: v.to(dtype) for k, v in module_sd.items()}
    ae.load_state_dict(module_sd, strict=True, assign=True)
    left_on_meta = [name for name, t in [*ae.named_parameters(), *ae.named_buffers()] if t.is_meta]
    if left_on_meta:
        raise AECheckpointError(f"{path}: these module tensors were not filled by the checkpoint: {_name_list(left_on_meta)}")
    return ae.eval()


# --------------------------------------------------------------------------------------------------
# Latent space
# --------------------------------------------------------------------------------------------------


def _scale_shift(ae: AutoencoderKL) -> tuple[float, float]:
    scale = ae.config.scaling_factor
    shift = ae.config.shift_factor
    if shift is None:
        raise ConfigError("the AutoencoderKL has no shift_factor in its config; build it with build_autoencoder()")
    return float(scale), float(shift)


def decode(ae: AutoencoderKL, z: torch.Tensor) -> torch.Tensor:
    """Scaled latent ``(B, z_channels, h, w)`` -> image ``(B, 3, 8h, 8w)`` in [-1, 1] space (unclamped).

    ``z`` is what the language model produces: ``(mean - shift) * scale``; the decoder wants the
    raw latent, ``z / scale + shift``.
    """
    if z.ndim != 4 or z.shape[1] != ae.config.latent_channels:
        raise ConfigError(f"decode: z must be (B, {ae.config.latent_channels}, h, w), got shape {tuple(z.shape)}")
    scale, shift = _scale_shift(ae)
    raw = z / scale + shift  # (B, C, h, w)
    return ae.decode(raw, return_dict=False)[0]  # (B, 3, H, W)


def encode(
    ae: AutoencoderKL,
    x: torch.Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Image ``(B, 3, H, W)`` in [-1, 1] -> scaled latent ``(B, z_channels, H/8, W/8)``.

    ``sample=False`` returns the posterior mean (deterministic); ``sample=True`` draws
    ``mean + std * eps`` with ``generator``, as upstream's ``AutoEncoder.encode`` always does.
    (diffusers clamps the log-variance to [-30, 20] before taking ``std``; BFL does not. That only
    matters for std outside [3e-7, 2.2e4].)
    """
    if x.ndim != 4 or x.shape[1] != ae.config.in_channels:
        raise ConfigError(f"encode: x must be (B, {ae.config.in_channels}, H, W), got shape {tuple(x.shape)}")
    scale, shift = _scale_shift(ae)
    posterior = ae.encode(x, return_dict=False)[0]
    raw = posterior.sample(generator=generator) if sample else posterior.mean  # (B, C, h, w)
    return (raw - shift) * scale


def patchify_latent(z: torch.Tensor, p: int) -> torch.Tensor:
    """``(B, C, h*p, w*p)`` -> ``(B, h*w, p*p*C)``: tokens in (row, col) order, features in (p, q, c) order.

    This is the layout of BAGEL's latent tokens (upstream: ``reshape(C, h, p, w, p)`` then
    ``einsum("chpwq->hwpqc")``), i.e. the layout ``vae2llm`` was trained on.
    """
    if z.ndim != 4 or z.shape[2] % p or z.shape[3] % p:
        raise ConfigError(f"patchify_latent: z must be (B, C, h*{p}, w*{p}), got shape {tuple(z.shape)}")
    b, c, hp, wp = z.shape
    h, w = hp // p, wp // p
    z = z.reshape(b, c, h, p, w, p)  # (B, C, h, p, w, q)
    z = z.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, q, C)
    return z.reshape(b, h * w, p * p * c)  # (B, h*w, p*p*C)


def unpatchify_latent(tokens: torch.Tensor, h: int, w: int, p: int, c: int) -> torch.Tensor:
    """``(B, h*w, p*p*c)`` -> ``(B, c, h*p, w*p)``, the inverse of :func:`patchify_latent`.

    A 2-D ``(h*w, p*p*c)`` input is one image (what ``generate_image`` returns per image) and gives
    ``(1, c, h*p, w*p)``, as the upstream inferencer's ``reshape(1, h, w, p, p, c)`` does.
    """
    if tokens.ndim == 2:
        tokens = tokens.unsqueeze(0)  # (1, h*w, p*p*c)
    if tokens.ndim != 3 or tokens.shape[1] != h * w or tokens.shape[2] != p * p * c:
        raise ConfigError(
            f"unpatchify_latent: tokens must be (B, {h}*{w}, {p}*{p}*{c}) = (B, {h * w}, {p * p * c}), "
            f"got shape {tuple(tokens.shape)}"
        )
    b = tokens.shape[0]
    x = tokens.reshape(b, h, w, p, p, c)  # (B, h, w, p, q, c)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, c, h, p, w, q)
    return x.reshape(b, c, h * p, w * p)  # (B, c, h*p, w*p)
