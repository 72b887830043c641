"""Lenient answer normalisation and VQA accuracy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ._checks import require_choice
from .qa import QA
from .vocab import COLORS, NUMBER_WORDS, QTYPES, SHAPES, plural

# A model may wrap its answer as "<answer>3</answer>"; only the inside counts.
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_ANY_TAG = re.compile(r"</?[a-z_]+>", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+")

_NUMBERS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_SHAPE_WORDS = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}
_COLOR_WORDS = {col: col for col in COLORS}
_YES_NO = {"yes": "yes", "no": "no"}


def _vocabulary(qtype: str) -> dict[str, str]:
    if qtype == "count":
        return _NUMBERS
    if qtype == "color":
        return _COLOR_WORDS
    if qtype == "shape":
        return _SHAPE_WORDS
    return _YES_NO  # position and existence are yes/no questions


def answer_words(qtype: str) -> tuple[str, ...]:
    """The canonical answers of a question type, sorted: "0".."12" for counts, the colours, the shapes,
    or yes/no (what :func:`normalize_answer` maps a right answer to)."""
    require_choice("qtype", qtype, QTYPES)
    return tuple(sorted(set(_vocabulary(qtype).values()), key=lambda w: (len(w), w)))


def _tokens(text: str) -> list[str]:
    m = _ANSWER_TAG.search(text)
    if m:
        text = m.group(1)
    return _TOKEN.findall(_ANY_TAG.sub(" ", text).lower())


def normalize_answer(text: str, qtype: str) -> str:
    """Canonical form of a free-text answer for a question of type `qtype`.

    Returns the first token that is a valid answer for the type (digits for
    counts, number words zero..twelve become digits, plural shapes become
    singular); if there is none, the cleaned text, which then matches nothing.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r}")
    require_choice("qtype", qtype, QTYPES)
    tokens = _tokens(text)
    vocab = _vocabulary(qtype)
    for tok in tokens:
        if qtype == "count" and tok.isdigit():
            return str(int(tok))  # "03" -> "3"
        if tok in vocab:
            return vocab[tok]
    return " ".join(tokens)


def answer_correct(pred: str, qa: QA) -> bool:
    if not isinstance(qa, QA):
        raise TypeError(f"qa must be a QA, got {type(qa).__name__}")
    return normalize_answer(pred, qa.qtype) == qa.answer


def vqa_accuracy(records: Iterable[tuple[QA, str]]) -> dict[str, Any]:
    """Accuracy in percent: {"overall", "per_qtype": {qtype: pct}, "n", "n_per_qtype"}.

    per_qtype only lists types that occur, since 0% for an absent type would
    read as a failure.
    """
    hits: dict[str, list[bool]] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, (tuple, list)) or len(rec) != 2:
            raise ValueError(f"records[{i}] must be a (QA, prediction) pair, got {rec!r}")
        qa, pred = rec
        ok = answer_correct(pred, qa)  # validates qa before it is used as a key
        hits.setdefault(qa.qtype, []).append(ok)
    if not hits:
        raise ValueError("records is empty: accuracy is undefined")
    flat = [h for hs in hits.values() for h in hs]
    order = [t for t in QTYPES if t in hits]
    return {
        "overall": 100.0 * sum(flat) / len(flat),
        "per_qtype": {t: 100.0 * sum(hits[t]) / len(hits[t]) for t in order},
        "n": len(flat),
        "n_per_qtype": {t: len(hits[t]) for t in order},
    }
