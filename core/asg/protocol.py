"""The backbone protocol: the only thing a plugin must implement (algorithm.md §10).

A backbone is one unified model playing three roles through named adapters. Every text/image call runs
under the role made active by :meth:`Backbone.use_role`; ``use_role(None)`` disables every adapter,
which *is* the reference policy for KL. Embeddings always use the base model (adapters off).

Shapes: B = batch, T = tokens, V = vocabulary, D = embedding width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import attrs

from asg._validate import string

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from asg.types import Completion, GeneratedImage, LossOutput, Prompt, SamplingParams, ScoreOutput, TokenTrace


@attrs.frozen
class Preset:
    """A named configuration of a backbone (architecture + where its weights come from)."""

    name: str = attrs.field(validator=string(nonempty=True))
    description: str = ""
    has_weights: bool = False  # True when `load(preset=...)` can load weights without a --model path


@runtime_checkable
class Backbone(Protocol):
    """A unified multimodal model as the self-evolving loop sees it."""

    # -- declared capabilities (the host checks these before calling) -------------------------------
    name: str  # registry name, e.g. "tiny"
    generation_kind: str  # "flow" | "diffusion" | "autoregressive": picks the generator update rule
    supports_images_in_prompt: bool  # understanding calls accept Prompt.image
    roles: tuple[str, ...]  # adapters present, a subset of asg.types.ROLES
    image_size: tuple[int, int]  # (height, width) of generated images
    embedding_dim: int  # D of embed_text / embed_image
    prompt_templates: Mapping[str, str]  # role prompt templates this backbone was trained with

    # -- roles ---------------------------------------------------------------------------------------
    def use_role(self, role: str | None) -> AbstractContextManager[None]:
        """Activate one role's adapters (``None`` = all adapters off = reference) inside a ``with``."""
        ...

    def trainable_parameters(self, role: str) -> list[torch.nn.Parameter]:
        """The parameters an update of ``role`` may change (its adapters, plus head adapters for the
        generator). Disjoint across roles."""
        ...

    # -- text ----------------------------------------------------------------------------------------
    def generate_text(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingParams | Sequence[SamplingParams],
        *,
        seed: int | None = None,
        return_stats: bool = True,
    ) -> list[Completion]:
        """Decode one completion per prompt in one batched call; ``sampling`` may differ per prompt.
        Each completion carries per-step statistics of the raw (unwarped) logits."""
        ...

    def score(
        self,
        prompts: Sequence[Prompt],
        completions: Sequence[str | Sequence[int]],
        *,
        grad: bool = False,
        return_logits: bool = False,
        append_eos: bool = True,
    ) -> ScoreOutput:
        """Teacher-forced per-token log-probs and entropies of ``completions`` after ``prompts``,
        right-padded (B, T); with ``grad`` the graph is kept for a policy loss.

        A completion is text (tokenized by the backbone) or token ids (scored exactly as given).
        ``append_eos`` scores the end-of-turn token after it too, i.e. the probability of stopping
        there; that row is what a ``Completion`` with ``finish_reason="stop"`` has as its last step.
        """
        ...

    # -- images --------------------------------------------------------------------------------------
    def generate_images(
        self,
        prompts: Sequence[str],
        *,
        seed: int | None = None,
        num_steps: int | None = None,
        guidance: float | None = None,
    ) -> list[GeneratedImage]:
        """One image per prompt, each with the trace its update needs (FlowTrace or TokenTrace)."""
        ...

    def generator_loss(
        self,
        prompts: Sequence[str],
        targets: Sequence[Image.Image | GeneratedImage],
        weights: torch.Tensor | None = None,
        *,
        seed: int | None = None,
    ) -> LossOutput:
        """Flow/diffusion backbones: weighted flow-matching loss of generating ``targets`` from
        ``prompts`` (differentiable through the active role and the generation head)."""
        ...

    def image_token_logprobs(self, prompts: Sequence[str], traces: Sequence[TokenTrace]) -> torch.Tensor:
        """Autoregressive backbones: exact per-sample log-probability of each trace's image tokens,
        teacher-forced under the active role, (B,), differentiable."""
        ...

    # -- embeddings (base model, adapters off) -------------------------------------------------------
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm mean-pooled last-layer embeddings, (B, D)."""
        ...

    def embed_image(self, images: Sequence[Image.Image], texts: Sequence[str] | None = None) -> torch.Tensor:
        """Unit-norm embeddings of images (optionally with a text probe), (B, D)."""
        ...

    # -- state ---------------------------------------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor that training may change (all roles), by stable name."""
        ...

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state_dict`; unknown or missing keys are errors."""
        ...

    def save_trainable(self, path: str | Path) -> Path:
        """Write the trainable state to a safetensors file."""
        ...

    def load_trainable(self, path: str | Path) -> None:
        ...

    def components(self) -> Mapping[str, torch.nn.Module]:
        """Named top-level parts (vision encoder, language model, generation head, ...)."""
        ...

    def root_module(self) -> torch.nn.Module:
        """The module whose parameter names (adapter wrappers stripped) are the checkpoint's keys."""
        ...


@runtime_checkable
class BackboneFactory(Protocol):
    """Class-level part of a backbone: presets and construction."""

    presets: ClassVar[Mapping[str, Preset]]
    default_preset: ClassVar[str]

    @classmethod
    def load(
        cls,
        *,
        preset: str | None = None,
        model: str | Path | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        weights: bool = True,
    ) -> Backbone:
        """Build a backbone. ``device="meta"`` with ``weights=False`` builds the architecture only
        (no memory), which is what ``asg inspect`` uses. ``model`` is a local checkpoint path."""
        ...

