"""BLIP3o's pixel decoder: an SDXL-style UNet + VAE that turns 64 EVA-CLIP feature tokens into pixels.

BLIP3o's DiT does not make pixels. It samples 64 EVA-CLIP-E feature tokens (an 8x8 grid, width 1792),
and a second diffusion model, shipped in the checkpoint's ``diffusion-decoder/`` folder, paints an image
conditioned on them. Upstream runs that folder through a custom diffusers pipeline
(``DiffusionPipeline.from_pretrained(..., custom_pipeline="pipeline_llava_gen")``), which needs remote
code. Here the folder is loaded with plain diffusers classes from local files, and the denoising loop is
our own.

What the upstream pipeline does
-------------------------------
Read in ``pipeline_llava_gen.py`` (hub ``BLIP3o/BLIP3o-Model-8B`` ``diffusion-decoder/``; the copy read
was ``loggerJK/VLM:pipeline_llava_gen.py``). It is BAAI's Emu2 pipeline (``pipeline_emu2_gen.py``, also
in ``JiuhaiChen/BLIP3o:pipeline_emu2_gen.py``) with the prompt encoder swapped for BLIP3o's
``generate_image``. The UNet loop is the same in both. (The copy read also builds a Qwen2.5-VL image
processor from the hub at import time: one more reason not to run it.)

1. ``prompt_embeds`` = the CLIP tokens ``(B, 64, 1792)`` go **unchanged** to the UNet as
   ``encoder_hidden_states``. No projection and no learned null embedding.
2. SDXL micro-conditioning (``addition_embed_type="text_time"``):
   ``text_embeds = prompt_embeds.mean(dim=1)``, the token mean standing in for SDXL's pooled text
   embedding; ``time_ids = [1024, 1024, 0, 0, height, width]``, i.e. original size (fixed default
   ``[1024, 1024]``), crop ``[0, 0]`` and the target size.
3. Classifier-free guidance is on when ``guidance_scale > 1``. The batch is ``[cond; uncond]`` (cond
   first), and the two halves are combined as ``uncond + g * (cond - uncond)``. The unconditional tokens
   are **not zeros**. They are ``multimodal_encoder.generate_image(text=[" "])``: the whole LLM + DiT
   sampler run once on a bare single-space prompt (no chat template, ``[IMG]`` appended as usual). The
   result is cached per pipeline instance, so every later image reuses that one sample.
   ``pipeline_emu2_gen.py`` uses ``""`` instead of ``" "``. The image-only path (``encode_image``), which
   uses an all-zero image as its negative, is not used for text-to-image.
4. Latents: ``randn(B, unet.in_channels, H/8, W/8) * scheduler.init_noise_sigma``, then for each
   timestep: ``scale_model_input``, UNet, guidance, ``scheduler.step``.
5. Decode: ``vae.decode(latents / vae.scaling_factor)``, ``(x / 2 + 0.5).clamp(0, 1)``, then
   ``round(x * 255)`` to uint8, in the VAE's dtype (bf16 upstream).
6. ``num_inference_steps`` defaults to **50** in the pipeline. B3 ``inference.py`` and REF's
   ``eval/*/generate_*_our.py`` call ``pipe(prompt, guidance_scale=3.0)``, so they use 50 UNet steps; there
   the "steps" argument patches the DiT sampler, not this loop. REF's trainer passes
   ``num_inference_steps=generation_num_inference_steps`` (30), ``height``, ``width`` and guidance 2.0 to
   the pipeline (REF ``generation_trainer.py``). This module defaults to REF's 30; pass ``steps=50`` to
   match upstream ``inference.py``.

The folder (hub tree pages of ``BLIP3o/BLIP3o-Model-8B``) holds ``unet/config.json`` (1.81 kB) +
``diffusion_pytorch_model.bf16.safetensors`` (5.05 GB), ``vae/config.json`` (684 B) +
``diffusion_pytorch_model.bf16.safetensors`` (167 MB), ``scheduler/scheduler_config.json`` (474 B),
``tokenizer/``, ``feature_extractor/``, ``safety_checker_none/``, ``model_index.json`` and the three
``pipeline_*.py``. Upstream and REF load the weights with ``variant="bf16"``.

Assumptions (not verified against the BLIP3o files themselves)
-----------------------------------------------------------------
- The BLIP3o ``diffusion-decoder`` configs are Emu2-Gen's. Two facts support this: the pipeline is
  Emu2's, and the file sizes match Emu2's published configs (``baaivision/Emu``:
  ``Emu2/emu/conf/diffusion_config/{unet,vae,scheduler}``): 684 B VAE and 474 B scheduler exactly, and
  1807 B for the UNet against the hub's "1.81 kB". The UNet weights are 5.05 GB in both. Those configs
  describe:
  - an SDXL ``UNet2DConditionModel`` with ``cross_attention_dim=1792``, ``addition_embed_type="text_time"``,
    ``addition_time_embed_dim=256``, ``projection_class_embeddings_input_dim=3328`` (= 1792 + 6 * 256),
    ``encoder_hid_dim=None``, ``sample_size=128``;
  - the SDXL ``AutoencoderKL`` (``scaling_factor=0.13025``, 8x down-sampling, 4 latent channels);
  - an ``EulerDiscreteScheduler`` (epsilon prediction, ``scaled_linear`` betas 0.00085 to 0.012,
    ``"leading"`` spacing, ``steps_offset=1``).

  Nothing here hard-codes those numbers. Everything is read from the folder, and
  :class:`DiffusionDecoder` checks only the conditioning interface (token width = cross-attention
  width, ``text_time`` input = width + 6 time ids), so a different but compatible config also loads.
- The order of 8x8 grid to 64 tokens is row-major (token ``i = h * 8 + w``). That is what BLIP3o's
  ``generate_image`` does to the DiT output (``view(1, 1792, -1).permute(0, 2, 1)``), and
  :func:`as_tokens` does the same.

Deviations, all deliberate
--------------------------
- Upstream draws the initial noise from the global RNG. Here it comes from ``generator`` (diffusers'
  ``randn_tensor``: a CPU generator gives the same noise on every device).
- Upstream handles batch size 1 only: it repeats a ``(6,)`` ``time_ids`` and caches a batch-1 negative.
  Here any batch works. Negatives of batch 1 are broadcast, and ``time_ids`` is ``(2B, 6)``, which the
  UNet flattens exactly as it does upstream's ``(12,)``.
- The unconditional tokens are an input (``negative_tokens=`` or :meth:`DiffusionDecoder.set_null_tokens`),
  because producing them needs the LLM and DiT, which live outside this module. Without them, guided
  decoding is an error, not a silent fallback to zeros.
- Each call uses a fresh copy of the scheduler, so decodes do not share step state.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from asg.backbones.checkpoint_io import share_safetensors
from asg.errors import ConfigError, DataError

__all__ = [
    "DECODER_SUBFOLDER",
    "NULL_PROMPT",
    "UPSTREAM_SCHEDULER_CONFIG",
    "DecoderFolderError",
    "DiffusionDecoder",
    "as_tokens",
    "cfg_combine",
    "sdxl_time_ids",
]

DECODER_SUBFOLDER = "diffusion-decoder"  # where the decoder sits inside a BLIP3o checkpoint folder
NULL_PROMPT = " "  # the raw text upstream runs through LLM + DiT to get the unconditional tokens
DEFAULT_ORIGINAL_SIZE = (1024, 1024)  # pipeline_llava_gen ``original_size`` default, kept at any output size
DEFAULT_CROP = (0, 0)  # pipeline_llava_gen ``crop_info`` default
_TIME_IDS = 6  # SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)

# The released ``scheduler/scheduler_config.json``: Emu2-Gen's file, which has exactly the same
# size (474 B) as BLIP3o's (see module docstring). `tiny()` uses it, so tests run the same scheduler
# arithmetic as the real decoder. The legacy keys (``clip_sample``, ``skip_prk_steps``, ...) are in the
# file; ``EulerDiscreteScheduler`` ignores them.
UPSTREAM_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

_WEIGHT_FILE = re.compile(
    r"^diffusion_pytorch_model(?:-\d+-of-\d+)?(?:\.(?P<variant>[A-Za-z0-9_-]+))?\.(?:safetensors|bin)$"
)
_INDEX_FILE = re.compile(r"^diffusion_pytorch_model\.(?:safetensors|bin)\.index(?:\.(?P<variant>[A-Za-z0-9_-]+))?\.json$")


class DecoderFolderError(DataError):
    """A ``diffusion-decoder`` folder lacks a part, or holds one that does not fit the decoder."""


# --------------------------------------------------------------------------------------------------
# Small pure helpers (the pieces of the upstream loop that have numbers in them)
# --------------------------------------------------------------------------------------------------


def as_tokens(features: torch.Tensor, width: int, *, name: str = "clip_tokens") -> torch.Tensor:
    """Return CLIP features as ``(B, N, width)`` tokens; a ``(B, width, H, W)`` grid is read row-major.

    The DiT emits a grid ``(B, 1792, 8, 8)``. BLIP3o's ``generate_image`` flattens it with
    ``view(B, 1792, -1).permute(0, 2, 1)``, so token ``h * W + w`` is grid cell ``(h, w)``. Tokens that
    are already ``(B, N, width)`` pass through unchanged.
    """
    if not isinstance(features, torch.Tensor):
        raise ConfigError(f"{name}: expected a torch.Tensor, got {type(features).__name__}")
    if features.ndim == 4:
        if features.shape[1] != width:
            raise ConfigError(
                f"{name}: a feature grid must be (B, {width}, H, W) (channels = the UNet's cross-attention "
                f"width); got {tuple(features.shape)}"
            )
        return features.flatten(2).transpose(1, 2).contiguous()
    if features.ndim == 3:
        if features.shape[-1] != width:
            raise ConfigError(
                f"{name}: tokens must be (B, N, {width}) (width = the UNet's cross-attention width); "
                f"got {tuple(features.shape)}"
            )
        return features
    raise ConfigError(f"{name}: expected (B, N, {width}) tokens or a (B, {width}, H, W) grid; got {tuple(features.shape)}")


def sdxl_time_ids(
    rows: int,
    *,
    original_size: Sequence[int],
    crop_coords: Sequence[int],
    target_size: Sequence[int],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """SDXL ``time_ids`` as an int64 ``(rows, 6)`` tensor: original ``(h, w)``, crop ``(top, left)``, target ``(h, w)``.

    pipeline_llava_gen builds ``LongTensor(original_size + crop_info + [height, width])``. The UNet
    embeds the ids after ``flatten()``, so one row per batch entry gives the same embedding as upstream's
    concatenated 1-D tensor.
    """
    values = [*original_size, *crop_coords, *target_size]
    if len(values) != _TIME_IDS:
        raise ConfigError(
            f"time ids: original_size, crop_coords and target_size must give 2 numbers each; got "
            f"{list(original_size)}, {list(crop_coords)}, {list(target_size)}"
        )
    row = torch.tensor([int(v) for v in values], dtype=torch.long, device=device)
    return row.unsqueeze(0).repeat(rows, 1)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance as pipeline_llava_gen writes it: ``uncond + g * (cond - uncond)``."""
    return uncond + guidance * (cond - uncond)


# --------------------------------------------------------------------------------------------------
# Folder helpers
# --------------------------------------------------------------------------------------------------


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DecoderFolderError(f"{what}: folder {str(path)!r} does not exist")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DecoderFolderError(f"{what}: file {str(path)!r} does not exist")
    return path


def _weights_variant(component_dir: Path) -> str | None:
    """The diffusers ``variant`` tag of the weights in ``component_dir`` (``"bf16"`` in the release, or None).

    The release names its weights ``diffusion_pytorch_model.bf16.safetensors``, which diffusers finds only
    when it is given ``variant="bf16"`` (upstream and REF pass it explicitly). Weights without a tag are
    preferred when both kinds are present.
    """
    variants: set[str | None] = set()
    for child in component_dir.iterdir():
        match = _WEIGHT_FILE.match(child.name) or _INDEX_FILE.match(child.name)
        if match and child.is_file():
            variants.add(match.group("variant"))
    if not variants:
        raise DecoderFolderError(
            f"{str(component_dir)!r} holds no weights (expected diffusion_pytorch_model[.<variant>].safetensors)"
        )
    if None in variants:
        return None
    if len(variants) > 1:
        raise DecoderFolderError(
            f"{str(component_dir)!r} holds weights of several variants {sorted(v or '' for v in variants)}; "
            "keep one, or one without a variant tag"
        )
    return next(iter(variants))


def _scheduler_from_config_file(config_file: Path) -> SchedulerMixin:
    """Build the scheduler named in ``scheduler_config.json`` from that file alone (no hub, no remote code)."""
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise DecoderFolderError(f"scheduler config {str(config_file)!r} is not valid JSON: {err}") from err
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise DecoderFolderError(
            f"scheduler config {str(config_file)!r}: _class_name {name!r} is not a diffusers scheduler class"
        )
    return cls.from_config(config)


def _single_width(value: Any, key: str, source: str) -> int:
    """``cross_attention_dim`` may be per block; the decoder feeds one token width to every block."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"{source}: {key} differs between blocks ({list(value)}); the decoder feeds one token width")
        value = value[0]
    if not isinstance(value, int):
        raise ConfigError(f"{source}: {key} must be an int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------------------


class DiffusionDecoder:
    """The ``diffusion-decoder`` (UNet + VAE + scheduler) with the denoising loop of pipeline_llava_gen.

    Build it with :meth:`from_folder` (the released folder, local files only) or :meth:`tiny` (random,
    for CPU tests). Call :meth:`decode` to turn CLIP tokens into images. Guided decoding (``guidance > 1``)
    needs the unconditional tokens, which are the DiT's output for the prompt :data:`NULL_PROMPT`. Pass
    them per call as ``negative_tokens=``, or once with :meth:`set_null_tokens` (upstream also computes
    them once and caches them).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        *,
        source: str = "diffusion decoder",
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.null_tokens: torch.Tensor | None = None
        self.feature_dim = self._check_interface(unet, vae, source)

    # ---- construction --------------------------------------------------------------------------

    @staticmethod
    def _check_interface(unet: UNet2DConditionModel, vae: AutoencoderKL, source: str) -> int:
        """Check that the UNet takes pipeline_llava_gen's conditioning, and return the token width.

        The pipeline feeds the tokens straight in as ``encoder_hidden_states`` and their mean as
        ``text_embeds`` next to 6 SDXL time ids. This holds only for a ``text_time`` UNet whose
        cross-attention width equals the token width, or ``encoder_hid_dim`` when the UNet projects its
        input first, and whose ``projection_class_embeddings_input_dim`` is width + 6 * time-embed width.
        """
        cfg = unet.config
        if cfg.addition_embed_type != "text_time":
            raise ConfigError(
                f"{source}: unet addition_embed_type is {cfg.addition_embed_type!r}; the BLIP3o decoder needs "
                "'text_time' (SDXL pooled embedding + size ids)"
            )
        if cfg.encoder_hid_dim_type is not None:
            width = _single_width(cfg.encoder_hid_dim, "encoder_hid_dim", source)
        else:
            width = _single_width(cfg.cross_attention_dim, "cross_attention_dim", source)
        expected = width + _TIME_IDS * int(cfg.addition_time_embed_dim)
        if cfg.projection_class_embeddings_input_dim != expected:
            raise ConfigError(
                f"{source}: unet projection_class_embeddings_input_dim is "
                f"{cfg.projection_class_embeddings_input_dim}, but the token mean ({width}) + "
                f"{_TIME_IDS} time ids x {cfg.addition_time_embed_dim} need {expected}"
            )
        if cfg.in_channels != vae.config.latent_channels:
            raise ConfigError(
                f"{source}: unet in_channels ({cfg.in_channels}) != vae latent_channels ({vae.config.latent_channels})"
            )
        return width

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DiffusionDecoder:
        """Load ``unet/``, ``vae/`` and ``scheduler/`` from a local ``diffusion-decoder`` folder, with no network.

        ``path`` is the ``diffusion-decoder`` folder itself or the BLIP3o checkpoint folder that contains
        it. The weights are loaded with ``local_files_only=True`` and whichever variant tag the files carry
        (``bf16`` in the release). The scheduler is built from ``scheduler/scheduler_config.json`` alone.
        ``model_index.json``, ``tokenizer/`` and ``feature_extractor/`` are not read; upstream uses them
        only for its text prompt path and its safety checker.
        Upstream runs in bf16 on GPU; pass ``dtype=torch.bfloat16`` for that.
        """
        root = Path(path)
        _require_dir(root, "diffusion decoder")
        if not (root / "unet").exists() and (root / DECODER_SUBFOLDER).is_dir():
            root = root / DECODER_SUBFOLDER
        unet_dir = _require_dir(root / "unet", "diffusion decoder UNet")
        vae_dir = _require_dir(root / "vae", "diffusion decoder VAE")
        _require_file(unet_dir / "config.json", "diffusion decoder UNet config")
        _require_file(vae_dir / "config.json", "diffusion decoder VAE config")
        scheduler_file = _require_file(root / "scheduler" / "scheduler_config.json", "diffusion decoder scheduler config")

        unet = UNet2DConditionModel.from_pretrained(
            str(unet_dir), torch_dtype=dtype, variant=_weights_variant(unet_dir), local_files_only=True
        )
        vae = AutoencoderKL.from_pretrained(
            str(vae_dir), torch_dtype=dtype, variant=_weights_variant(vae_dir), local_files_only=True
        )
        scheduler = _scheduler_from_config_file(scheduler_file)
        decoder = cls(unet.eval(), vae.eval(), scheduler, source=str(root))
        return decoder.to(device)

    @classmethod
    def tiny(
        cls,
        *,
        feature_dim: int = 32,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DiffusionDecoder:
        """A small random decoder with the release's conditioning interface, for CPU tests.

        It has the same shape as the release, only smaller: an SDXL-style ``text_time``
        ``UNet2DConditionModel`` whose cross-attention width is ``feature_dim`` and whose pooled input is
        ``feature_dim + 6 * 8``; a 2-level ``AutoencoderKL`` (2x down-sampling, 4 latent channels, the
        SDXL ``scaling_factor``); and an ``EulerDiscreteScheduler`` with the released config. The global
        RNG is left untouched.
        """
        time_embed = 8
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(
                sample_size=8,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                mid_block_type="UNetMidBlock2DCrossAttn",
                block_out_channels=(16, 32),
                layers_per_block=1,
                attention_head_dim=(2, 4),
                transformer_layers_per_block=1,
                norm_num_groups=8,
                cross_attention_dim=feature_dim,
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=time_embed,
                projection_class_embeddings_input_dim=feature_dim + _TIME_IDS * time_embed,
            )
            vae = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                block_out_channels=(16, 32),
                layers_per_block=1,
                latent_channels=4,
                norm_num_groups=8,
                sample_size=32,
                scaling_factor=0.13025,
            )
        scheduler = EulerDiscreteScheduler.from_config(UPSTREAM_SCHEDULER_CONFIG)
        decoder = cls(unet.eval(), vae.eval(), scheduler, source="tiny diffusion decoder")
        return decoder.to(device, dtype)

    def save(self, folder: str | Path, *, variant: str | None = None) -> Path:
        """Write the release layout: ``unet/``, ``vae/``, ``scheduler/scheduler_config.json``, ``model_index.json``.

        ``variant`` only tags the weight file names (``"bf16"`` gives
        ``diffusion_pytorch_model.bf16.safetensors``, as in the release). The tensors keep their dtype.
        """
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(root / "unet", variant=variant, safe_serialization=True)
        self.vae.save_pretrained(root / "vae", variant=variant, safe_serialization=True)
        share_safetensors(root)
        self.scheduler.save_pretrained(root / "scheduler")
        index = {
            "_class_name": "BLIP3oDiffusionDecoder",
            "_diffusers_version": diffusers.__version__,
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "unet": ["diffusers", type(self.unet).__name__],
            "vae": ["diffusers", type(self.vae).__name__],
        }
        (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return root

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiffusionDecoder:
        """Move (and optionally cast) the UNet and VAE; returns ``self``."""
        for module in (self.unet, self.vae):
            if device is not None:
                module.to(device)
            if dtype is not None and module.dtype != dtype:
                module.to(dtype)
        return self

    # ---- properties ----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell, ``2 ** (levels - 1)`` as pipeline_llava_gen computes it (8 in the release)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # ---- unconditional tokens ------------------------------------------------------------------

    def set_null_tokens(self, tokens: torch.Tensor | None) -> None:
        """Store the unconditional CLIP tokens that guided decoding uses when none are passed.

        Upstream's are ``generate_image(text=[" "])``: the LLM + DiT sampled once on :data:`NULL_PROMPT`,
        then cached and reused. ``tokens`` is ``(1 or B, 64, width)`` or a grid; ``None`` clears it.
        """
        self.null_tokens = None if tokens is None else as_tokens(tokens, self.feature_dim, name="null_tokens").detach()

    # ---- sampling ------------------------------------------------------------------------------

    def _check_request(self, steps: int, guidance: float, height: int, width: int) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be a positive int, got {steps!r}")
        if not math.isfinite(guidance):
            raise ConfigError(f"guidance must be finite, got {guidance!r}")
        # upstream floors height / vae_scale_factor; only exact multiples give an image of the asked size
        # (the UNet itself copes with odd latent sizes through its forward_upsample_size path)
        multiple = self.vae_scale_factor
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ConfigError(
                    f"{name} must be a positive multiple of the VAE scale factor {multiple}, got {value!r}"
                )

    def _negatives(self, negative_tokens: torch.Tensor | None, cond: torch.Tensor) -> torch.Tensor:
        source = "negative_tokens" if negative_tokens is not None else "null_tokens"
        tokens = negative_tokens if negative_tokens is not None else self.null_tokens
        if tokens is None:
            raise ConfigError(
                "guided decoding (guidance > 1) needs the unconditional CLIP tokens: pass negative_tokens= or call "
                f"set_null_tokens() with the DiT's output for the prompt {NULL_PROMPT!r} (what upstream uses), "
                "or decode with guidance=1.0"
            )
        tokens = as_tokens(tokens, self.feature_dim, name=source)
        batch = cond.shape[0]
        if tokens.shape[0] == 1 and batch > 1:
            tokens = tokens.expand(batch, -1, -1)
        if tokens.shape[0] != batch or tokens.shape[1] != cond.shape[1]:
            raise ConfigError(
                f"{source}: shape {tuple(tokens.shape)} does not fit clip_tokens {tuple(cond.shape)} "
                "(need the same token count, and batch 1 or the same batch)"
            )
        return tokens

    @torch.no_grad()
    def sample_latents(
        self,
        clip_tokens: torch.Tensor,
        *,
        negative_tokens: torch.Tensor | None = None,
        steps: int = 30,
        guidance: float = 3.0,
        height: int = 1024,
        width: int = 1024,
        generator: torch.Generator | None = None,
        original_size: Sequence[int] = DEFAULT_ORIGINAL_SIZE,
        crop_coords: Sequence[int] = DEFAULT_CROP,
    ) -> torch.Tensor:
        """Run pipeline_llava_gen's denoising loop and return the final (scaled) VAE latents ``(B, 4, H/f, W/f)``."""
        self._check_request(steps, guidance, height, width)
        cond = as_tokens(clip_tokens, self.feature_dim)
        batch = cond.shape[0]
        guided = guidance > 1.0  # pipeline_llava_gen: do_classifier_free_guidance = guidance_scale > 1.0
        embeds = cond.to(device=self.device, dtype=self.dtype)
        if guided:  # [cond; uncond], cond first, as pipeline_llava_gen concatenates them
            negatives = self._negatives(negative_tokens, cond).to(device=self.device, dtype=self.dtype)
            embeds = torch.cat([embeds, negatives])
        added_cond = {
            "text_embeds": embeds.mean(dim=1),
            "time_ids": sdxl_time_ids(
                embeds.shape[0],
                original_size=original_size,
                crop_coords=crop_coords,
                target_size=(height, width),
                device=self.device,
            ),
        }

        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        latents = latents * scheduler.init_noise_sigma

        for t in scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.unet(
                model_input, t, encoder_hidden_states=embeds, added_cond_kwargs=added_cond, return_dict=False
            )[0]
            if guided:
                noise_cond, noise_uncond = noise.chunk(2)
                noise = cfg_combine(noise_cond, noise_uncond, guidance)
            latents = scheduler.step(noise, t, latents, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def latents_to_images(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE-decode scaled latents to RGB images: ``decode(z / scaling)``, ``[-1, 1] -> [0, 1]``, ``round(x * 255)``."""
        z = latents.to(device=self.vae.device, dtype=self.vae.dtype) / self.vae.config.scaling_factor
        pixels = self.vae.decode(z, return_dict=False)[0]
        pixels = (pixels / 2 + 0.5).clamp(0, 1)
        arrays = (pixels.float().permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(array) for array in arrays]

    def decode(
        self,
        clip_tokens: torch.Tensor,
        *,
        negative_tokens: torch.Tensor | None = None,
        steps: int = 30,
        guidance: float = 3.0,
        height: int = 1024,
        width: int = 1024,
        generator: torch.Generator | None = None,
        original_size: Sequence[int] = DEFAULT_ORIGINAL_SIZE,
        crop_coords: Sequence[int] = DEFAULT_CROP,
    ) -> list[Image.Image]:
        """Turn CLIP tokens ``(B, 64, 1792)``, or a grid ``(B, 1792, 8, 8)``, into ``B`` images of ``width x height``.

        The defaults follow REF: 30 steps, guidance 3.0, 1024². Upstream ``inference.py`` uses 50 steps.
        Guidance above 1 needs the unconditional tokens (see :meth:`set_null_tokens`). At guidance 1 or
        below, only the conditional branch runs, as upstream does.
        """
        latents = self.sample_latents(
            clip_tokens,
            negative_tokens=negative_tokens,
            steps=steps,
            guidance=guidance,
            height=height,
            width=width,
            generator=generator,
            original_size=original_size,
            crop_coords=crop_coords,
        )
        return self.latents_to_images(latents)
