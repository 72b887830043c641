"""`bagel`: BAGEL-7B-MoT as an asg backbone (understanding, text sampling, flow generation, roles).

Prompts have no chat roles: a text is ``<|im_start|> text <|im_end|>``, an image to read is its ViT
block, and an answer is decoded after a fresh ``<|im_start|>`` until ``<|im_end|>``. Text decoding is
this plugin's own loop (upstream's returns ids only and stops on the first sequence): per-row
temperature, top-k and top-p, a key/value cache per sample, stopping per sequence, and statistics of
the raw logits at every step.

Images are generated inside the language model by rectified flow (BAGEL's sampler: shifted time grid,
Euler steps, text classifier-free guidance inside an interval with norm rescaling) and decoded by the
FLUX autoencoder. The generator update is reward-weighted flow matching through the generation expert
(upstream never trains BAGEL's generator in the self-evolving recipe; asg does, as the paper describes).

Roles are peft LoRA adapters (r 16, alpha 32, dropout 0.05) on the language model: the proposer's and
the solver's on the understanding expert's projections, the generator's on both experts' projections
(it must steer how the prompt is read *and* the latent path). ``adapters=False`` builds the plain model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from asg.backbones.base import AdapterBackbone, check_image_prompts, sample_weights, torch_dtype
from asg.backbones.hf import PerRowWarper, mean_pool
from asg.backbones.roles import RoleAdapters, lora_role_adapters
from asg.errors import CapabilityError, ConfigError, DataError
from asg.kernels import linear_token_stats, token_stats
from asg.protocol import Preset
from asg.types import ROLES, Completion, FlowTrace, GeneratedImage, LossOutput, Prompt, SamplingParams, ScoreOutput, TokenStats
from asg.updates.guards import check_finite
from asg_bagel import autoencoder as ae_mod
from asg_bagel import configs
from asg_bagel.language import KVCache
from asg_bagel.model import Bagel, BagelConfig, cfg_combine, flow_timesteps
from asg_bagel.vision import patchify

_LAYER = r".*bagel\.language_model\.model\.layers\.\d+\."
_UND_TARGETS = _LAYER + r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_GEN_TARGETS = _LAYER + r"(self_attn\.(q|k|v|o)_proj(_moe_gen)?|mlp(_moe_gen)?\.(gate|up|down)_proj)"
EMBED_IMAGE_PROBE = "Describe the image."
GENERATE_PREFIX = ""  # BAGEL's text-to-image prompt is the description itself


def vit_resize(image: Image.Image, sizes: configs.ImageSizes) -> Image.Image:
    """BAGEL's understanding resize: longest side at most ``vit_max``, shortest at least ``vit_min``
    (the cap wins), both rounded to multiples of the patch size, aspect ratio kept otherwise."""
    w, h = image.size
    scale = min(1.0, sizes.vit_max / max(w, h))
    if min(w, h) * scale < sizes.vit_min:
        scale = min(sizes.vit_min / min(w, h), sizes.vit_max / max(w, h))
    s = sizes.vit_stride
    nw, nh = (max(s, round(v * scale / s) * s) for v in (w, h))
    return image if (nw, nh) == (w, h) else image.resize((nw, nh), Image.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB pixels in [-1, 1], (3, H, W)."""
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy())
    return arr.permute(2, 0, 1) / 127.5 - 1.0


def to_image(x: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB image."""
    arr = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB")


class _Packed:
    """A batch of token sequences being assembled: embeddings, rope positions, blocks, expert routing."""

    def __init__(self) -> None:
        self.samples: list[list[tuple[torch.Tensor, torch.Tensor, bool, bool]]] = []  # (emb, pos, full, gen) per block

    def tensors(self) -> tuple[torch.Tensor, list[int], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        embs, pos, blocks, full, gen, lens = [], [], [], [], [], []
        for sample in self.samples:
            n = 0
            for b, (e, p, f, g) in enumerate(sample):
                embs.append(e)
                pos.append(p)
                blocks.append(torch.full((e.shape[0],), b, dtype=torch.long))
                full.append(torch.full((e.shape[0],), f, dtype=torch.bool))
                gen.append(torch.full((e.shape[0],), g, dtype=torch.bool) if isinstance(g, bool) else g)
                n += e.shape[0]
            lens.append(n)
        device = embs[0].device
        return (torch.cat(embs), lens, torch.cat(pos).to(device), torch.cat(blocks).to(device),
                torch.cat(full).to(device), torch.cat(gen).to(device))


class BagelBackbone(AdapterBackbone):
    """BAGEL-7B-MoT (see the module docstring)."""

    name = "bagel"
    generation_kind = "flow"
    supports_images_in_prompt = True
    roles: tuple[str, ...] = ROLES
    presets: ClassVar[dict[str, Preset]] = {
        "full": Preset("full", "BAGEL-7B-MoT (14.6 B parameters, 7 B active); weights from --model <checkpoint folder>"),
        "tiny": Preset("tiny", "a tiny random BAGEL (hidden 64, 2 layers) for tests; character tokenizer"),
    }
    default_preset: ClassVar[str] = "full"
    prompt_templates: Mapping[str, str] = {"generate": "{prompt}", "embed_image": EMBED_IMAGE_PROBE}
    cond_dropout = 0.1  # share of generator-loss samples trained without their prompt (keeps CFG meaningful)

    def __init__(self, config: BagelConfig, tokenizer: Any, *, sizes: configs.ImageSizes, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, adapters: bool = True, seed: int = 0) -> None:
        if len(tokenizer) > config.llm.vocab_size:
            raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {config.llm.vocab_size} rows")
        self.config = config
        self.tokenizer = tokenizer
        self.sizes = sizes
        self.tokens = config.tokens
        side = sizes.generate
        if side % config.latent_downsample or side // config.latent_downsample > config.max_latent_size:
            raise ConfigError(f"generated image side {side} must be a multiple of {config.latent_downsample} and at most "
                              f"{config.latent_downsample * config.max_latent_size}")
        self.image_size = (side, side)
        self.embedding_dim = config.hidden_size
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            bagel = Bagel(config)
            vae = ae_mod.build_autoencoder(config.ae, device=device)
            self.net = nn.ModuleDict({"bagel": bagel, "vae": vae}).to(dtype)
        self.net.eval()
        self.net["vae"].requires_grad_(False)
        self.adapters: RoleAdapters | None = None
        if adapters:
            self._add_adapters(seed)

    def _add_adapters(self, seed: int) -> None:
        self.adapters = lora_role_adapters(self.net, _UND_TARGETS, _GEN_TARGETS, seed=seed)

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def load(cls, *, preset: str | None = None, model: str | Path | None = None, device: str = "cpu",
             dtype: str | None = None, weights: bool = True, adapters: bool = True, seed: int = 0) -> BagelBackbone:
        """``preset="full"`` with ``model=<folder>`` loads the released checkpoint (strict keys); without
        ``model`` it builds the architecture only (``device="meta"``, ``weights=False``, for ``asg inspect``).
        ``preset="tiny"`` builds a random tiny BAGEL, or loads one saved by :meth:`save_pretrained`."""
        from asg_bagel.tokenizer import char_tokenizer, load_tokenizer, special_tokens

        preset = preset or cls.default_preset
        if preset not in cls.presets:
            raise ConfigError(f"unknown bagel preset {preset!r}; valid presets: {', '.join(cls.presets)}")
        if model is not None:
            directory = resolve_checkpoint(model)
            tokenizer = load_tokenizer(directory) if preset == "full" or (directory / "tokenizer.json").is_file() else char_tokenizer()
            config, sizes = configs.config_from_folder(directory, special_tokens(tokenizer))
        elif preset == "full":
            if weights:
                raise ConfigError("the full BAGEL needs its checkpoint: pass model=<folder with ema.safetensors, ae.safetensors, "
                                  "llm_config.json, vit_config.json and the tokenizer> (or weights=False for the architecture only)")
            tokenizer, config, sizes = None, configs.full_config(), configs.FULL_SIZES
        else:
            tokenizer = char_tokenizer(configs.TINY_LLM["vocab_size"])
            config, sizes = configs.tiny_config(), configs.TINY_SIZES
        if tokenizer is None:  # architecture only: a stand-in with the right length is enough
            tokenizer = _NoTokenizer(config.llm.vocab_size)
        if str(device) == "meta" and weights and model is not None:
            raise ConfigError("weights cannot be loaded onto the meta device; pass weights=False")
        bb = cls(config, tokenizer, sizes=sizes, device=device, dtype=torch_dtype(dtype), adapters=False, seed=seed)
        if model is not None and weights:
            bb._load_weights(Path(model))
        if adapters:
            bb._add_adapters(seed)
        return bb

    def _load_weights(self, directory: Path) -> None:
        from safetensors.torch import load_file

        path = configs.weights_file(directory)
        state = load_file(str(path), device=str(self._device()))
        own = self.net["bagel"].state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise DataError(f"{path} does not match this BAGEL: {len(missing)} missing key(s) {missing[:5]}, "
                            f"{len(unexpected)} unexpected key(s) {unexpected[:5]}")
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if bad:
            k = bad[0]
            raise DataError(f"{path}: {len(bad)} tensor(s) have the wrong shape, e.g. {k} is {tuple(state[k].shape)}, "
                            f"expected {tuple(own[k].shape)}")
        dtype = self._param_dtype()
        self.net["bagel"].load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
        vae = ae_mod.load_autoencoder(directory / "ae.safetensors", self.config.ae, dtype=dtype, device=self._device())
        self.net["vae"] = vae
        self.net["vae"].requires_grad_(False)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the checkpoint folder layout of the release (base weights; adapters are not included)."""
        from asg.backbones.checkpoint_io import save_safetensors

        if self.adapters is not None:
            raise CapabilityError("save_pretrained writes base weights; build the backbone with adapters=False")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        configs.config_to_folder(self.config, self.sizes, directory)
        self.tokenizer.save_pretrained(str(directory))
        files = {
            "ema.safetensors": {k: v.detach().contiguous().cpu() for k, v in self.net["bagel"].state_dict().items()},
            "ae.safetensors": {k: v.detach().contiguous().cpu()
                               for k, v in ae_mod.to_checkpoint_names(self.net["vae"].state_dict()).items()},
        }
        for name, state in files.items():
            save_safetensors(state, directory / name, {"format": "pt", "backbone": "bagel"}, atomic=True)
        return directory

    def checkpoint_manifest(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per checkpoint file, every tensor the loader expects, named as in the file (``asg inspect --manifest``)."""
        from asg.inspect import manifest_of

        return {"ema.safetensors": manifest_of(self.net["bagel"]), "ae.safetensors": ae_mod.checkpoint_manifest(self.config.ae)}

    def root_module(self) -> nn.Module:
        return self.net

    @property
    def bagel(self) -> Bagel:
        return self.net["bagel"]

    # -- sequence building ---------------------------------------------------------------------------
    def _text_ids(self, text: str) -> list[int]:
        return [self.tokens.bos, *self.tokenizer.encode(text, add_special_tokens=False), self.tokens.eos]

    def _vit_blocks(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Understanding block embeddings ((n_i + 2), D) of each image, one ViT pass for all."""
        p = self.config.vit.patch_size
        tensors = [to_tensor(vit_resize(im, self.sizes)) for im in images]
        patches = [patchify(t, p) for t in tensors]
        grids = [(t.shape[1] // p, t.shape[2] // p) for t in tensors]
        return self.bagel.vit_block(patches, grids)

    def _context(self, prompts: Sequence[Prompt], packed: _Packed) -> list[int]:
        """Append each prompt's context blocks (system text, image, text) to ``packed``; returns the
        next rope position of each sample."""
        for i, p in enumerate(prompts):
            if not isinstance(p, Prompt):
                raise TypeError(f"prompts[{i}] must be an asg.types.Prompt, got {type(p).__name__}")
        images = [p.image for p in prompts if p.image is not None]
        vit = iter(self._vit_blocks(images)) if images else iter(())
        nexts = []
        for p in prompts:
            blocks, pos = [], 0
            if p.system:
                ids = self._text_ids(p.system)
                blocks.append((self.bagel.embed_ids(torch.tensor(ids)), torch.arange(pos, pos + len(ids)), False, False))
                pos += len(ids)
            if p.image is not None:
                emb = next(vit)
                blocks.append((emb, torch.full((emb.shape[0],), pos), True, False))
                pos += 1  # the whole image block takes one rope position
            ids = self._text_ids(p.text)
            blocks.append((self.bagel.embed_ids(torch.tensor(ids)), torch.arange(pos, pos + len(ids)), False, False))
            pos += len(ids)
            packed.samples.append(blocks)
            nexts.append(pos)
        return nexts

    def _prefill(self, prompts: Sequence[Prompt]) -> tuple[KVCache, list[int]]:
        packed = _Packed()
        nexts = self._context(prompts, packed)
        emb, lens, pos, blocks, full, _ = packed.tensors()
        lm = self.bagel.language_model
        cache = lm.new_cache(len(prompts))
        lm(emb, lens, pos, blocks=blocks, full=full, cache=cache, update_cache=True)
        return cache, nexts

    # -- text -----------------------------------------------------------------------------------------
    def generate_text(self, prompts: Sequence[Prompt], sampling: SamplingParams | Sequence[SamplingParams], *,
                      seed: int | None = None, return_stats: bool = True) -> list[Completion]:
        if not prompts:
            return []
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        if len(params) != len(prompts):
            raise ValueError(f"generate_text got {len(prompts)} prompts but {len(params)} sampling settings")
        gen = torch.Generator(device="cpu").manual_seed(
            int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed))
        lm = self.bagel.language_model
        B = len(prompts)
        forbidden = [self.tokens.bos, self.tokens.start_of_image, self.tokens.end_of_image]
        if getattr(self.tokenizer, "pad_token_id", None) is not None:
            forbidden.append(self.tokenizer.pad_token_id)
        with torch.no_grad():
            cache, pos = self._prefill(prompts)
            active = list(range(B))
            current = torch.full((B,), self.tokens.bos, dtype=torch.long)
            out_ids: list[list[int]] = [[] for _ in range(B)]
            rows: list[list[tuple[float, ...]]] = [[] for _ in range(B)]
            reasons = ["length"] * B
            step = 0
            while active:
                x = self.bagel.embed_ids(current[active])
                h = lm(x, [1] * len(active), torch.tensor([pos[i] + step for i in active]), cache=cache, update_cache=True)
                logits = lm.lm_head(h).float()  # (A, V) raw logits
                logits = logits[:, :len(self.tokenizer)] if logits.shape[-1] > len(self.tokenizer) else logits
                check_finite(logits, f"logits of generated token {step}", allow_neg_inf=True)
                allowed = logits.clone()
                allowed[:, forbidden] = float("-inf")  # structure tokens are never sampled into an answer
                warped = PerRowWarper([params[i] for i in active], logits.device)(None, allowed)
                chosen = torch.multinomial(warped.softmax(-1).cpu(), 1, generator=gen)[:, 0].to(logits.device)
                stats = token_stats(logits, chosen) if return_stats else None
                keep = []
                for j, i in enumerate(active):
                    tok = int(chosen[j])
                    if stats is not None:
                        rows[i].append((float(stats.entropy[j]), float(stats.logprob[j]), float(stats.logsumexp[j]),
                                        int(stats.top1[j]), float(stats.top1_logit[j]), float(stats.top2_logit[j])))
                    if tok == self.tokens.eos:
                        reasons[i] = "stop"
                        continue
                    out_ids[i].append(tok)
                    current[i] = tok
                    if len(out_ids[i]) < params[i].max_new_tokens:
                        keep.append(j)
                if len(keep) < len(active):
                    cache = cache.select(keep)
                    active = [active[j] for j in keep]
                step += 1
        return [Completion(text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                           stats=_stats(r) if return_stats else None, finish_reason=reason, sampling=p)
                for ids, r, reason, p in zip(out_ids, rows, reasons, params)]

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str | Sequence[int]], *, grad: bool = False,
              return_logits: bool = False, append_eos: bool = True) -> ScoreOutput:
        """Teacher-forced statistics of each completion after its prompt, (B, T) right-padded."""
        if len(prompts) != len(completions):
            raise ValueError(f"score got {len(prompts)} prompts but {len(completions)} completions")
        comp = [list(self.tokenizer.encode(c, add_special_tokens=False)) if isinstance(c, str) else list(c) for c in completions]
        comp = [c + [self.tokens.eos] if append_eos else c for c in comp]
        if any(not c for c in comp):
            raise ValueError("cannot score an empty completion")
        lm = self.bagel.language_model
        with torch.set_grad_enabled(grad):
            packed = _Packed()
            nexts = self._context(prompts, packed)
            for blocks, start, c in zip(packed.samples, nexts, comp):
                ids = [self.tokens.bos, *c[:-1]]  # inputs: bos then the completion but its last token
                blocks.append((self.bagel.embed_ids(torch.tensor(ids)), torch.arange(start, start + len(ids)), False, False))
            emb, lens, pos, blocks, full, _ = packed.tensors()
            hidden = lm(emb, lens, pos, blocks=blocks, full=full)
            ends = torch.tensor(lens).cumsum(0)
            T = max(len(c) for c in comp)
            idx = torch.zeros(len(comp), T, dtype=torch.long)
            valid = torch.zeros(len(comp), T, dtype=torch.bool)
            targets = torch.full((len(comp), T), -100, dtype=torch.long)
            for b, c in enumerate(comp):  # the last len(c) positions of sample b predict c
                idx[b, :len(c)] = torch.arange(int(ends[b]) - len(c), int(ends[b]))
                valid[b, :len(c)] = True
                targets[b, :len(c)] = torch.tensor(c)
            device = hidden.device
            h = hidden[idx.to(device)]  # (B, T, D)
            targets, valid = targets.to(device), valid.to(device)
            logits = None
            if return_logits:
                logits = lm.lm_head(h)
                stats = token_stats(logits, targets, ignore_index=-100)
            else:
                stats = linear_token_stats(h, lm.lm_head.weight, targets, ignore_index=-100)
            entropy = torch.where(valid, stats.entropy, torch.zeros_like(stats.entropy))
        return ScoreOutput(logprobs=stats.logprob, entropy=entropy, mask=valid, logits=logits)

    # -- images ---------------------------------------------------------------------------------------
    def _grid(self) -> tuple[int, int]:
        s = self.config.latent_downsample
        return self.image_size[0] // s, self.image_size[1] // s

    def _prompt_cache(self, prompts: Sequence[str]) -> tuple[KVCache, list[int]]:
        check_image_prompts(prompts)
        return self._prefill([Prompt(self.prompt_templates["generate"].format(prompt=p)) for p in prompts])

    def generate_images(self, prompts: Sequence[str], *, seed: int | None = None, num_steps: int | None = None,
                        guidance: float | None = None) -> list[GeneratedImage]:
        """Euler integration from noise (t=1) to latents (t=0) on BAGEL's shifted grid, with text CFG in
        ``cfg_interval``; image i starts from noise seeded by ``seed + i`` (independent of the batch)."""
        if not prompts:
            return []
        c = self.config
        steps = (c.num_timesteps - 1) if num_steps is None else int(num_steps)
        g = c.cfg_text_scale if guidance is None else float(guidance)
        if steps < 1 or g < 0:
            raise ValueError(f"num_steps must be >= 1 and guidance >= 0, got {steps} and {g}")
        base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed)
        h, w = self._grid()
        dtype, device = self._param_dtype(), self._device()
        noise = [torch.randn(h * w, c.latent_token_dim, generator=torch.Generator().manual_seed(base + i)).to(device, dtype)
                 for i in range(len(prompts))]
        with torch.no_grad():
            cache, pos = self._prompt_cache(prompts)
            ts = flow_timesteps(steps + 1, c.timestep_shift)
            x = list(noise)
            grids = [(h, w)] * len(prompts)
            for i in range(steps):
                t = ts[i]
                v = self.bagel.velocity(x, t, grids, cache, pos)
                if g != 1.0 and c.cfg_interval[0] < float(t) <= c.cfg_interval[1]:
                    v_u = self.bagel.velocity(x, t, grids, None, [0] * len(prompts))
                    v = [cfg_combine(vc, vu, g, renorm=c.cfg_renorm_type, renorm_min=c.cfg_renorm_min) for vc, vu in zip(v, v_u)]
                x = [xi - vi * float(ts[i] - ts[i + 1]) for xi, vi in zip(x, v)]
            z = torch.cat([ae_mod.unpatchify_latent(xi, h, w, c.latent_patch_size, c.latent_channels) for xi in x])
            pixels = ae_mod.decode(self.net["vae"], z.to(dtype))
        return [GeneratedImage(image=to_image(pixels[i]), prompt=p, seed=base + i,
                               trace=FlowTrace(noise=noise[i].float().cpu(), latents=x[i].float().cpu(), num_steps=steps, guidance=g))
                for i, p in enumerate(prompts)]

    def encode_images(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Latent tokens (h*w, p*p*c) of images resized to the generation size (posterior mean)."""
        H, W = self.image_size
        x = torch.stack([to_tensor(im.convert("RGB").resize((W, H), Image.BICUBIC)) for im in images])
        with torch.no_grad():
            z = ae_mod.encode(self.net["vae"], x.to(self._device(), self._param_dtype()))
        tokens = ae_mod.patchify_latent(z, self.config.latent_patch_size)  # (B, h*w, p*p*c)
        return list(tokens)

    def generator_loss(self, prompts: Sequence[str], targets: Sequence[Image.Image | GeneratedImage],
                       weights: torch.Tensor | None = None, *, seed: int | None = None) -> LossOutput:
        """Weighted rectified-flow loss through the generation expert: x_t = (1-t) x0 + t eps, target
        velocity eps - x0, t ~ logit-normal (BAGEL's training default, shift 1); x0 are the target's
        latent tokens. ``cond_dropout`` of the samples are trained without their prompt (the empty
        context of the CFG branch)."""
        if len(prompts) != len(targets):
            raise ValueError(f"generator_loss got {len(prompts)} prompts but {len(targets)} targets")
        B = len(prompts)
        real = [i for i, t in enumerate(targets) if not isinstance(t, GeneratedImage)]
        encoded = dict(zip(real, self.encode_images([targets[i] for i in real]))) if real else {}
        dtype, device = self._param_dtype(), self._device()
        x0 = [encoded[i] if i in encoded else targets[i].trace.latents.to(device) for i in range(B)]
        x0 = [x.to(device, dtype) for x in x0]
        w = sample_weights(weights, B, device)
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else int(seed))
        t = torch.sigmoid(torch.randn(B, generator=gen))
        eps = [torch.randn(x.shape, generator=gen).to(device, dtype) for x in x0]
        keep = torch.rand(B, generator=gen) >= self.cond_dropout
        h, w_grid = self._grid()
        check_image_prompts(prompts)
        packed = _Packed()
        for i, p in enumerate(prompts):
            blocks, pos = [], 0
            if keep[i]:
                ids = self._text_ids(self.prompt_templates["generate"].format(prompt=p))
                blocks.append((self.bagel.embed_ids(torch.tensor(ids)), torch.arange(len(ids)), False, False))
                pos = len(ids)
            x_t = (1 - t[i]) * x0[i] + t[i] * eps[i]
            lat = self.bagel.latent_block(x_t, t[i].to(device), h, w_grid)
            route = torch.tensor([False] + [True] * (lat.shape[0] - 2) + [False])
            blocks.append((lat, torch.full((lat.shape[0],), pos), True, route))
            packed.samples.append(blocks)
        emb, lens, pos, blocks, full, route = packed.tensors()
        hidden = self.bagel.language_model(emb, lens, pos, gen=route, blocks=blocks, full=full)
        pred = self.bagel.llm2vae(hidden[route]).split([x.shape[0] for x in x0])
        per_sample = torch.stack([((pv.float() - (e - x).float()) ** 2).mean() for pv, e, x in zip(pred, eps, x0)])
        loss = (w * per_sample).mean()
        return LossOutput(loss=loss, per_sample=per_sample,
                          diagnostics={"flow_mse": float(per_sample.detach().mean()), "t_mean": float(t.mean()),
                                       "weight_mean": float(w.mean()), "cond_kept": float(keep.float().mean())})

    def image_token_logprobs(self, prompts: Sequence[str], traces: Sequence[Any]) -> torch.Tensor:
        raise CapabilityError("bagel generates by rectified flow (generation_kind='flow'); it has no image tokens")

    # -- embeddings -----------------------------------------------------------------------------------
    def _pooled(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        with torch.no_grad(), self.use_role(None):
            packed = _Packed()
            self._context(prompts, packed)
            emb, lens, pos, blocks, full, _ = packed.tensors()
            hidden = self.bagel.language_model(emb, lens, pos, blocks=blocks, full=full)
        parts = hidden.split(lens)
        L = max(lens)
        padded = hidden.new_zeros(len(lens), L, hidden.shape[-1])
        mask = torch.zeros(len(lens), L)
        for b, part in enumerate(parts):
            padded[b, :part.shape[0]] = part
            mask[b, :part.shape[0]] = 1
        return mean_pool(padded, mask.to(hidden.device))

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.empty(0, self.embedding_dim)
        return self._pooled([Prompt(t) for t in texts])

    def embed_image(self, images: Sequence[Image.Image], texts: Sequence[str] | None = None) -> torch.Tensor:
        if not images:
            return torch.empty(0, self.embedding_dim)
        probes = list(texts) if texts is not None else [EMBED_IMAGE_PROBE] * len(images)
        if len(probes) != len(images):
            raise ValueError(f"embed_image got {len(images)} images but {len(probes)} texts")
        return self._pooled([Prompt(t, image=im) for t, im in zip(probes, images)])

    def components(self) -> dict[str, nn.Module]:
        b = self.bagel
        return {"language_model": b.language_model, "vision_encoder": b.vit_model, "connector": b.connector,
                "generation_io": nn.ModuleList([b.vae2llm, b.llm2vae, b.time_embedder]), "autoencoder": self.net["vae"]}


HUB_FILES = ["*.json", "*.safetensors", "*.txt", "merges.txt", "vocab.json"]


def resolve_checkpoint(model: str | Path) -> Path:
    """A local checkpoint folder, or a hub id (``owner/name``) fetched with huggingface_hub when the user
    set ``ASG_ALLOW_DOWNLOADS=1`` (asg.safety). Nothing is downloaded for a path that exists."""
    path = Path(model)
    if path.is_dir():
        return path
    text = str(model)
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not path.suffix
    if not looks_like_hub_id:
        raise DataError(f"BAGEL checkpoint folder {path} does not exist")
    from asg.safety import snapshot_download  # refuses unless the user set ASG_ALLOW_DOWNLOADS=1

    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=HUB_FILES))
    except Exception as e:  # offline, unknown repository, no permission
        raise DataError(f"{text} is neither a local folder nor a downloadable hub repository ({type(e).__name__}: {e}); "
                        "download the checkpoint and pass its folder") from e


def _stats(rows: list[tuple[float, ...]]) -> TokenStats:
    cols = list(zip(*rows)) if rows else [()] * 6
    f = lambda c: torch.tensor(c, dtype=torch.float32)  # noqa: E731
    return TokenStats(entropy=f(cols[0]), logprob=f(cols[1]), logsumexp=f(cols[2]),
                      top1=torch.tensor(cols[3], dtype=torch.long), top1_logit=f(cols[4]), top2_logit=f(cols[5]))


class _NoTokenizer:
    """Stands in for the tokenizer when only the architecture is built (``asg inspect``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def encode(self, *args: Any, **kwargs: Any) -> list[int]:
        raise CapabilityError("this BAGEL was built without a tokenizer (architecture only); load it with model=<folder>")

    decode = encode
