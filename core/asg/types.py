"""Value types passed between the loop and a backbone: frozen, slotted attrs classes with validators.

Tensor fields are compared by identity (``eq=False`` classes) because a tensor ``==`` is elementwise.
Shapes are given in comments: T = tokens of one sequence, B = batch, V = vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from asg._validate import number, one_of, pil_image, string, tensor

if TYPE_CHECKING:
    import torch
    from PIL import Image

ROLES: tuple[str, ...] = ("proposer", "solver", "generator")
GENERATION_KINDS: tuple[str, ...] = ("flow", "diffusion", "autoregressive")
FINISH_REASONS: tuple[str, ...] = ("stop", "length")


@attrs.frozen
class SamplingParams:
    """How one sequence is decoded. ``temperature=0`` is greedy (argmax); top-p/top-k then do nothing."""

    temperature: float = attrs.field(default=1.0, validator=number(0.0, 100.0))  # 0 = greedy
    top_p: float = attrs.field(default=1.0, validator=number(0.0, 1.0, lo_open=True))  # nucleus mass kept
    top_k: int = attrs.field(default=0, validator=number(0, None, integer=True))  # 0 = no top-k cut
    max_new_tokens: int = attrs.field(default=64, validator=number(1, 1_000_000, integer=True))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@attrs.frozen
class Prompt:
    """One user turn: text and at most one image. The backbone applies its own chat format."""

    text: str = attrs.field(validator=string())
    # Compared by pixels (PIL implements ==) but left out of the hash (PIL images are unhashable).
    image: Image.Image | None = attrs.field(default=None, validator=pil_image(optional=True), hash=False)
    system: str | None = attrs.field(default=None)

    @property
    def has_image(self) -> bool:
        return self.image is not None


def _same_len(inst: Any, fields: tuple[str, ...]) -> None:
    lengths = {f: len(getattr(inst, f)) for f in fields}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{f}={n}" for f, n in lengths.items())
        raise ValueError(f"{type(inst).__name__}: per-token fields must have equal length, got {detail}")


@attrs.frozen(eq=False)
class TokenStats:
    """Statistics of the model's full-vocabulary distribution at each of T positions (temperature 1).

    ``logprob`` is the log-probability of the token actually emitted (or teacher-forced) there.
    """

    entropy: torch.Tensor = attrs.field(validator=tensor(1, floating=True))  # (T,) nats, -sum p ln p
    logprob: torch.Tensor = attrs.field(validator=tensor(1, floating=True))  # (T,) log p(token)
    logsumexp: torch.Tensor = attrs.field(validator=tensor(1, floating=True))  # (T,) log Z of the logits
    top1: torch.Tensor = attrs.field(validator=tensor(1, floating=False))  # (T,) argmax token id
    top1_logit: torch.Tensor = attrs.field(validator=tensor(1, floating=True))  # (T,)
    top2_logit: torch.Tensor = attrs.field(validator=tensor(1, floating=True))  # (T,)

    def __attrs_post_init__(self) -> None:
        _same_len(self, ("entropy", "logprob", "logsumexp", "top1", "top1_logit", "top2_logit"))

    def __len__(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def margin(self) -> torch.Tensor:
        """Logit margin between the two most likely tokens, (T,)."""
        return self.top1_logit - self.top2_logit

    def slice(self, start: int, stop: int | None = None) -> TokenStats:
        return TokenStats(*(getattr(self, f.name)[start:stop] for f in attrs.fields(TokenStats)))


@attrs.frozen(eq=False)
class Completion:
    """A generated continuation: text, its token ids, and per-step statistics of the raw logits."""

    text: str = attrs.field(validator=string())
    token_ids: tuple[int, ...] = attrs.field(converter=tuple)  # generated ids, EOS excluded
    stats: TokenStats | None  # one row per generated step (EOS step included when it was emitted)
    finish_reason: str = attrs.field(validator=one_of(FINISH_REASONS))
    sampling: SamplingParams = attrs.field(validator=attrs.validators.instance_of(SamplingParams))

    def __attrs_post_init__(self) -> None:
        if self.stats is not None:
            extra = 1 if self.finish_reason == "stop" else 0
            if len(self.stats) != len(self.token_ids) + extra:
                raise ValueError(
                    f"Completion.stats must have one row per generated step ({len(self.token_ids) + extra} "
                    f"for {len(self.token_ids)} tokens, finish_reason={self.finish_reason!r}), got {len(self.stats)}"
                )


@attrs.frozen(eq=False)
class ScoreOutput:
    """Teacher-forced statistics of B completions given their prompts, right-padded to length T."""

    logprobs: torch.Tensor = attrs.field(validator=tensor(2, floating=True))  # (B, T) log p(token)
    entropy: torch.Tensor = attrs.field(validator=tensor(2, floating=True))  # (B, T) nats
    mask: torch.Tensor = attrs.field(validator=tensor(2, floating=False))  # (B, T) bool, True = real token
    logits: torch.Tensor | None = attrs.field(default=None, validator=tensor(3, optional=True))  # (B, T, V)

    def __attrs_post_init__(self) -> None:
        shapes = {"logprobs": self.logprobs.shape, "entropy": self.entropy.shape, "mask": self.mask.shape}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"ScoreOutput fields must share shape (B, T), got {shapes}")
        if self.logits is not None and self.logits.shape[:2] != self.mask.shape:
            raise ValueError(f"ScoreOutput.logits must be (B, T, V) with (B, T)={tuple(self.mask.shape)}, got {tuple(self.logits.shape)}")

    def sequence_logprob(self, reduction: str = "mean") -> torch.Tensor:
        """Per-sequence log-probability, (B,): ``sum`` or length-normalised ``mean`` over real tokens."""
        m = self.mask.to(self.logprobs.dtype)
        total = (self.logprobs * m).sum(-1)
        if reduction == "sum":
            return total
        if reduction == "mean":
            return total / m.sum(-1).clamp_min(1.0)
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


@attrs.frozen(eq=False)
class FlowTrace:
    """What a flow/diffusion generator update needs about one sample it generated."""

    noise: torch.Tensor = attrs.field(validator=tensor(floating=True))  # x at t=1, e.g. (C, H, W)
    latents: torch.Tensor = attrs.field(validator=tensor(floating=True))  # x at t=0 that was decoded, same shape
    num_steps: int = attrs.field(validator=number(1, None, integer=True))
    guidance: float = attrs.field(validator=number(0.0, None))

    def __attrs_post_init__(self) -> None:
        if self.noise.shape != self.latents.shape:
            raise ValueError(f"FlowTrace.noise and .latents must have the same shape, got {tuple(self.noise.shape)} and {tuple(self.latents.shape)}")


@attrs.frozen(eq=False)
class TokenTrace:
    """What an autoregressive generator update needs: the sampled image tokens and their log-probs."""

    token_ids: torch.Tensor = attrs.field(validator=tensor((1, 2), floating=False))  # (N,) or (N, bits)
    logprobs: torch.Tensor = attrs.field(validator=tensor(1, floating=True))  # (N,) at sampling time

    def __attrs_post_init__(self) -> None:
        if self.token_ids.shape[0] != self.logprobs.shape[0]:
            raise ValueError(f"TokenTrace: {self.token_ids.shape[0]} tokens but {self.logprobs.shape[0]} log-probs")


@attrs.frozen(eq=False)
class GeneratedImage:
    """An image the generator made, with the trace its training signal needs."""

    image: Image.Image = attrs.field(validator=pil_image())
    prompt: str = attrs.field(validator=string())
    seed: int = attrs.field(validator=number(0, None, integer=True))
    trace: FlowTrace | TokenTrace = attrs.field(validator=attrs.validators.instance_of((FlowTrace, TokenTrace)))


@attrs.frozen(eq=False)
class LossOutput:
    """A differentiable loss with its per-sample terms and named diagnostics (logged by the trainer)."""

    loss: torch.Tensor = attrs.field(validator=tensor(0, floating=True))  # () scalar
    per_sample: torch.Tensor = attrs.field(validator=tensor(1, floating=True))  # (B,)
    diagnostics: dict[str, float] = attrs.field(factory=dict)


@attrs.frozen(eq=False)
class Rollout:
    """One role call with what came out of it and, once rewarded, its reward and diagnostics."""

    role: str = attrs.field(validator=one_of(ROLES))
    prompt: Prompt | str
    output: Completion | GeneratedImage
    reward: float | None = attrs.field(default=None, validator=attrs.validators.optional(number()))
    diagnostics: dict[str, float] = attrs.field(factory=dict)


__all__ = [
    "FINISH_REASONS",
    "GENERATION_KINDS",
    "ROLES",
    "Completion",
    "FlowTrace",
    "GeneratedImage",
    "LossOutput",
    "Prompt",
    "Rollout",
    "SamplingParams",
    "ScoreOutput",
    "TokenStats",
    "TokenTrace",
]
