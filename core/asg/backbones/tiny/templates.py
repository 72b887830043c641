"""The prompts the `tiny` backbone is pretrained with (``TinyBackbone.prompt_templates``): the
roles' defaults of :mod:`asg.roles.defaults`, so the base model already knows every task format.
"""

from __future__ import annotations

from asg.roles.defaults import (
    SOLVER_FRAMINGS,
    FOCUS_HINTS,
    SOLVER,
    CAPTION,
    PROPOSER,
    DIFFICULTIES,
    SPEC,
    GENERATE,
    EMBED_IMAGE_PROBE,
    ANSWER,
    PROPOSER_ITEM,
    SPEC_PROMPT,
    SPEC_QA,
    TAGS,
    TEMPLATES,
)

__all__ = [
    "SOLVER_FRAMINGS",
    "FOCUS_HINTS",
    "SOLVER",
    "CAPTION",
    "PROPOSER",
    "DIFFICULTIES",
    "SPEC",
    "GENERATE",
    "EMBED_IMAGE_PROBE",
    "ANSWER",
    "PROPOSER_ITEM",
    "SPEC_PROMPT",
    "SPEC_QA",
    "TAGS",
    "TEMPLATES",
    "solver_prompt",
]


def solver_prompt(question: str, framing: int = 0, hint: int | None = None) -> str:
    """The solver prompt for ``question`` under PPS framing ``framing`` and focus hint ``hint``."""
    return SOLVER.format(
        framing=SOLVER_FRAMINGS[framing], hint="" if hint is None else FOCUS_HINTS[hint], question=question
    )
