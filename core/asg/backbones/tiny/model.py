"""`tiny`: the embedded default backbone — a genuine unified model small enough for a laptop CPU.

Understanding is a LLaVA-style transformers model (HF ``generate``, chat prompting, a real BPE
tokenizer); generation is rectified flow in the latent space of a small diffusers autoencoder, through
a PixArt head conditioned on the LM's states of the prompt and latent queries; roles are peft LoRA
adapters on the LM (the generator's also on the head). The autoencoder is frozen after pretraining.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from asg.backbones.base import AdapterBackbone, check_image_prompts, sample_weights, torch_dtype
from asg.backbones.hf import generate_with_stats, mean_pool, score_completions, to_completions
from asg.backbones.roles import RoleAdapters
from asg.backbones.tiny import templates as T
from asg.backbones.tiny.config import TinyConfig
from asg.backbones.tiny.modules import FlowHead, build_vae, build_vlm
from asg.backbones.tiny.tokenizer import EOS, IMAGE, PAD, chat, load_tokenizer
from asg.errors import CapabilityError, ConfigError, DataError
from asg.protocol import Preset
from asg.shapes.qa import one_phrase
from asg.updates.guards import check_finite
from asg.types import (
    ROLES,
    Completion,
    FlowTrace,
    GeneratedImage,
    LossOutput,
    Prompt,
    SamplingParams,
    ScoreOutput,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
_LM_TARGETS = r".*vlm\.model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_HEAD_TARGETS = r".*gen\.transformer\.transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)"


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB pixels in [-1, 1], (3, size, size)."""
    img = image.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy())  # (S, S, 3) in [0, 255]
    return arr.permute(2, 0, 1) / 127.5 - 1.0


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """(3, S, S) in [-1, 1] -> RGB image."""
    arr = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


def _check_model_dir(directory: Path, *, shipped: bool) -> None:
    """Fail early, naming what is missing and how to get it, instead of deep inside a loader."""
    needed = ("config.json", "tokenizer.json", "model.safetensors")
    if not directory.is_dir():
        raise DataError(f"tiny model directory {directory} does not exist")
    missing = [name for name in needed if not (directory / name).is_file()]
    if missing:
        how = ("the shipped weights are missing from this install; reinstall asg-core, or re-create them "
               "with the commands in docs/tiny.md (`asg tiny pretrain`, then `asg tiny export`)" if shipped else
               "point --model at a directory written by `asg tiny pretrain` or `save_pretrained`")
        raise DataError(f"tiny model directory {directory} lacks {', '.join(missing)}: {how}")


class TinyBackbone(AdapterBackbone):
    """The embedded default backbone (see module docstring)."""

    name = "tiny"
    generation_kind = "flow"
    supports_images_in_prompt = True
    roles: tuple[str, ...] = ROLES
    presets: ClassVar[dict[str, Preset]] = {
        "base": Preset("base", "the shipped weights, pretrained on labeled ShapesWorld by `asg tiny pretrain`", has_weights=True),
        "init": Preset("init", "the shipped architecture, randomly initialised"),
    }
    default_preset: ClassVar[str] = "base"
    tied_keys = ("vlm.lm_head.weight",)  # tied to the input embeddings; not stored

    def __init__(
        self,
        config: TinyConfig,
        tokenizer: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        state: Mapping[str, torch.Tensor] | None = None,
        adapters: bool = True,
        seed: int = 0,
    ) -> None:
        if len(tokenizer) != config.vocab_size:
            raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but TinyConfig.vocab_size is {config.vocab_size}")
        self.config = config
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.image_size = (config.image_size, config.image_size)
        self.embedding_dim = config.text_hidden
        self.prompt_templates = T.TEMPLATES
        self.pad_id = tokenizer.convert_tokens_to_ids(PAD)
        self.eos_id = tokenizer.convert_tokens_to_ids(EOS)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
        with torch.random.fork_rng(devices=[]), torch.device(self.device):
            torch.manual_seed(seed)
            vlm = build_vlm(config, image_token_id=self.image_token_id, pad_token_id=self.pad_id, eos_token_id=self.eos_id)
            head = FlowHead(config)
            vae = build_vae(config)
            self.net = nn.ModuleDict({"vlm": vlm, "gen": head, "vae": vae}).to(dtype)
        if state is not None:
            missing, unexpected = self.net.load_state_dict(dict(state), strict=False)
            missing = [k for k in missing if k not in self.tied_keys]
            if missing or unexpected:
                raise ConfigError(f"tiny weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.net.eval()
        self.net["vae"].requires_grad_(False)  # trained only by the first phase of `asg tiny pretrain`
        self.adapters: RoleAdapters | None = None
        if adapters:
            self.net.requires_grad_(False)  # the base model is frozen; only role adapters train
            from peft import LoraConfig

            lm = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=_LM_TARGETS)
            gen_targets = f"({_LM_TARGETS})|({_HEAD_TARGETS})" if config.head_lora else _LM_TARGETS
            gen = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, target_modules=gen_targets)
            with torch.random.fork_rng(devices=[]), torch.device(self.device):
                torch.manual_seed(seed + 1)  # adapter initialisation is part of what ``seed`` fixes
                self.adapters = RoleAdapters(self.net, {"proposer": lm, "solver": lm, "generator": gen})
            self.net.eval()
        self._image_processor = self._make_image_processor()

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        *,
        preset: str | None = None,
        model: str | Path | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        weights: bool = True,
        adapters: bool = True,
        seed: int = 0,
    ) -> TinyBackbone:
        """Build `tiny` from a preset or a local directory (config.json, tokenizer.json, model.safetensors)."""
        preset = preset or cls.default_preset
        if preset not in cls.presets:
            raise ConfigError(f"unknown tiny preset {preset!r}; valid presets: {', '.join(cls.presets)}")
        directory = Path(model) if model is not None else WEIGHTS_DIR
        _check_model_dir(directory, shipped=model is None)
        tokenizer = load_tokenizer(directory)
        config = TinyConfig.from_dict(json.loads((directory / "config.json").read_text()))
        state = None
        if weights and (model is not None or preset == "base"):
            if str(device) == "meta":
                raise ConfigError("weights cannot be loaded onto the meta device; pass weights=False")
            state = load_base_weights(directory)
        return cls(config, tokenizer, device=device, dtype=torch_dtype(dtype), state=state, adapters=adapters, seed=seed)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, tokenizer.json and model.safetensors (base weights, no adapters)."""
        from asg.backbones.checkpoint_io import save_safetensors
        from asg.backbones.tiny.tokenizer import save_tokenizer

        if self.adapters is not None:
            raise CapabilityError("save_pretrained writes base weights; build the backbone with adapters=False")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1) + "\n")
        save_tokenizer(self.tokenizer, directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items() if k not in self.tied_keys}
        save_safetensors(state, directory / "model.safetensors", {"format": "pt", "backbone": "tiny"}, atomic=True)
        return directory

    def _make_image_processor(self) -> Any:
        from transformers import LlavaProcessor
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        size = self.config.image_size
        ip = SiglipImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
        return LlavaProcessor(
            image_processor=ip, tokenizer=self.tokenizer, patch_size=self.config.patch_size,
            vision_feature_select_strategy="full", image_token=IMAGE,
        )

    # -- inputs ------------------------------------------------------------------------------------
    def _encode(self, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
        """Left-padded chat inputs for a batch of prompts (images expanded to their tokens)."""
        for i, p in enumerate(prompts):
            if not isinstance(p, Prompt):
                raise TypeError(f"prompts[{i}] must be an asg.types.Prompt, got {type(p).__name__}")
        read = one_phrase if self.config.one_phrase_position else str
        texts = [chat(read(p.text), image=p.has_image, system=p.system) for p in prompts]
        images = [p.image.convert("RGB") for p in prompts if p.image is not None]
        if images:
            batch = self._image_processor(text=texts, images=images, return_tensors="pt", padding=True)
        else:
            batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(self._param_dtype())
        return out

    # -- text --------------------------------------------------------------------------------------
    def generate_text(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams | Sequence[SamplingParams],
        *,
        seed: int | None = None,
        return_stats: bool = True,
    ) -> list[Completion]:
        if not prompts:
            return []
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        inputs = self._encode(prompts)
        with torch.no_grad():
            rows = generate_with_stats(
                self.net["vlm"], inputs, params, eos_token_ids=[self.eos_id], pad_token_id=self.pad_id,
                seed=seed, return_stats=return_stats, suppress_token_ids=[self.image_token_id, self.pad_id],
            )
        return to_completions(rows, params, self.tokenizer)

    def completion_ids(self, completion: str | Sequence[int], *, eos: bool = True) -> list[int]:
        ids = self.tokenizer.encode(completion, add_special_tokens=False) if isinstance(completion, str) else list(completion)
        return ids + [self.eos_id] if eos else ids

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str | Sequence[int]],
        *,
        grad: bool = False,
        return_logits: bool = False,
        append_eos: bool = True,
    ) -> ScoreOutput:
        """Teacher-forced statistics of each completion (+ EOS when ``append_eos``), right-padded (B, T)."""
        if len(prompts) != len(completions):
            raise ValueError(f"score got {len(prompts)} prompts but {len(completions)} completions")
        comp = [self.completion_ids(c, eos=append_eos) for c in completions]
        enc = self._encode(prompts)
        rows = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
        return score_completions(
            self.net["vlm"], rows, comp, pad_token_id=self.pad_id, grad=grad, return_logits=return_logits,
            pixel_values=enc.get("pixel_values"),
        )

    # -- images ------------------------------------------------------------------------------------
    def _condition(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer LM states of each prompt followed by the latent queries, (B, L+Q, H), and their
        attention mask (B, L+Q): the head cross-attends to all of them."""
        check_image_prompts(prompts)
        texts = [chat(T.GENERATE.format(prompt=p), image=False) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        lm = self.net["vlm"].model.language_model
        emb = lm.get_input_embeddings()(ids)  # (B, L, H)
        queries = self.net["gen"].queries
        B, Q = ids.shape[0], queries.shape[0]
        x = torch.cat([emb, queries[None].expand(B, -1, -1).to(emb.dtype)], dim=1)  # (B, L+Q, H)
        att = torch.cat([mask, torch.ones(B, Q, dtype=mask.dtype, device=self.device)], dim=1)
        pos = (att.cumsum(-1) - 1).clamp_min(0)
        hidden = lm(inputs_embeds=x, attention_mask=att, position_ids=pos).last_hidden_state
        return hidden, att

    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor], guidance: float) -> torch.Tensor:
        head = self.net["gen"]
        states, mask = cond
        if guidance == 1.0:
            return head(x, t, states, mask)
        both = head(torch.cat([x, x]), torch.cat([t, t]), torch.cat([states, torch.zeros_like(states)]), torch.cat([mask, mask]))
        v_c, v_u = both.chunk(2)
        return v_u + guidance * (v_c - v_u)

    # -- autoencoder ---------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Normalised latents (B, C, s, s) of images (the posterior mean; no gradient)."""
        S = self.config.image_size
        x = torch.stack([image_to_tensor(im, S) for im in images]).to(self.device, self._param_dtype())
        with torch.no_grad():
            z = self.net["vae"].encode(x).latent_dist.mode()
        return (z - self.config.latent_shift) * self.config.latent_scale

    def decode_latents(self, z: torch.Tensor) -> list[Image.Image]:
        """Images of normalised latents (B, C, s, s)."""
        with torch.no_grad():
            x = self.net["vae"].decode(z.to(self.device, self._param_dtype()) / self.config.latent_scale + self.config.latent_shift).sample
        return [tensor_to_image(xi) for xi in x]

    def generate_images(
        self,
        prompts: Sequence[str],
        *,
        seed: int | None = None,
        num_steps: int | None = None,
        guidance: float | None = None,
    ) -> list[GeneratedImage]:
        """Euler integration of the rectified flow from noise (t=1) to latents (t=0), with CFG, decoded.

        Image i starts from noise seeded by ``seed + i``, so it does not depend on the batch around it.
        """
        if not prompts:
            return []
        steps = num_steps or self.config.sample_steps
        g = self.config.guidance if guidance is None else float(guidance)
        if steps < 1 or g < 0:
            raise ValueError(f"num_steps must be >= 1 and guidance >= 0, got {steps} and {g}")
        base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        C, s = self.config.latent_channels, self.config.latent_size
        noise = torch.stack([
            torch.randn(C, s, s, generator=torch.Generator().manual_seed(base + i)) for i in range(len(prompts))
        ]).to(self.device, self._param_dtype())  # (B, C, s, s)
        with torch.no_grad():
            cond = self._condition(prompts)
            x = noise
            ts = torch.linspace(1.0, 0.0, steps + 1, device=self.device)
            for i in range(steps):
                t = ts[i].expand(len(prompts)).to(self._param_dtype())
                v = self._velocity(x, t, cond, g)
                x = x + (ts[i + 1] - ts[i]) * v
        check_finite(x, "generated latents")  # a NaN image would train the generator on garbage
        images = self.decode_latents(x)
        return [
            GeneratedImage(image=images[i], prompt=p, seed=base + i,
                           trace=FlowTrace(noise=noise[i].float().cpu(), latents=x[i].float().cpu(), num_steps=steps, guidance=g))
            for i, p in enumerate(prompts)
        ]

    def generator_loss(
        self,
        prompts: Sequence[str],
        targets: Sequence[Image.Image | GeneratedImage],
        weights: torch.Tensor | None = None,
        *,
        seed: int | None = None,
    ) -> LossOutput:
        """Weighted rectified-flow loss on latents: x_t = (1-t)·x0 + t·ε, target velocity ε − x0,
        t ~ logit-normal; x0 = the target image's latents (real images are encoded, generated ones
        bring theirs in the trace).

        Conditioning is dropped (zeroed) for ``cond_dropout`` of the samples, as in pretraining, so
        classifier-free guidance stays meaningful.
        """
        if len(prompts) != len(targets):
            raise ValueError(f"generator_loss got {len(prompts)} prompts but {len(targets)} targets")
        B = len(prompts)
        real = [i for i, t in enumerate(targets) if not isinstance(t, GeneratedImage)]
        encoded = dict(zip(real, self.encode_images([targets[i] for i in real]))) if real else {}
        x0 = torch.stack([
            targets[i].trace.latents.to(self.device) if i not in encoded else encoded[i] for i in range(B)
        ]).to(self.device, self._param_dtype())  # (B, C, s, s)
        w = sample_weights(weights, B, self.device)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed))
        t = torch.sigmoid(torch.randn(B, generator=gen)).to(self.device, self._param_dtype())  # (B,)
        eps = torch.randn(x0.shape, generator=gen).to(self.device, self._param_dtype())
        keep = (torch.rand(B, generator=gen) >= self.config.cond_dropout).to(self.device)
        states, mask = self._condition(prompts)
        states = states * keep[:, None, None].to(states.dtype)  # dropped samples see zeros (the null condition)
        tt = t[:, None, None, None]
        x_t = (1 - tt) * x0 + tt * eps
        pred = self.net["gen"](x_t, t, states, mask)
        per_sample = ((pred.float() - (eps - x0).float()) ** 2).mean(dim=(1, 2, 3))  # (B,)
        loss = (w * per_sample).mean()
        return LossOutput(
            loss=loss, per_sample=per_sample,
            diagnostics={"flow_mse": float(per_sample.detach().mean()), "t_mean": float(t.float().mean()),
                         "weight_mean": float(w.mean()), "cond_kept": float(keep.float().mean())},
        )

    def image_token_logprobs(self, prompts: Sequence[str], traces: Sequence[Any]) -> torch.Tensor:
        raise CapabilityError("tiny generates by rectified flow (generation_kind='flow'); it has no image tokens")

    # -- embeddings --------------------------------------------------------------------------------
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, self.embedding_dim)
        enc = self.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        with torch.no_grad(), self.use_role(None):
            lm = self.net["vlm"].model.language_model
            hidden = lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).last_hidden_state
        return mean_pool(hidden, mask)

    def embed_image(self, images: Sequence[Image.Image], texts: Sequence[str] | None = None) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.embedding_dim)
        probes = list(texts) if texts is not None else [T.EMBED_IMAGE_PROBE] * len(images)
        if len(probes) != len(images):
            raise ValueError(f"embed_image got {len(images)} images but {len(probes)} texts")
        enc = self._encode([Prompt(text=t, image=im) for t, im in zip(probes, images)])
        mask = enc["attention_mask"]
        with torch.no_grad(), self.use_role(None):
            out = self.net["vlm"].model(**enc, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
        return mean_pool(out.last_hidden_state, mask)

    # -- parts ------------------------------------------------------------------------------------
    def components(self) -> dict[str, nn.Module]:
        vlm = self.net["vlm"]
        return {
            "vision_tower": vlm.model.vision_tower,
            "projector": vlm.model.multi_modal_projector,
            "language_model": vlm.model.language_model,
            "generation_head": self.net["gen"],
            "autoencoder": self.net["vae"],
        }


def load_base_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = directory / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no model.safetensors in {directory} (train one with `asg tiny pretrain --out {directory}`)")
    return load_file(str(path))
