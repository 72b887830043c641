"""The prompt templates and output formats a backbone declares (``backbone.prompt_templates``).

Roles never hard-code a prompt or a tag: they read them here, so a backbone pretrained with other
wording (or other tags) works unchanged. Output formats are templates too ("<answer>{answer}</answer>");
the tags a parser looks for are derived from them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from asg.errors import ConfigError

# Keys a backbone's prompt_templates must provide for the roles (tiny's templates.py is the model).
DEFAULT_CAPTION = "Describe the image in one sentence."  # used when a backbone has no "caption" template
REQUIRED_KEYS: tuple[str, ...] = (
    "solver", "solver_framings", "focus_hints", "answer",
    "proposer", "difficulties", "proposer_item", "spec", "spec_prompt", "spec_qa",
)

_TAG_BEFORE = re.compile(r"<[^<>{}]+>$")
_TAG_AFTER = re.compile(r"^</?[^<>{}]+>")
_ANY_TAG = re.compile(r"</?[^<>{}]+>")


def _field_tags(key: str, fmt: str, field: str, *, need: str = "both") -> tuple[str, str]:
    """The tag right before and right after ``{field}`` in format ``fmt`` (``need``: both/open/close).

    ``'<answer>{answer}</answer>'`` and ``'answer'`` give ``('<answer>', '</answer>')``.
    """
    slot = "{" + field + "}"
    if slot not in fmt:
        raise ConfigError(f"prompt_templates[{key!r}] must contain {slot}, got {fmt!r}")
    before, after = fmt.split(slot, 1)
    m_open, m_close = _TAG_BEFORE.search(before), _TAG_AFTER.match(after)
    if (need != "close" and not m_open) or (need != "open" and not m_close):
        raise ConfigError(
            f"prompt_templates[{key!r}] must put {slot} between an opening and a closing tag "
            f"(like '<answer>{{answer}}</answer>'), got {fmt!r}"
        )
    return (m_open.group(0) if m_open else ""), (m_close.group(0) if m_close else "")


def _outer_tags(key: str, fmt: str) -> tuple[str, str]:
    """The first and the last tag of a block format: ``'<q>...</q>'`` gives ``('<q>', '</q>')``."""
    tags = _ANY_TAG.findall(fmt)
    if len(tags) < 2:
        raise ConfigError(f"prompt_templates[{key!r}] must be a tagged block like '<q>...</q>', got {fmt!r}")
    return tags[0], tags[-1]


def _text(m: Mapping[str, Any], key: str) -> str:
    value = m[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"prompt_templates[{key!r}] must be a non-empty str, got {value!r}")
    return value


def _texts(m: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = m[key]
    if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value:
        raise ConfigError(f"prompt_templates[{key!r}] must be a non-empty tuple of str, got {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"prompt_templates[{key!r}] must hold only str, got {value!r}")
    return tuple(value)


@attrs.frozen
class RoleTemplates:
    """Prompts the roles send and the tags their parsers read, taken from one backbone."""

    solver: str  # "{framing}{hint}{question} ..." : the solver prompt
    framings: tuple[str, ...]  # PPS framings; index 0 is canonical (§3.5)
    hints: tuple[str, ...]  # focus hints, by the same index
    proposer: str  # "... {k} {difficulty} ...": the question-proposal prompt
    difficulties: tuple[str, ...]  # valid difficulty hints
    spec: str  # "... {n} ...": the generation-spec prompt
    answer_tags: tuple[str, str]  # ("<answer>", "</answer>")
    item_tags: tuple[str, str]  # one proposed question block, ("<q>", "</q>")
    target_tags: tuple[str, str]  # its visual target
    question_tags: tuple[str, str]  # its question text
    options_tags: tuple[str, str]  # its two-answer test
    options_sep: str  # separator between the two options, "|"
    prompt_tags: tuple[str, str]  # the spec's text-to-image prompt
    qa_tags: tuple[str, str]  # one spec QA block
    qa_question_tags: tuple[str, str]  # the QA block's question
    expected_tags: tuple[str, str]  # the QA block's expected answer
    caption: str = DEFAULT_CAPTION  # one-sentence caption prompt (source and cycle captions, §6.1, §6.3)

    @classmethod
    def from_mapping(cls, templates: Mapping[str, Any]) -> RoleTemplates:
        """Read and check a backbone's ``prompt_templates``; errors name the missing or bad key."""
        missing = [k for k in REQUIRED_KEYS if k not in templates]
        if missing:
            raise ConfigError(
                f"prompt_templates is missing {missing}; the roles need {list(REQUIRED_KEYS)} "
                f"(see asg/backbones/tiny/templates.py for an example), got keys {sorted(templates)}"
            )
        item = _text(templates, "proposer_item")
        options_open, _ = _field_tags("proposer_item", item, "a", need="open")
        _, options_close = _field_tags("proposer_item", item, "b", need="close")
        sep = item.split("{a}", 1)[1].split("{b}", 1)[0]
        if not sep:
            raise ConfigError(f"prompt_templates['proposer_item'] must separate {{a}} and {{b}}, got {item!r}")
        qa = _text(templates, "spec_qa")
        framings, hints = _texts(templates, "solver_framings"), _texts(templates, "focus_hints")
        return cls(
            solver=_text(templates, "solver"), framings=framings, hints=hints,
            proposer=_text(templates, "proposer"), difficulties=_texts(templates, "difficulties"),
            spec=_text(templates, "spec"),
            answer_tags=_field_tags("answer", _text(templates, "answer"), "answer"),
            item_tags=_outer_tags("proposer_item", item),
            target_tags=_field_tags("proposer_item", item, "target"),
            question_tags=_field_tags("proposer_item", item, "question"),
            options_tags=(options_open, options_close), options_sep=sep,
            prompt_tags=_field_tags("spec_prompt", _text(templates, "spec_prompt"), "prompt"),
            qa_tags=_outer_tags("spec_qa", qa),
            qa_question_tags=_field_tags("spec_qa", qa, "question"),
            expected_tags=_field_tags("spec_qa", qa, "expected"),
            caption=_text(templates, "caption") if "caption" in templates else DEFAULT_CAPTION,
        )

    @classmethod
    def of(cls, backbone: Any) -> RoleTemplates:
        """The templates of ``backbone``: its ``prompt_templates``, missing keys from :mod:`asg.roles.defaults`."""
        templates = getattr(backbone, "prompt_templates", None)
        if not isinstance(templates, Mapping):
            raise ConfigError(f"backbone {getattr(backbone, 'name', backbone)!r} has no prompt_templates mapping")
        from asg.roles.defaults import TEMPLATES

        return cls.from_mapping({**TEMPLATES, **templates})

    # -- prompts -------------------------------------------------------------------------------------
    def solver_prompt(self, question: str, index: int = 0, *, hint: bool = True) -> str:
        """The solver prompt under PPS framing ``index`` (cycled) with its focus hint (§3.5)."""
        framing = self.framings[index % len(self.framings)]
        focus = self.hints[index % len(self.hints)] if hint else ""
        return self.solver.format(framing=framing, hint=focus, question=question)

    def proposer_prompt(self, k: int, difficulty: str) -> str:
        """Ask for ``k`` candidate questions at the hinted ``difficulty`` (§3.2)."""
        if difficulty not in self.difficulties:
            raise ConfigError(f"difficulty must be one of {list(self.difficulties)}, got {difficulty!r}")
        return self.proposer.format(k=k, difficulty=difficulty)

    def spec_prompt(self, n: int) -> str:
        """Ask for a text-to-image prompt and ``n`` verification QA pairs (§6.1)."""
        return self.spec.format(n=n)


__all__ = ["REQUIRED_KEYS", "RoleTemplates"]
