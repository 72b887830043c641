"""VARGPT-v1.1's next-scale image generation with the LLM in the loop, and the exact bit log-probabilities.

How one image is made (upstream ``autoregressive_infer_cfg``; every step below is reproduced):

1. The prompt, ending with ``<|image_gen_start|>``, is prefilled into the Qwen2-VL decoder (:func:`prefill`).
   Its post-norm hidden states without the last position, through ``image_gen_projector_out``, are the
   cross-attention context of every Infinity block. The unconditional half of CFG uses ``cfg_uncond[:L]``.
2. The condition ``cond`` [2B, C] is the attentive pool of ``text_norm(sos_embedding[start])`` (conditional)
   or of ``text_norm(cfg_uncond[:1])`` (unconditional); it drives every AdaLN.
3. For each scale ``(1, h, w)`` of the schedule:
   a. the ``h*w`` input tokens (scale 0: ``cond + pos_start``; later: ``word_embed`` of the summed BSQ codes
      resampled to ``h x w``) go through ``image_gen_projector`` to LLM width;
   b. the conditional copy runs through the LLM **on top of the prompt KV cache, which it extends** (positions
      continue at the cache length, causal inside the scale); the unconditional copy runs through the LLM
      **with no cache at all** (positions from 0);
   c. both outputs go back through ``image_gen_projector_out``, then through the Infinity blocks (level
      embedding first; Infinity's own KV cache spans the scales), then ``head_nm`` + ``head``: raw logits;
   d. the sampler's logits are ``cfg * raw_c / tau + (1 - cfg) * raw_u / tau`` (CFG on logits);
   e. each of the ``h*w*32`` bits is drawn from its 2-way softmax after top-k / top-p (upstream's
      ``sample_with_top_k_top_p``, same RNG calls, so a seeded ``torch.Generator`` gives upstream's bits),
      unless the caller forces them (teacher forcing);
   f. the bits become BSQ codes ``+-1/sqrt(32)``, are upsampled (trilinear) to the last scale and summed;
      the sum, resampled to the next scale, is the next input.

Upstream defaults (hard-coded in its forward): CFG 3, tau 0.5, top-k 900, top-p 0.97, the '0.25M' square
schedule (10 scales, 32 x 32 tokens = 512 px). The summed codes are what the BSQ-VAE decodes (not here).

Log-probabilities: REF approximated a sequence's log-prob by ``-loss`` averaged over the batch. We return, per
sample, ``sum over tokens and bits of log_softmax(logits.view(B, L, 32, 2))[bit]`` (:func:`bit_log_prob`),
both under the sampler's logits (CFG-mixed, tau-scaled, before top-k/top-p truncation) and under the raw
conditional logits (tau 1, no CFG; the distribution upstream's training loss scores).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asg.errors import ConfigError
from asg.updates.guards import check_finite

from .infinity import InfinityCache, VargptImageHead, rope2d_cos_sin

# ------------------------------------------------------------------------------------------- schedules

_SQUARE = ((1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32), (40, 40),
           (48, 48), (64, 64))
SCALE_SIDES: Mapping[float, tuple[tuple[int, int], ...]] = {
    1.0: _SQUARE,
    1.25: ((1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28), (45, 36),
           (55, 44), (70, 56)),
    1.333: ((1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27), (48, 36),
            (60, 45), (72, 54)),
    1.5: ((1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26), (48, 32),
          (63, 42), (78, 52)),
    1.75: ((1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24), (56, 32),
           (70, 40), (84, 48)),
    2.0: ((1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23), (60, 30),
          (74, 37), (90, 45)),
    2.5: ((1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20), (65, 26),
          (80, 32), (100, 40)),
    3.0: ((1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18), (72, 24),
          (90, 30), (111, 37)),
}
"""(h, w) token grids of Infinity's schedules per aspect ratio h/w (portrait ratios; landscape = transposed).
A schedule named by its pixel budget is a prefix of the 13-entry list; 16 px per token."""

SCALE_COUNTS: Mapping[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
VAE_STRIDE = 16


def _ratio_sides(h_div_w: float) -> tuple[tuple[int, int], ...]:
    """The 13 grids of the template ratio nearest to ``h_div_w`` (landscape ratios transpose a portrait one)."""
    if not h_div_w > 0:
        raise ConfigError(f"aspect ratio h/w must be positive, got {h_div_w}")
    templates: dict[float, tuple[tuple[int, int], ...]] = {}
    for ratio, sides in SCALE_SIDES.items():
        templates[ratio] = sides
        if ratio != 1.0:
            templates[int(1 / ratio * 1000) / 1000] = tuple((w, h) for h, w in sides)
    nearest = min(templates, key=lambda r: abs(r - h_div_w))
    return templates[nearest]


def scale_schedule(pn: str = "0.25M", h_div_w: float = 1.0) -> list[tuple[int, int, int]]:
    """Scales ``(1, h, w)`` of the named pixel budget; '0.25M' square = 10 scales up to 32 x 32 (512 px)."""
    if pn not in SCALE_COUNTS:
        raise ConfigError(f"unknown schedule {pn!r}; known: {', '.join(SCALE_COUNTS)}")
    return [(1, h, w) for h, w in _ratio_sides(h_div_w)[: SCALE_COUNTS[pn]]]


def rope_extent(schedule: Sequence[tuple[int, int, int]]) -> tuple[int, int]:
    """The grid the 2-D rope normalises positions to: the last scale of the '1M' schedule of the same ratio.

    Upstream keys its rope tables by the schedule, so a schedule must be a prefix of a known one; we check.
    """
    if not schedule:
        raise ConfigError("empty scale schedule")
    _, h, w = schedule[-1]
    sides = _ratio_sides(h / w)
    if [tuple(s[1:]) for s in schedule] != list(sides[: len(schedule)]):
        raise ConfigError(f"scale schedule {list(schedule)} is not a prefix of Infinity's schedule for h/w={h / w:.3f}")
    return sides[-1]


# ------------------------------------------------------------------------------------------ bits, codes


def bit_log_prob(logits: Tensor, bits: Tensor) -> Tensor:
    """Exact per-sample log-probability of ``bits`` [B, L, d] (0/1) under bit logits [B, L, 2d] -> [B].

    ``logits.view(B, L, d, 2)`` holds (bit=0, bit=1) pairs; the result sums ``log_softmax(pair)[bit]`` over
    every token and bit of a sample, never across samples.
    """
    b, length, v = logits.shape
    if bits.shape != (b, length, v // 2) or v % 2:
        raise ConfigError(f"bit_log_prob: logits {tuple(logits.shape)} and bits {tuple(bits.shape)} do not pair "
                          "up (expected logits [B, L, 2d] and bits [B, L, d])")
    logp = F.log_softmax(logits.float().view(b, length, v // 2, 2), dim=-1)  # [B, L, d, 2]
    return logp.gather(-1, bits.long().unsqueeze(-1)).squeeze(-1).sum(dim=(1, 2))


def cfg_mix(raw: Tensor, cfg: float, tau: float) -> Tensor:
    """Sampler logits from raw [2B, L, V] = [cond; uncond]: ``cfg * cond/tau + (1 - cfg) * uncond/tau`` -> [B, L, V].

    Same operation order as upstream (scale by 1/tau, then mix), so results agree to the last bit.
    """
    if raw.shape[0] % 2:
        raise ConfigError(f"cfg_mix needs [cond; uncond] rows, got {raw.shape[0]} rows")
    scaled = raw * (1 / tau)
    half = raw.shape[0] // 2
    return cfg * scaled[:half] + (1 - cfg) * scaled[half:]


def sample_bits(logits: Tensor, *, top_k: int, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Draw every bit of logits [B, L, 2d] from its 2-way softmax after top-k / top-p -> bits [B, L, d] int64.

    Top-k keeps the k largest of each pair (k >= 2 keeps both); top-p drops the smaller choice when its
    probability is at most ``1 - top_p``. One ``torch.multinomial`` over all B*L*d pairs, like upstream, so a
    generator seeded alike reproduces upstream's draws.
    """
    b, length, v = logits.shape
    check_finite(logits, "bit logits of the image tokens", allow_neg_inf=True)
    pairs = logits.reshape(b, length * (v // 2), 2).clone()  # [B, L*d, 2]
    if top_k > 0:
        kth = pairs.topk(min(top_k, 2), dim=-1).values.amin(dim=-1, keepdim=True)
        pairs = pairs.masked_fill(pairs < kth, float("-inf"))
    if top_p > 0:
        ordered, order = pairs.sort(dim=-1)  # ascending
        drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
        drop[..., -1] = False  # the most likely choice always survives
        pairs = pairs.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = pairs.softmax(dim=-1).view(-1, 2)
    draws = torch.multinomial(probs, num_samples=1, replacement=True, generator=generator)
    return draws.view(b, length, v // 2)


def bits_to_codes(bits: Tensor) -> Tensor:
    """Bits [B, 1, h, w, d] (0/1) -> BSQ codes [B, d, 1, h, w], each entry ``+-1/sqrt(d)`` (L2-normalised)."""
    d = bits.shape[-1]
    scale = 1 / math.sqrt(d)
    codes = F.normalize(bits.float() * scale * 2 - scale, dim=-1)
    return codes.permute(0, 4, 1, 2, 3)


def _as_scale_bits(bits: Tensor, batch: int, hw: tuple[int, int], d: int, si: int) -> Tensor:
    """Forced bits as [B, 1, h, w, d] int64, accepting [B, 1, h, w, d], [B, h, w, d] or [B, h*w, d]."""
    h, w = hw
    if bits.numel() != batch * h * w * d:
        raise ConfigError(f"forced bits of scale {si} have shape {tuple(bits.shape)}; expected {batch}x{h}x{w}x{d} "
                          "bits (as [B, 1, h, w, d], [B, h, w, d] or [B, h*w, d])")
    if bits.dtype.is_floating_point or bool(((bits != 0) & (bits != 1)).any()):
        raise ConfigError(f"forced bits of scale {si} must be integers 0/1")
    return bits.reshape(batch, 1, h, w, d).long()


# -------------------------------------------------------------------------------------------- the LLM


@dataclass
class PromptState:
    """A prefilled prompt: post-norm hidden states [B, L, H] and the LLM KV cache (grown by generation)."""

    hidden: Tensor
    cache: Any


def _language_model(vlm: nn.Module) -> nn.Module:
    """The text decoder of a v5 ``Qwen2VLForConditionalGeneration`` (``model.language_model``), or ``vlm`` itself."""
    inner = getattr(vlm, "model", None)
    lm = getattr(inner, "language_model", None)
    if lm is not None:
        return lm
    if hasattr(vlm, "embed_tokens") and hasattr(vlm, "layers"):
        return vlm
    raise ConfigError(f"{type(vlm).__name__} is neither a Qwen2VLForConditionalGeneration nor its text decoder")


def prefill(vlm: nn.Module, input_ids: Tensor, **inputs: Any) -> PromptState:
    """Run the prompt (last token ``<|image_gen_start|>``) through Qwen2-VL with a fresh cache.

    ``inputs`` may carry ``pixel_values`` / ``image_grid_thw`` for prompts with images. Batches must be
    unpadded (every row the same length); upstream itself supports one prompt at a time.
    """
    from transformers import DynamicCache

    if input_ids.ndim != 2:
        raise ConfigError(f"prompt ids must be [B, L], got shape {tuple(input_ids.shape)}")
    if inputs.get("attention_mask") is not None and not bool(inputs["attention_mask"].all()):
        raise ConfigError("padded prompts are not supported: the generation loop continues every row at the same "
                          "cache position (give same-length prompts)")
    base = getattr(vlm, "model", vlm)
    cache = DynamicCache(config=getattr(vlm, "config", None))
    out = base(input_ids=input_ids, cache=cache, use_cache=True, **inputs)
    return PromptState(hidden=out.last_hidden_state, cache=cache)


def _llm(lm: nn.Module, embeds: Tensor, cache: Any | None) -> Tensor:
    """Post-norm hidden states of ``embeds`` [B, l, H]; with a cache, positions continue at its length and the
    cache grows by ``l``; without, positions start at 0 and nothing is kept."""
    start = cache.get_seq_length() if cache is not None else 0
    positions = torch.arange(start, start + embeds.shape[1], device=embeds.device).expand(embeds.shape[0], -1)
    out = lm(inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=cache is not None)
    return out.last_hidden_state


# ----------------------------------------------------------------------------------------- generation


@dataclass
class GenerationOutput:
    """What one call of :func:`generate_bits` produced; lists have one entry per scale run.

    bits:          [B, 1, h, w, d] int64 (sampled, or the forced ones)
    raw_logits:    [2B, h*w, 2d] rows ``[cond; uncond]`` (or [B, ...] without CFG), straight from the head
    logits:        [B, h*w, 2d] the sampler's logits (CFG-mixed, divided by tau), before top-k/top-p
    log_prob:      [B] sum over scales of :func:`bit_log_prob` under ``logits``
    cond_log_prob: [B] the same under the raw conditional logits (tau 1, no CFG)
    summed_codes:  [B, d, 1, H, W] BSQ codes summed at the schedule's last scale: the BSQ-VAE decoder's input
                   (complete only when every scale ran)
    """

    schedule: list[tuple[int, int, int]]
    bits: list[Tensor] = field(default_factory=list)
    raw_logits: list[Tensor] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)
    log_prob_per_scale: list[Tensor] = field(default_factory=list)
    cond_log_prob_per_scale: list[Tensor] = field(default_factory=list)
    summed_codes: Tensor | None = None

    @property
    def log_prob(self) -> Tensor:
        return torch.stack(self.log_prob_per_scale, dim=1).sum(dim=1)

    @property
    def cond_log_prob(self) -> Tensor:
        return torch.stack(self.cond_log_prob_per_scale, dim=1).sum(dim=1)


def _per_scale(value: float | Sequence[float], n: int, name: str) -> list[float]:
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) < n:
        raise ConfigError(f"{name} has {len(values)} entries for {n} scales")
    return values[:n]


def generate_bits(
    vlm: nn.Module,
    head: VargptImageHead,
    prompt: PromptState,
    *,
    schedule: Sequence[tuple[int, int, int]] | None = None,
    num_scales: int | None = None,
    cfg: float | Sequence[float] = 3.0,
    tau: float | Sequence[float] = 0.5,
    top_k: int = 900,
    top_p: float = 0.97,
    generator: torch.Generator | None = None,
    forced_bits: Sequence[Tensor | None] | None = None,
    record: dict[str, Tensor] | None = None,
) -> GenerationOutput:
    """Next-scale bit generation of VARGPT-v1.1 with the LLM in the loop (module docstring has the steps).

    vlm:         v5 ``Qwen2VLForConditionalGeneration`` (or its text decoder) whose cache ``prompt`` holds
    head:        the image head (``vargpt_gen``, projectors, ``sos_embedding``)
    prompt:      from :func:`prefill`; its cache is EXTENDED by every scale (prefill again for another image)
    schedule:    scales ``(1, h, w)``; default ``scale_schedule('0.25M')``. Codes are summed at its last scale
    num_scales:  stop after this many scales (upstream's ``trunk_scale``); the schedule still sets the sizes
    cfg, tau:    per-scale lists or one value; any cfg != 1 runs the unconditional branch at every scale
    forced_bits: per scale, bits to use instead of sampling (teacher forcing; ``None`` entries are sampled)
    record:      if a dict, filled with intermediate tensors under the fixture's names (``scale0.head_input_C``...)

    Gradients flow unless the caller wraps the call in ``torch.no_grad()``.
    """
    sched = [tuple(int(v) for v in s) for s in (schedule if schedule is not None else scale_schedule("0.25M"))]
    if any(len(s) != 3 or s[0] != 1 for s in sched):
        raise ConfigError(f"scale schedule entries must be (1, h, w) (images, not video); got {sched}")
    extent = rope_extent(sched)  # type: ignore[arg-type]
    n_run = len(sched) if num_scales is None else num_scales
    if not 0 < n_run <= len(sched):
        raise ConfigError(f"num_scales {num_scales} is outside 1..{len(sched)}")
    cfgs, taus = _per_scale(cfg, n_run, "cfg"), _per_scale(tau, n_run, "tau")
    if any(t <= 0 for t in taus):
        raise ConfigError(f"tau must be positive at every scale, got {taus}")
    forced = list(forced_bits or [])
    if len(forced) > n_run:
        raise ConfigError(f"{len(forced)} forced-bit scales for {n_run} scales run")

    lm = _language_model(vlm)
    gen, cfg_h = head.vargpt_gen, head.cfg
    c, d = cfg_h.embed_dim, cfg_h.codebook_dim
    prompt_h = prompt.hidden
    b, length, _ = prompt_h.shape
    if length < 2:
        raise ConfigError("the prompt must hold at least one token before <|image_gen_start|>")
    use_cfg = any(v != 1 for v in cfgs)
    dtype = next(gen.parameters()).dtype
    llm_dtype = next(lm.parameters()).dtype

    # Cross-attention context [N, L-1, C] and the condition [N, C], N = 2B with CFG (cond rows first).
    context = head.image_gen_projector_out(prompt_h[:, :-1].to(dtype))  # [B, L-1, C]
    sos = head.sos_row().to(dtype).expand(b, 1, c)  # [B, 1, C]
    if use_cfg:
        context = torch.cat([context, gen.uncond_rows(length - 1).expand(b, -1, -1)], dim=0)
        sos = torch.cat([sos, gen.uncond_rows(1).expand(b, 1, c)], dim=0)
    cond, gss = gen.condition(sos)  # [N, C], [N, 1, 6, C]
    if record is not None:
        record["ctx.kv_compact_C"] = context[0]

    x_in = head.image_gen_projector(cond.unsqueeze(1) + gen.pos_start)  # [N, 1, H]: scale 0 input
    out = GenerationOutput(schedule=list(sched))  # type: ignore[arg-type]
    final = sched[-1]
    summed: Tensor | float = 0.0
    icache = InfinityCache()
    for si in range(n_run):
        _, h, w = sched[si]
        hid = _llm(lm, x_in[:b].to(llm_dtype), prompt.cache)  # [B, hw, H], extends the prompt cache
        if use_cfg:
            hid_u = _llm(lm, x_in[b:].to(llm_dtype), None)  # [B, hw, H], no cache
            if record is not None:
                record[f"scale{si}.llm_inputs_embeds_uncond"] = x_in[b:]
                record[f"scale{si}.llm_last_hidden_uncond"] = hid_u
            hid = torch.cat([hid, hid_u], dim=0)
        if record is not None:
            record[f"scale{si}.llm_inputs_embeds_cond"] = x_in[:b]
            record[f"scale{si}.llm_last_hidden_cond"] = hid[:b]
        tokens = head.image_gen_projector_out(hid.to(dtype))  # [N, hw, C]
        if record is not None:
            record[f"scale{si}.head_input_C"] = tokens.reshape(-1, c)
        cos, sin = rope2d_cos_sin(cfg_h.head_dim, (h, w), extent, device=tokens.device)
        feats = gen.run_scale(tokens, si, gss, context, None, cos, sin, icache)  # [N, hw, C]
        raw = gen.logits(feats, cond)  # [N, hw, 2d]
        mixed = cfg_mix(raw, cfgs[si], taus[si]) if use_cfg else raw * (1 / taus[si])  # [B, hw, 2d]

        given = forced[si] if si < len(forced) else None
        if given is not None:
            bits = _as_scale_bits(given.to(raw.device), b, (h, w), d, si)
        else:
            with torch.no_grad():
                drawn = sample_bits(mixed.detach(), top_k=top_k, top_p=top_p, generator=generator)
            bits = drawn.view(b, 1, h, w, d)
        flat = bits.view(b, h * w, d)
        out.bits.append(bits)
        out.raw_logits.append(raw)
        out.logits.append(mixed)
        out.log_prob_per_scale.append(bit_log_prob(mixed, flat))
        out.cond_log_prob_per_scale.append(bit_log_prob(raw[:b], flat))
        if record is not None:
            record[f"scale{si}.bit_logits_raw"] = raw
            record[f"scale{si}.sampled_bits"] = bits

        codes = bits_to_codes(bits)  # [B, d, 1, h, w]
        if si == len(sched) - 1:
            summed = summed + codes
            break
        summed = summed + F.interpolate(codes, size=final, mode="trilinear")  # [B, d, 1, H, W]
        if si + 1 < n_run:
            nxt = sched[si + 1]
            grid = F.interpolate(summed, size=nxt, mode="trilinear").squeeze(2)  # [B, d, h', w']
            grid = grid.reshape(b, d, -1).transpose(1, 2).to(dtype)  # [B, h'w', d]
            x_in = head.image_gen_projector(gen.word_embed(grid))  # [B, h'w', H]
            if use_cfg:
                x_in = x_in.repeat(2, 1, 1)  # the unconditional branch continues from the same image
    out.summed_codes = summed if isinstance(summed, Tensor) else None
    return out
