"""Solver Token Entropy (STE): how unsure the Solver is at the start of its answer (algorithm.md §4).

For one greedy Solver answer with per-step full-vocabulary entropies H_t = -sum_v p_t(v) ln p_t(v)
(nats, softmax of the raw float32 logits, not divided by ln V):

    STE_raw = max (or mean) of H_t over the first K = 5 *answer* tokens

"Answer tokens" start after the answer tag (recipe quirk 5: the reference measured the first 5
generated tokens, which include ``<answer>`` itself). The window can also stop before a closing tag.

Normalisation (§3.6, §4), with a rolling window W of the last 128 raw values > 1e-6:

    d_ste = #{w in W : w < STE_raw} / |W|      once |W| >= 8 (STE_raw appended first; d_ste in [0, 1))
    d_ste = sigmoid(1.5 (STE_raw - 2.0))       while |W| < 8
    d_ste = 0                                  if STE_raw <= 1e-6 (not stored)

:meth:`SteNormalizer.update` appends then normalises (the reward path);
:meth:`SteNormalizer.quantile` only reads (the candidate spot-check, §3.4).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from asg._validate import number, one_of
from asg.rewards._num import as_floats, sigmoid

if TYPE_CHECKING:
    import torch

AGGREGATIONS: tuple[str, ...] = ("max", "mean")


@attrs.frozen
class SteConfig:
    """Constants of STE and its normaliser (§4)."""

    first_k: int = attrs.field(default=5, validator=number(1, None, integer=True))  # answer tokens measured
    aggregation: str = attrs.field(default="max", validator=one_of(AGGREGATIONS))  # "mean" is the rebuttal ablation
    window: int = attrs.field(default=128, validator=number(1, None, integer=True))  # raw values kept for the quantile
    min_window: int = attrs.field(default=8, validator=number(1, None, integer=True))  # sigmoid fallback below this
    sigmoid_alpha: float = attrs.field(default=1.5, validator=number(0.0, None, lo_open=True))  # fallback steepness
    sigmoid_beta: float = attrs.field(default=2.0, validator=number())  # fallback midpoint, nats
    store_min: float = attrs.field(default=1e-6, validator=number(0.0, None))  # raw values <= this: d_ste = 0, not stored
    spot_easy_below: float = attrs.field(default=0.30, validator=number(0.0, 1.0))  # spot-check bucket: easy if q < this
    spot_hard_above: float = attrs.field(default=0.70, validator=number(0.0, 1.0))  # ... hard if q > this


DEFAULT_STE = SteConfig()


@attrs.frozen
class SteValue:
    """STE of one answer, with where it was measured."""

    raw: float  # aggregated entropy, nats (0.0 when no answer token was produced)
    tokens: tuple[float, ...]  # the <= K per-token entropies aggregated
    answer_start: int  # index of the first answer token in the generated sequence
    tag_found: bool  # False when measured from token ids and the answer tag was absent (start = 0)
    aggregation: str

    def diagnostics(self) -> dict[str, float]:
        return {
            "ste.raw": self.raw,
            "ste.n_tokens": float(len(self.tokens)),
            "ste.answer_start": float(self.answer_start),
            "ste.tag_found": float(self.tag_found),
        }


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary entropy per row of raw logits (..., V) -> (...), float32, nats.

    H = -sum_v p(v) ln p(v) with p = softmax(float32(logits)) (§4), computed by
    :func:`asg.kernels.token_stats` (one pass, fused on GPU; -inf logits allowed).
    """
    import torch

    from asg.kernels import token_stats

    if not isinstance(logits, torch.Tensor) or logits.ndim < 1:
        raise TypeError(f"logits must be a torch.Tensor with a vocabulary dimension, got {type(logits).__name__}")
    return token_stats(logits).entropy


def _as_ids(token_ids: Any, where: str) -> list[int]:
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    ids = list(token_ids)
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"{where}[{i}] must be an int token id, got {t!r}")
    return ids


def find_tag(token_ids: Any, tag: int | Sequence[int], start: int = 0) -> int | None:
    """Index of the first occurrence at or after ``start`` of ``tag`` (an id or a run of ids), or None."""
    ids = _as_ids(token_ids, "token_ids")
    pattern = [tag] if isinstance(tag, int) else _as_ids(tag, "tag")
    if not pattern:
        raise ValueError("tag must hold at least one token id")
    for i in range(start, len(ids) - len(pattern) + 1):
        if ids[i : i + len(pattern)] == pattern:
            return i
    return None


def answer_start_index(token_ids: Any, answer_tag: int | Sequence[int]) -> int | None:
    """Index just after the first answer tag (the first answer token), or None if there is no tag."""
    at = find_tag(token_ids, answer_tag)
    return None if at is None else at + (1 if isinstance(answer_tag, int) else len(list(answer_tag)))


def solver_token_entropy(
    entropies: Any,
    *,
    answer_start: int | None = None,
    answer_stop: int | None = None,
    token_ids: Any = None,
    answer_tag: int | Sequence[int] | None = None,
    close_tag: int | Sequence[int] | None = None,
    config: SteConfig = DEFAULT_STE,
) -> SteValue:
    """STE_raw of one answer from its per-step entropies ``(T,)`` (tensor or list, e.g. ``stats.entropy``).

    Say where the answer starts either with ``answer_start`` (and optionally ``answer_stop``), or with
    ``token_ids`` and ``answer_tag`` (and optionally ``close_tag``); with ids, a missing answer tag
    means the whole output is the answer (start 0, ``tag_found=False``).
    """
    h = as_floats(entropies, "entropies")
    by_index = answer_start is not None or answer_stop is not None
    by_ids = token_ids is not None or answer_tag is not None or close_tag is not None
    if by_index == by_ids:
        raise ValueError(
            "solver_token_entropy: pass either answer_start (index of the first answer token) or token_ids "
            "and answer_tag, not both and not neither; STE is measured on answer tokens, not format tags"
        )
    found = True
    if by_ids:
        if token_ids is None or answer_tag is None:
            raise ValueError("solver_token_entropy: token_ids and answer_tag must be given together")
        start = answer_start_index(token_ids, answer_tag)
        found = start is not None
        start = start or 0
        stop = find_tag(token_ids, close_tag, start) if close_tag is not None else None
    else:
        start = 0 if answer_start is None else answer_start
        stop = answer_stop
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(h):
        raise ValueError(f"answer_start must be an int in [0, {len(h)}] (len(entropies)), got {start!r}")
    end = min(start + config.first_k, len(h) if stop is None else max(start, stop))
    window = tuple(h[start:end])
    if not window:
        raw = 0.0
    elif config.aggregation == "max":
        raw = max(window)
    else:
        raw = math.fsum(window) / len(window)
    return SteValue(raw=raw, tokens=window, answer_start=start, tag_found=found, aggregation=config.aggregation)


def solver_token_entropies(
    entropies: Sequence[Any],
    *,
    answer_starts: Sequence[int] | None = None,
    token_ids: Sequence[Any] | None = None,
    answer_tag: int | Sequence[int] | None = None,
    close_tag: int | Sequence[int] | None = None,
    config: SteConfig = DEFAULT_STE,
) -> list[SteValue]:
    """:func:`solver_token_entropy` for a batch: per-answer entropies with per-answer starts or ids."""
    n = len(entropies)
    for name, seq in (("answer_starts", answer_starts), ("token_ids", token_ids)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} answers")
    out = []
    for b in range(n):
        kwargs: dict[str, Any] = {"config": config}
        if answer_starts is not None:
            kwargs["answer_start"] = answer_starts[b]
        if token_ids is not None:
            kwargs.update(token_ids=token_ids[b], answer_tag=answer_tag, close_tag=close_tag)
        try:
            out.append(solver_token_entropy(entropies[b], **kwargs))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"answer {b}: {exc}") from exc
    return out


class SteNormalizer:
    """Maps STE_raw to d_ste in [0, 1] against a rolling window of past raw values (§4)."""

    def __init__(self, config: SteConfig = DEFAULT_STE) -> None:
        self.config = config
        self._window: deque[float] = deque(maxlen=config.window)

    def __len__(self) -> int:
        return len(self._window)

    def quantile(self, raw: float) -> float:
        """d for ``raw`` against the current window, without storing it (spot-check, §3.4)."""
        x = as_floats([raw], "raw")[0]
        if len(self._window) < self.config.min_window:
            return sigmoid(self.config.sigmoid_alpha * (x - self.config.sigmoid_beta))
        return sum(1 for w in self._window if w < x) / len(self._window)

    def update(self, raw: float | Iterable[float]) -> float | list[float]:
        """Store ``raw`` (if > store_min) and return its d_ste; a sequence is processed in order."""
        if not isinstance(raw, (int, float)):
            return [self._update_one(x) for x in as_floats(list(raw), "raw")]
        return self._update_one(as_floats([raw], "raw")[0])

    def _update_one(self, x: float) -> float:
        if x <= self.config.store_min:
            return 0.0
        self._window.append(x)
        return self.quantile(x)

    def spot_bucket(self, q: float) -> str:
        """Bucket of a spot-check quantile: easy below 0.30, hard above 0.70, else medium (§3.4)."""
        if q < self.config.spot_easy_below:
            return "easy"
        return "hard" if q > self.config.spot_hard_above else "medium"

    def state_dict(self) -> dict[str, Any]:
        return {"window": list(self._window)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or set(state) != {"window"}:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"SteNormalizer.load_state_dict expects keys ['window'], got {got}")
        self._window = deque(as_floats(list(state["window"]), "SteNormalizer state 'window'"), maxlen=self.config.window)


__all__ = [
    "AGGREGATIONS",
    "DEFAULT_STE",
    "SteConfig",
    "SteNormalizer",
    "SteValue",
    "answer_start_index",
    "find_tag",
    "solver_token_entropies",
    "solver_token_entropy",
    "token_entropy",
]
