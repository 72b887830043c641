"""lm-eval adapter: any asg backbone as an lm-eval ``LM`` named ``asg`` (MMMU and text tasks).

Importing this module registers the model ``asg`` with lm-eval (EleutherAI's lm-evaluation-harness)::

    from asg.harness.lm import AsgLM, run_lm_eval

    lm = AsgLM(backbone=backbone)                    # a backbone already built (adapters loaded)
    lm = AsgLM(backbone="bagel", model="/ckpt", run="runs/r1", device="cuda")   # or built by name
    results = run_lm_eval(lm, ["arc_easy", "mmmu_val"], limit=200)
    results["results"]["arc_easy"]["acc,none"]

``lm_eval.simple_evaluate(model="asg", model_args="backbone=tiny", ...)`` works too, as does lm-eval's
own command line once this module is imported::

    python -c 'import asg.harness.lm; from lm_eval.__main__ import cli_evaluate; cli_evaluate()' \\
        run --model asg --model_args backbone=bagel,model=/ckpt --tasks mmmu_val

How requests become backbone calls. The backbone always applies its own chat format (``Prompt.text``
is the user turn), so lm-eval's ``apply_chat_template`` is not supported and stays off; every call runs
under the role ``role`` (default ``solver``: the self-evolved Solver adapter, when the backbone has it).

- ``loglikelihood`` ``(context, continuation)``: the context is the user turn and the continuation the
  reply, both verbatim (a task's target delimiter, usually one space, stays at the start of the reply).
  ``backbone.score(..., append_eos=False, return_logits=True)``: the log-probability is the sum over the
  continuation's tokens; ``is_greedy`` holds when every token's log-prob is within ``1e-5`` of the
  largest log-softmax at its position. An empty continuation is ``(0.0, True)``.
- ``loglikelihood_rolling`` ``(text,)``: the total log-probability of ``text`` as the reply to an *empty*
  user turn. A chat backbone has no "no context at all" (the protocol scores completions after a
  prompt), and an empty user turn is the closest to it; the text is not chunked, so a text longer than
  the backbone's context is the backbone's error. An empty text is ``0.0``.
- ``generate_until`` ``(context, gen_kwargs)``: ``until`` (a string or a list), ``max_gen_toks`` (or
  ``max_new_tokens``; default the model's ``max_new_tokens``), ``do_sample``, ``temperature``, ``top_p``,
  ``top_k`` (:func:`asg.harness.common.sampling_params`; other keys are warned about once). Decoding samples
  when ``temperature > 0`` and ``do_sample`` is not ``False`` (``do_sample=True`` alone means
  temperature 1), greedily otherwise; the reply is cut before the first stop string.

Images (multimodal tasks, e.g. lm-eval's ``mmmu_val``; ``AsgLM.MULTIMODAL`` is True). lm-eval passes a
task's ``doc_to_image`` as a third request argument, ``{"visual": [PIL images]}``, and marks where
each image sits in the context with the placeholder ``<image>`` (:data:`IMAGE_PLACEHOLDER`). The
placeholders are removed from the text (with the blanks around them; the whole text is then stripped)
and the image becomes ``Prompt.image``. A ``Prompt`` holds one image: several *distinct* images (the
same image referenced twice counts once: lm-eval's ``doc_to_image`` lists an image per reference)
are tiled side by side, left to right in their order, each scaled to the tallest one's height, on white
(:func:`asg.harness.common.merge_images`, as in the lmms-eval adapter); the backbone then resizes the
tile as it resizes any image, so a wide tile loses detail (a warning says so, once per model). A
backbone that does not take images in prompts (``supports_images_in_prompt`` False) given one is a
:class:`~asg.errors.CapabilityError` naming the backbone.

:data:`TEXT_TASKS` suggests lm-eval tasks that catch a loss of language ability after self-evolution
(plain text, small); :data:`MMMU` is lm-eval's MMMU validation group. Nothing is downloaded by asg:
the tasks' datasets must be in the local Hugging Face cache (run with ``HF_DATASETS_OFFLINE=1`` to make
sure), for instance copied from a machine that can reach the Hub.
"""

from __future__ import annotations

import importlib
import io
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from PIL import Image

from asg.errors import CapabilityError, ConfigError, DataError
from asg.harness.common import (
    GREEDY_TOLERANCE,
    include_paths,
    load_named_backbone,
    local_first,
    merge_images,
    sampling_params,
    score_continuations,
    truncate_at_stops,
    unique_images,
)
from asg.types import Prompt, SamplingParams

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "GREEDY_TOLERANCE",
    "IMAGE_PLACEHOLDER",
    "MMMU",
    "TEXT_TASKS",
    "AsgLM",
    "load_named_backbone",
    "request_images",
    "run_lm_eval",
    "strip_image_placeholders",
    "task_manager",
    "truncate_at_stops",
]

logger = logging.getLogger(__name__)

# lm-eval's own models (registered lazily, cheap) go in before "asg": get_model() imports them only into an
# empty registry, so registering "asg" first would hide "hf", "vllm", ... from a process that imported this.
importlib.import_module("lm_eval.models")

IMAGE_PLACEHOLDER = "<image>"  # lm-eval's image marker in contexts (its hf-multimodal model's default; MMMU's)
# Small plain-text lm-eval tasks that show a loss of language ability (their datasets must be cached locally).
TEXT_TASKS: tuple[str, ...] = ("arc_easy", "hellaswag", "lambada_openai", "piqa", "winogrande")
MMMU = "mmmu_val"  # lm-eval's MMMU validation group (30 subjects; acc, aggregated weighted by size)
DEFAULT_BATCH_SIZE = 8
_NO_ROLE_NAMES = ("none", "None", "base", "")


# -- images ---------------------------------------------------------------------------------------------
def strip_image_placeholders(text: str, placeholder: str = IMAGE_PLACEHOLDER) -> str:
    """``text`` without ``placeholder``: one inside a line becomes a single space, one at a line's start
    or end disappears with the blanks around it; the result is stripped."""
    pattern = re.compile(r"[ \t]*" + re.escape(placeholder) + r"[ \t]*")

    def replace(m: re.Match[str]) -> str:
        before, after = text[:m.start()], text[m.end():]
        inline = bool(before) and not before.endswith("\n") and bool(after) and not after.startswith("\n")
        return " " if inline else ""

    return pattern.sub(replace, text).strip()


def _as_image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):  # a datasets Image feature left undecoded
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path") and Path(value["path"]).is_file():
        return Image.open(value["path"])
    if isinstance(value, (str, Path)) and Path(value).is_file():
        return Image.open(value)
    raise DataError(f"lm-eval request carries a 'visual' of type {type(value).__name__}; expected a PIL image "
                    "(or a list of them)")


def request_images(aux: dict[str, Any] | None) -> list[Image.Image]:
    """The images of a request's multimodal argument (``{"visual": image | [images]}``), in order."""
    if not aux:
        return []
    if aux.get("audio") is not None:
        raise CapabilityError("lm-eval request carries audio; asg backbones take text and images only")
    visual = aux.get("visual")
    if visual is None:
        return []
    items = visual if isinstance(visual, (list, tuple)) else [visual]
    return [_as_image(v) for v in items if v is not None]


def _split_args(args: tuple[Any, ...], n: int) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """A request's ``n`` positional arguments and its multimodal argument (None without one)."""
    if len(args) == n:
        return args, None
    if len(args) == n + 1 and (args[n] is None or isinstance(args[n], dict)):
        return args[:n], args[n]
    raise ValueError(f"unexpected lm-eval request arguments (expected {n}, or {n} and a dict): {args!r}")


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield list(order[start:start + size])


def _batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH_SIZE
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise ConfigError(f"batch_size must be a positive integer or 'auto', got {value!r}")
    return n


# -- the model ------------------------------------------------------------------------------------------
@register_model("asg")
class AsgLM(LM):
    """An asg backbone as an lm-eval ``LM`` (see the module docstring for how requests map to calls).

    ``backbone`` is a built backbone, or the registered name of one to load with ``preset`` / ``model``
    (a local checkpoint) / ``run`` (trained adapters) on ``device`` in ``dtype``; names are what
    ``--model_args backbone=bagel,model=/ckpt`` gives. ``role``: the adapter every call runs under
    (``"none"`` = adapters off, the base model; the default ``"solver"`` is used when the backbone has
    it). ``batch_size``: requests per backbone call; ``max_new_tokens``: the reply length when a task
    gives no ``max_gen_toks``; ``seed``: the sampling seed (greedy decoding ignores it).
    """

    MULTIMODAL = True  # lm-eval runs tasks with doc_to_image (e.g. mmmu_val) only on models that say so

    def __init__(
        self,
        backbone: Any = "tiny",
        *,
        preset: str | None = None,
        model: str | Path | None = None,
        run: str | Path | None = None,
        device: str | None = "cpu",
        dtype: str | None = None,
        role: str | None = "solver",
        batch_size: int | str | None = DEFAULT_BATCH_SIZE,
        max_new_tokens: int = 256,
        seed: int = 0,
        max_batch_size: int | None = None,  # lm-eval passes it; batches here have a fixed size
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            device = device or "cpu"
            if str(device).startswith("cuda") and not torch.cuda.is_available():
                logger.warning("asg: device %s requested but CUDA is not available; using cpu", device)
                device = "cpu"  # lm-eval's command line asks for cuda unless told otherwise
            backbone = load_named_backbone(backbone, preset=preset, model=model, run=run, device=device, dtype=dtype)
        elif any(v is not None for v in (preset, model, run, dtype)):
            raise ConfigError("AsgLM: preset, model, run and dtype only apply when backbone is a name; "
                              "pass a built backbone alone, with its adapters already loaded")
        self.backbone = backbone
        self.backbone_name = str(getattr(backbone, "name", type(backbone).__name__))
        roles = tuple(getattr(backbone, "roles", ()) or ())
        self.role: str | None = None  # None: adapters off (the base model), or the backbone as it is
        self._with_role = True  # False: call the backbone without use_role
        if role is None or role in _NO_ROLE_NAMES:
            pass
        elif role in roles:
            self.role = role
        elif role == "solver":  # the default, on a backbone without a Solver adapter
            self._with_role = False
        else:
            raise ConfigError(f"backbone {self.backbone_name!r} has no role {role!r}; its roles: "
                              f"{', '.join(roles) or 'none'} (or 'none' for the base model)")
        self.batch_size = _batch_size(batch_size)
        if int(max_new_tokens) < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.max_new_tokens = int(max_new_tokens)
        self.seed = int(seed)
        dev = getattr(backbone, "device", device)
        self._device = str(dev) if dev is not None else "cpu"
        self._warned: set[str] = set()

    # -- helpers ----------------------------------------------------------------------------------------
    def _role(self) -> AbstractContextManager[Any]:
        """The role context of every call: ``use_role(role)``, ``use_role(None)`` for the base model, or
        nothing when the default Solver role does not exist on this backbone."""
        if not self._with_role:
            return nullcontext()
        return self.backbone.use_role(self.role)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def prompt(self, context: str, aux: dict[str, Any] | None = None) -> Prompt:
        """The backbone prompt of a request's context and multimodal argument (see the module docstring)."""
        images = request_images(aux)
        if not images:
            return Prompt(text=context)
        if not getattr(self.backbone, "supports_images_in_prompt", False):
            raise CapabilityError(f"backbone {self.backbone_name!r} does not take images in prompts "
                                  "(supports_images_in_prompt is False); run multimodal tasks such as "
                                  f"{MMMU} with a backbone that does")
        images = unique_images(images)
        if len(images) > 1:
            self._warn_once("tile", f"asg: a request has {len(images)} images and a Prompt holds one; they are "
                                    "tiled side by side into one image (the backbone resizes it, so detail is lost)")
        return Prompt(text=strip_image_placeholders(context), image=merge_images(images, "tile"))

    def sampling(self, gen_kwargs: dict[str, Any] | None) -> tuple[SamplingParams, list[str]]:
        """The decoding parameters and stop strings of a generate_until request's ``gen_kwargs``."""
        def warn(keys: list[str]) -> None:
            self._warn_once("kwargs:" + ",".join(keys),
                            f"asg: generation arguments {keys} are not supported and are ignored")

        return sampling_params(gen_kwargs, self.max_new_tokens, on_unknown=warn)

    # -- lm-eval's interface ----------------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from asg.progress import progress_bar

        items = []
        for req in requests:
            (context, continuation), aux = _split_args(req.args, 2)
            items.append((self.prompt(context, aux), continuation))
        results: list[tuple[float, bool] | None] = [None] * len(items)
        for i, (_, continuation) in enumerate(items):
            if not continuation:
                results[i] = (0.0, True)
        todo = [i for i in range(len(items)) if results[i] is None]
        order = sorted(todo, key=lambda i: (items[i][0].has_image, -len(items[i][0].text) - len(items[i][1])))
        with progress_bar(len(items), "asg loglikelihood") as bar, torch.no_grad(), self._role():
            bar.update(len(items) - len(todo))
            for chunk in _batches(order, self.batch_size):
                totals, greedy = score_continuations(self.backbone, [items[i][0] for i in chunk],
                                                     [items[i][1] for i in chunk])
                for i, total, g in zip(chunk, totals, greedy):
                    results[i] = (total, g)
                bar.update(len(chunk))
        done = [r for r in results if r is not None]
        assert len(done) == len(requests)
        for req, res in zip(requests, done):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return done

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from asg.progress import progress_bar

        texts = []
        for req in requests:
            (text,), _ = _split_args(req.args, 1)
            texts.append(text)
        results = [0.0] * len(texts)
        order = sorted((i for i, t in enumerate(texts) if t), key=lambda i: -len(texts[i]))
        with progress_bar(len(texts), "asg loglikelihood_rolling") as bar, torch.no_grad(), self._role():
            bar.update(len(texts) - len(order))
            for chunk in _batches(order, self.batch_size):
                totals, _ = score_continuations(self.backbone, [Prompt(text="") for _ in chunk],
                                                [texts[i] for i in chunk])
                for i, total in zip(chunk, totals):
                    results[i] = total
                bar.update(len(chunk))
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from asg.progress import progress_bar

        items = []
        for req in requests:
            (context, gen_kwargs), aux = _split_args(req.args, 2)
            params, stops = self.sampling(gen_kwargs)
            items.append((self.prompt(context, aux), params, stops))
        results = [""] * len(items)
        order = sorted(range(len(items)), key=lambda i: (items[i][0].has_image, -len(items[i][0].text)))
        with progress_bar(len(items), "asg generate_until") as bar, torch.no_grad(), self._role():
            for k, chunk in enumerate(_batches(order, self.batch_size)):
                outs = self.backbone.generate_text([items[i][0] for i in chunk], [items[i][1] for i in chunk],
                                                   seed=self.seed + k, return_stats=False)
                for i, completion in zip(chunk, outs):
                    results[i] = truncate_at_stops(completion.text, items[i][2])
                bar.update(len(chunk))
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("generate_until", req.args, res)
        return results

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in ``results["config"]``."""
        return {"asg_backbone": self.backbone_name, "asg_role": self.role, "asg_batch_size": self.batch_size}


# -- running --------------------------------------------------------------------------------------------
def task_manager(tasks: Sequence[str], include_path: str | Path | Sequence[str | Path] | None = None) -> Any:
    """An lm-eval ``TaskManager`` that knows ``tasks``. lm-eval's own index (some 15,000 task YAMLs, tens
    of seconds to build) is only read when a task is not found under ``include_path``; an unknown task
    is a :class:`~asg.errors.ConfigError`."""
    from lm_eval.tasks import TaskManager

    paths = include_paths(include_path, "lm-eval")
    manager = local_first(lambda p, defaults: TaskManager(include_path=p, include_defaults=defaults), tasks, paths)
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)}; `lm-eval ls tasks` lists them"
                          + ("" if paths else ", and include_path adds local task YAMLs"))
    return manager


def run_lm_eval(
    model: AsgLM,
    tasks: str | Sequence[str],
    *,
    limit: float | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
    log_samples: bool = False,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``model`` on ``tasks`` (names, or groups such as :data:`MMMU`);
    returns lm-eval's results dict (``results``, ``groups``, ``n-shot``, ``n-samples``, ``configs``, and
    ``samples`` with ``log_samples``).

    ``limit``: at most this many documents per task (a fraction when < 1), for smoke runs only: such
    numbers are not comparable with published ones. ``include_path``: directories of local task YAMLs.
    ``num_fewshot``: overrides the tasks' defaults (0-shot when a task has none). ``seed`` seeds Python,
    numpy, torch and the few-shot sampler. The tasks' datasets are read from the local Hugging Face cache.
    """
    from lm_eval import simple_evaluate

    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ConfigError("run_lm_eval needs at least one task")
    if not isinstance(model, LM):
        raise TypeError(f"model must be an lm-eval LM (e.g. AsgLM), got {type(model).__name__}")
    manager = task_manager(names, include_path)
    try:
        results = simple_evaluate(
            model=model, tasks=names, num_fewshot=num_fewshot, limit=limit, task_manager=manager,
            log_samples=log_samples, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except ConnectionError as e:  # datasets' error for a dataset neither cached nor reachable
        raise DataError(f"a dataset of {', '.join(names)} is not in the local Hugging Face cache and cannot be "
                        f"downloaded here ({e}); copy it into the cache from a machine that can reach the Hub") from e
    if results is None:  # only rank 0 of a distributed run gets results; this adapter runs one process
        raise RuntimeError("lm_eval.simple_evaluate returned no results (not rank 0?)")
    return dict(results)
