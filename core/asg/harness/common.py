"""What the lm-eval adapter (:mod:`asg.harness.lm`) and the lmms-eval adapter (:mod:`asg.harness.lmms`)
share: loading a backbone by name, several images -> the one image a ``Prompt`` holds, a request's
generation arguments -> :class:`~asg.types.SamplingParams` and stop strings, cutting a reply at its stop
strings, scoring continuations, and the include paths of a harness's TaskManager.

Nothing here imports either harness, so each adapter keeps only what is specific to its harness (its
request layout, its model class and registration, its TaskManager class and result conventions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from asg.errors import CapabilityError, ConfigError
from asg.types import Prompt, SamplingParams

IMAGE_MERGE: tuple[str, ...] = ("tile", "first", "error")  # the modes of merge_images
GREEDY_TOLERANCE = 1e-5  # nats: a token is the greedy choice when its log-prob is this close to the max

IncludePath = str | Path | Sequence[str | Path] | None


# -- backbones ------------------------------------------------------------------------------------------
def load_named_backbone(name: str, *, preset: str | None = None, model: str | Path | None = None,
                        run: str | Path | None = None, device: str = "cpu", dtype: str | None = None) -> Any:
    """The registered backbone ``name`` (``preset`` or local ``model`` checkpoint) on ``device``, with the
    trained adapters of ``run`` (a run directory, a checkpoint, or a ``.safetensors`` adapter file). Loaded
    as ``asg train`` loads it (:func:`asg.train.cli.load_backbone`), so plugin errors name the primitive."""
    from types import SimpleNamespace

    from asg.train.cli import load_backbone

    if model is not None and not Path(model).exists():
        raise ConfigError(f"model={model}: no such directory (checkpoints are only read from a local path)")
    if run is not None and not Path(run).exists():
        raise ConfigError(f"run={run}: no such run directory, checkpoint or adapter file")
    spec = SimpleNamespace(backbone=name, preset=preset, model=model, dtype=dtype, adapters=run)
    return load_backbone(spec, device=device)


# -- images ---------------------------------------------------------------------------------------------
def unique_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    """``images`` in order, each distinct picture (mode, size and pixels) once."""
    seen: set[tuple[str, tuple[int, int], str]] = set()
    out = []
    for im in images:
        key = (im.mode, im.size, hashlib.sha1(im.tobytes()).hexdigest())
        if key not in seen:
            seen.add(key)
            out.append(im)
    return out


def merge_images(images: Sequence[Image.Image], mode: str = "tile") -> Image.Image:
    """One image from several, for a ``Prompt`` (which holds one). One image comes back as it is.

    ``tile``: each image is scaled (aspect kept) to the tallest one's height and they are placed side by
    side, left to right in their order, on a white RGB canvas; ``first``: the first image; ``error``: a
    :class:`~asg.errors.CapabilityError`. The backbone then resizes the result as it resizes any image,
    so a wide tile loses detail.

    Identical images are *not* collapsed here: that is :func:`unique_images`, which the lm-eval adapter
    applies first because lm-eval's ``doc_to_image`` lists an image once per reference (its MMMU repeats
    ``<image 1>`` when the question cites it twice), whereas lmms-eval's ``doc_to_visual`` already gives
    each of a document's images once, so a document that shows the same picture twice is tiled as given.
    """
    if not images:
        raise ValueError("merge_images needs at least one image")
    if len(images) == 1 or mode == "first":
        return images[0]
    if mode == "error":
        raise CapabilityError(f"a document has {len(images)} images, but a Prompt holds one and image_merge='error'")
    if mode != "tile":
        raise ConfigError(f"image_merge must be one of {', '.join(IMAGE_MERGE)}, got {mode!r}")
    height = max(im.height for im in images)
    scaled = [im if im.height == height else im.resize((max(1, round(im.width * height / im.height)), height))
              for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height), "white")
    x = 0
    for im in scaled:
        canvas.paste(im.convert("RGB"), (x, 0))
        x += im.width
    return canvas


# -- generation -----------------------------------------------------------------------------------------
def sampling_params(
    gen_kwargs: Mapping[str, Any] | None,
    max_new_tokens: int,
    *,
    sample_temperature: float = 1.0,
    on_unknown: Callable[[list[str]], None] | None = None,
) -> tuple[SamplingParams, list[str]]:
    """The decoding parameters and stop strings of a generation request's ``gen_kwargs``.

    ``until``: a stop string or a list of them (none when absent). ``max_new_tokens``, else
    ``max_gen_toks``, else the argument ``max_new_tokens``: the reply length. Decoding is greedy when
    ``do_sample`` is ``False`` or the temperature is ``<= 0``; otherwise it samples at ``temperature``
    with ``top_p`` (default 1) and ``top_k`` (default 0, no cut). ``do_sample=True`` without a
    ``temperature`` samples at ``sample_temperature`` (lm-eval's convention, HF ``generate``'s default
    of 1; lmms-eval's models take a missing temperature as 0, greedy, whatever ``do_sample`` says).
    Other keys are ignored; ``on_unknown`` (when given) is called with their sorted names.
    """
    kw = dict(gen_kwargs or {})
    until = kw.pop("until", None)
    if until is None:
        stops: list[str] = []
    elif isinstance(until, str):
        stops = [until]
    elif isinstance(until, (list, tuple)):
        stops = [str(s) for s in until]
    else:
        raise ConfigError(f"gen_kwargs['until'] must be a string or a list of strings, got {until!r}")
    new_tokens, gen_toks = kw.pop("max_new_tokens", None), kw.pop("max_gen_toks", None)
    max_tokens = int(new_tokens or gen_toks or max_new_tokens)
    do_sample = kw.pop("do_sample", None)
    temperature = kw.pop("temperature", None)
    temperature = (sample_temperature if do_sample else 0.0) if temperature is None else float(temperature)
    top_p = float(kw.pop("top_p", None) or 1.0)
    top_k = int(kw.pop("top_k", None) or 0)
    if kw and on_unknown is not None:
        on_unknown(sorted(kw))
    if do_sample is False or temperature <= 0.0:
        return SamplingParams(temperature=0.0, max_new_tokens=max_tokens), stops
    return SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_tokens), stops


def truncate_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` cut before the earliest occurrence of any (non-empty) stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            i = text.find(stop)
            if i >= 0:
                cut = min(cut, i)
    return text[:cut]


# -- scoring --------------------------------------------------------------------------------------------
def score_continuations(backbone: Any, prompts: Sequence[Prompt],
                        texts: Sequence[str]) -> tuple[list[float], list[bool]]:
    """Per pair, the log-probability of ``texts[i]`` as the reply to ``prompts[i]`` (summed over its
    tokens; no end-of-turn token appended) and whether greedy decoding would produce exactly it: every
    token's log-prob within :data:`GREEDY_TOLERANCE` of the largest log-softmax at its position. One
    ``backbone.score(..., append_eos=False, return_logits=True)`` call, run under the caller's role.
    lm-eval takes the log-probability as it is; the lmms-eval adapter returns its negation (a loss)."""
    with torch.no_grad():
        out = backbone.score(list(prompts), list(texts), append_eos=False, return_logits=True)
    if out.logits is None:
        name = getattr(backbone, "name", type(backbone).__name__)
        raise CapabilityError(f"backbone {name!r} returned no logits from score(return_logits=True); "
                              "is_greedy cannot be decided")
    mask = out.mask.bool()
    logprobs = out.logprobs.float()
    best = torch.log_softmax(out.logits.float(), dim=-1).max(dim=-1).values  # (B, T)
    totals = torch.where(mask, logprobs, torch.zeros_like(logprobs)).sum(-1)
    greedy = ((best - logprobs <= GREEDY_TOLERANCE) | ~mask).all(-1)
    return [float(t) for t in totals.cpu()], [bool(g) for g in greedy.cpu()]


# -- tasks ----------------------------------------------------------------------------------------------
def include_paths(include_path: IncludePath, harness: str) -> list[str] | None:
    """``include_path`` (one directory or several) as a list of strings, None when not given; a path that
    is not a directory is a :class:`~asg.errors.ConfigError` naming ``harness`` (``lm-eval``, ...)."""
    if include_path is None:
        return None
    paths = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"include_path {p}: no such directory of {harness} task YAMLs")
    return [str(p) for p in paths]


def local_first(make: Callable[[list[str] | None, bool], Any], tasks: Sequence[str], paths: list[str] | None) -> Any:
    """A harness TaskManager for ``tasks``: ``make(paths, False)`` (the include paths alone) when ``paths``
    hold every task, else ``make(paths, True)`` (those and the harness's own, whose index is slow to
    build). ``make(include_path, include_defaults)`` builds the harness's TaskManager; whether the tasks
    are then all known is the caller's check."""
    if paths:
        local = make(paths, False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return make(paths, True)
