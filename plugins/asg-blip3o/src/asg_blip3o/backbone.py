"""`blip3o`: BLIP3o-8B as an asg backbone.

Understanding is transformers' own Qwen2.5-VL (chat prompts, HF ``generate``). Generation runs the
prompt (ChatML, "Please generate image based on the following caption: ...", then ``[IMG]``) and 64
learned latent queries through the language model; the DiT samples an 8x8 grid of 1792-wide EVA-CLIP
features from the queries' last hidden states by rectified flow; the diffusion decoder (an SDXL-style
UNet + VAE from the checkpoint's ``diffusion-decoder/`` folder) turns the features into pixels.

The generator update is reward-weighted flow matching of the DiT on CLIP-feature targets: a generated
image brings the features it was decoded from (its ``FlowTrace``); a real image is turned into features
by the generation vision tower (EVA-CLIP-E-14-plus, pooled 4x4 to the DiT's 8x8 grid) when its weights
are in the checkpoint (``model.gen_vision_tower.*``) or in a ``gen_vision_tower/`` subfolder. Without
them, real-image pairs are skipped (counted in ``real_targets_skipped``) and only generated candidates
train the DiT. The ``tiny`` preset carries a tiny random tower. Gradient reaches the generator role's LoRA on the language model through the conditioning (the
queries' hidden states), and its LoRA on the DiT's attention and feed-forward projections directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from asg.backbones.base import AdapterBackbone, check_image_prompts, sample_weights, torch_dtype
from asg.backbones.qwen_vl import EMBED_IMAGE_PROBE, QwenVLUnderstanding
from asg.backbones.roles import RoleAdapters, lora_role_adapters
from asg.errors import CapabilityError, ConfigError, DataError
from asg.protocol import Preset
from asg.types import ROLES, FlowTrace, GeneratedImage, LossOutput
from asg_blip3o import checkpoint as ckpt
from asg_blip3o import vlm as V
from asg_blip3o.decoder import DiffusionDecoder
from asg_blip3o.dit import DiTConfig, NextDiTCrossAttn, flow_matching_loss, flow_sample
from asg_blip3o.gen_tower import EvaConfig, EvaVisionTower, checkpoint_prefix, load_tower_file, load_tower_weights

_LLM = r".*blip3o\.vlm\.model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_DIT = r".*blip3o\.dit\.model\.layers\.\d+\.(attn1\.to_(q|k|v)|attn2\.to_(q|k|v|out\.0)|feed_forward\.linear_(1|2|3))"
GENERATE_TEMPLATE = "Please generate image based on the following caption: {prompt}"  # B3 inference.py
NULL_PROMPT = " "  # the decoder's unconditional branch: the raw text " " through LLM + DiT (B3 pipeline_llava_gen)


class Blip3oBackbone(QwenVLUnderstanding, AdapterBackbone):
    """BLIP3o-8B (see the module docstring)."""

    name = "blip3o"
    generation_kind = "flow"
    supports_images_in_prompt = True
    roles: tuple[str, ...] = ROLES
    presets: ClassVar[dict[str, Preset]] = {
        "full": Preset("full", "BLIP3o-8B: Qwen2.5-VL-7B + 1.4 B DiT + diffusion decoder; weights from --model <checkpoint folder>"),
        "tiny": Preset("tiny", "a tiny random BLIP3o (text hidden 64, DiT width 32, tiny UNet/VAE) for tests; byte tokenizer"),
    }
    default_preset: ClassVar[str] = "full"
    prompt_templates: Mapping[str, str] = {"generate": GENERATE_TEMPLATE, "embed_image": EMBED_IMAGE_PROBE}

    def __init__(self, config: Any, extras: V.Blip3oExtras, dit_config: DiTConfig, tokenizer: Any, *,
                 decoder: DiffusionDecoder | None, gen_tower: nn.Module | None, image_size: int, dit_steps: int,
                 decoder_steps: int, guidance: float, decoder_guidance: float, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, adapters: bool = True, seed: int = 0) -> None:
        self.config, self.extras, self.dit_config = config, extras, dit_config
        self.tokenizer = tokenizer
        self.processor = V.make_processor(tokenizer, config)
        self.decoder = decoder
        self.image_size = (image_size, image_size)
        self.embedding_dim = extras.hidden_size
        self.dit_steps, self.decoder_steps = dit_steps, decoder_steps
        self.guidance, self.decoder_guidance = guidance, decoder_guidance
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.img_id = tokenizer.convert_tokens_to_ids("[IMG]")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._suppress = [tokenizer.convert_tokens_to_ids(t) for t in
                          ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "[IMG]", "[/IMG]", "<image>")]
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = V.Blip3oModel(config, extras, dit=NextDiTCrossAttn(dit_config))
            parts = {"blip3o": model} if gen_tower is None else {"blip3o": model, "gen_tower": gen_tower}
            self.net = nn.ModuleDict(parts).to(dtype)
        self.net.eval()
        if "gen_tower" in self.net:
            self.net["gen_tower"].requires_grad_(False)
        self.adapters: RoleAdapters | None = None
        if adapters:
            self._add_adapters(seed)

    def _add_adapters(self, seed: int) -> None:
        self.adapters = lora_role_adapters(self.net, _LLM, f"({_LLM})|({_DIT})", seed=seed)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def load(cls, *, preset: str | None = None, model: str | Path | None = None, device: str = "cpu",
             dtype: str | None = None, weights: bool = True, adapters: bool = True, seed: int = 0) -> Blip3oBackbone:
        """``preset="full"`` with ``model=<folder>`` loads the release checkpoint (root shards + tokenizer
        + ``diffusion-decoder/``); without ``model``, ``weights=False`` builds the architecture only.
        ``preset="tiny"`` builds a random tiny BLIP3o, or loads one saved by :meth:`save_pretrained`."""
        preset = preset or cls.default_preset
        if preset not in cls.presets:
            raise ConfigError(f"unknown blip3o preset {preset!r}; valid presets: {', '.join(cls.presets)}")
        dtype_ = torch_dtype(dtype)
        folder = Path(model) if model is not None else None
        if folder is not None and not folder.is_dir():
            raise DataError(f"BLIP3o checkpoint folder {folder} does not exist")
        extra = json.loads((folder / "asg_blip3o.json").read_text()) if folder and (folder / "asg_blip3o.json").is_file() else {}
        tiny = preset == "tiny" or extra.get("preset") == "tiny"
        if folder is not None:
            if not (folder / "config.json").is_file():
                raise DataError(f"BLIP3o checkpoint folder {folder} lacks config.json")
            config, extras = V.blip3o_config(json.loads((folder / "config.json").read_text()), allow_unknown=True)
            tokenizer = V.load_tokenizer(folder)
        elif preset == "full":
            if weights:
                raise ConfigError("the full BLIP3o needs its checkpoint: pass model=<folder with config.json, the "
                                  "model*.safetensors shards, the tokenizer and diffusion-decoder/> (or weights=False)")
            config, extras = V.full_config()
            tokenizer = V.tiny_tokenizer()  # architecture only: the tokenizer is never used
        else:
            config, extras = V.tiny_config()
            tokenizer = V.tiny_tokenizer()
        dit_config = DiTConfig.tiny() if tiny else DiTConfig.blip3o_8b()
        if tiny:
            dit_config = DiTConfig(**{**_dit_fields(dit_config), "latent_embedding_size": extras.hidden_size})
            decoder = (DiffusionDecoder.from_folder(folder, device=device, dtype=dtype_) if folder is not None
                       else DiffusionDecoder.tiny(feature_dim=dit_config.in_channels, seed=seed, device=device, dtype=dtype_))
            with torch.random.fork_rng(devices=[]):  # seeded like the rest: same seed, same tower
                torch.manual_seed(seed + 2)
                tower = EvaVisionTower(EvaConfig.tiny())
            settings = {"image_size": 32, "dit_steps": 3, "decoder_steps": 2, "guidance": 3.0, "decoder_guidance": 3.0}
        else:
            decoder = DiffusionDecoder.from_folder(folder, device=device, dtype=dtype_) if folder is not None and weights else None
            tower = EvaVisionTower(EvaConfig.eva_clip_e_14_plus()) if folder is not None and weights and _has_tower(folder) else None
            # B3 inference.py: DiT 30 steps, guidance 3; pipeline_llava_gen: 50 UNet steps, guidance 3; 1024².
            settings = {"image_size": 1024, "dit_steps": 30, "decoder_steps": 50, "guidance": 3.0, "decoder_guidance": 3.0}
        if str(device) == "meta" and weights and folder is not None:
            raise ConfigError("weights cannot be loaded onto the meta device; pass weights=False")
        bb = cls(config, extras, dit_config, tokenizer, decoder=decoder, gen_tower=tower, device=device,
                 dtype=dtype_, adapters=False, seed=seed, **settings)
        if folder is not None and weights:
            report = ckpt.load_checkpoint(folder, bb.net["blip3o"])
            if "gen_tower" in bb.net:
                _load_tower(bb.net["gen_tower"], folder, report.ignored)
        if adapters:
            bb._add_adapters(seed)
        return bb

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the release layout (config.json, model.safetensors, tokenizer, diffusion-decoder/)."""
        from asg.backbones.checkpoint_io import save_safetensors

        if self.adapters is not None:
            raise CapabilityError("save_pretrained writes base weights; build the backbone with adapters=False")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = V.tiny_config_json(self.extras.n_query) if self.dit_config.dim < 1792 else None
        if cfg is None:
            raise CapabilityError("save_pretrained is implemented for the tiny preset (the release folder is read-only input)")
        (directory / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
        (directory / "asg_blip3o.json").write_text(json.dumps({"preset": "tiny"}) + "\n")
        self.tokenizer.save_pretrained(str(directory))
        ckpt.save_checkpoint(self.net["blip3o"], directory)
        if self.decoder is not None:
            self.decoder.save(directory / "diffusion-decoder")
        if "gen_tower" in self.net:
            (directory / "gen_vision_tower").mkdir(exist_ok=True)
            save_safetensors({k: v.contiguous() for k, v in self.net["gen_tower"].state_dict().items()},
                             directory / "gen_vision_tower" / "model.safetensors")
        return directory

    def checkpoint_manifest(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every tensor the loader expects, named as in the checkpoint shards (``asg inspect --manifest``)."""
        from asg.inspect import manifest_of  # adapter tensors excluded, base_layer names unwrapped

        with torch.device("meta"):
            tower = EvaVisionTower(EvaConfig.eva_clip_e_14_plus() if self.dit_config.dim >= 1792 else EvaConfig.tiny())
        return {"model*.safetensors": ckpt.to_checkpoint_names(manifest_of(self.net["blip3o"])),
                # optional: the generation vision tower, in the shards when the release carries it
                "model*.safetensors (optional gen_vision_tower)": {checkpoint_prefix + k: v for k, v in manifest_of(tower).items()}}

    @property
    def model(self) -> V.Blip3oModel:
        return self.net["blip3o"]

    @property
    def vlm(self) -> nn.Module:
        """The transformers Qwen-VL model the understanding methods (:class:`QwenVLUnderstanding`) run."""
        return self.model.vlm

    # -- images ---------------------------------------------------------------------------------------
    def _conditions(self, prompts: Sequence[str], *, template: bool = True) -> torch.Tensor:
        """The latent queries' last hidden states after each prompt, (B, n_query, hidden): the DiT's condition."""
        tok = self.tokenizer
        if template:
            texts = [self.processor.apply_chat_template(V.understanding_messages(GENERATE_TEMPLATE.format(prompt=p)),
                                                        tokenize=False, add_generation_prompt=True) for p in prompts]
        else:
            texts = list(prompts)
        rows = [tok.encode(t, add_special_tokens=False) + [self.img_id] for t in texts]
        L = max(len(r) for r in rows)
        device = self._device()
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long, device=device)
        att = torch.zeros(len(rows), L, dtype=torch.long, device=device)
        for b, r in enumerate(rows):  # left padding: every prompt ends just before the queries
            ids[b, L - len(r):], att[b, L - len(r):] = torch.tensor(r, device=device), 1
        lm = self.model.vlm.model.language_model
        q = self.model.latent_queries.expand(len(rows), -1, -1).to(self._param_dtype())
        embeds = torch.cat([lm.embed_tokens(ids), q], dim=1)
        att = torch.cat([att, torch.ones(len(rows), q.shape[1], dtype=att.dtype, device=device)], dim=1)
        pos = (att.cumsum(-1) - 1).clamp_min(0)
        hidden = lm(inputs_embeds=embeds, attention_mask=att, position_ids=pos, use_cache=False).last_hidden_state
        return hidden[:, -q.shape[1]:]

    def generate_images(self, prompts: Sequence[str], *, seed: int | None = None, num_steps: int | None = None,
                        guidance: float | None = None) -> list[GeneratedImage]:
        """DiT sampling of CLIP features per prompt (image i from noise seeded ``seed + i``), then the
        diffusion decoder (its unconditional branch: the features of the raw text " ", sampled the same way)."""
        if not prompts:
            return []
        if self.decoder is None:
            raise CapabilityError("this BLIP3o has no diffusion decoder (built without weights); load it with model=<folder>")
        check_image_prompts(prompts)
        steps = self.dit_steps if num_steps is None else int(num_steps)
        g = self.guidance if guidance is None else float(guidance)
        if steps < 1 or g < 0:
            raise ValueError(f"num_steps must be >= 1 and guidance >= 0, got {steps} and {g}")
        base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        H, W = self.image_size
        out = []
        with torch.no_grad():
            cond = self._conditions(prompts)
            null_cond = self._conditions([NULL_PROMPT], template=False)
            # one fixed draw, as upstream caches a single one: no image depends on the batch around it
            null = flow_sample(self.model.dit, null_cond, steps=steps, guidance=g, generator=torch.Generator().manual_seed(0))
            for i, p in enumerate(prompts):
                feats, noise = flow_sample(self.model.dit, cond[i:i + 1], steps=steps, guidance=g,
                                           generator=torch.Generator().manual_seed(base + i), return_noise=True)
                image = self.decoder.decode(feats, negative_tokens=null, steps=self.decoder_steps, guidance=self.decoder_guidance,
                                            height=H, width=W, generator=torch.Generator().manual_seed(base + i))[0]
                out.append(GeneratedImage(image=image, prompt=p, seed=base + i,
                                          trace=FlowTrace(noise=noise[0].float().cpu(), latents=feats[0].float().cpu(),
                                                          num_steps=steps, guidance=g)))
        return out

    def generator_loss(self, prompts: Sequence[str], targets: Sequence[Image.Image | GeneratedImage],
                       weights: torch.Tensor | None = None, *, seed: int | None = None) -> LossOutput:
        """Weighted flow-matching loss of the DiT on CLIP-feature targets (B3 ``blip3o_qwen.py`` image loss:
        x_t = (1 - σ) x0 + σ ε, target ε − x0, 10 % conditioning dropout). Real images need the generation
        vision tower; without one their rows are skipped (weight 0, counted in ``real_targets_skipped``)."""
        if len(prompts) != len(targets):
            raise ValueError(f"generator_loss got {len(prompts)} prompts but {len(targets)} targets")
        check_image_prompts(prompts)
        B = len(prompts)
        device, dtype = self._device(), self._param_dtype()
        w = sample_weights(weights, B, device)
        c, s = self.dit_config.in_channels, self.dit_config.input_size
        x0 = torch.zeros(B, c, s, s, device=device, dtype=dtype)
        usable = torch.ones(B, dtype=torch.bool)
        real = [i for i, t in enumerate(targets) if not isinstance(t, GeneratedImage)]
        if real and "gen_tower" in self.net:
            x0[real] = self.net["gen_tower"].features([targets[i] for i in real]).to(device, dtype)
        elif real:
            usable[real] = False
        for i, t in enumerate(targets):
            if isinstance(t, GeneratedImage):
                x0[i] = t.trace.latents.to(device, dtype).reshape(c, s, s)
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed))
        cond = self._conditions(prompts)
        per_sample = flow_matching_loss(self.model.dit, x0, cond, generator=gen, cond_dropout=0.1)
        per_sample = torch.where(usable.to(device), per_sample, torch.zeros_like(per_sample))
        loss = (w * per_sample).mean()
        return LossOutput(loss=loss, per_sample=per_sample,
                          diagnostics={"flow_mse": float(per_sample.detach()[usable.to(device)].mean()) if bool(usable.any()) else 0.0,
                                       "weight_mean": float(w.mean()), "real_targets_skipped": float((~usable).sum())})

    def image_token_logprobs(self, prompts: Sequence[str], traces: Sequence[Any]) -> torch.Tensor:
        raise CapabilityError("blip3o generates by flow matching (generation_kind='flow'); it has no image tokens")

    def components(self) -> dict[str, nn.Module]:
        m = self.model
        parts = {"vision_encoder": m.vlm.model.visual, "language_model": m.vlm.model.language_model,
                 "lm_head": m.vlm.lm_head, "dit": m.dit}
        if "gen_tower" in self.net:
            parts["gen_tower"] = self.net["gen_tower"]
        return parts


def _dit_fields(cfg: DiTConfig) -> dict[str, Any]:
    import attrs

    return attrs.asdict(cfg)


def _has_tower(folder: Path) -> bool:
    """Whether a checkpoint folder carries the generation vision tower (in its shards or a subfolder)."""
    if (folder / "gen_vision_tower").is_dir():
        return True
    return any(k.startswith(checkpoint_prefix) for k in ckpt.read_checkpoint_header(folder))


def _load_tower(tower: EvaVisionTower, folder: Path, ignored: Sequence[str]) -> None:
    """The tower's weights from the shards (keys ``model.gen_vision_tower.*``, which the main loader
    skipped) or from ``gen_vision_tower/`` (``model.safetensors`` or ``pytorch_model.bin``); strict."""
    if ignored:
        from safetensors import safe_open

        entries = ckpt.read_checkpoint_header(folder)
        state = {}
        for name in sorted({entries[k].file for k in ignored}):
            with safe_open(str(folder / name), framework="pt") as f:
                state.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(checkpoint_prefix)})
        load_tower_weights(tower, state, checkpoint_prefix)
        return
    sub = folder / "gen_vision_tower"
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (sub / name).is_file():
            load_tower_weights(tower, load_tower_file(sub / name), "")
            return
    raise DataError(f"{sub} has neither model.safetensors nor pytorch_model.bin")
