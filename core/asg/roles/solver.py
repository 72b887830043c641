"""The Solver (Solve): Prompt-Perturbed Sampling and answer-token locations (algorithm.md §3.4–3.5, §4).

N = 7 answers per question: sample 0 is greedy under the canonical framing (with focus hint 0, the
§3.4 spot-check); samples 1..6 are drawn under PPS framing i and focus hint i with an anti-correlated
(temperature, top-p) ladder. All samples of all questions go through ONE batched ``generate_text``
call (or one for the perturbed samples when the greedy pass was run before, e.g. as the STE
spot-check of K candidates). Each sample keeps the prompt it was generated under: asg trains it under
that prompt (recipe quirk 2).

STE (§4, recipe quirk 5) is measured on *answer* tokens: for greedy samples the Solver locates the
answer content inside the completion's tokens (after the opening tag, which may be one token or
several) so that ``SolverSample.answer_entropies`` can slice the per-step statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from asg._validate import number
from asg.roles.answers import ParsedAnswer, extract_answer, parse_answer, question_type
from asg.roles.templates import RoleTemplates
from asg.types import Completion, Prompt, SamplingParams

# Ladder quantiles by sample index (§3.5): 0, 1, .2, .8, .4, .6, .1, .9, .3, .7, .5, then base-2
# van der Corput. Index 0 is the greedy sample, so perturbed sample i uses PPS_QUANTILES[i].
PPS_QUANTILES: tuple[float, ...] = (0.0, 1.0, 0.2, 0.8, 0.4, 0.6, 0.1, 0.9, 0.3, 0.7, 0.5)


def van_der_corput(k: int) -> float:
    """The k-th base-2 van der Corput number (k >= 1): 1/2, 1/4, 3/4, 1/8, 5/8, ..."""
    q, denom = 0.0, 1.0
    while k:
        denom *= 2.0
        k, bit = divmod(k, 2)
        q += bit / denom
    return q


def pps_quantile(i: int) -> float:
    """Quantile q_i of PPS sample i: the fixed head, then van der Corput values not already used."""
    if i < 0:
        raise ValueError(f"sample index must be >= 0, got {i}")
    if i < len(PPS_QUANTILES):
        return PPS_QUANTILES[i]
    used, k, q = set(PPS_QUANTILES), 0, 0.0
    for _ in range(i - len(PPS_QUANTILES) + 1):
        while True:
            k += 1
            q = van_der_corput(k)
            if q not in used:
                used.add(q)
                break
    return q


@attrs.frozen
class PPSLadder:
    """Anti-correlated sampling ladder: T_i = T_min + (T_max−T_min)·q_i, P_i = P_min + (P_max−P_min)·(1−q_i).

    With the strict-stage ranges below, samples 1..6 get (2.5, 0.30), (0.9, 0.86), (2.1, 0.44),
    (1.3, 0.72), (1.7, 0.58), (0.7, 0.93).
    """

    t_min: float = attrs.field(default=0.5, validator=number(0.0, 100.0, lo_open=True))  # hottest gets t_max
    t_max: float = attrs.field(default=2.5, validator=number(0.0, 100.0, lo_open=True))
    p_min: float = attrs.field(default=0.30, validator=number(0.0, 1.0, lo_open=True))  # paired with t_max
    p_max: float = attrs.field(default=1.0, validator=number(0.0, 1.0, lo_open=True))

    def __attrs_post_init__(self) -> None:
        if self.t_min > self.t_max:
            raise ValueError(f"PPSLadder.t_min must be <= t_max, got t_min={self.t_min}, t_max={self.t_max}")
        if self.p_min > self.p_max:
            raise ValueError(f"PPSLadder.p_min must be <= p_max, got p_min={self.p_min}, p_max={self.p_max}")

    def temperature_top_p(self, i: int) -> tuple[float, float]:
        """(T_i, P_i) of perturbed sample i >= 1, rounded to 6 decimals."""
        if i < 1:
            raise ValueError(f"perturbed samples are numbered from 1, got {i} (sample 0 is greedy)")
        q = pps_quantile(i)
        t = self.t_min + (self.t_max - self.t_min) * q
        p = self.p_min + (self.p_max - self.p_min) * (1.0 - q)
        return round(t, 6), round(p, 6)

    def sampling(self, i: int, max_new_tokens: int) -> SamplingParams:
        """Sampling settings of sample i: greedy for 0, the ladder for i >= 1."""
        if i == 0:
            return SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
        t, p = self.temperature_top_p(i)
        return SamplingParams(temperature=t, top_p=p, max_new_tokens=max_new_tokens)


@attrs.frozen
class SolverConfig:
    """How the Solver samples its N answers."""

    n: int = attrs.field(default=7, validator=number(1, 64, integer=True))  # answers per question (1 greedy + n−1 PPS)
    max_new_tokens: int = attrs.field(default=96, validator=number(1, 100_000, integer=True))  # §3.4/§3.5
    ladder: PPSLadder = attrs.field(factory=PPSLadder, validator=attrs.validators.instance_of(PPSLadder))  # (T, top-p) per sample
    greedy_hint: bool = True  # the greedy sample carries focus hint 0 (§3.4 spot-check); False = canonical, no hint


@attrs.frozen(eq=False)
class SolverSample:
    """One Solver answer: the prompt it was generated under, the completion, and its parsed answer."""

    prompt: Prompt  # the PPS prompt this sample was generated under (train under it: quirk 2)
    completion: Completion
    answer: ParsedAnswer
    pps_index: int  # 0 = greedy canonical, i >= 1 = PPS framing/hint/ladder step i
    # [start, end) of the answer content in completion.token_ids; located for greedy samples (STE)
    # only, None for the others and when the completion has no answer tag
    answer_tokens: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return self.answer.label

    def answer_entropies(self, k: int = 5) -> Any:
        """Full-vocabulary entropies (nats) of the first ``k`` answer tokens, (≤k,) tensor (§4).

        The window starts at the first token after the answer tag; an empty answer still gives the
        step right after the tag. Without a located tag it is the completion's first ``k`` steps
        (check ``answer_tokens is None``). ``None`` when the completion has no statistics.
        """
        stats = self.completion.stats
        if stats is None:
            return None
        if self.answer_tokens is None:
            return stats.entropy[:k]
        start, end = self.answer_tokens
        return stats.entropy[start:min(max(end, start + 1), start + k)]


@attrs.frozen(eq=False)
class SolverAnswers:
    """All answers to one question (§3.5): the raw material of the vote, H_sc, STE and the update."""

    question: str
    qtype: str  # count / binary / other
    samples: tuple[SolverSample, ...]  # in PPS-index order; samples[0] is greedy when index 0 was asked for

    @property
    def labels(self) -> tuple[str, ...]:
        """The N typed vote labels."""
        return tuple(s.label for s in self.samples)

    @property
    def prompts(self) -> tuple[Prompt, ...]:
        return tuple(s.prompt for s in self.samples)

    @property
    def completions(self) -> tuple[Completion, ...]:
        return tuple(s.completion for s in self.samples)

    @property
    def greedy(self) -> SolverSample | None:
        return next((s for s in self.samples if s.pps_index == 0), None)

    def ste_entropies(self, k: int = 5) -> Any:
        """Answer-token entropies of the greedy sample (``None`` without a greedy sample or stats)."""
        g = self.greedy
        return None if g is None else g.answer_entropies(k)


# -- locating the answer inside the tokens -----------------------------------------------------------
def answer_token_span(
    token_ids: Sequence[int], decode: Callable[[list[int]], str], tags: tuple[str, str]
) -> tuple[int, int] | None:
    """[start, end) of the answer content in ``token_ids``, exact for any tokenisation of the tag.

    start = the smallest j whose prefix ``decode(ids[:j])`` contains the opening tag (so token j is the
    first after it, whether the tag took one token or several); end = the smallest j whose prefix
    contains the whole (stripped) answer after the tag. ``None`` when there is no opening tag.
    """
    ids = list(token_ids)
    open_tag = tags[0].lower()
    full = decode(ids)
    ext = extract_answer(full, tags)
    if ext.source not in ("tag", "open_tag"):
        return None
    start = next((j for j in range(1, len(ids) + 1) if open_tag in decode(ids[:j]).lower()), None)
    if start is None:
        return None
    content = ext.text.lower()
    if not content:
        return start, start
    for j in range(start, len(ids) + 1):
        prefix = decode(ids[:j]).lower()
        after = prefix[prefix.find(open_tag) + len(open_tag):].lstrip()
        if after.startswith(content):
            return start, j
    return start, len(ids)


def _decoder(backbone: Any) -> Callable[[list[int]], str] | None:
    """``backbone.tokenizer.decode`` when the backbone exposes one (HF convention), else ``None``."""
    decode = getattr(getattr(backbone, "tokenizer", None), "decode", None)
    if not callable(decode):
        return None
    return lambda ids: decode(ids, skip_special_tokens=True)


def _spans_by_score(
    backbone: Any, prompts: Sequence[Prompt], completions: Sequence[Completion], tags: tuple[str, str]
) -> list[tuple[int, int] | None]:
    """Protocol-only fallback: count the tokens of the completion text up to the tag and up to the
    answer's end with one batched ``backbone.score`` call (re-tokenised text: approximate when the
    sampled tokenisation is not the canonical one)."""
    cuts: list[tuple[int, int, int] | None] = []
    for c in completions:
        ext = extract_answer(c.text, tags)
        o = c.text.lower().find(tags[0].lower())
        cuts.append((o + len(tags[0]), max(ext.span[1], o + len(tags[0])), len(c.token_ids))
                    if ext.source in ("tag", "open_tag") and o >= 0 else None)
    rows = [(p, c.text[:cut[k]]) for p, c, cut in zip(prompts, completions, cuts) if cut for k in (0, 1)]
    if not rows:
        return [None] * len(completions)
    with backbone.use_role("solver"):
        out = backbone.score([p for p, _ in rows], [t for _, t in rows], append_eos=False)
    counts = [int(n) for n in out.mask.sum(-1).tolist()]
    spans: list[tuple[int, int] | None] = []
    it = iter(counts)
    for cut in cuts:
        if cut is None:
            spans.append(None)
        else:
            a, b = next(it), next(it)
            spans.append((min(a, cut[2]), min(max(a, b), cut[2])))
    return spans


class Solver:
    """Answers questions about images through a backbone's solver role (greedy + PPS samples)."""

    role = "solver"

    def __init__(self, config: SolverConfig | None = None) -> None:
        self.config = config or SolverConfig()

    def _prompt(self, tpl: RoleTemplates, question: str, i: int, image: Any) -> Prompt:
        hint = i > 0 or self.config.greedy_hint
        return Prompt(tpl.solver_prompt(question, i, hint=hint), image=image)

    def _run(self, backbone: Any, tpl: RoleTemplates, rows: list[tuple[Any, str, int]], seed: int | None) -> list[SolverSample]:
        """Generate every (image, question, pps index) row in ONE call; locate greedy answer tokens."""
        if not rows:
            return []
        cfg = self.config
        prompts = [self._prompt(tpl, q, i, im) for im, q, i in rows]
        sampling = [cfg.ladder.sampling(i, cfg.max_new_tokens) for _, _, i in rows]
        with backbone.use_role(self.role):
            completions = backbone.generate_text(prompts, sampling, seed=seed)
        if len(completions) != len(rows):
            name = getattr(backbone, "name", "?")
            raise RuntimeError(f"backbone {name!r} returned {len(completions)} completions for {len(rows)} prompts")
        greedy = [k for k, (_, _, i) in enumerate(rows) if i == 0]
        spans: dict[int, tuple[int, int] | None] = {}
        decode = _decoder(backbone)
        if decode is not None:
            spans = {k: answer_token_span(completions[k].token_ids, decode, tpl.answer_tags) for k in greedy}
        elif greedy:
            found = _spans_by_score(backbone, [prompts[k] for k in greedy], [completions[k] for k in greedy], tpl.answer_tags)
            spans = dict(zip(greedy, found))
        return [
            SolverSample(p, c, parse_answer(c.text, q, tpl.answer_tags), i, spans.get(k))
            for k, (p, c, (_, q, i)) in enumerate(zip(prompts, completions, rows))
        ]

    def greedy(self, backbone: Any, images: Sequence[Any], questions: Sequence[str], *, seed: int | None = None) -> list[SolverSample]:
        """One greedy answer per question in one batched call (the §3.4 STE spot-check)."""
        _check_lengths(images, questions)
        return self._run(backbone, RoleTemplates.of(backbone), [(im, q, 0) for im, q in zip(images, questions)], seed)

    def answer(
        self,
        backbone: Any,
        images: Sequence[Any],
        questions: Sequence[str],
        *,
        n: int | None = None,
        indices: Sequence[int] | None = None,
        greedy: Sequence[SolverSample] | None = None,
        seed: int | None = None,
    ) -> list[SolverAnswers]:
        """N answers per question (image i goes with question i), batched in one ``generate_text`` call.

        ``indices``: the PPS indices to sample (default ``range(n)``, n = config.n; e.g. (2, 3, 4) for
        the GRPO extras of §3.10). ``greedy``: sample-0 results already computed for these questions
        (``Solver.greedy``); they are reused and only the perturbed samples are generated.
        """
        _check_lengths(images, questions)
        idx = list(range(n if n is not None else self.config.n)) if indices is None else list(indices)
        if not idx or any(i < 0 for i in idx) or len(set(idx)) != len(idx):
            raise ValueError(f"indices must be distinct non-negative PPS indices, got {idx}")
        reuse = greedy is not None and 0 in idx
        if greedy is not None:
            if len(greedy) != len(questions) or any(g.pps_index != 0 for g in greedy):
                raise ValueError(f"greedy must hold one pps_index-0 sample per question ({len(questions)}), got {len(greedy)}")
            idx = [i for i in idx if i != 0]
        rows = [(im, q, i) for im, q in zip(images, questions) for i in idx]
        samples = self._run(backbone, RoleTemplates.of(backbone), rows, seed)
        out = []
        for k, q in enumerate(questions):
            mine = samples[k * len(idx):(k + 1) * len(idx)]
            if reuse:
                mine = [greedy[k], *mine]
            out.append(SolverAnswers(q, question_type(q), tuple(mine)))
        return out


def _check_lengths(images: Sequence[Any], questions: Sequence[str]) -> None:
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions (one image per question)")


__all__ = [
    "PPS_QUANTILES", "PPSLadder", "Solver", "SolverAnswers", "SolverConfig", "SolverSample",
    "answer_token_span", "pps_quantile", "van_der_corput",
]
