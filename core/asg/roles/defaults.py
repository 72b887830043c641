"""The default prompt templates and output formats of the three roles, as data.

A backbone's ``prompt_templates`` may override any key; the keys it leaves out come from here
(``RoleTemplates.of``). The built-in ``tiny`` backbone is pretrained with exactly these, so its base
model already knows the formats: answers inside ``<answer></answer>``, proposer questions as ``<q>``
blocks, generation specs as ``<prompt>`` + ``<qa>`` blocks. Kept short: every prompt token is paid.
"""

from __future__ import annotations

# Solver framings for Prompt-Perturbed Sampling: index 0 is the canonical framing, 1-6 the perturbed
# ones (algorithm.md §3.5). Each is followed by a focus hint and the question.
SOLVER_FRAMINGS: tuple[str, ...] = (
    "",
    "Look carefully. ",
    "You are a visual analyst. ",
    "Answer directly. ",
    "Examine the image. ",
    "Be brief and factual. ",
    "Check the visual evidence. ",
)
FOCUS_HINTS: tuple[str, ...] = (
    "Focus on the whole layout. ",
    "Focus on small details. ",
    "Focus on object edges. ",
    "Focus on left and right. ",
    "Focus on counting. ",
    "Focus on colors. ",
    "Focus on how objects relate. ",
)
SOLVER = "{framing}{hint}{question} Answer inside <answer></answer>."
CAPTION = "Describe the image in one sentence."
PROPOSER = "Ask {k} {difficulty} questions about the image."
DIFFICULTIES: tuple[str, ...] = ("easy", "medium", "hard")
SPEC = "Write a drawing prompt for the image and {n} questions that check it."
GENERATE = "Draw: {prompt}"
EMBED_IMAGE_PROBE = "Describe this image briefly."

# Output formats (what the model writes; parsers in the roles read these).
ANSWER = "<answer>{answer}</answer>"
PROPOSER_ITEM = "<q><target>{target}</target><question>{question}</question><options>{a}|{b}</options></q>"
SPEC_PROMPT = "<prompt>{prompt}</prompt>"
SPEC_QA = "<qa><question>{question}</question><expected>{expected}</expected></qa>"

# Tags that the tokenizer keeps as single tokens.
TAGS: tuple[str, ...] = (
    "<answer>", "</answer>", "<q>", "</q>", "<target>", "</target>", "<question>", "</question>",
    "<options>", "</options>", "<prompt>", "</prompt>", "<qa>", "</qa>", "<expected>", "</expected>",
)

TEMPLATES: dict[str, str | tuple[str, ...]] = {
    "solver": SOLVER,
    "solver_framings": SOLVER_FRAMINGS,
    "focus_hints": FOCUS_HINTS,
    "caption": CAPTION,
    "proposer": PROPOSER,
    "difficulties": DIFFICULTIES,
    "spec": SPEC,
    "generate": GENERATE,
    "embed_image_probe": EMBED_IMAGE_PROBE,
    "answer": ANSWER,
    "proposer_item": PROPOSER_ITEM,
    "spec_prompt": SPEC_PROMPT,
    "spec_qa": SPEC_QA,
}
