"""The Generator (Generate): L candidate images per spec, and the Solver gate on specs (algorithm.md §6.1–6.2).

``Generator.generate`` draws L = 3 candidates per spec prompt in ONE batched ``generate_images`` call
under the generator role. ``gate_specs`` is the §6.1 acceptance test of a spec *before* any image is
made: enough good QA pairs, quality ≥ 0.55, and the Solver, answering the spec's questions on the
**real** source image, agrees with the expected answers (alignment ≥ 0.55).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from asg._validate import number
from asg.roles.answers import soft_match
from asg.roles.solver import Solver, SolverAnswers
from asg.roles.spec import Spec
from asg.types import GeneratedImage


@attrs.frozen
class GeneratorConfig:
    """How candidate images are drawn."""

    candidates: int = attrs.field(default=3, validator=number(1, 64, integer=True))  # L images per spec (§6.2)
    # sampler steps; None = the backbone's default
    num_steps: int | None = attrs.field(default=None, validator=attrs.validators.optional(number(1, 10_000, integer=True)))
    # classifier-free guidance; None = the backbone's default
    guidance: float | None = attrs.field(default=None, validator=attrs.validators.optional(number(0.0, 100.0)))


class Generator:
    """Draws candidate images for spec prompts through a backbone's generator role."""

    role = "generator"

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        self.config = config or GeneratorConfig()

    def generate(
        self, backbone: Any, prompts: Sequence[str | Spec], *, seed: int | None = None
    ) -> list[tuple[GeneratedImage, ...]]:
        """L candidates per spec (or prompt string), one batched call; result[i] belongs to prompts[i]."""
        L = self.config.candidates
        if not prompts:
            return []
        texts = [p.prompt if isinstance(p, Spec) else p for p in prompts]
        batch = [p for p in texts for _ in range(L)]
        with backbone.use_role(self.role):
            images = backbone.generate_images(
                batch, seed=seed, num_steps=self.config.num_steps, guidance=self.config.guidance
            )
        if len(images) != len(batch):
            raise RuntimeError(f"backbone {getattr(backbone, 'name', '?')!r} returned {len(images)} images for {len(batch)} prompts")
        return [tuple(images[i * L:(i + 1) * L]) for i in range(len(prompts))]


@attrs.frozen
class GateConfig:
    """Acceptance test of a generation spec (§6.1 step 6)."""

    min_pairs: int = attrs.field(default=2, validator=number(0, 8, integer=True))  # QA pairs needed
    min_quality: float = attrs.field(default=0.55, validator=number(0.0, 1.0))  # spec_quality needed
    min_alignment: float = attrs.field(default=0.55, validator=number(0.0, 1.0))  # Solver agreement on the real image
    samples: int = attrs.field(default=2, validator=number(1, 64, integer=True))  # Solver answers per QA question (n_spec)
    match_weight: float = attrs.field(default=0.7, validator=number(0.0, 1.0))  # s_q = w·match + (1−w)·majority fraction


@attrs.frozen(eq=False)
class GateResult:
    """Whether a spec passed the gate, and why not."""

    accepted: bool
    alignment: float  # mean over QA pairs of s_q on the real image (0 when the Solver was not asked)
    quality: float  # the spec's quality
    scores: tuple[float, ...]  # s_q per QA pair
    reasons: tuple[str, ...]  # "few_pairs", "low_quality", "low_alignment"; empty when accepted
    answers: tuple[SolverAnswers, ...]  # the Solver's answers on the real image, per QA pair

    @property
    def selection_score(self) -> float:
        """0.65·quality + 0.35·alignment: picks the best attempt when none is accepted (§6.1)."""
        return 0.65 * self.quality + 0.35 * self.alignment


def _majority(labels: Sequence[str]) -> tuple[str, float]:
    """Most frequent label (first in order on ties) and its fraction."""
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    best = max(counts, key=lambda lab: counts[lab])  # dicts keep insertion order: first max wins
    return best, counts[best] / len(labels)


def qa_agreement(answers: SolverAnswers, expected: str, match_weight: float = 0.7) -> float:
    """s_q = w·soft_match(majority, expected) + (1 − w)·majority fraction (§6.3 with typed matching)."""
    label, frac = _majority(answers.labels)
    winner = next(s for s in answers.samples if s.label == label)
    return match_weight * soft_match(winner.answer.text, expected, answers.qtype) + (1 - match_weight) * frac


def gate_specs(
    solver: Solver,
    backbone: Any,
    images: Sequence[Any],
    specs: Sequence[Spec],
    *,
    config: GateConfig | None = None,
    force: bool = False,
    seed: int | None = None,
) -> list[GateResult]:
    """Gate each spec against its real image; all Solver calls in one batch.

    The Solver is asked only for specs that pass the pre-gate (pairs, quality), or for all with
    ``force`` (the last attempt, whose alignment is needed to pick the best attempt).
    """
    cfg = config or GateConfig()
    if len(images) != len(specs):
        raise ValueError(f"gate_specs got {len(images)} images but {len(specs)} specs")
    pre = [
        [r for r, bad in (("few_pairs", len(s.qa) < cfg.min_pairs), ("low_quality", s.quality < cfg.min_quality)) if bad]
        for s in specs
    ]
    asked = [k for k, s in enumerate(specs) if s.qa and (force or not pre[k])]
    qs = [(k, p) for k in asked for p in specs[k].qa]  # every QA pair of every asked spec, one Solver batch
    answers = (
        solver.answer(backbone, [images[k] for k, _ in qs], [p.question for _, p in qs], n=cfg.samples, seed=seed)
        if qs else []
    )
    by_spec: dict[int, list[tuple[SolverAnswers, float]]] = {}
    for (k, pair), ans in zip(qs, answers):
        by_spec.setdefault(k, []).append((ans, qa_agreement(ans, pair.expected, cfg.match_weight)))
    out = []
    for k, spec in enumerate(specs):
        got = by_spec.get(k, [])
        scores = tuple(s for _, s in got)
        alignment = sum(scores) / len(scores) if scores else 0.0
        reasons = list(pre[k])
        if alignment < cfg.min_alignment:
            reasons.append("low_alignment")
        out.append(GateResult(not reasons, alignment, spec.quality, scores, tuple(reasons), tuple(a for a, _ in got)))
    return out


__all__ = ["GateConfig", "GateResult", "Generator", "GeneratorConfig", "gate_specs", "qa_agreement"]
