"""ShapesWorld: procedurally rendered scenes of coloured shapes with exact ground truth.

The embedded dataset for pretraining and *measuring* a tiny unified model:
captions and templated VQA for understanding, GenEval-style prompts plus a
deterministic detector ("GenEval-mini") for generation.  numpy/Pillow/attrs
only, so importing it never pulls in torch.
"""

from __future__ import annotations

from .answers import answer_correct, answer_words, normalize_answer, vqa_accuracy
from .caption import describe
from .detector import Detection, detect
from .folder import write_unlabeled_folder
from .geneval import geneval_mini, relative_position, scene_detections, score_geneval
from .oracle import render_prompt, scene_for_prompt
from .prompts import Clause, GenPrompt, geneval_prompts
from .qa import QA, answer_question, one_phrase, qa_for, question_template, questions, sample_qa
from .raster import render
from .sampling import sample_scene, scene_for
from .scene import Obj, Scene
from .vocab import (
    BACKGROUND,
    COLORS,
    GENEVAL_TAGS,
    QTYPES,
    RELATIONS,
    SHAPES,
    SIZE_FRACTION,
    SIZES,
    SPLITS,
)

__all__ = [
    "BACKGROUND", "COLORS", "GENEVAL_TAGS", "QTYPES", "RELATIONS", "SHAPES",
    "SIZE_FRACTION", "SIZES", "SPLITS",
    "Obj", "Scene", "QA", "Clause", "GenPrompt", "Detection",
    "sample_scene", "scene_for", "render", "describe",
    "questions", "sample_qa", "qa_for", "answer_question", "question_template", "one_phrase",
    "normalize_answer", "answer_correct", "answer_words", "vqa_accuracy",
    "geneval_prompts", "detect", "score_geneval", "relative_position",
    "scene_detections", "geneval_mini", "render_prompt", "scene_for_prompt",
    "write_unlabeled_folder",
]
