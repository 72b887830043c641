"""Out of memory in a batched backbone call: halve the batch and retry, down to a floor.

The loop sends the backbone a few large batched calls per step (all PPS samples of a question in one
``generate_text``, L candidates in one ``generate_images``, a whole group in one ``score``). When such
a call runs out of accelerator memory, :func:`run_split` splits its items in two halves and runs each
(recursively, halving again where a half still does not fit) until every piece fits or a piece of
at most ``floor`` items still runs out; results are joined back in the original order. Each split is logged
(``logging`` logger ``asg.oom``, level WARNING) and counted in an :class:`OOMStats` that the step
reads into its metrics record (``oom_splits``). At the floor it raises :class:`BatchOutOfMemoryError`
naming the call and the batch size.

What counts as out of memory: ``torch.OutOfMemoryError`` / ``torch.cuda.OutOfMemoryError`` and any
``RuntimeError`` whose message says "out of memory" (older torch, MPS, some kernels). Anything else
propagates untouched. The failed attempt's exception (and the tensors its traceback holds) is dropped
and ``torch.cuda.empty_cache()`` is called on CUDA before the retry.

Seeds. A split must not change what a seeded call returns, as far as the backbone allows. The rule
used: the piece starting at item ``i`` of a call seeded ``s`` is seeded ``s + i``. For a backbone that
seeds item ``i`` with ``s + i`` (``tiny``'s ``generate_images``) every image keeps its seed and its
starting noise, so it is the unsplit call's image up to float rounding (a piece pads its prompts to a
different length). Deterministic calls do not depend on the split either, up to the same rounding:
greedy ``generate_text`` (same tokens), ``score``, ``embed_*``. A backbone that draws one random stream
for the whole batch (``tiny``'s and HF's sampled ``generate_text``) gives other — still reproducible
for the same split — samples after a split: with one batch-wide stream a row's sample depends on the
batch around it anyway.

``floor`` (items; default 1, from the ``ASG_OOM_FLOOR`` environment variable when not given): a piece
of more items is halved; a piece of at most ``floor`` items that runs out of memory fails.
With ``grad=True`` (``score`` of an update) a split lowers the transient peak (logits, kernels) but
both halves' activations are kept for the backward, so it cannot rescue a pass whose graph does not
fit; ``generator_loss`` is never split (its loss is a mean over the batch).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import torch

from asg.errors import AsgError, ConfigError
from asg.types import SamplingParams, ScoreOutput

logger = logging.getLogger("asg.oom")

DEFAULT_FLOOR = 1  # items: a batch this small that runs out of memory fails
FLOOR_ENV = "ASG_OOM_FLOOR"
_OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    t for t in {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    if isinstance(t, type)
)
T = TypeVar("T")


class BatchOutOfMemoryError(AsgError, RuntimeError):
    """A batched call ran out of memory on a piece of ``floor`` items or fewer: splitting cannot help."""

    def __init__(self, call: str, batch_size: int, floor: int, total: int, cause: str) -> None:
        self.call, self.batch_size, self.floor, self.total = call, batch_size, floor, total
        split = f"split down from {total}; " if batch_size < total else ""
        super().__init__(
            f"{call}: out of memory on a batch of {batch_size} item(s) ({split}floor {floor}, {FLOOR_ENV}): "
            f"{cause}. Make each item cheaper (fewer max_new_tokens, a smaller dtype) or use a device with "
            "more memory"
        )


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error that a smaller batch may avoid."""
    if isinstance(exc, BatchOutOfMemoryError):
        return False
    if isinstance(exc, _OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    """Collect garbage and, on CUDA, return cached blocks to the allocator before a retry."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def floor_from_env() -> int:
    """``ASG_OOM_FLOOR`` as an integer >= 1, else :data:`DEFAULT_FLOOR`."""
    raw = os.environ.get(FLOOR_ENV, "").strip()
    if not raw:
        return DEFAULT_FLOOR
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{FLOOR_ENV} must be an integer >= 1 (items), got {raw!r}")
    return value


@attrs.define
class OOMStats:
    """Splits made so far, in all and per call name."""

    splits: int = 0
    by_call: dict[str, int] = attrs.field(factory=dict)

    def record(self, call: str) -> None:
        self.splits += 1
        self.by_call[call] = self.by_call.get(call, 0) + 1


def run_split(
    call: Callable[[int, int], T],
    n: int,
    merge: Callable[[list[T]], T],
    *,
    name: str,
    floor: int = DEFAULT_FLOOR,
    stats: OOMStats | None = None,
) -> T:
    """``call(0, n)``; on out of memory, ``merge([call(0, m), call(m, n)])`` with m = ⌈n/2⌉, recursively.

    ``call(lo, hi)`` runs items ``lo..hi-1``; ``merge`` joins the pieces' results in item order. A piece
    of at most ``floor`` items that runs out of memory raises :class:`BatchOutOfMemoryError`.
    """
    if floor < 1:
        raise ValueError(f"floor must be >= 1, got {floor}")
    parts: list[T] = []
    pending = [(0, n)]  # a stack; the left piece is on top, so pieces finish in item order
    while pending:
        lo, hi = pending.pop()
        try:
            parts.append(call(lo, hi))
            continue
        except Exception as exc:  # re-raised below unless it is an out-of-memory error
            if not is_oom(exc):
                raise
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if hi - lo <= floor:
                raise BatchOutOfMemoryError(name, hi - lo, floor, n, cause) from exc
        # leaving the except block drops the exception, its traceback and the tensors it held
        free_memory()
        mid = lo + (hi - lo + 1) // 2
        if stats is not None:
            stats.record(name)
        logger.warning("%s: out of memory on a batch of %d item(s) (%s); retrying as %d + %d items",
                       name, hi - lo, cause, mid - lo, hi - mid)
        pending += [(mid, hi), (lo, mid)]
    return parts[0] if len(parts) == 1 else merge(parts)


def sub_seed(seed: int | None, start: int) -> int | None:
    """Seed of the piece that starts at item ``start`` of a call seeded ``seed`` (module docstring)."""
    return None if seed is None else seed + start


def concat_lists(parts: list[list[Any]]) -> list[Any]:
    return [x for p in parts for x in p]


def concat_tensors(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts, dim=0)


def _pad_to(x: torch.Tensor, length: int, value: float | bool) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    pad = x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), value)
    return torch.cat([x, pad], dim=1)


def concat_scores(parts: list[ScoreOutput]) -> ScoreOutput:
    """Right-padded (B, T) pieces joined along B; padding: 0 (log-probs, entropy, logits), False (mask)."""
    T = max(p.mask.shape[1] for p in parts)
    logits = None
    if all(p.logits is not None for p in parts):
        logits = torch.cat([_pad_to(p.logits, T, 0.0) for p in parts])
    return ScoreOutput(
        logprobs=torch.cat([_pad_to(p.logprobs, T, 0.0) for p in parts]),
        entropy=torch.cat([_pad_to(p.entropy, T, 0.0) for p in parts]),
        mask=torch.cat([_pad_to(p.mask, T, False) for p in parts]),
        logits=logits,
    )


class OOMGuard:
    """A floor and a split counter for one step; :meth:`wrap` gives a backbone whose batched calls split."""

    def __init__(self, floor: int | None = None, stats: OOMStats | None = None) -> None:
        self.floor = floor_from_env() if floor is None else int(floor)
        if self.floor < 1:
            raise ConfigError(f"the out-of-memory floor must be >= 1 item, got {floor}")
        self.stats = stats if stats is not None else OOMStats()

    @classmethod
    def for_recipe(cls, recipe: Any) -> OOMGuard:
        """The guard of one training step: the floor is the recipe's ``run.oom_floor``, or, where that is 0,
        ``ASG_OOM_FLOOR`` (else :data:`DEFAULT_FLOOR`)."""
        return cls(recipe.run.oom_floor or None)

    def run(self, call: Callable[[int, int], T], n: int, merge: Callable[[list[T]], T], *, name: str) -> T:
        return run_split(call, n, merge, name=name, floor=self.floor, stats=self.stats)

    def wrap(self, backbone: Any) -> GuardedBackbone:
        """``backbone`` with its batched calls split on out of memory (see :class:`GuardedBackbone`)."""
        if isinstance(backbone, GuardedBackbone) and backbone.oom_guard is self:
            return backbone
        return GuardedBackbone(backbone, self)


class GuardedBackbone:
    """``backbone`` with its batched calls run through :func:`run_split`; everything else is the backbone's.

    Split: ``generate_text``, ``generate_images``, ``score``, ``embed_text``, ``embed_image``,
    ``image_token_logprobs``. Calls whose arguments do not line up go to the backbone unsplit (it
    raises its own error).
    """

    def __init__(self, backbone: Any, guard: OOMGuard) -> None:
        self.wrapped = backbone
        self.oom_guard = guard

    def __getattr__(self, name: str) -> Any:  # only for names the guard does not define
        if name in ("wrapped", "oom_guard"):  # not set yet (e.g. during copy): no recursion
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return f"<GuardedBackbone floor={self.oom_guard.floor} of {self.wrapped!r}>"

    def generate_text(self, prompts: Sequence[Any], sampling: Any, *, seed: int | None = None, **kwargs: Any) -> Any:
        prompts = list(prompts)
        per_row = None if isinstance(sampling, SamplingParams) else list(sampling)

        def call(lo: int, hi: int) -> Any:
            rows = sampling if per_row is None else per_row[lo:hi]
            return self.wrapped.generate_text(prompts[lo:hi], rows, seed=sub_seed(seed, lo), **kwargs)

        if per_row is not None and len(per_row) != len(prompts):
            return self.wrapped.generate_text(prompts, sampling, seed=seed, **kwargs)
        return self.oom_guard.run(call, len(prompts), concat_lists, name="generate_text")

    def generate_images(self, prompts: Sequence[str], *, seed: int | None = None, **kwargs: Any) -> Any:
        prompts = list(prompts)
        return self.oom_guard.run(
            lambda lo, hi: self.wrapped.generate_images(prompts[lo:hi], seed=sub_seed(seed, lo), **kwargs),
            len(prompts), concat_lists, name="generate_images",
        )

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Any:
        prompts, completions = list(prompts), list(completions)
        if len(prompts) != len(completions):
            return self.wrapped.score(prompts, completions, **kwargs)
        return self.oom_guard.run(lambda lo, hi: self.wrapped.score(prompts[lo:hi], completions[lo:hi], **kwargs),
                              len(prompts), concat_scores, name="score")

    def embed_text(self, texts: Sequence[str]) -> Any:
        texts = list(texts)
        return self.oom_guard.run(lambda lo, hi: self.wrapped.embed_text(texts[lo:hi]), len(texts), concat_tensors,
                              name="embed_text")

    def embed_image(self, images: Sequence[Any], texts: Sequence[str] | None = None) -> Any:
        images = list(images)
        probes = None if texts is None else list(texts)
        if probes is not None and len(probes) != len(images):
            return self.wrapped.embed_image(images, probes)
        return self.oom_guard.run(
            lambda lo, hi: self.wrapped.embed_image(images[lo:hi], None if probes is None else probes[lo:hi]),
            len(images), concat_tensors, name="embed_image",
        )

    def image_token_logprobs(self, prompts: Sequence[str], traces: Sequence[Any]) -> Any:
        prompts, traces = list(prompts), list(traces)
        if len(prompts) != len(traces):
            return self.wrapped.image_token_logprobs(prompts, traces)
        return self.oom_guard.run(lambda lo, hi: self.wrapped.image_token_logprobs(prompts[lo:hi], traces[lo:hi]),
                              len(prompts), concat_tensors, name="image_token_logprobs")
