"""BAGEL configurations: the released 7B-MoT, a tiny one for tests, and reading/writing a checkpoint folder.

A BAGEL checkpoint folder holds ``llm_config.json`` (a Qwen2 config), ``vit_config.json`` (a SigLIP
vision config that lists one layer more than BAGEL builds), ``ema.safetensors`` (or
``model.safetensors``), ``ae.safetensors`` and the Qwen2 tokenizer files. The constants the upstream
notebook passes in code (NaViT grid 70, latent patch 2, latent grid 64, FLUX autoencoder sizes) are the
defaults here; a folder written by :meth:`BagelBackbone.save_pretrained` of a non-release size also
carries ``asg_bagel.json`` with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
from transformers import SiglipVisionConfig

from asg.errors import ConfigError, DataError
from asg_bagel.autoencoder import AEParams
from asg_bagel.model import BagelConfig, SpecialTokens, llm_config

WEIGHT_FILES = ("ema.safetensors", "model.safetensors")  # the first one present is loaded
EXTRA_FILE = "asg_bagel.json"

# The released BAGEL-7B-MoT (values of the hub's llm_config.json / vit_config.json; Qwen2.5-7B sizes).
FULL_LLM = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": False,
    "bos_token_id": 151643, "eos_token_id": 151645,
}
FULL_VIT = {  # as the hub file lists it: 27 layers, of which BAGEL builds 26
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_channels": 3, "image_size": 980, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}
# Qwen2.5 ids of BAGEL's four special tokens (all already in the Qwen2.5 vocabulary).
FULL_TOKENS = SpecialTokens(bos=151644, eos=151645, start_of_image=151652, end_of_image=151653)

# A tiny instance for tests (the sizes of the upstream parity fixture): hidden 64, 2 layers, ViT width 32.
TINY_LLM = {
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": False,
}
TINY_VIT = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2, "num_channels": 3,
    "image_size": 112, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6,
}
TINY_AE = AEParams(resolution=64, in_channels=3, downsample=8, ch=32, out_ch=3, ch_mult=(1, 1, 1, 1),
                   num_res_blocks=1, z_channels=16, scale_factor=0.3611, shift_factor=0.1159)
TINY_TOKENS = SpecialTokens(bos=252, eos=253, start_of_image=254, end_of_image=255)


@attrs.frozen(kw_only=True)
class ImageSizes:
    """How images are sized on the way in and out (BAGEL's ``ImageTransform(max, min, stride)`` pairs)."""

    vit_max: int = 980  # understanding: longest side at most this ...
    vit_min: int = 224  # ... shortest side at least this ...
    vit_stride: int = 14  # ... both multiples of the ViT patch
    generate: int = 1024  # side of generated images (a multiple of 16 = AE down-sampling x latent patch)


FULL_SIZES = ImageSizes()
TINY_SIZES = ImageSizes(vit_max=112, vit_min=28, vit_stride=14, generate=32)


def vit_config(hub: dict[str, Any]) -> SiglipVisionConfig:
    """The encoder BAGEL builds from a hub ``vit_config.json``: one layer fewer, no rope, no head."""
    data = {k: v for k, v in hub.items() if k not in ("rope", "model_type", "architectures", "torch_dtype")}
    if hub.get("rope", False):
        raise ConfigError("vit_config.json: rope=true is not the released BAGEL layout; this plugin needs rope=false")
    if data.get("num_hidden_layers", 0) < 2:
        raise ConfigError(f"vit_config.json: num_hidden_layers must be at least 2 (BAGEL drops the last), got {data.get('num_hidden_layers')}")
    data["num_hidden_layers"] -= 1
    return SiglipVisionConfig(**data)


def full_config() -> BagelConfig:
    return BagelConfig(llm=llm_config(FULL_LLM), vit=vit_config(FULL_VIT), ae=AEParams.flux(), tokens=FULL_TOKENS)


def tiny_config() -> BagelConfig:
    return BagelConfig(llm=llm_config(TINY_LLM), vit=vit_config(TINY_VIT), ae=TINY_AE, tokens=TINY_TOKENS,
                       vit_max_num_patch_per_side=8, max_latent_size=4, num_timesteps=5)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"BAGEL checkpoint folder {path.parent} lacks {path.name}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from None


def config_from_folder(directory: Path, tokens: SpecialTokens) -> tuple[BagelConfig, ImageSizes]:
    """The architecture a checkpoint folder describes (release constants unless ``asg_bagel.json`` says otherwise)."""
    llm = llm_config(_read_json(directory / "llm_config.json"))
    vit = vit_config(_read_json(directory / "vit_config.json"))
    extra = _read_json(directory / EXTRA_FILE) if (directory / EXTRA_FILE).is_file() else {}
    known = {"ae", "sizes", "vit_max_num_patch_per_side", "latent_patch_size", "max_latent_size", "num_timesteps",
             "timestep_shift", "cfg_text_scale", "cfg_interval", "cfg_renorm_min", "cfg_renorm_type"}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConfigError(f"{directory / EXTRA_FILE}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    ae = AEParams.from_dict(extra.pop("ae")) if "ae" in extra else AEParams.flux()
    sizes = ImageSizes(**extra.pop("sizes")) if "sizes" in extra else FULL_SIZES
    if "cfg_interval" in extra:
        extra["cfg_interval"] = tuple(extra["cfg_interval"])
    return BagelConfig(llm=llm, vit=vit, ae=ae, tokens=tokens, **extra), sizes


def config_to_folder(config: BagelConfig, sizes: ImageSizes, directory: Path) -> None:
    """Write llm_config.json, vit_config.json (hub convention: one layer more) and asg_bagel.json."""
    llm = config.llm.to_dict()
    llm.update(qk_norm=True, layer_module="Qwen2MoTDecoderLayer")
    vit = config.vit.to_dict()
    vit["num_hidden_layers"] += 1
    vit["rope"] = False
    extra = {
        "ae": attrs.asdict(config.ae), "sizes": attrs.asdict(sizes),
        **{k: getattr(config, k) for k in ("vit_max_num_patch_per_side", "latent_patch_size", "max_latent_size",
                                           "num_timesteps", "timestep_shift", "cfg_text_scale", "cfg_interval",
                                           "cfg_renorm_min", "cfg_renorm_type")},
    }
    for name, data in (("llm_config.json", llm), ("vit_config.json", vit), (EXTRA_FILE, extra)):
        (directory / name).write_text(json.dumps(data, indent=1, default=list) + "\n")


def weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"BAGEL checkpoint folder {directory} has neither {' nor '.join(WEIGHT_FILES)}")


__all__ = ["FULL_SIZES", "TINY_SIZES", "ImageSizes", "config_from_folder", "config_to_folder",
           "full_config", "tiny_config", "vit_config", "weights_file"]
