"""Answer extraction and typed normalisation (algorithm.md §3.5).

A Solver completion is reduced to a *vote label*: the text inside the answer tag (with fallbacks when
the tag is missing or malformed), normalised by the question's type:

- ``count``  ("how many", "number of", "count"): the first integer or number word (zero..twelve) as
  digits, else ``"ood"``;
- ``binary`` (starts with an auxiliary verb, no "or"/"vs"): ``"yes"`` / ``"no"`` from the first word's
  variants (true, present, visible / false, absent, missing, none, not ...), else ``"ood"``;
- ``other``: lowercase, commas to spaces, punctuation and articles stripped, first 8 words.

Pure functions on strings; no model, no torch.
"""

from __future__ import annotations

import re

import attrs

QTYPES: tuple[str, ...] = ("count", "binary", "other")
OOD = "ood"  # label of an answer that does not fit its question's type
SOURCES: tuple[str, ...] = ("tag", "open_tag", "close_tag", "last_line", "empty")

NUMBER_WORDS: dict[str, str] = {
    w: str(i) for i, w in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
    )
}
YES_WORDS = frozenset({"yes", "yeah", "yep", "y", "true", "correct", "present", "exists", "exist", "visible"})
NO_WORDS = frozenset({"no", "nope", "n", "false", "incorrect", "absent", "missing", "none", "not"})
AUXILIARIES = frozenset({
    "is", "are", "was", "were", "am", "do", "does", "did", "can", "could", "has", "have", "had",
    "will", "would", "should", "shall", "may", "might", "must",
})
ARTICLES = frozenset({"a", "an", "the"})
# Answers that carry no information about the image (§3.5 low_info flag); yes/no counts only for
# questions that are not binary (for a binary question it is the only valid answer).
LOW_INFO = frozenset({
    "unknown", "unclear", "not visible", "cannot tell", "can't tell", "not sure", "none", "nothing",
    "something", "object", "thing", "supported", "unsupported", "n/a",
})
VAGUE_COUNTS = frozenset({"several", "many", "few", "some", "multiple", "various", "lots", "a lot", "numerous"})
MAX_CANONICAL_WORDS = 5  # the solver is told to answer in 1-5 words

_COUNT_Q = re.compile(r"\b(how many|number of|count)\b")
_CHOICE = re.compile(r"\bor\b|\bvs\.?\b|\bversus\b")
_WORD = re.compile(r"[a-z0-9]+(?:['.-][a-z0-9]+)*")
# punctuation not sandwiched between word characters ("3.5", "t-shirt", "don't" keep theirs)
_LOOSE_PUNCT = re.compile(r"(?<!\w)[^\w\s]+|[^\w\s]+(?!\w)")
_DIGITS = re.compile(r"\d+")
_TAG = re.compile(r"</?[A-Za-z_][^<>]*>")


def question_type(question: str) -> str:
    """``count``, ``binary`` or ``other`` for a question (§3.5 typed vote)."""
    q = " ".join(question.lower().split())
    if _COUNT_Q.search(q):
        return "count"
    words = _WORD.findall(q)
    if words and words[0] in AUXILIARIES and not _CHOICE.search(q):
        return "binary"
    return "other"


def normalize(text: str, *, max_words: int = 8) -> str:
    """Lowercase, commas to spaces, loose punctuation/quotes and articles removed, first ``max_words``."""
    t = text.lower().replace(",", " ")
    t = _LOOSE_PUNCT.sub(" ", t)
    words = [w for w in t.split() if w not in ARTICLES]
    return " ".join(words[:max_words])


def count_label(text: str) -> str:
    """The first integer ("03" -> "3") or number word (zero..twelve) in ``text`` as digits, else ``ood``."""
    for word in normalize(text, max_words=1_000).split():
        if _DIGITS.fullmatch(word):
            return str(int(word))
        if word in NUMBER_WORDS:
            return NUMBER_WORDS[word]
        m = re.fullmatch(r"(\d+)\.0+", word)  # "3.0"
        if m:
            return str(int(m.group(1)))
    return OOD


def binary_label(text: str) -> str:
    """``yes``/``no`` from the first word's variants, else ``ood``."""
    words = normalize(text).split()
    if not words:
        return OOD
    if words[0] in YES_WORDS:
        return "yes"
    if words[0] in NO_WORDS:
        return "no"
    return OOD


def typed_label(answer: str, qtype: str) -> str:
    """The vote label of ``answer`` for a question of type ``qtype``."""
    if qtype == "count":
        return count_label(answer)
    if qtype == "binary":
        return binary_label(answer)
    if qtype == "other":
        return normalize(answer)
    raise ValueError(f"qtype must be one of {list(QTYPES)}, got {qtype!r}")


@attrs.frozen
class Extraction:
    """Where the answer is in a completion and how it was found."""

    text: str  # the answer, stripped (not normalised)
    source: str = attrs.field(validator=attrs.validators.in_(SOURCES))  # which rule found it
    span: tuple[int, int]  # [start, end) of ``text`` in the completion's characters
    words_before: int  # words the solver wrote before its answer (length penalty, §3.7)


def _strip_span(full: str, start: int, end: int) -> tuple[int, int]:
    piece = full[start:end]
    left = len(piece) - len(piece.lstrip())
    right = len(piece.rstrip())
    return (start + left, start + right) if right > left else (start + left, start + left)


def _words(text: str) -> int:
    return len(_TAG.sub(" ", text).split())


def extract_answer(text: str, tags: tuple[str, str] = ("<answer>", "</answer>")) -> Extraction:
    """The answer inside ``tags``; fallbacks when the tag is missing or malformed (§3.5).

    1. ``<answer>X</answer>`` (the first complete pair)     -> source ``tag``
    2. ``<answer>X`` without a closing tag: X up to the next tag or line end -> ``open_tag``
    3. ``X</answer>`` without an opening tag: the line before it -> ``close_tag``
    4. no tag: the last non-empty line, other tags removed  -> ``last_line``
    5. nothing                                              -> ``empty``
    """
    open_tag, close_tag = tags
    lower = text.lower()
    o = lower.find(open_tag.lower())
    if o >= 0:
        start = o + len(open_tag)
        c = lower.find(close_tag.lower(), start)
        if c >= 0:
            s, e = _strip_span(text, start, c)
            return Extraction(text[s:e], "tag", (s, e), _words(text[:o]))
        nxt = _TAG.search(text, start)
        stop = nxt.start() if nxt else len(text)
        pos = start  # the first non-empty line of what follows the tag (up to the next tag)
        for line in text[start:stop].splitlines(keepends=True):
            s, e = _strip_span(text, pos, pos + len(line))
            if e > s:
                return Extraction(text[s:e], "open_tag", (s, e), _words(text[:o]))
            pos += len(line)
        return Extraction("", "open_tag", (start, start), _words(text[:o]))
    c = lower.find(close_tag.lower())
    if c >= 0:
        line_start = text.rfind("\n", 0, c) + 1
        prev_tag = None
        for prev_tag in _TAG.finditer(text, line_start, c):
            pass
        begin = prev_tag.end() if prev_tag else line_start
        s, e = _strip_span(text, begin, c)
        if e > s:
            return Extraction(text[s:e], "close_tag", (s, e), _words(text[:s]))
    # no usable tag: the last non-empty line (tags blanked out, positions kept)
    blanked = _TAG.sub(lambda m: " " * len(m.group(0)), text)
    pos = len(blanked)
    for line in reversed(blanked.splitlines(keepends=True)):
        pos -= len(line)
        s, e = _strip_span(blanked, pos, pos + len(line))
        if e > s:
            return Extraction(" ".join(blanked[s:e].split()), "last_line", (s, e), _words(text[:s]))
    return Extraction("", "empty", (len(text), len(text)), _words(text))


@attrs.frozen
class ParsedAnswer:
    """One Solver completion reduced to its vote label, with the flags the rewards read (§3.5, §3.7)."""

    label: str  # typed vote label: digits / "yes" / "no" / normalised text / "ood"
    qtype: str = attrs.field(validator=attrs.validators.in_(QTYPES))
    extraction: Extraction
    low_info: bool  # carries no information (unknown, vague count, yes/no to a non-binary question, ood)
    non_canonical: bool  # not in a well-formed tag, of the wrong type, or longer than 5 words

    @property
    def text(self) -> str:
        return self.extraction.text

    @property
    def malformed(self) -> bool:
        """No complete answer tag, or nothing inside it: counted per step (``malformed.solver``) and
        penalised as non-canonical and/or low-information (§3.7)."""
        return self.extraction.source != "tag" or not self.extraction.text


def is_low_info(answer: str, label: str, qtype: str) -> bool:
    """Whether an answer is uninformative for its question type (§3.5 flag)."""
    norm = normalize(answer)
    if label == OOD or not norm:
        return True
    if norm in LOW_INFO or norm in VAGUE_COUNTS:
        return True
    if qtype != "binary" and norm in ("yes", "no"):
        return True
    return qtype == "count" and any(v in norm.split() for v in VAGUE_COUNTS)


def parse_answer(
    completion: str, question: str, tags: tuple[str, str] = ("<answer>", "</answer>")
) -> ParsedAnswer:
    """Extract, type and flag the answer of ``completion`` to ``question``."""
    qtype = question_type(question)
    ext = extract_answer(completion, tags)
    label = typed_label(ext.text, qtype)
    non_canonical = (
        ext.source != "tag" or label == OOD or len(normalize(ext.text, max_words=1_000).split()) > MAX_CANONICAL_WORDS
    )
    return ParsedAnswer(label, qtype, ext, is_low_info(ext.text, label, qtype), non_canonical)


def soft_match(predicted: str, expected: str, qtype: str) -> float:
    """Agreement of two answers in [0, 1] (§6.3 soft match, typed).

    Equal vote labels -> 1. Count/binary labels are all-or-nothing. Otherwise: 0.8 when one
    normalised answer contains the other, else their word Jaccard. An empty expected answer -> 0.5.
    """
    if not normalize(expected):
        return 0.5
    a, b = typed_label(predicted, qtype), typed_label(expected, qtype)
    if a == b and a != OOD:
        return 1.0
    if qtype in ("count", "binary"):
        return 0.0
    if a and b and (a in b or b in a):
        return 0.8
    wa, wb = set(a.split()), set(b.split())
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0


__all__ = [
    "ARTICLES", "AUXILIARIES", "NO_WORDS", "NUMBER_WORDS", "OOD", "QTYPES", "SOURCES", "YES_WORDS",
    "Extraction", "ParsedAnswer", "binary_label", "count_label", "extract_answer", "is_low_info",
    "normalize", "parse_answer", "question_type", "soft_match", "typed_label",
]
