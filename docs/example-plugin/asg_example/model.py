"""`toy-ar`: a Chameleon-style unified model — one causal LM reads and writes images as tokens.

An image is an 8x8 grid of palette colours, i.e. 64 tokens ``<c0>``..``<c15>`` between ``<img>`` and
``</img>``. Understanding reads those tokens in the prompt; generation samples 64 of them after
``<img>`` (generation_kind = "autoregressive"), so the generator's training signal is the exact
log-probability of the sampled image tokens. Everything heavy comes from transformers and peft; the
shared asg helpers do batching, statistics, roles and state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from asg.backbones.base import AdapterBackbone
from asg.backbones.hf import generate_with_stats, mean_pool, score_completions, to_completions
from asg.backbones.roles import RoleAdapters
from asg.errors import CapabilityError, ConfigError
from asg.kernels import token_stats
from asg.protocol import Preset
from asg.types import ROLES, Completion, GeneratedImage, LossOutput, Prompt, SamplingParams, ScoreOutput, TokenTrace

GRID, CELL = 8, 8  # 8x8 tokens, each an 8x8-pixel block: 64x64 images
PALETTE = np.array([
    (245, 245, 245), (220, 35, 50), (245, 125, 20), (230, 215, 30), (40, 170, 70), (40, 90, 225),
    (150, 60, 200), (0, 0, 0), (128, 128, 128), (255, 255, 255), (120, 60, 20), (255, 150, 200),
    (0, 160, 160), (90, 0, 0), (0, 60, 0), (0, 0, 90),
], dtype=np.float32)
COLOR_TOKENS = [f"<c{i}>" for i in range(len(PALETTE))]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>"]


def build_tokenizer() -> Any:
    """A byte-level Qwen2 tokenizer with no merges (every byte a token) plus our special tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[1:2] + SPECIALS[3:] + COLOR_TOKENS})
    return tok


class ToyARBackbone(AdapterBackbone):
    name = "toy-ar"
    generation_kind = "autoregressive"
    supports_images_in_prompt = True
    roles: tuple[str, ...] = ROLES
    image_size = (GRID * CELL, GRID * CELL)
    prompt_templates: ClassVar[dict[str, Any]] = {}  # the loop's default templates
    presets: ClassVar[dict[str, Preset]] = {"random": Preset("random", "random initialisation (tests, docs)")}
    default_preset: ClassVar[str] = "random"

    def __init__(self, *, device: str = "cpu", seed: int = 0) -> None:
        from peft import LoraConfig
        from transformers import Qwen2Config, Qwen2ForCausalLM

        self.tokenizer = build_tokenizer()
        self.pad_id = self.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.color_ids = torch.tensor(self.tokenizer.convert_tokens_to_ids(COLOR_TOKENS))
        config = Qwen2Config(vocab_size=len(self.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             pad_token_id=self.pad_id, eos_token_id=self.eos_id, tie_word_embeddings=True)
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            self.net = Qwen2ForCausalLM(config).eval()
        self.net.requires_grad_(False)
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        with torch.device(device):
            self.adapters = RoleAdapters(self.net, {role: lora for role in self.roles})
        self.embedding_dim = config.hidden_size

    @classmethod
    def load(cls, *, preset: str | None = None, model: str | Path | None = None, device: str = "cpu",
             dtype: str | None = None, weights: bool = True) -> ToyARBackbone:
        if (preset or cls.default_preset) not in cls.presets:
            raise ConfigError(f"unknown toy-ar preset {preset!r}; valid presets: {', '.join(cls.presets)}")
        if model is not None:
            raise ConfigError("toy-ar has no checkpoints; it is built from its preset")
        return cls(device=device)

    def components(self) -> dict[str, torch.nn.Module]:
        return {"language_model": self.net.model, "lm_head": self.net.lm_head}

    # -- images as tokens --------------------------------------------------------------------------
    def image_tokens(self, image: Image.Image) -> list[int]:
        """64 palette-token ids: each 8x8 block's mean colour, snapped to the nearest palette entry."""
        arr = np.asarray(image.convert("RGB").resize(self.image_size, Image.BILINEAR), dtype=np.float32)
        cells = arr.reshape(GRID, CELL, GRID, CELL, 3).mean(axis=(1, 3)).reshape(-1, 3)  # (64, 3)
        nearest = ((cells[:, None] - PALETTE[None]) ** 2).sum(-1).argmin(-1)
        return self.color_ids[torch.from_numpy(nearest)].tolist()

    def tokens_to_image(self, ids: torch.Tensor) -> Image.Image:
        lookup = {int(t): i for i, t in enumerate(self.color_ids)}
        idx = np.array([lookup[int(t)] for t in ids]).reshape(GRID, GRID)
        return Image.fromarray(PALETTE[idx].astype(np.uint8).repeat(CELL, 0).repeat(CELL, 1), "RGB")

    def _prompt_ids(self, prompt: Prompt | str, *, draw: bool = False) -> list[int]:
        text = prompt if isinstance(prompt, str) else prompt.text
        ids = self.tokenizer.encode(f"<|im_start|>user\n{'Draw: ' if draw else ''}", add_special_tokens=False)
        if isinstance(prompt, Prompt) and prompt.image is not None:
            img = self.tokenizer.convert_tokens_to_ids(["<img>", "</img>"])
            ids += [img[0], *self.image_tokens(prompt.image), img[1]]
        ids += self.tokenizer.encode(f"{text}<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
        if draw:
            ids.append(self.tokenizer.convert_tokens_to_ids("<img>"))
        return ids

    def _batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, r in enumerate(rows):
            ids[b, L - len(r):], mask[b, L - len(r):] = torch.tensor(r), 1
        return {"input_ids": ids.to(self._device()), "attention_mask": mask.to(self._device())}

    # -- text --------------------------------------------------------------------------------------
    def generate_text(self, prompts: Sequence[Prompt], sampling: SamplingParams | Sequence[SamplingParams], *,
                      seed: int | None = None, return_stats: bool = True) -> list[Completion]:
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        with torch.no_grad():
            rows = generate_with_stats(self.net, self._batch([self._prompt_ids(p) for p in prompts]), params,
                                       eos_token_ids=[self.eos_id], pad_token_id=self.pad_id, seed=seed,
                                       return_stats=return_stats)
        return to_completions(rows, params, self.tokenizer)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str | Sequence[int]], *, grad: bool = False,
              return_logits: bool = False, append_eos: bool = True) -> ScoreOutput:
        if len(prompts) != len(completions):
            raise ValueError(f"score got {len(prompts)} prompts but {len(completions)} completions")
        comp = [(self.tokenizer.encode(c, add_special_tokens=False) if isinstance(c, str) else list(c))
                + ([self.eos_id] if append_eos else []) for c in completions]
        return score_completions(self.net, [self._prompt_ids(p) for p in prompts], comp, pad_token_id=self.pad_id,
                                 grad=grad, return_logits=return_logits)

    # -- images ------------------------------------------------------------------------------------
    def generate_images(self, prompts: Sequence[str], *, seed: int | None = None, num_steps: int | None = None,
                        guidance: float | None = None) -> list[GeneratedImage]:
        from transformers import LogitsProcessor

        color_ids = self.color_ids.to(self._device())

        class OnlyImageTokens(LogitsProcessor):  # the image policy is the softmax over palette tokens
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                keep = torch.full_like(scores, float("-inf"))
                keep[:, color_ids] = 0.0
                return scores + keep

        base = int(torch.randint(0, 2**31 - 1, ()).item()) if seed is None else seed
        out = []
        for i, prompt in enumerate(prompts):  # one call per image: its seed alone fixes it
            with torch.no_grad():
                ids, _, _ = generate_with_stats(
                    self.net, self._batch([self._prompt_ids(prompt, draw=True)]),
                    [SamplingParams(temperature=1.0, max_new_tokens=GRID * GRID)], eos_token_ids=[self.eos_id],
                    pad_token_id=self.pad_id, seed=base + i, return_stats=False, processors=[OnlyImageTokens()],
                )[0]
            tokens = torch.tensor(ids)
            with torch.no_grad():
                logprobs = self._image_logprobs([prompt], tokens[None])[0]
            out.append(GeneratedImage(image=self.tokens_to_image(tokens), prompt=prompt, seed=base + i,
                                      trace=TokenTrace(token_ids=tokens, logprobs=logprobs)))
        return out

    def _image_logprobs(self, prompts: Sequence[str], tokens: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs (B, 64) of image tokens under the palette-restricted policy."""
        s = score_completions(self.net, [self._prompt_ids(p, draw=True) for p in prompts], tokens.tolist(),
                              pad_token_id=self.pad_id, grad=torch.is_grad_enabled(), return_logits=True)
        color_ids = self.color_ids.to(s.logits.device)
        index = (tokens.to(color_ids.device)[..., None] == color_ids).float().argmax(-1)  # palette index per token
        return token_stats(s.logits[..., color_ids], index).logprob  # log-softmax over the 16 palette logits

    def image_token_logprobs(self, prompts: Sequence[str], traces: Sequence[TokenTrace]) -> torch.Tensor:
        """Exact log-probability of each trace's 64 image tokens (sum over tokens), (B,), differentiable."""
        tokens = torch.stack([t.token_ids for t in traces])
        return self._image_logprobs(prompts, tokens).sum(-1)

    def generator_loss(self, prompts: Sequence[str], targets: Sequence[Any], weights: torch.Tensor | None = None,
                       *, seed: int | None = None) -> LossOutput:
        raise CapabilityError("toy-ar is autoregressive: its generator is trained through image_token_logprobs")

    # -- embeddings (adapters off) -----------------------------------------------------------------
    def _embed(self, rows: list[list[int]]) -> torch.Tensor:
        batch = self._batch(rows)
        with torch.no_grad(), self.use_role(None):
            hidden = self.net.model(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self._embed([self.tokenizer.encode(t, add_special_tokens=False) for t in texts])

    def embed_image(self, images: Sequence[Image.Image], texts: Sequence[str] | None = None) -> torch.Tensor:
        probes = list(texts) if texts is not None else ["Describe this image."] * len(images)
        return self._embed([self._prompt_ids(Prompt(t, image=im)) for t, im in zip(probes, images)])
