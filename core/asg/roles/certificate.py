"""Is a proposed question objective, and is its structure sound? (algorithm.md §3.3, simplified)

The reference scores a candidate from many structured fields (task card, domains, reasoning chain,
strategy code, ...). asg's proposer format carries the three that decide whether a question can be
answered from the image and checked by voting: the question, its visual target and its two-answer
test. ``check_objective`` is the §3.3 objective-question test; ``certify`` is the certificate over
those fields, re-weighted to sum to 1 (weights in :class:`CertificateConfig`).
"""

from __future__ import annotations

import re

import attrs

from asg._validate import number
from asg.roles.answers import ARTICLES, AUXILIARIES, normalize

WH_WORDS = frozenset({"what", "which", "how", "where", "who", "whose", "whom", "when", "why"})
# "why"/"when" start a question but are not objective about pixels; the keyword test catches them.
_OBJECTIVE = re.compile(
    r"\b(how many|number of|count|what (is|are|color|colour|shape|size|kind|type|letter|word|number)|which|"
    r"where|colou?rs?|shapes?|sizes?|position|pattern|material|texture|left|right|above|below|under|over|"
    r"behind|in front|between|next to|near|top|bottom|middle|cent(er|re)|corner|larger|smaller|bigger|"
    r"taller|shorter|more|fewer|same|different|there|visible|written|text|say|read|open|closed|standing|"
    r"sitting|holding|wearing)\b"
)
LATENT_WORDS = (
    "crispy", "fresh", "hot", "cold", "tasty", "delicious", "about to", "recently", "likely", "probably",
    "going to", "happy", "sad", "feel", "think", "want", "intend", "might",
)
PLACEHOLDERS = frozenset({
    "target", "object", "thing", "something", "x", "y", "tbd", "n/a", "na", "placeholder", "none", "...", "?",
})
GENERIC_TARGETS = frozenset({
    "person", "people", "man", "woman", "car", "object", "objects", "thing", "things", "item", "items",
    "shape", "shapes", "animal", "image", "picture", "scene", "it", "this", "that",
})
_MARKUP = re.compile(r"</?[A-Za-z_][^<>]*>|```")
_LITERAL = re.compile(r"\{[^{}]*\}|⟨[^⟩]*⟩|\[[^\]]*\]|\([^)]*\+[^)]*\)|\b[HMCD]\d{1,2}\b|\bX or Y\b")


@attrs.frozen
class ObjectiveCheck:
    """Result of the objective-question test: ``objective`` iff ``reasons`` is empty."""

    reasons: tuple[str, ...]  # every failed rule, e.g. ("too_short", "no_question_mark")

    @property
    def objective(self) -> bool:
        return not self.reasons


def check_objective(question: str) -> ObjectiveCheck:
    """The §3.3 ``is_objective`` rules: no markup or placeholders, at least 4 words, starts with a
    wh-/auxiliary word, ends with "?", no latent (non-visual) yes/no question, no short forced-choice
    tail "X or Y?", and an objective keyword (count, colour, shape, position, ...)."""
    q = " ".join(question.split())
    low = q.lower()
    words = re.findall(r"[a-z0-9']+", low)
    reasons = []
    if _MARKUP.search(q):
        reasons.append("markup")
    if _LITERAL.search(q):
        reasons.append("placeholder")
    if len(words) < 4:
        reasons.append("too_short")
    if not words or (words[0] not in WH_WORDS and words[0] not in AUXILIARIES):
        reasons.append("bad_start")
    if not q.endswith("?"):
        reasons.append("no_question_mark")
    if words and words[0] in AUXILIARIES and any(re.search(rf"\b{w}\b", low) for w in LATENT_WORDS):
        reasons.append("latent_yes_no")
    tail = re.search(r"\bor\s+([^?]*)\?\s*$", low)
    if tail and len(tail.group(1).split()) <= 3:
        reasons.append("forced_choice")
    if not _OBJECTIVE.search(low):
        reasons.append("no_objective_keyword")
    return ObjectiveCheck(tuple(reasons))


@attrs.frozen
class CertificateConfig:
    """Weights of the structural certificate (§3.3 items kept by asg, re-weighted to sum to 1)."""

    w_objective: float = attrs.field(default=0.40, validator=number(0.0, 1.0))  # passes check_objective
    w_options: float = attrs.field(default=0.25, validator=number(0.0, 1.0))  # two distinct concrete options
    w_target: float = attrs.field(default=0.20, validator=number(0.0, 1.0))  # a specific visual target
    w_grounded: float = attrs.field(default=0.15, validator=number(0.0, 1.0))  # target named in the question
    penalty_literal: float = attrs.field(default=0.20, validator=number(0.0, 1.0))  # template literal left in
    penalty_generic: float = attrs.field(default=0.12, validator=number(0.0, 1.0))  # target is one generic noun
    penalty_leak: float = attrs.field(default=0.20, validator=number(0.0, 1.0))  # question offers its options
    threshold: float = attrs.field(default=0.60, validator=number(0.0, 1.0))  # valid iff score >= this (strict)


@attrs.frozen
class Certificate:
    """Structural certificate c in [0, 1] of one candidate and the flags behind it."""

    score: float  # clip(sum of weights of passed components - penalties, 0, 1)
    valid: bool  # score >= threshold, objective, options and target present, no negative flag
    components: dict[str, float]  # objective/options/target/grounded: 1.0 passed, 0.0 failed
    flags: tuple[str, ...]  # negative flags: "literal", "generic_target", "options_leak"
    objective: ObjectiveCheck


def _content_words(text: str) -> list[str]:
    return [w.rstrip("s") for w in normalize(text, max_words=64).split() if w not in ARTICLES and w != "and"]


def _is_placeholder(text: str) -> bool:
    norm = normalize(text)
    return not norm or norm in PLACEHOLDERS or bool(_LITERAL.search(text))


def certify(
    question: str, target: str, options: tuple[str, ...], config: CertificateConfig = CertificateConfig()
) -> Certificate:
    """Certificate of a candidate (question, visual target, two-answer test)."""
    objective = check_objective(question)
    norm_options = [normalize(o) for o in options]
    has_options = (
        len(options) >= 2 and not any(_is_placeholder(o) for o in options) and len(set(norm_options)) >= 2
    )
    generic = normalize(target) in GENERIC_TARGETS
    has_target = not _is_placeholder(target) and not generic
    target_words, question_words = _content_words(target), set(_content_words(question))
    grounded = has_target and sum(w in question_words for w in target_words) * 2 >= len(target_words) > 0
    flags = []
    if _LITERAL.search(question) or _LITERAL.search(target):
        flags.append("literal")
    if generic:
        flags.append("generic_target")
    low = normalize(question, max_words=64)
    if has_options and any(f"{a} or {b}" in low for a in norm_options for b in norm_options if a != b):
        flags.append("options_leak")
    components = {
        "objective": float(objective.objective), "options": float(has_options),
        "target": float(has_target), "grounded": float(grounded),
    }
    penalty = {"literal": config.penalty_literal, "generic_target": config.penalty_generic, "options_leak": config.penalty_leak}
    raw = (
        config.w_objective * components["objective"] + config.w_options * components["options"]
        + config.w_target * components["target"] + config.w_grounded * components["grounded"]
        - sum(penalty[f] for f in flags)
    )
    score = min(1.0, max(0.0, raw))
    structural = all(components[c] for c in ("objective", "options", "target"))
    valid = score >= config.threshold and structural and not flags
    return Certificate(score, valid, components, tuple(flags), objective)


__all__ = [
    "GENERIC_TARGETS", "LATENT_WORDS", "PLACEHOLDERS", "WH_WORDS",
    "Certificate", "CertificateConfig", "ObjectiveCheck", "certify", "check_objective",
]
