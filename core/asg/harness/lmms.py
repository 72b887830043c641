"""lmms-eval adapter: any asg backbone as an lmms-eval model, and the paper's understanding benchmarks.

lmms-eval finds the model ``asg`` through the ``lmms_eval.models`` entry point (:data:`MANIFEST`)::

    lmms-eval --model asg --model_args backbone=bagel,model=/ckpt/BAGEL-7B-MoT --tasks mmmu_val
    lmms-eval --model asg --model_args backbone=tiny,run=runs/demo --tasks mme --limit 20

or programmatically: ``run_lmms(AsgLmms(backbone=b), ["mmmu_val"])`` then ``paper_metrics(results)``.

How requests become backbone calls:

- ``generate_until``: one :class:`asg.types.Prompt` per request (the task's context as text, its image
  if any), decoded by ``backbone.generate_text`` under the ``role`` adapter (``solver``, the Solver's
  self-evolved understanding, when the backbone has it). ``temperature`` 0 or missing (or ``do_sample``
  false) is greedy, lmms-eval's convention; otherwise ``top_p`` and ``top_k`` apply; ``max_new_tokens``
  (or ``max_gen_toks``) defaults to the model argument of that name; the text is cut at the first of the
  ``until`` strings (:func:`asg.harness.common.sampling_params`,
  :func:`~asg.harness.common.truncate_at_stops`).
- A ``Prompt`` holds at most one image. A document with several images (multi-image or video-frame
  tasks) is merged according to ``image_merge`` (:func:`asg.harness.common.merge_images`, shared with
  the lm-eval adapter): ``tile`` (default) scales them to one height and places them side by side, left
  to right in the task's order, into one image; ``first`` keeps the first; ``error`` refuses. Identical
  images are kept as given (lmms-eval's ``doc_to_visual`` lists each of a document's images once). The
  first merge is reported once as a warning: such scores are not comparable with a model that sees the
  images separately.
- ``loglikelihood``: ``backbone.score`` of the continuation after the context (no end-of-turn token).
  lmms-eval's own models return a *loss* and its ``multiple_choice`` scoring picks the choice with the
  smallest value, so the first element returned is the negative log-likelihood summed over the
  continuation's tokens: the negation of what :func:`asg.harness.common.score_continuations` (and so
  the lm-eval adapter) gives; the second says whether greedy decoding would produce exactly that
  continuation (every token within ``GREEDY_TOLERANCE`` of its position's best).
- ``generate_until_multi_round`` is not supported.

Units: lmms-eval reports MMMU, TextVQA, SEED and RealWorldQA as fractions, MMBench and MM-Vet in percent
and MME as a raw sum of per-category scores; :func:`paper_metrics` converts each to the paper's units
(percent; MME raw) using :data:`UNDERSTANDING_TASKS`.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from asg.errors import CapabilityError, ConfigError
from asg.harness.common import (
    IMAGE_MERGE,
    include_paths,
    load_named_backbone,
    local_first,
    merge_images,
    sampling_params,
    score_continuations,
    truncate_at_stops,
)


def _manifest() -> Any:
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="asg", simple_class_path="asg.harness.lmms.AsgLmms", aliases=("asg_backbone",))


# Importing lmms_eval.models (below, through lmms_eval.api) loads every "lmms_eval.models" entry point,
# this module's MANIFEST included. When this module is imported first, lmms-eval then finds it half
# initialised: it gets this callable (a payload lmms-eval accepts) instead, and the finished module
# replaces it with the manifest itself.
MANIFEST: Any = _manifest

from lmms_eval.api.model import lmms

MANIFEST = _manifest()

__all__ = [
    "MANIFEST",
    "UNDERSTANDING_TASKS",
    "AsgLmms",
    "UnderstandingTask",
    "lmms_eval_version",
    "merge_images",
    "paper_metrics",
    "resolve_tasks",
    "run_lmms",
    "task_manager",
    "task_metrics",
]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class UnderstandingTask:
    """One of the paper's understanding metrics as lmms-eval computes it."""

    metric: str  # the paper's name
    task: str  # lmms-eval task
    key: str  # metric key in lmms-eval's results for that task
    judge: bool  # scored by an LLM judge (needs a judge model and network)
    scale: float  # lmms-eval's value times this = the paper's units
    unit: str  # "%" or "score"
    scoring: str  # how lmms-eval scores it


UNDERSTANDING_TASKS: dict[str, UnderstandingTask] = {t.metric: t for t in (
    UnderstandingTask("MMMU", "mmmu_val", "mmmu_acc", False, 100.0, "%",
                      "rule-based answer parser; lmms-eval reports a fraction"),
    UnderstandingTask("MMBench", "mmbench_en_dev", "gpt_eval_score", True, 1.0, "%",
                      "choice matched by rules, then by a GPT judge; lmms-eval reports percent"),
    UnderstandingTask("TextVQA", "textvqa_val", "exact_match", False, 100.0, "%",
                      "VQA accuracy against 10 human answers; lmms-eval reports a fraction"),
    UnderstandingTask("SEED", "seedbench", "seed_image", False, 100.0, "%",
                      "option letter, image questions; lmms-eval reports a fraction"),
    UnderstandingTask("RealWorldQA", "realworldqa", "exact_match", False, 100.0, "%",
                      "option letter or exact answer; lmms-eval reports a fraction"),
    UnderstandingTask("MM-Vet", "mmvet", "gpt_eval_score", True, 1.0, "%",
                      "open answers graded 0..1 by a GPT judge; lmms-eval reports percent"),
    UnderstandingTask("MME-P", "mme", "mme_perception_score", False, 1.0, "score",
                      "yes/no, acc + acc+ summed over the 10 perception categories (max 2000)"),
    UnderstandingTask("MME-C", "mme", "mme_cognition_score", False, 1.0, "score",
                      "yes/no, acc + acc+ summed over the 4 cognition categories (max 800)"),
)}


def lmms_eval_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("lmms-eval")
    except metadata.PackageNotFoundError:
        return None


def resolve_tasks(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """Paper metric names (``MMMU``, case-insensitive) or raw lmms-eval task names -> (the lmms-eval
    tasks to run, without duplicates, in order; the judge-dependent paper metrics among them)."""
    by_lower = {m.lower(): t for m, t in UNDERSTANDING_TASKS.items()}
    tasks: list[str] = []
    judged: list[str] = []
    for name in names:
        spec = by_lower.get(name.lower())
        task = spec.task if spec else name
        if task not in tasks:
            tasks.append(task)
        for t in UNDERSTANDING_TASKS.values():
            if t.task == task and t.judge and t.metric not in judged:
                judged.append(t.metric)
    return tasks, judged


def _none(value: Any) -> Any:
    """lmms-eval's ``--model_args`` strings: ``none``/``null``/empty mean not given."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
        return None
    return value


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    return [visuals]


def _as_responses(pairs: list[tuple[float, bool]]) -> list[Any]:
    """``pairs`` as lmms-eval's evaluator will keep them. lmms-eval 0.7.3 passes every response through
    ``unwrap_generation_output``, which turns a ``(float, bool)`` pair into its string (and then
    ``multiple_choice`` scoring fails); a ``GenerationResult`` is passed through untouched, so there the
    pairs travel inside one. Versions that keep tuples get plain tuples."""
    from lmms_eval.api.instance import GenerationResult, unwrap_generation_output

    if not pairs or unwrap_generation_output(pairs[0])[0] == pairs[0]:
        return pairs
    return [GenerationResult(text=p) for p in pairs]  # type: ignore[arg-type]


class AsgLmms(lmms):
    """An asg backbone as an lmms-eval "simple" model (see the module docstring).

    Give either ``backbone=<a built backbone>`` or the string arguments of ``--model_args``:
    ``backbone`` (registered name, default ``tiny``), ``preset``, ``model`` (local checkpoint), ``run``
    (trained adapters: a run directory, checkpoint or ``.safetensors``), ``device``, ``dtype``.
    Options: ``role`` (``solver``; ``none`` = the base model), ``max_new_tokens`` (when a task sets
    none), ``batch_size``, ``image_merge`` (``tile`` | ``first`` | ``error``), ``seed`` (sampling).
    """

    is_simple = True

    def __init__(
        self,
        backbone: Any = "tiny",
        preset: str | None = None,
        model: str | None = None,
        run: str | None = None,
        device: str | None = "cpu",
        dtype: str | None = None,
        role: str | None = "solver",
        max_new_tokens: int = 128,
        batch_size: int | str | None = 1,
        image_merge: str = "tile",
        seed: int = 0,
        **unused: Any,
    ) -> None:
        super().__init__()
        _filelock_compat()  # lmms-eval's CLI builds the model before it patches filelock
        if isinstance(backbone, str):
            backbone = load_named_backbone(backbone, preset=_none(preset), model=_none(model), run=_none(run),
                                           device=_none(device) or "cpu", dtype=_none(dtype))
        elif backbone is None or not hasattr(backbone, "generate_text"):
            raise ConfigError(f"backbone must be a registered backbone name or a built backbone, got {backbone!r}")
        self.backbone = backbone
        role = _none(role)
        roles = tuple(getattr(backbone, "roles", ()) or ())
        self.role = role if role in roles else None
        if role is not None and self.role is None and role != "solver":
            raise ConfigError(f"backbone {getattr(backbone, 'name', '?')!r} has no role {role!r} (it has {', '.join(roles) or 'none'})")
        self.max_new_tokens = int(max_new_tokens)
        bs = _none(batch_size)
        self.batch_size = 1 if bs is None or str(bs).startswith("auto") else int(bs)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size!r}")
        if image_merge not in IMAGE_MERGE:
            raise ConfigError(f"image_merge must be one of {', '.join(IMAGE_MERGE)}, got {image_merge!r}")
        self.image_merge = image_merge
        self.seed = int(seed)
        self._merge_warned = False

    @property
    def name(self) -> str:
        return str(getattr(self.backbone, "name", type(self.backbone).__name__))

    # -- inputs ----------------------------------------------------------------------------------------
    def _image(self, doc_to_visual: Any, doc_id: Any, task: str, split: str) -> Image.Image | None:
        """The document's visuals as at most one PIL image (None for a text-only document)."""
        if doc_to_visual is None:
            return None
        visuals = _flatten(doc_to_visual(self.task_dict[task][split][doc_id]))
        images = []
        for v in visuals:
            if isinstance(v, Image.Image):
                images.append(v)
            elif isinstance(v, (str, Path)) and str(v).lower().endswith(_IMAGE_SUFFIXES):
                with Image.open(v) as im:
                    images.append(im.convert("RGB"))
            else:
                kind = "a file path" if isinstance(v, (str, Path)) else type(v).__name__
                raise CapabilityError(f"task {task!r}, document {doc_id}: visual input {kind} ({str(v)[:80]!r}) is "
                                      "not an image; the asg adapter takes images only (no video or audio)")
        if not images:
            return None
        if not getattr(self.backbone, "supports_images_in_prompt", False):
            raise CapabilityError(f"backbone {self.name!r} does not accept images in prompts "
                                  f"(supports_images_in_prompt is False), but task {task!r} gives document {doc_id} "
                                  f"{len(images)} image(s); evaluate it on text-only tasks")
        if len(images) > 1 and self.image_merge == "tile" and not self._merge_warned:
            self._merge_warned = True
            warnings.warn(f"task {task!r}: documents with several images are tiled side by side into one image "
                          f"(first: {len(images)} images); a Prompt holds one image, so such scores are not comparable "
                          "with models that see the images separately", stacklevel=2)
        return merge_images(images, self.image_merge)

    def _sampling(self, gen_kwargs: Mapping[str, Any] | None) -> tuple[Any, list[str]]:
        """The decoding parameters and stop strings of ``gen_kwargs`` (a missing temperature is greedy,
        lmms-eval's convention, even with ``do_sample``; unknown keys are ignored)."""
        return sampling_params(gen_kwargs, self.max_new_tokens, sample_temperature=0.0)

    def _batches(self, n: int) -> Iterable[range]:
        for start in range(0, n, self.batch_size):
            yield range(start, min(n, start + self.batch_size))

    # -- the lmms interface ----------------------------------------------------------------------------
    def generate_until(self, requests: list[Any]) -> list[str]:
        from tqdm import tqdm

        from asg.types import Prompt

        out: list[str] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"asg:{self.name} generating")
        with self.backbone.use_role(self.role):
            for i, rows in enumerate(self._batches(len(requests))):
                prompts, params, stops = [], [], []
                for j in rows:
                    context, gen_kwargs, doc_to_visual, doc_id, task, split = requests[j].args
                    prompts.append(Prompt(text=context, image=self._image(doc_to_visual, doc_id, task, split)))
                    sampling, until = self._sampling(gen_kwargs)
                    params.append(sampling)
                    stops.append(until)
                done = self.backbone.generate_text(prompts, params, seed=self.seed + i, return_stats=False)
                for j, c, until in zip(rows, done, stops):
                    text = truncate_at_stops(c.text, until)
                    out.append(text)
                    self.cache_hook.add_partial("generate_until", requests[j].args[:2], text)
                bar.update(len(rows))
        bar.close()
        return out

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        """Per request ``(negative log-likelihood of the continuation, greedy?)`` (see the module docstring;
        wrapped as :func:`_as_responses` says for lmms-eval versions that would stringify the pair)."""
        from tqdm import tqdm

        from asg.types import Prompt

        out: list[tuple[float, bool]] = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc=f"asg:{self.name} scoring")
        with self.backbone.use_role(self.role):
            for rows in self._batches(len(requests)):
                prompts, continuations = [], []
                for j in rows:
                    args = requests[j].args
                    context, target = args[0], args[1]
                    image = None
                    if len(args) >= 6:  # (context, continuation, doc_to_visual, doc_id, task, split)
                        _, _, doc_to_visual, doc_id, task, split = args[:6]
                        if callable(target):  # output_type "loglikelihood" passes doc_to_target
                            target = target(self.task_dict[task][split][doc_id])
                        image = self._image(doc_to_visual, doc_id, task, split)
                    prompts.append(Prompt(text=context if isinstance(context, str) else context[0], image=image))
                    continuations.append(str(target))
                totals, greedy = score_continuations(self.backbone, prompts, continuations)
                out.extend((-total, g) for total, g in zip(totals, greedy))  # a loss: lmms-eval takes the argmin
                bar.update(len(rows))
        bar.close()
        return _as_responses(out)

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("the asg adapter does not support multi-round generation "
                                  "(generate_until_multi_round); choose tasks with output_type generate_until, "
                                  "loglikelihood or multiple_choice")


# -- running lmms-eval ---------------------------------------------------------------------------------
def task_manager(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None) -> Any:
    """A TaskManager that knows ``tasks``: only the extra directories when they hold them all (indexing
    lmms-eval's own ~2000 tasks takes seconds), else those and the built-in ones. Unknown names are an
    error listing close matches."""
    from lmms_eval.tasks import TaskManager

    paths = include_paths(include_path, "lmms-eval")
    manager = local_first(lambda p, defaults: TaskManager("WARNING", include_path=p, include_defaults=defaults),
                          tasks, paths)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        known = {name.lower(): name for name in [*manager.all_tasks, *UNDERSTANDING_TASKS]}
        hints = {t: [known[m] for m in difflib.get_close_matches(t.lower(), list(known), n=3)] for t in unknown}
        listed = "; ".join(f"{t} (close: {', '.join(h) or 'none'})" for t, h in hints.items())
        raise ConfigError(f"unknown lmms-eval task(s): {listed}. Paper metrics: {', '.join(UNDERSTANDING_TASKS)}")
    return manager


def _filelock_compat() -> None:
    """lmms-eval 0.7.3 makes file locks re-entrant across ranks by patching ``filelock._api``, which
    filelock 4 no longer has (``ModuleNotFoundError`` before any task loads). With filelock 4 the patch
    is skipped: it guards concurrent dataset loading by several ranks, not a single process."""
    import importlib.util

    if importlib.util.find_spec("filelock._api") is None:
        from lmms_eval import evaluator

        evaluator._enable_reentrant_filelocks._patched = True


def run_lmms(
    model: AsgLmms,
    tasks: Sequence[str],
    *,
    limit: float | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    log_samples: bool = False,
    seed: int = 0,
    gen_kwargs: str | Mapping[str, Any] | None = None,
    manager: Any = None,
) -> dict[str, Any]:
    """``lmms_eval.evaluator.simple_evaluate`` on ``model`` for ``tasks`` (lmms-eval task names; see
    :func:`resolve_tasks` for paper names): its results dict (``results[task]["<metric>,<filter>"]``,
    ``n-samples``, ``config``, and ``samples`` when ``log_samples``). ``include_path``: extra task
    directories. ``gen_kwargs`` override every generation task's settings (``"k=v,..."`` or a dict).
    ``manager``: a :func:`task_manager` already built for these tasks (else one is built here)."""
    from lmms_eval.evaluator import simple_evaluate

    tasks = list(tasks)
    if not tasks:
        raise ConfigError("no tasks to run")
    _filelock_compat()
    if isinstance(gen_kwargs, Mapping):
        gen_kwargs = ",".join(f"{k}={v}" for k, v in gen_kwargs.items()) or None
    results = simple_evaluate(
        model=model, tasks=tasks, limit=limit, task_manager=manager if manager is not None else task_manager(tasks, include_path),
        log_samples=log_samples, gen_kwargs=gen_kwargs, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0, verbosity="WARNING",
    )
    if results is None:  # a non-zero rank of a distributed run
        return {}
    return results


def task_metrics(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of every numeric metric in lmms-eval's results (filter suffix and
    standard errors dropped), as lmms-eval reports them (not converted)."""
    out: dict[str, dict[str, float]] = {}
    for task, row in (results.get("results") or {}).items():
        metrics = {}
        for key, value in row.items():
            metric = key.split(",", 1)[0]
            if "," not in key or "_stderr" in metric or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                metrics.setdefault(metric, float(value))
        out[task] = metrics
    return out


def paper_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The paper's understanding metrics present in lmms-eval's ``results``, in the paper's units."""
    found = task_metrics(results)
    return {name: found[t.task][t.key] * t.scale for name, t in UNDERSTANDING_TASKS.items()
            if t.key in found.get(t.task, {})}
