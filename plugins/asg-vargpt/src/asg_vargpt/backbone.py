"""`vargpt`: VARGPT-v1.1 as an asg backbone (Qwen2-VL + Infinity next-scale bitwise head + BSQ-VAE).

Understanding is transformers' own ``Qwen2VLForConditionalGeneration``. An image is generated scale by
scale (10 scales to 512 px for the release): each scale's tokens go through the language model (on top
of the prompt's KV cache) and the Infinity head, which predicts 32 bits per token; the bits of all
scales are summed as BSQ codes and decoded by the BSQ-VAE. Sampling follows the release: CFG 3 on the
bit logits, tau 0.5, top-k 900, top-p 0.97.

``generation_kind = "autoregressive"``: the generator update is a group-relative policy update on the
**exact per-sample** log-probability of an image's bits (the sum over tokens and bits of the bit
log-softmax at the sampled labels), teacher-forced under the active role with the conditional logits
(tau 1, no CFG) — the policy's own distribution. The reference approximated it with the batch loss.
Generation returns the image and its token trace; nothing is written to disk and no state survives
between calls (every call prefills a fresh cache).

Roles are peft LoRA (r 16, alpha 32, dropout 0.05): the proposer's and solver's on the language model's
projections (never the vision tower); the generator's on those, on the Infinity blocks' projections
that run as modules (``sa.proj``, ``ca.mat_q``, ``ca.proj``, ``ffn.fc1/fc2``) and on both GenPatchMerger
projectors. The reference trained the whole Infinity-2B in full precision for the generator; adapters
keep the three roles' trainable state small and disjoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from asg.backbones.base import AdapterBackbone, check_image_prompts, torch_dtype
from asg.backbones.qwen_vl import EMBED_IMAGE_PROBE, QwenVLUnderstanding
from asg.backbones.roles import RoleAdapters, lora_role_adapters
from asg.errors import CapabilityError, ConfigError, DataError
from asg.protocol import Preset
from asg.types import ROLES, GeneratedImage, LossOutput, TokenTrace
from asg_vargpt import checkpoint as ckpt
from asg_vargpt import vlm as V
from asg_vargpt.bsq_vae import BSQVAE, BSQVAEConfig, to_images
from asg_vargpt.generate import generate_bits, prefill, scale_schedule

_HEAD = (r".*vargpt\.head\.(vargpt_gen\.block_chunks\.\d+\.module\.\d+\.(sa\.proj|ca\.mat_q|ca\.proj|ffn\.fc1|ffn\.fc2)"
         r"|image_gen_projector(_out)?\.mlp\.(0|2))")


class VargptBackbone(QwenVLUnderstanding, AdapterBackbone):
    """VARGPT-v1.1 (see the module docstring)."""

    name = "vargpt"
    generation_kind = "autoregressive"
    supports_images_in_prompt = True
    roles: tuple[str, ...] = ROLES
    presets: ClassVar[dict[str, Preset]] = {
        "full": Preset("full", "VARGPT-v1.1: Qwen2-VL-7B + Infinity-2B + BSQ-VAE (10.9 B); weights from --model <checkpoint folder>"),
        "tiny": Preset("tiny", "a tiny random VARGPT (LLM hidden 64, Infinity width 128, 3 scales to 64 px) for tests"),
    }
    default_preset: ClassVar[str] = "full"
    prompt_templates: Mapping[str, str] = {"generate": V.GENERATION_INSTRUCTION, "embed_image": EMBED_IMAGE_PROBE}
    vision_inputs = V.VISION_INPUTS  # Qwen2-VL's: score refuses a prompt input it would not pass on

    def __init__(self, config: Any, extras: V.VargptExtras, vae_config: BSQVAEConfig, tokenizer: Any, *,
                 schedule: Sequence[tuple[int, int, int]], sampling: Mapping[str, float], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, adapters: bool = True, seed: int = 0) -> None:
        self.config, self.extras = config, extras
        self.tokenizer = tokenizer
        self._processor: Any = None  # built on first use: an architecture-only build has no real tokenizer
        self.schedule = [tuple(s) for s in schedule]
        self.sampling = dict(sampling)
        self.image_size = (self.schedule[-1][1] * vae_config.patch_size, self.schedule[-1][2] * vae_config.patch_size)
        self.embedding_dim = extras.hidden_size
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self._suppress = sorted(set(extras.image_gen_token_ids.values()) | {
            tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")})
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = V.VargptModel(config, extras, vae_local=BSQVAE(vae_config))
            self.net = nn.ModuleDict({"vargpt": model}).to(dtype)
        self.net.eval()
        self.adapters: RoleAdapters | None = None
        if adapters:
            self._add_adapters(seed)

    def _add_adapters(self, seed: int) -> None:
        self.adapters = lora_role_adapters(self.net, V.LORA_TARGETS, f"({V.LORA_TARGETS})|({_HEAD})", seed=seed)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def load(cls, *, preset: str | None = None, model: str | Path | None = None, device: str = "cpu",
             dtype: str | None = None, weights: bool = True, adapters: bool = True, seed: int = 0) -> VargptBackbone:
        """``preset="full"`` with ``model=<folder>`` loads the release checkpoint (strict keys; config.json
        names the image-generation tokens); without ``model``, ``weights=False`` builds the architecture
        only. ``preset="tiny"`` builds a random tiny VARGPT, or loads one saved by :meth:`save_pretrained`."""
        preset = preset or cls.default_preset
        if preset not in cls.presets:
            raise ConfigError(f"unknown vargpt preset {preset!r}; valid presets: {', '.join(cls.presets)}")
        folder = Path(model) if model is not None else None
        if folder is not None and not folder.is_dir():
            raise DataError(f"VARGPT checkpoint folder {folder} does not exist")
        extra = json.loads((folder / "asg_vargpt.json").read_text()) if folder and (folder / "asg_vargpt.json").is_file() else {}
        tiny = preset == "tiny" or extra.get("preset") == "tiny"
        if folder is not None:
            if not (folder / "config.json").is_file():
                raise DataError(f"VARGPT checkpoint folder {folder} lacks config.json")
            from asg_vargpt.infinity import infinity_tiny

            config, extras = V.vargpt_config(json.loads((folder / "config.json").read_text()),
                                             head=infinity_tiny() if tiny else None, allow_unknown=True)
            tokenizer = V.load_tokenizer(folder, extras)
        elif preset == "full":
            if weights:
                raise ConfigError("the full VARGPT needs its checkpoint: pass model=<folder with config.json, the "
                                  "model*.safetensors shards and the tokenizer> (or weights=False)")
            config, extras = V.full_config()
            tokenizer = V.tiny_tokenizer()  # architecture only: never used
        else:
            config, extras = V.tiny_config()
            tokenizer = V.tiny_tokenizer()
        if tiny:  # the first three scales of the release schedule: 1x1, 2x2, 4x4 tokens -> 64 px
            vae_config, schedule = BSQVAEConfig.tiny(), scale_schedule("0.25M")[:3]
        else:
            vae_config, schedule = BSQVAEConfig.full(), scale_schedule("0.25M")
        # The release's hard-coded sampler settings (VG modeling_vargpt_qwen2_vl.py, inference_image_gen).
        sampling = {"cfg": 3.0, "tau": 0.5, "top_k": 900, "top_p": 0.97}
        if str(device) == "meta" and weights and folder is not None:
            raise ConfigError("weights cannot be loaded onto the meta device; pass weights=False")
        bb = cls(config, extras, vae_config, tokenizer, schedule=schedule, sampling=sampling, device=device,
                 dtype=torch_dtype(dtype), adapters=False, seed=seed)
        if folder is not None and weights:
            ckpt.load_checkpoint(folder, bb.net["vargpt"])
        if adapters:
            bb._add_adapters(seed)
        return bb

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the release layout (config.json, model.safetensors, tokenizer); tiny preset only."""
        if self.adapters is not None:
            raise CapabilityError("save_pretrained writes base weights; build the backbone with adapters=False")
        if self.extras.hidden_size >= 1024:
            raise CapabilityError("save_pretrained is implemented for the tiny preset (the release folder is read-only input)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(V.tiny_config_json(), indent=1) + "\n")
        (directory / "asg_vargpt.json").write_text(json.dumps({"preset": "tiny"}) + "\n")
        self.tokenizer.save_pretrained(str(directory))
        ckpt.save_checkpoint(self.net["vargpt"], directory)
        return directory

    def checkpoint_manifest(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every tensor the loader expects, named as in the checkpoint shards (``asg inspect --manifest``)."""
        from asg.inspect import manifest_of  # adapter tensors excluded

        return {"model*.safetensors": ckpt.to_checkpoint_names(manifest_of(self.net["vargpt"]))}

    @property
    def processor(self) -> Any:
        if self._processor is None:
            self._processor = V.make_processor(self.tokenizer, self.config, self.extras)
        return self._processor

    @property
    def model(self) -> V.VargptModel:
        return self.net["vargpt"]

    @property
    def vlm(self) -> nn.Module:
        """The transformers Qwen-VL model the understanding methods (:class:`QwenVLUnderstanding`) run."""
        return self.model.vlm

    # -- images ---------------------------------------------------------------------------------------
    def _prompt_state(self, prompt: str) -> Any:
        inputs = V.generation_prompt_inputs(self.processor, [prompt], extras=self.extras)
        inputs = {k: v.to(self._device()) for k, v in inputs.items()}
        return prefill(self.model.vlm, **inputs)

    def generate_images(self, prompts: Sequence[str], *, seed: int | None = None, num_steps: int | None = None,
                        guidance: float | None = None) -> list[GeneratedImage]:
        """One image per prompt, each from a fresh prompt cache and a generator seeded ``seed + i``.
        ``guidance`` is the CFG scale on the bit logits (release 3.0); ``num_steps`` stops after that many
        scales (the codes decoded are then those of the scales run)."""
        if not prompts:
            return []
        check_image_prompts(prompts)
        cfg = self.sampling["cfg"] if guidance is None else float(guidance)
        if cfg < 0:
            raise ValueError(f"guidance must be >= 0, got {cfg}")
        n = len(self.schedule) if num_steps is None else int(num_steps)
        if not 1 <= n <= len(self.schedule):
            raise ValueError(f"num_steps (scales) must be in 1..{len(self.schedule)}, got {n}")
        base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        out = []
        with torch.no_grad():
            for i, p in enumerate(prompts):
                state = self._prompt_state(self.prompt_templates["generate"].format(prompt=p))
                g = generate_bits(self.model.vlm, self.model.head, state, schedule=self.schedule, num_scales=n, cfg=cfg,
                                  tau=self.sampling["tau"], top_k=int(self.sampling["top_k"]), top_p=self.sampling["top_p"],
                                  generator=torch.Generator().manual_seed(base + i))
                codes = g.summed_codes if n == len(self.schedule) else _partial_codes(g)
                image = to_images(self.model.vae_local.decode(codes.to(self._param_dtype())))[0]
                bits = torch.cat([b.reshape(-1, b.shape[-1]) for b in g.bits]).cpu()  # (N tokens, 32)
                # per-token log-prob under the conditional logits (the policy; tau 1, no CFG)
                per_token = torch.cat([_token_log_prob(raw[:1], b) for raw, b in zip(g.raw_logits, g.bits)]).float().cpu()
                out.append(GeneratedImage(image=image, prompt=p, seed=base + i,
                                          trace=TokenTrace(token_ids=bits, logprobs=per_token)))
        return out

    def image_token_logprobs(self, prompts: Sequence[str], traces: Sequence[TokenTrace]) -> torch.Tensor:
        """Exact log-probability of each trace's bits under the active role, (B,), differentiable: the
        image's scales are teacher-forced through the LLM and the head from a fresh prompt cache."""
        if len(prompts) != len(traces):
            raise ValueError(f"image_token_logprobs got {len(prompts)} prompts but {len(traces)} traces")
        check_image_prompts(prompts)
        sizes = [h * w for _, h, w in self.schedule]
        out = []
        for p, trace in zip(prompts, traces):
            bits = trace.token_ids
            if bits.ndim != 2 or bits.shape[0] > sum(sizes):
                raise ValueError(f"a trace's token_ids must be (N <= {sum(sizes)}, bits), got {tuple(bits.shape)}")
            n = next(k for k in range(1, len(sizes) + 1) if sum(sizes[:k]) >= bits.shape[0])
            if sum(sizes[:n]) != bits.shape[0]:
                raise ValueError(f"{bits.shape[0]} tokens do not fill whole scales of {self.schedule}")
            forced = list(bits.to(self._device()).split(sizes[:n]))
            state = self._prompt_state(self.prompt_templates["generate"].format(prompt=p))
            g = generate_bits(self.model.vlm, self.model.head, state, schedule=self.schedule, num_scales=n,
                              cfg=1.0, tau=1.0, forced_bits=forced)
            out.append(g.log_prob[0])
        return torch.stack(out)

    def generator_loss(self, prompts: Sequence[str], targets: Sequence[Image.Image | GeneratedImage],
                       weights: torch.Tensor | None = None, *, seed: int | None = None) -> LossOutput:
        raise CapabilityError("vargpt is autoregressive (generation_kind='autoregressive'): its generator trains on "
                              "image_token_logprobs, not on a flow-matching loss")

    def components(self) -> dict[str, nn.Module]:
        m = self.model
        return {"vision_encoder": m.vlm.model.visual, "language_model": m.vlm.model.language_model,
                "lm_head": m.vlm.lm_head, "image_head": m.head, "bsq_vae": m.vae_local}


def _token_log_prob(raw: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-token log-prob of ``bits`` [1, 1, h, w, d] under raw bit logits [1, h*w, 2d] -> (h*w,): the terms
    that :func:`asg_vargpt.generate.bit_log_prob` sums, kept per token for the trace."""
    d = bits.shape[-1]
    logp = torch.log_softmax(raw[0].float().view(-1, d, 2), dim=-1)  # (h*w, d, 2): (bit 0, bit 1) pairs
    return logp.gather(-1, bits.reshape(-1, d).long().unsqueeze(-1)).squeeze(-1).sum(-1)


def _partial_codes(g: Any) -> torch.Tensor:
    """Summed codes of the scales that ran, at the last run scale's size (for ``num_steps`` < all scales)."""
    from torch.nn import functional as F

    from asg_vargpt.generate import bits_to_codes

    last = g.bits[-1].shape[1:4]  # (1, h, w)
    total = 0
    for b in g.bits:
        total = total + F.interpolate(bits_to_codes(b), size=tuple(last), mode="trilinear")
    return total
