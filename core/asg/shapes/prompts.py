"""GenEval-style generation prompts over the ShapesWorld vocabulary.

Mirrors djghosh13/geneval prompts/create_prompts.py: the same six tags and the
same clause semantics as its evaluation_metadata.jsonl ("class" there is our
shape).  In particular a position prompt "A left of B" lists B first and puts
("left of", 0) on A, and a counting prompt for n forbids n + 1 via an exclude
clause.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs

from . import _checks as c
from .seeding import GENEVAL, rng_for
from .vocab import COLORS, GENEVAL_TAGS, NUMBER_WORDS, RELATIONS, SHAPES, plural

COUNT_RANGE = (2, 4)  # GenEval counts 2..4 inclusive

_RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of",
                   "above": "above", "below": "below"}


def _position(inst: Any, attr: Any, value: Any) -> None:
    if value is None:
        return
    ok = (isinstance(value, tuple) and len(value) == 2 and value[0] in RELATIONS
          and c.is_int(value[1]) and value[1] >= 0)
    if not ok:
        raise ValueError(
            f"Clause.position must be None or (relation, index) with relation in "
            f"{RELATIONS} and index an int >= 0, got {value!r}"
        )


@attrs.frozen
class Clause:
    """`count` objects of `shape` (optionally of `color`, optionally positioned
    relative to the objects of an earlier include clause)."""

    shape: str = attrs.field(validator=c.one_of(SHAPES))
    count: int = attrs.field(validator=c.int_at_least(1))
    color: str | None = attrs.field(default=None, validator=c.optional_one_of(COLORS))
    position: tuple[str, int] | None = attrs.field(
        default=None, converter=attrs.converters.optional(c.to_tuple), validator=_position
    )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class": self.shape, "count": self.count}
        if self.color is not None:
            d["color"] = self.color
        if self.position is not None:
            d["position"] = list(self.position)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Clause:
        allowed = {"class", "count", "color", "position"}
        if not isinstance(d, dict) or not {"class", "count"} <= set(d) <= allowed:
            raise ValueError(f"Clause.from_dict expects keys 'class', 'count' "
                             f"(+ optional 'color', 'position'), got {d!r}")
        return cls(d["class"], d["count"], d.get("color"), d.get("position"))


def _clauses_consistent(inst: GenPrompt, attr: Any, value: Any) -> None:
    if not inst.include:
        raise ValueError("GenPrompt.include must contain at least one clause, got ()")
    for i, cl in enumerate(inst.include):
        if cl.position is not None and cl.position[1] >= i:
            raise ValueError(
                f"GenPrompt.include[{i}].position index must point to an earlier include "
                f"clause (< {i}), got {cl.position[1]}"
            )
    for i, cl in enumerate(inst.exclude):
        if cl.position is not None:
            raise ValueError(f"GenPrompt.exclude[{i}] must not have a position, got {cl.position!r}")


@attrs.frozen
class GenPrompt:
    """A text prompt plus the machine-checkable spec of a correct image."""

    tag: str = attrs.field(validator=c.one_of(GENEVAL_TAGS))
    prompt: str = attrs.field(validator=c.nonempty_str)
    include: tuple[Clause, ...] = attrs.field(
        converter=c.to_tuple, validator=[c.is_tuple, c.tuple_of(Clause)])
    exclude: tuple[Clause, ...] = attrs.field(
        default=(), converter=c.to_tuple,
        validator=[c.is_tuple, c.tuple_of(Clause), _clauses_consistent])

    def to_dict(self) -> dict[str, Any]:
        """The GenEval evaluation_metadata.jsonl layout."""
        d: dict[str, Any] = {"tag": self.tag, "include": [cl.to_dict() for cl in self.include]}
        if self.exclude:
            d["exclude"] = [cl.to_dict() for cl in self.exclude]
        d["prompt"] = self.prompt
        return d

    @classmethod
    def from_dict(cls, d: Any) -> GenPrompt:
        if not isinstance(d, dict) or not {"tag", "prompt", "include"} <= set(d):
            raise ValueError(f"GenPrompt.from_dict expects keys 'tag', 'prompt', 'include' "
                             f"(+ optional 'exclude'), got {d!r}")
        return cls(d["tag"], d["prompt"],
                   tuple(Clause.from_dict(x) for x in d["include"]),
                   tuple(Clause.from_dict(x) for x in d.get("exclude", [])))


def with_article(word_phrase: str) -> str:
    return ("an " if word_phrase[0] in "aeiou" else "a ") + word_phrase


def _all_prompts(tag: str) -> list[GenPrompt]:
    """Every distinct prompt of a tag, in a fixed canonical order."""
    pairs = list(itertools.permutations(SHAPES, 2))
    if tag == "single_object":
        return [GenPrompt(tag, with_article(s), (Clause(s, 1),)) for s in SHAPES]
    if tag == "two_object":
        return [GenPrompt(tag, f"{with_article(a)} and {with_article(b)}",
                          (Clause(a, 1), Clause(b, 1))) for a, b in pairs]
    if tag == "counting":
        lo, hi = COUNT_RANGE
        return [GenPrompt(tag, f"{NUMBER_WORDS[n]} {plural(s)}", (Clause(s, n),), (Clause(s, n + 1),))
                for s in SHAPES for n in range(lo, hi + 1)]
    if tag == "colors":
        return [GenPrompt(tag, with_article(f"{col} {s}"), (Clause(s, 1, col),))
                for s in SHAPES for col in COLORS]
    if tag == "position":
        return [GenPrompt(tag, f"{with_article(a)} {_RELATION_WORDS[rel]} {with_article(b)}",
                          (Clause(b, 1), Clause(a, 1, position=(rel, 0))))
                for a, b in pairs for rel in RELATIONS]
    assert tag == "color_attr"
    return [GenPrompt(tag, f"{with_article(f'{ca} {a}')} and {with_article(f'{cb} {b}')}",
                      (Clause(a, 1, ca), Clause(b, 1, cb)))
            for a, b in pairs for ca, cb in itertools.permutations(COLORS, 2)]


def geneval_prompts(split: str, seed: int, n_per_tag: int) -> list[GenPrompt]:
    """n_per_tag prompts for each tag (tags in GENEVAL_TAGS order).

    Our vocabulary is small (3 single-object prompts, 180 colour-attribution
    ones), so instead of i.i.d. draws with duplicates each tag walks through a
    seeded shuffle of all its distinct prompts, reshuffling when exhausted:
    maximal coverage, and a smaller n_per_tag gives a prefix of a larger one.
    """
    n = c.require_int("n_per_tag", n_per_tag, 1)
    out: list[GenPrompt] = []
    for t, tag in enumerate(GENEVAL_TAGS):
        pool = _all_prompts(tag)
        chosen: list[GenPrompt] = []
        for cycle in itertools.count():
            if len(chosen) >= n:
                break
            order = rng_for(GENEVAL, split, seed, t, cycle).permutation(len(pool))
            chosen += [pool[i] for i in order]
        out += chosen[:n]
    return out
