"""QA fidelity and yes/no contradiction of generated images (algorithm.md §6.3 item 1, §11).

Reference-answer mode (the paper's S_fid): for each verification question j of the spec, the Solver
answers on the *real* source image (a_ref,j) and on the generated image (n answers, majority â_j,
agreement f_j). Then, per candidate image,

    S_fid = (1/M) sum_j [(1 - a) match(â_j, a_ref,j) + a f_j]        (0.5 when the spec has no QA)
    contra = (1/M) sum_j 1[â_j and a_ref,j have opposite yes/no polarity]

with match = 1[â_j = a_ref,j] (paper) or the graded ``soft`` match of §6.3 (1.0 equal, numbers by
relative error 1.0/0.7/0.4 within 1/5/20 %, 0.8 substring either way, else word Jaccard), and
a = 0 (paper; the reference code used 0.3). A reference answer that is unreadable (empty, or the
``ood`` label of an answer that fits no question type) matches nothing: two garbage answers agreeing
must not earn fidelity.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

from asg._validate import number, one_of
from asg.rewards.components import RewardOutput
from asg.roles.answers import NO_WORDS, NUMBER_WORDS, OOD, YES_WORDS
from asg.roles.answers import normalize as normalize_answer

MATCHES: tuple[str, ...] = ("exact", "soft")
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?$")


@attrs.frozen
class FidelityConfig:
    """How generated-image answers are compared with real-image answers."""

    match: str = attrs.field(default="exact", validator=one_of(MATCHES))  # "exact" (paper) or "soft" (§6.3 graded)
    agreement_weight: float = attrs.field(default=0.0, validator=number(0.0, 1.0))  # a: weight of maj_frac on x̂
    empty_score: float = attrs.field(default=0.5, validator=number(0.0, 1.0))  # S_fid of a spec without QA pairs


DEFAULT_FIDELITY = FidelityConfig()


def normalize(text: str) -> str:
    """The roles' answer normalisation (lowercase, punctuation and articles removed, first 8 words)."""
    if not isinstance(text, str):
        raise TypeError(f"answer must be a str, got {text!r} ({type(text).__name__})")
    return normalize_answer(text)


def _number(text: str) -> float | None:
    if _NUMBER.match(text):
        return float(text)
    return float(NUMBER_WORDS[text]) if text in NUMBER_WORDS else None


def soft_match(answer: str, expected: str) -> float:
    """Graded agreement of two short answers in [0, 1] (§6.3 item 1; empty ``expected`` -> 0.5)."""
    a, e = normalize(answer), normalize(expected)
    if not e:
        return 0.5
    if a == e:
        return 1.0
    na, ne = _number(a), _number(e)
    if na is not None and ne is not None:  # numbers are compared as numbers, never as substrings
        rel = abs(na - ne) / abs(ne) if ne != 0 else float("inf")
        return 1.0 if rel <= 0.01 else 0.7 if rel <= 0.05 else 0.4 if rel <= 0.20 else 0.0
    if a and (a in e or e in a):
        return 0.8
    wa, we = set(a.split()), set(e.split())
    return len(wa & we) / len(wa | we) if wa | we else 0.0


def polarity(answer: str) -> int:
    """+1 for a yes-like first word (yes/true/present/...), -1 for a no-like one, 0 otherwise."""
    words = normalize(answer).split()
    if not words:
        return 0
    return 1 if words[0] in YES_WORDS else -1 if words[0] in NO_WORDS else 0


def _majority(answers: str | Sequence[str], where: str) -> tuple[str, float]:
    if isinstance(answers, str):
        return normalize(answers), 1.0
    if not answers:
        raise ValueError(f"{where} must hold at least one answer")
    counts: dict[str, int] = {}
    for ans in answers:
        key = normalize(ans)
        counts[key] = counts.get(key, 0) + 1
    top = max(counts, key=counts.__getitem__)
    return top, counts[top] / len(answers)


def _check(generated: Any, reference: Sequence[str]) -> None:
    if isinstance(reference, str) or not isinstance(reference, Sequence):
        raise TypeError(f"reference must be a list of answers (one per question), got {type(reference).__name__}")
    for l, cand in enumerate(generated):
        if isinstance(cand, str) or not isinstance(cand, Sequence):
            raise TypeError(f"generated[{l}] must be a list with one entry per question, got {cand!r}")
        if len(cand) != len(reference):
            raise ValueError(f"generated[{l}] has {len(cand)} entries for {len(reference)} questions")


def qa_fidelity(
    generated: Sequence[Sequence[str | Sequence[str]]],
    reference: Sequence[str],
    config: FidelityConfig = DEFAULT_FIDELITY,
) -> RewardOutput:
    """S_fid per candidate: ``generated[l][j]`` = answer(s) on candidate l to question j,
    ``reference[j]`` = the Solver's answer to question j on the real image."""
    _check(generated, reference)
    values, diags = [], []
    for l, cand in enumerate(generated):
        if not reference:
            values.append(config.empty_score)
            diags.append({"qa_fidelity.n_questions": 0.0})
            continue
        scores, matches, agree = [], [], []
        for j, answers in enumerate(cand):
            top, frac = _majority(answers, f"generated[{l}][{j}]")
            ref = normalize(reference[j])
            if ref in ("", OOD):  # no readable reference answer: nothing to verify, never a match
                m = 0.0
            else:
                m = float(top == ref) if config.match == "exact" else soft_match(top, ref)
            scores.append((1.0 - config.agreement_weight) * m + config.agreement_weight * frac)
            matches.append(m)
            agree.append(frac)
        n = len(scores)
        values.append(sum(scores) / n)
        diags.append({
            "qa_fidelity.n_questions": float(n),
            "qa_fidelity.match": sum(matches) / n,
            "qa_fidelity.agreement": sum(agree) / n,
        })
    return RewardOutput(values, diags)


def contradiction(
    generated: Sequence[Sequence[str | Sequence[str]]],
    reference: Sequence[str],
) -> RewardOutput:
    """Fraction of questions whose majority answer on candidate l flips the yes/no of the reference."""
    _check(generated, reference)
    values, diags = [], []
    for l, cand in enumerate(generated):
        flips = 0
        for j, answers in enumerate(cand):
            top, _ = _majority(answers, f"generated[{l}][{j}]")
            pa, pr = polarity(top), polarity(reference[j])
            flips += int(pa != 0 and pr != 0 and pa != pr)
        values.append(flips / len(reference) if reference else 0.0)
        diags.append({"contradiction.flips": float(flips)})
    return RewardOutput(values, diags)


__all__ = [
    "DEFAULT_FIDELITY",
    "MATCHES",
    "FidelityConfig",
    "contradiction",
    "normalize",
    "polarity",
    "qa_fidelity",
    "soft_match",
]
