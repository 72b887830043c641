"""Helpers for backbones built on a transformers causal LM (the `tiny` backbone and plugins use them).

- :func:`generate_with_stats`: one batched ``generate`` call in which every row has its own
  temperature / top-p / top-k / max-new-tokens (greedy rows included) — what Prompt-Perturbed Sampling
  needs (1 greedy + 6 sampled answers in one call) — returning per-step token statistics;
- :func:`score_completions`: teacher-forced statistics of completions after prompts, consistent with
  what ``generate_with_stats`` records (the conformance kit checks that);
- :func:`mean_pool`: unit-norm mean-pooled hidden states for embeddings.

Why a logits processor and not ``output_logits=True``: keeping every step's raw logits costs
T x B x V fp32 (hundreds of MB at V = 152k); the recorder below keeps one step and reduces each to
its statistics as it goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from asg.kernels import linear_token_stats, token_stats
from asg.types import Completion, SamplingParams, ScoreOutput, TokenStats
from asg.updates.guards import check_finite


class SuppressTokens(LogitsProcessor):
    """Makes tokens a completion must never contain (image placeholders, padding) impossible.

    Without it a hot sampler can emit, say, the image placeholder, and scoring that completion later
    fails inside the model (one more placeholder than image features).
    """

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = sorted(set(int(t) for t in token_ids))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores[:, self.token_ids] = float("-inf")
        return scores


class FiniteLogits(LogitsProcessor):
    """Refuses to sample from NaN or +inf logits: raises :class:`~asg.errors.NonFiniteError` naming the
    generation step and rows (torch's sampler would fail with an opaque error or emit garbage)."""

    def __init__(self, prompt_len: int) -> None:
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        check_finite(scores, f"logits of generated token {input_ids.shape[1] - self.prompt_len}", allow_neg_inf=True)
        return scores


class PerRowWarper(LogitsProcessor):
    """Temperature, top-k and top-p per row; greedy rows keep only their argmax.

    HF then samples from softmax of the returned scores, so a greedy row is deterministic.
    """

    def __init__(self, params: Sequence[SamplingParams], device: torch.device) -> None:
        self.greedy = torch.tensor([p.is_greedy for p in params], device=device)
        self.temperature = torch.tensor([p.temperature if not p.is_greedy else 1.0 for p in params], device=device)
        self.top_p = torch.tensor([p.top_p for p in params], device=device)
        self.top_k = torch.tensor([p.top_k for p in params], device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        z = scores.float() / self.temperature[:, None]  # (B, V), temperature applied after the fp32 upcast
        neg = torch.finfo(z.dtype).min
        V = z.shape[-1]
        # top-k: drop everything below the k-th largest value of rows that ask for it
        k = torch.where(self.top_k > 0, self.top_k.clamp(max=V), torch.full_like(self.top_k, V))
        kth = z.sort(-1, descending=True).values.gather(-1, (k - 1)[:, None])
        z = z.masked_fill(z < kth, neg)
        # top-p: keep the smallest prefix of the sorted distribution whose mass reaches p (at least 1 token)
        sorted_z, order = z.sort(-1, descending=True)
        cum = sorted_z.softmax(-1).cumsum(-1)
        drop_sorted = (cum - sorted_z.softmax(-1)) >= self.top_p[:, None]
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, neg)
        # greedy rows: a one-hot distribution on the argmax of the raw scores
        if bool(self.greedy.any()):
            arg = scores.argmax(-1, keepdim=True)
            onehot = torch.full_like(z, neg).scatter(-1, arg, 0.0)
            z = torch.where(self.greedy[:, None], onehot, z)
        return z


class StatsRecorder(LogitsProcessor):
    """Reduces each step's raw logits to token statistics; must come before any processor that edits the scores."""

    def __init__(self) -> None:
        self.rows: list[tuple[torch.Tensor, ...]] = []  # per step: (entropy, logprob, lse, top1, t1, t2) each (B,)
        self._pending: torch.Tensor | None = None  # previous step's raw logits, (B, V)

    def _flush(self, chosen: torch.Tensor) -> None:
        assert self._pending is not None
        s = token_stats(self._pending, chosen)
        self.rows.append((s.entropy, s.logprob, s.logsumexp, s.top1, s.top1_logit, s.top2_logit))
        self._pending = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self._flush(input_ids[:, -1])
        self._pending = scores.detach().clone()  # later processors edit scores in place; no upcast here
        return scores

    def finish(self, new_tokens: torch.Tensor) -> list[torch.Tensor]:
        """Statistics of the S kept steps as six (B, S) tensors; ``new_tokens`` is (B, S).

        HF may run one step more than it keeps (deferred stop checks); that step is dropped.
        """
        S = new_tokens.shape[1]
        if self._pending is not None and len(self.rows) < S:
            self._flush(new_tokens[:, len(self.rows)])
        self._pending = None
        rows = self.rows[:S]
        if not rows:
            B = new_tokens.shape[0]
            empty = new_tokens.new_empty((B, 0), dtype=torch.float32)
            return [empty, empty, empty, empty.long(), empty, empty]
        return [torch.stack([r[j] for r in rows], dim=1) for j in range(6)]


class PerRowMaxNewTokens(StoppingCriteria):
    """Stops each row at its own ``max_new_tokens``."""

    def __init__(self, prompt_len: int, max_new: torch.Tensor) -> None:
        self.prompt_len = prompt_len
        self.max_new = max_new

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        done = (input_ids.shape[1] - self.prompt_len) >= self.max_new
        return done.to(input_ids.device)


def generate_with_stats(
    model: Any,
    inputs: dict[str, torch.Tensor],
    params: Sequence[SamplingParams],
    *,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    seed: int | None = None,
    return_stats: bool = True,
    processors: Sequence[LogitsProcessor] = (),
    suppress_token_ids: Sequence[int] = (),
) -> list[tuple[list[int], TokenStats | None, str]]:
    """Run one batched ``model.generate`` over left-padded ``inputs``.

    Returns per row: generated ids (EOS and padding removed), statistics per generated step (the EOS
    step included when it was emitted), and the finish reason ("stop" or "length").
    Statistics are of the raw logits, before ``processors`` (e.g. a vocabulary restriction) and the
    per-row sampling warper run; ``suppress_token_ids`` are never emitted.
    """
    input_ids = inputs["input_ids"]
    B, prompt_len = input_ids.shape
    if len(params) != B:
        raise ValueError(f"got {len(params)} sampling settings for a batch of {B} prompts")
    device = input_ids.device
    max_new = torch.tensor([p.max_new_tokens for p in params], device=device)
    recorder = StatsRecorder() if return_stats else None
    suppress = [SuppressTokens(suppress_token_ids)] if suppress_token_ids else []
    chain = LogitsProcessorList([FiniteLogits(prompt_len)] + ([recorder] if recorder else []) + suppress + list(processors)
                                + [PerRowWarper(params, device)])
    # An explicit config: no hidden defaults (HF's top_k=50 would otherwise apply to sampling).
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=int(max_new.max()),
        eos_token_id=list(eos_token_ids), pad_token_id=pad_token_id, return_dict_in_generate=True,
        repetition_penalty=1.0,
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(
            **inputs, generation_config=config, logits_processor=chain,
            stopping_criteria=StoppingCriteriaList([PerRowMaxNewTokens(prompt_len, max_new)]),
        )
    sequences = out.sequences
    new = sequences[:, prompt_len:]  # (B, S)
    columns = recorder.finish(new) if recorder else []
    eos = torch.tensor(list(eos_token_ids), device=device)
    results: list[tuple[list[int], TokenStats | None, str]] = []
    for b in range(B):
        row = new[b]
        is_eos = torch.isin(row, eos)
        limit = int(max_new[b])
        if bool(is_eos[:limit].any()):
            n_tok = int(is_eos[:limit].nonzero()[0, 0])
            reason, n_steps = "stop", n_tok + 1
        else:
            n_tok = min(limit, row.shape[0])
            reason, n_steps = "length", n_tok
        stats = TokenStats(*(c[b, :n_steps] for c in columns)) if recorder else None
        results.append((row[:n_tok].tolist(), stats, reason))
    return results


def to_completions(rows: Sequence[tuple[list[int], TokenStats | None, str]], params: Sequence[SamplingParams],
                   tokenizer: Any) -> list[Completion]:
    """:class:`Completion` objects from :func:`generate_with_stats` rows (text decoded without special tokens)."""
    return [Completion(text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids, stats=stats,
                       finish_reason=reason, sampling=p) for (ids, stats, reason), p in zip(rows, params)]


def fused_head(model: Any) -> torch.nn.Linear | None:
    """The LM head of ``model`` when token statistics can be computed from hidden states and its weight
    (:func:`asg.kernels.linear_token_stats`): a bias-free ``nn.Linear`` after a ``model.model`` trunk,
    with no logit scaling or soft-capping in the config. None means: use the logits."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.bias is not None or not isinstance(getattr(model, "model", None), torch.nn.Module):
        return None
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        if getattr(text, name, None) not in (None, 1, 1.0):
            return None
    return head


def score_completions(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    grad: bool = False,
    return_logits: bool = False,
    **model_inputs: Any,
) -> ScoreOutput:
    """Teacher-forced statistics of ``completion_ids`` after ``prompt_ids`` (unpadded id lists).

    Rows are left-padded so every completion ends at the last position, and only the last
    ``max completion length + 1`` positions go through the LM head: the vocabulary projection of
    prompt positions is never computed. Without ``return_logits`` (and with a plain LM head, see
    :func:`fused_head`) the statistics come from the trunk's hidden states and the head weight through
    :func:`asg.kernels.linear_token_stats`, so no [tokens x vocab] logits are materialised, in the
    forward or for the backward. Output is right-padded (B, T). ``model_inputs`` (e.g.
    ``pixel_values``) are passed to the model unchanged.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if any(len(c) == 0 for c in completion_ids):
        raise ValueError("cannot score an empty completion")
    device = next(model.parameters()).device
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
    L = max(len(r) for r in rows)
    full = torch.full((len(rows), L), pad_token_id, dtype=torch.long, device=device)
    att = torch.zeros_like(full)
    for b, r in enumerate(rows):  # left padding: every completion ends at position L-1
        full[b, L - len(r):] = torch.tensor(r, device=device)
        att[b, L - len(r):] = 1
    n = torch.tensor([len(c) for c in completion_ids], device=device)
    n_max = int(n.max())
    pos = (att.cumsum(-1) - 1).clamp_min(0)  # positions restart at 0 after the padding, as in generate
    k = torch.arange(n_max, device=device)
    valid = k[None, :] < n[:, None]  # (B, n_max), right-padded
    src = torch.where(valid, (n_max - n)[:, None] + k[None, :], torch.zeros_like(k)[None, :])
    targets = torch.where(valid, full[:, L - n_max:].gather(1, src), torch.full_like(src, -100))
    head = None if return_logits else fused_head(model)
    logits = None
    with torch.set_grad_enabled(grad):
        if head is not None:
            out = model.model(input_ids=full, attention_mask=att, position_ids=pos, **model_inputs)
            window = out.last_hidden_state[:, L - n_max - 1:L - 1]  # (B, n_max, H): states predicting the last n_max positions
            hidden = window.gather(1, src[..., None].expand(-1, -1, window.shape[-1]))
            stats = linear_token_stats(hidden, head.weight, targets, ignore_index=-100)
        else:
            out = model(input_ids=full, attention_mask=att, position_ids=pos, logits_to_keep=n_max + 1, **model_inputs)
            window = out.logits[:, :-1]  # (B, n_max, V): logits predicting the last n_max positions
            logits = window.gather(1, src[..., None].expand(-1, -1, window.shape[-1]))  # (B, n_max, V)
            stats = token_stats(logits, targets, ignore_index=-100)
        entropy = torch.where(valid, stats.entropy, torch.zeros_like(stats.entropy))
    return ScoreOutput(logprobs=stats.logprob, entropy=entropy, mask=valid, logits=logits if return_logits else None)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of ``hidden`` (B, L, H) over positions where ``mask`` (B, L) is 1, (B, H) fp32."""
    m = mask[..., None].to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)
