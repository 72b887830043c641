"""Generation specs: the Proposer's text-to-image prompt plus verification QA pairs (algorithm.md §6.1).

Format from ``prompt_templates['spec_prompt']`` / ``['spec_qa']``, e.g.
``<prompt>..</prompt><qa><question>..</question><expected>..</expected></qa>``. Parsing never raises:
missing QA blocks fall back to bare question/expected tags, then to "Q: / A:" lines; a missing prompt
falls back to a variation of the source caption (or a generic prompt) and is flagged.
"""

from __future__ import annotations

import re

import attrs

from asg.roles.answers import AUXILIARIES, normalize
from asg.roles.templates import RoleTemplates

SPEC_SOURCES: tuple[str, ...] = ("qa_blocks", "qa_tags", "qa_lines", "none")
MAX_QUESTION_WORDS = 24
MAX_EXPECTED_WORDS = 8
MAX_PROMPT_WORDS = 96
_TAG = re.compile(r"</?[A-Za-z_][^<>]*>|<\|[^<>]*?\|>")  # tags and written-out chat special tokens
_QA_LINES = re.compile(r"(?im)^\s*Q\s*[:.)]\s*(.+?)\s*$\s*^\s*A\s*[:.)]\s*(.+?)\s*$")
_INSTRUCTION_PREFIX = re.compile(
    r"^\s*(prompt\s*:|generate an? (image|picture|photo) (of|showing|with)|create an? (image|picture|photo) "
    r"(of|showing|with)|draw(ing)?\s*:?|an? (image|picture|photo) of|describe|the image shows|this image shows)\s*",
    re.IGNORECASE,
)
_IN_THIS_IMAGE = re.compile(r"\s*\bin this (image|picture|photo)\b", re.IGNORECASE)
_WH = ("what", "which", "how", "where", "who", "whose", "when", "why")


@attrs.frozen
class QAPair:
    """One verification question and the answer the generated image should give."""

    question: str
    expected: str


@attrs.frozen
class Spec:
    """A parsed, sanitised generation spec and its quality score (§6.1 step 5)."""

    prompt: str  # the composed text-to-image prompt (never empty)
    qa: tuple[QAPair, ...]  # at most max_pairs sanitised pairs
    quality: float  # spec_quality in [0, 1]
    source: str = attrs.field(validator=attrs.validators.in_(SPEC_SOURCES))  # where the QA pairs came from
    fallback_prompt: bool  # the prompt was missing or unusable and was replaced
    diagnostics: dict[str, float]  # n_raw, n_kept, unique fraction, dropped counts

    @property
    def malformed(self) -> bool:
        """The output had no usable prompt or no QA pair at all (counted per G-step as ``malformed.proposer``)."""
        return self.fallback_prompt or self.source == "none"


def _clean(text: str) -> str:
    return " ".join(_TAG.sub(" ", text).split())


def _tagged(text: str, tags: tuple[str, str]) -> list[str]:
    """Every ``tags``-delimited field in ``text`` (a missing close ends at the next tag)."""
    o, c = (re.escape(t) for t in tags)
    return [m.group(1) for m in re.finditer(o + r"(.*?)(?:" + c + r"|(?=<)|$)", text, re.DOTALL)]


def _raw_pairs(text: str, tpl: RoleTemplates) -> tuple[list[tuple[str, str]], str]:
    pairs = []
    o, c = (re.escape(t) for t in tpl.qa_tags)
    for m in re.finditer(o + r"(.*?)(?:" + c + r"|(?=" + o + r")|$)", text, re.DOTALL):
        body = m.group(1)
        qs, es = _tagged(body, tpl.qa_question_tags), _tagged(body, tpl.expected_tags)
        pairs.append((_clean(qs[0]) if qs else "", _clean(es[0]) if es else ""))
    if pairs:
        return pairs, "qa_blocks"
    qs, es = _tagged(text, tpl.qa_question_tags), _tagged(text, tpl.expected_tags)
    if qs and es:
        return [(_clean(q), _clean(e)) for q, e in zip(qs, es)], "qa_tags"
    lines = [(_clean(q), _clean(a)) for q, a in _QA_LINES.findall(text)]
    return (lines, "qa_lines") if lines else ([], "none")


def spec_quality(n_kept: int, n_raw: int, unique: float, all_yes_no: bool) -> float:
    """clip(0.5·min(1, n/2) + 0.3·n/n_raw + 0.2·unique − 0.2·[all expected yes/no ∧ n ≥ 2], 0, 1) (§6.1)."""
    if n_raw <= 0:
        return 0.0
    q = 0.5 * min(1.0, n_kept / 2) + 0.3 * n_kept / n_raw + 0.2 * unique - (0.2 if all_yes_no and n_kept >= 2 else 0.0)
    return min(1.0, max(0.0, q))


def compose_prompt(raw: str, caption: str | None = None, *, max_words: int = MAX_PROMPT_WORDS) -> str:
    """A declarative T2I prompt: instruction prefixes stripped, a question replaced by the caption,
    no "?", at most ``max_words`` words ("" when nothing usable is left)."""
    text = _clean(raw)
    for _ in range(3):
        text = _INSTRUCTION_PREFIX.sub("", text)
    text = _IN_THIS_IMAGE.sub("", text).strip(" :,")
    first = text.split()[0].lower() if text.split() else ""
    if (text.endswith("?") or first in _WH or first in AUXILIARIES) and caption:
        text = _clean(caption)
    text = text.replace("?", "").strip()
    return " ".join(text.split()[:max_words])


def parse_spec(
    text: str,
    templates: RoleTemplates,
    *,
    caption: str | None = None,
    max_pairs: int = 3,
    fallback_prompt: str = "a simple scene with a few objects",
) -> Spec:
    """Parse, sanitise and score one spec output; never raises."""
    raws = _tagged(text, templates.prompt_tags)
    prompt = compose_prompt(raws[0], caption) if raws else ""
    used_fallback = not prompt
    if used_fallback:
        prompt = f"create an image variation of {_clean(caption)}" if caption and _clean(caption) else fallback_prompt
    pairs, source = _raw_pairs(text, templates)
    n_raw = len(pairs)
    keys = [normalize(q, max_words=64) for q, _ in pairs]
    unique = len(set(keys)) / n_raw if n_raw else 0.0
    kept: list[QAPair] = []
    dropped = {"long_question": 0.0, "bad_expected": 0.0, "duplicate": 0.0}
    seen: set[str] = set()
    for (q, e), key in zip(pairs, keys):
        if not q or len(q.split()) > MAX_QUESTION_WORDS:
            dropped["long_question"] += 1
        elif not 1 <= len(e.split()) <= MAX_EXPECTED_WORDS:
            dropped["bad_expected"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(QAPair(q, e))
    kept = kept[:max_pairs]
    all_yes_no = bool(kept) and all(normalize(p.expected) in ("yes", "no") for p in kept)
    quality = spec_quality(len(kept), n_raw, unique, all_yes_no)
    diag = {"n_raw": float(n_raw), "n_kept": float(len(kept)), "unique": unique,
            "all_yes_no": float(all_yes_no), **{f"dropped_{k}": v for k, v in dropped.items()}}
    return Spec(prompt, tuple(kept), quality, source, used_fallback, diag)


__all__ = ["QAPair", "SPEC_SOURCES", "Spec", "compose_prompt", "parse_spec", "spec_quality"]
