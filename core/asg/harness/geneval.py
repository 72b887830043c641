"""GenEval (Ghosh et al., 2023) with its official evaluator: write the samples, run the evaluator, read its scores.

The protocol, in three steps:

1. :func:`read_prompts` reads the metadata file of the user's GenEval clone
   (``prompts/evaluation_metadata.jsonl``: 553 prompts, one JSON object a line with ``tag``, ``prompt``,
   ``include`` and optional ``exclude`` clauses); nothing of GenEval is shipped with asg.
   :func:`prompt_set_id` names the file for a result's metadata.
2. :func:`write_samples` draws ``images_per_prompt`` images per prompt with a backbone into GenEval's
   layout, ``<outdir>/<00000>/metadata.jsonl`` (the prompt's line as read) and
   ``<outdir>/<00000>/samples/0000.png ...``, resumably.
3. :func:`run_official_evaluator` runs ``evaluation/evaluate_images.py`` of that clone in *its own*
   Python environment (its mmdetection 2.x / mmcv-full stack cannot share ours; the script also
   insists on a CUDA device) and :func:`parse_results` turns its per-image JSON lines into the scores
   ``evaluation/summary_scores.py`` prints: per task the mean image correctness, overall the unweighted
   mean over the tasks, plus the share of correct images and of prompts with at least one correct image.
   Scores here are in percent.

Seeds: image ``j`` of prompt ``i`` starts from the noise of seed
``seed * 1_000_003 + i * images_per_prompt + j`` (:func:`image_seed`). Every backbone seeds image ``k``
of a ``generate_images`` call with ``seed + k``, so a call covering consecutive images of consecutive
prompts gets exactly these seeds: an image starts from the same noise whatever the batch size, whichever
prompts were already written when a run resumed, and with or without ``--limit`` (another batch shape
can still move a pixel by a rounding step: float arithmetic is not batch-invariant).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asg.errors import AsgError, ConfigError, DataError

TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# prompts per tag in GenEval's prompts/evaluation_metadata.jsonl (553 in all)
OFFICIAL_TAG_COUNTS: dict[str, int] = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                                       "position": 100, "color_attr": 100}
OFFICIAL_SIZE = sum(OFFICIAL_TAG_COUNTS.values())
# the colours the official evaluator's CLIP classifier chooses among, and its spatial relations
COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
EVALUATOR_SCRIPT = Path("evaluation") / "evaluate_images.py"
DETECTOR_CHECKPOINT = "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.pth"
SEED_STRIDE = 1_000_003
MANIFEST = "asg_geneval.json"  # generation settings, beside the prompt folders (the evaluator skips it)
# environment variables of this process that must not leak into the evaluator's interpreter
_PRIVATE_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX")


class EvaluatorError(AsgError):
    """The official GenEval evaluator failed or produced no results."""


class MetadataLine(dict):  # type: ignore[type-arg]
    """One prompt of a GenEval metadata file: the parsed object, plus ``line`` (its text as read, without
    the line break) and ``lineno`` (1-based), so the sample folder can hold the line unchanged."""

    line: str
    lineno: int

    def __init__(self, data: dict[str, Any], line: str, lineno: int) -> None:
        super().__init__(data)
        self.line = line
        self.lineno = lineno


# -- prompts ------------------------------------------------------------------------------------------
def _check_clause(clause: Any, where: str, kind: str, index: int) -> None:
    if not isinstance(clause, dict):
        raise DataError(f"{where}: {kind}[{index}] must be an object, got {type(clause).__name__}")
    name = clause.get("class")
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: {kind}[{index}] needs a \"class\" (an object name)")
    count = clause.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DataError(f"{where}: {kind}[{index}] needs a \"count\" >= 1, got {count!r}")
    if "color" in clause and clause["color"] not in COLORS:
        raise DataError(f"{where}: {kind}[{index}] has colour {clause['color']!r}; the official evaluator knows "
                        f"{', '.join(COLORS)}")
    if "position" in clause:
        pos = clause["position"]
        if kind != "include":
            raise DataError(f"{where}: {kind}[{index}] cannot have a position (only include clauses do)")
        if (not isinstance(pos, list) or len(pos) != 2 or pos[0] not in RELATIONS
                or isinstance(pos[1], bool) or not isinstance(pos[1], int) or not 0 <= pos[1] < index):
            raise DataError(f"{where}: include[{index}] position must be [relation, index of an earlier include "
                            f"clause] with relation one of {', '.join(RELATIONS)}; got {pos!r}")


def _check_metadata(obj: Any, where: str) -> None:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in ("tag", "prompt", "include"):
        if key not in obj:
            raise DataError(f"{where}: missing \"{key}\" (a GenEval metadata line has tag, prompt, include)")
    if obj["tag"] not in TAGS:
        raise DataError(f"{where}: unknown tag {obj['tag']!r}; GenEval's tags are {', '.join(TAGS)}")
    if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        raise DataError(f"{where}: \"prompt\" must be a non-empty string")
    if not isinstance(obj["include"], list) or not obj["include"]:
        raise DataError(f"{where}: \"include\" must be a non-empty list of clauses")
    if not isinstance(obj.get("exclude", []), list):
        raise DataError(f"{where}: \"exclude\" must be a list of clauses")
    for kind in ("include", "exclude"):
        for i, clause in enumerate(obj.get(kind, [])):
            _check_clause(clause, where, kind, i)


def read_prompts(path: str | Path) -> list[MetadataLine]:
    """The prompts of a GenEval metadata file (JSON lines), validated; blank lines are skipped.

    Errors name the file and line: bad JSON, a missing ``tag``/``prompt``/``include``, an unknown tag,
    a malformed clause (``class``, ``count`` >= 1, a colour the evaluator knows, a position
    ``[relation, index of an earlier clause]``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such prompt file (GenEval's is prompts/evaluation_metadata.jsonl in a clone "
                        "of github.com/djghosh13/geneval)")
    out: list[MetadataLine] = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            _check_metadata(obj, where)
            out.append(MetadataLine(obj, line, lineno))
    if not out:
        raise DataError(f"{path}: no prompts")
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prompt_set_id(path: str | Path, prompts: Sequence[dict[str, Any]] | None = None) -> str:
    """How a result names its prompts: ``geneval-553 (<file name>, sha256 <hex>)`` for a file shaped like
    GenEval's (553 prompts with the official count per tag; the name and hash tell the original
    ``evaluation_metadata.jsonl`` from a rewrite such as BAGEL's ``evaluation_metadata_long.jsonl``),
    otherwise ``custom (<file name>, N prompts, sha256 <hex>)``."""
    path = Path(path).expanduser()
    prompts = read_prompts(path) if prompts is None else prompts
    digest = file_sha256(path)
    counts = Counter(p["tag"] for p in prompts)
    if len(prompts) == OFFICIAL_SIZE and dict(counts) == OFFICIAL_TAG_COUNTS:
        return f"geneval-{OFFICIAL_SIZE} ({path.name}, sha256 {digest})"
    return f"custom ({path.name}, {len(prompts)} prompts, sha256 {digest})"


# -- generation ---------------------------------------------------------------------------------------
def image_seed(seed: int, index: int, j: int, images_per_prompt: int) -> int:
    """The noise seed of image ``j`` of prompt ``index`` (see the module docstring)."""
    return int(seed) * SEED_STRIDE + index * images_per_prompt + j


def _metadata_text(prompt: dict[str, Any]) -> str:
    line = getattr(prompt, "line", None)
    return (line if line is not None else json.dumps(prompt)) + "\n"


def _sample_names(images_per_prompt: int) -> list[str]:
    return [f"{j:04d}.png" for j in range(images_per_prompt)]


def _complete(folder: Path, metadata: str, images_per_prompt: int) -> bool:
    """Whether ``folder`` already holds this prompt's metadata and all its samples. A folder holding
    another prompt's metadata is an error: the output directory belongs to a different prompt file."""
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return False
    found = meta.read_text(encoding="utf-8")
    if found.rstrip("\r\n") != metadata.rstrip("\r\n"):
        raise ConfigError(f"{folder} holds another prompt ({found.strip()[:80]!r}, expected "
                          f"{metadata.strip()[:80]!r}): this sample directory was written from a different "
                          "prompt file; give a new one")
    return all((folder / "samples" / name).is_file() for name in _sample_names(images_per_prompt))


def default_role(backbone: Any) -> str | None:
    """``"generator"`` when the backbone has a Generator role adapter (a self-evolved model's is active
    while sampling), else None (the base model)."""
    if getattr(backbone, "adapters", True) is None:
        return None
    return "generator" if "generator" in tuple(getattr(backbone, "roles", ()) or ()) else None


@contextlib.contextmanager
def _role(backbone: Any, role: str | None) -> Iterator[None]:
    if role is None and not hasattr(backbone, "use_role"):
        yield
        return
    with backbone.use_role(role):
        yield


def _check_manifest(outdir: Path, settings: dict[str, Any]) -> None:
    """Refuse to add to prompt folders written with other settings (or not by asg), then record ours."""
    path = outdir / MANIFEST
    if _has_prompt_dirs(outdir):
        if not path.is_file():
            raise ConfigError(f"{outdir} holds GenEval prompt folders that asg did not write (no {MANIFEST}); "
                              "give a new sample directory")
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        changed = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if changed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ConfigError(f"{outdir} holds samples written with other settings ({what}); resuming would mix "
                              "them: give a new sample directory")
    from asg.train.run import atomic_write_text

    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def _has_prompt_dirs(outdir: Path) -> bool:
    return any(p.is_dir() and p.name.isdigit() for p in outdir.iterdir())


def _save_folder(outdir: Path, index: int, metadata: str, images: Sequence[Any], grid: bool) -> None:
    """Write the prompt's folder under a temporary name, then rename it into place: a crash leaves a
    ``.NNNNN.partial`` directory (removed on the next run), never a half prompt folder."""
    final = outdir / f"{index:05d}"
    tmp = outdir / f".{index:05d}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "samples").mkdir(parents=True)
    for name, img in zip(_sample_names(len(images)), images):
        (img if img.mode == "RGB" else img.convert("RGB")).save(tmp / "samples" / name, format="PNG")
    (tmp / "metadata.jsonl").write_text(metadata, encoding="utf-8")
    if grid:
        from asg.evaluation import grid as make_grid

        make_grid([img.convert("RGB") for img in images], cols=min(len(images), 4)).save(tmp / "grid.png")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_samples(
    backbone: Any,
    prompts: Sequence[dict[str, Any]],
    outdir: str | Path,
    *,
    images_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 8,
    role: str | None = "auto",
    steps: int | None = None,
    guidance: float | None = None,
    grid: bool = False,
    progress: bool = True,
    identity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate ``images_per_prompt`` images for each prompt into GenEval's folder layout.

    ``prompts`` come from :func:`read_prompts` (prompt ``i`` goes to ``<outdir>/<i:05d>/``, its
    ``metadata.jsonl`` holding the line exactly as read). ``batch_size`` is the number of images per
    ``generate_images`` call; ``role="auto"`` activates the self-evolved ``generator`` adapter when the
    backbone has one (``None``: the base model); ``steps`` and ``guidance`` go to the backbone (None: its
    defaults); ``grid`` also writes each prompt's ``grid.png``; ``identity`` (JSON-able) says which model
    this is beyond the backbone's name (checkpoint, run), e.g. the suite's backbone spec.

    Resumable: complete prompt folders are skipped, leftovers of an interrupted folder are removed and
    the folder redone. The settings that determine the pixels are kept in ``<outdir>/asg_geneval.json``;
    resuming with different ones is refused. Returns what was done (counts, seconds, the seed rule)."""
    if images_per_prompt < 1 or batch_size < 1:
        raise ConfigError(f"images_per_prompt and batch_size must be >= 1, got {images_per_prompt} and {batch_size}")
    if not prompts:
        raise ConfigError("no prompts to generate")
    outdir = Path(outdir).expanduser()
    outdir.mkdir(parents=True, exist_ok=True)
    role = default_role(backbone) if role == "auto" else role
    settings = {"seed": int(seed), "images_per_prompt": int(images_per_prompt), "num_steps": steps,
                "guidance": guidance, "role": role,
                "backbone": str(getattr(backbone, "name", type(backbone).__name__)), "identity": identity,
                "seed_rule": f"image j of prompt i: seed * {SEED_STRIDE} + i * images_per_prompt + j"}
    _check_manifest(outdir, settings)
    for stale in outdir.glob(".*.partial"):
        shutil.rmtree(stale)

    texts = [_metadata_text(p) for p in prompts]
    pending = [i for i in range(len(prompts)) if not _complete(outdir / f"{i:05d}", texts[i], images_per_prompt)]
    # runs of consecutive pending prompts, at most batch_size // images_per_prompt prompts each
    per_chunk = max(1, batch_size // images_per_prompt)
    chunks: list[list[int]] = []
    for i in pending:
        if chunks and chunks[-1][-1] == i - 1 and len(chunks[-1]) < per_chunk:
            chunks[-1].append(i)
        else:
            chunks.append([i])

    t0 = time.time()
    bar_cm: Any = contextlib.nullcontext(None)
    if progress:
        from asg.progress import progress_bar

        bar_cm = progress_bar(total=len(pending) * images_per_prompt, desc="GenEval samples")
    with bar_cm as bar, _role(backbone, role):
        for chunk in chunks:
            jobs = [(i, j) for i in chunk for j in range(images_per_prompt)]
            images: dict[int, list[Any]] = {i: [] for i in chunk}
            for start in range(0, len(jobs), batch_size):
                part = jobs[start:start + batch_size]
                i0, j0 = part[0]
                outs = backbone.generate_images([prompts[i]["prompt"] for i, _ in part],
                                                seed=image_seed(seed, i0, j0, images_per_prompt),
                                                num_steps=steps, guidance=guidance)
                if len(outs) != len(part):
                    raise AsgError(f"{settings['backbone']}.generate_images returned {len(outs)} images for "
                                   f"{len(part)} prompts")
                for (i, _), out in zip(part, outs):
                    images[i].append(out.image)
                if bar is not None:
                    bar.update(len(part))
            for i in chunk:
                _save_folder(outdir, i, texts[i], images[i], grid)
    return {"outdir": str(outdir), "n_prompts": len(prompts), "images_per_prompt": images_per_prompt,
            "written": len(pending), "skipped": len(prompts) - len(pending), **settings,
            "seconds": round(time.time() - t0, 1)}


# -- the official evaluator -----------------------------------------------------------------------------
def _resolve_python(python: str | Path) -> Path:
    text = str(python)
    if os.sep not in text and not Path(text).exists():
        found = shutil.which(text)
        if found:
            return Path(found)
    path = Path(text).expanduser()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ConfigError(f"{python}: no such Python interpreter; give the python of the environment GenEval's "
                          "evaluator is installed in (mmdet 2.x, mmcv-full, open_clip, clip_benchmark), e.g. "
                          "~/miniconda3/envs/geneval/bin/python")
    return path


def run_official_evaluator(
    imagedir: str | Path,
    *,
    geneval_repo: str | Path,
    python: str | Path,
    detector_dir: str | Path,
    outfile: str | Path,
    timeout: float | None = None,
    options: Sequence[str] = (),
) -> Path:
    """Run ``evaluation/evaluate_images.py <imagedir> --outfile <outfile> --model-path <detector_dir>``
    of the GenEval clone ``geneval_repo`` with interpreter ``python`` (its own environment; this
    process's PYTHONPATH / virtualenv variables are not passed on), working directory the clone.
    ``options`` (``key=value``) go to the script's ``--options``. The evaluator's output is kept in
    ``<outfile>.log``. Returns ``outfile``.

    Raises ConfigError naming a missing repository, script, interpreter, detector directory or
    checkpoint, and EvaluatorError with the tail of its output when the evaluator fails or times out."""
    repo = Path(geneval_repo).expanduser()
    if not repo.is_dir():
        raise ConfigError(f"--geneval-repo {repo}: no such directory (a clone of github.com/djghosh13/geneval)")
    script = repo / EVALUATOR_SCRIPT
    if not script.is_file():
        raise ConfigError(f"{script}: not found; is {repo} a clone of github.com/djghosh13/geneval?")
    interpreter = _resolve_python(python)
    detector = Path(detector_dir).expanduser()
    if not detector.is_dir():
        raise ConfigError(f"--detector-dir {detector}: no such directory (fill it with GenEval's "
                          "evaluation/download_models.sh <dir>)")
    if not any(o.startswith("model=") for o in options) and not (detector / DETECTOR_CHECKPOINT).is_file():
        raise ConfigError(f"{detector / DETECTOR_CHECKPOINT}: missing; download it with GenEval's "
                          f"evaluation/download_models.sh {detector}")
    images = Path(imagedir).expanduser()
    if not images.is_dir() or not _has_prompt_dirs(images):
        raise ConfigError(f"{images}: no GenEval sample folders (00000/, 00001/, ...); write the samples first")
    out = Path(outfile).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()  # a stale file must not pass for this run's results
    cmd = [str(interpreter), str(EVALUATOR_SCRIPT), str(images.resolve()), "--outfile", str(out),
           "--model-path", str(detector.resolve())]
    if options:
        cmd += ["--options", *options]
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
    log = out.with_name(out.name + ".log")
    try:
        proc = subprocess.run(cmd, check=False, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = _text(e.stderr)[-3000:]
        log.write_text(f"$ {' '.join(cmd)}\n{_text(e.stdout)}\n{_text(e.stderr)}")
        raise EvaluatorError(f"GenEval's evaluator did not finish within {timeout} s; output tail:\n{tail}") from None
    log.write_text(f"$ {' '.join(cmd)}\n(exit {proc.returncode})\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-3000:]
        raise EvaluatorError(f"GenEval's evaluator exited with {proc.returncode} ({' '.join(cmd)}; full output in "
                             f"{log}); stderr tail:\n{tail}")
    if not out.is_file() or out.stat().st_size == 0:
        raise EvaluatorError(f"GenEval's evaluator exited 0 but wrote no results to {out} (output in {log})")
    return out


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def repo_revision(repo: str | Path | None) -> str | None:
    """The commit of a GenEval clone (``git rev-parse HEAD``), or None when unknown."""
    if repo is None or not Path(repo).expanduser().is_dir():
        return None
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=Path(repo).expanduser(),
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


# -- scores ---------------------------------------------------------------------------------------------
def parse_results(results_jsonl: str | Path) -> dict[str, Any]:
    """The scores of the evaluator's per-image JSON lines (fields ``filename``, ``tag``, ``prompt``,
    ``correct``, ``reason``, ``metadata``, ``details``), as ``summary_scores.py`` computes them, in percent:

    - ``tasks``: per tag, the share of its images judged correct (tags in GenEval's order, then any
      other tag in order of appearance);
    - ``overall``: the unweighted mean of the task scores present;
    - ``image_accuracy``: correct images / images; ``prompt_accuracy``: prompts (grouped by their
      ``metadata`` string, as the official summary does) with at least one correct image / prompts;
    - ``counts``: images, prompts, correct images and prompts, overall and per tag;
    - ``missing_tags``: GenEval tags absent from the file (then ``overall`` is not GenEval's overall),
      ``complete``: none missing.

    A line that is not a JSON object with a string ``tag`` and a boolean ``correct`` raises DataError
    naming the file and line."""
    path = Path(results_jsonl).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such results file")
    per_tag: dict[str, list[int]] = {}  # tag -> [images, correct]
    prompts: dict[str, list[Any]] = {}  # prompt key -> [tag, any correct]
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            tag, correct = rec.get("tag"), rec.get("correct")
            if not isinstance(tag, str) or not tag:
                raise DataError(f"{where}: missing \"tag\"")
            if not isinstance(correct, bool):
                raise DataError(f"{where}: \"correct\" must be true or false, got {correct!r}")
            key = _prompt_key(rec, where)
            counts = per_tag.setdefault(tag, [0, 0])
            counts[0] += 1
            counts[1] += int(correct)
            entry = prompts.setdefault(key, [tag, False])
            entry[1] = entry[1] or correct
    if not per_tag:
        raise DataError(f"{path}: no results")
    order = [t for t in TAGS if t in per_tag] + [t for t in per_tag if t not in TAGS]
    tasks = {t: 100.0 * per_tag[t][1] / per_tag[t][0] for t in order}
    n_images = sum(c[0] for c in per_tag.values())
    n_correct = sum(c[1] for c in per_tag.values())
    n_prompts = len(prompts)
    n_prompts_ok = sum(1 for _, ok in prompts.values() if ok)
    missing = [t for t in TAGS if t not in per_tag]
    prompts_per_tag = Counter(tag for tag, _ in prompts.values())
    return {
        "tasks": tasks,
        "overall": sum(tasks.values()) / len(tasks),
        "image_accuracy": 100.0 * n_correct / n_images,
        "prompt_accuracy": 100.0 * n_prompts_ok / n_prompts,
        "counts": {"images": n_images, "correct_images": n_correct, "prompts": n_prompts,
                   "correct_prompts": n_prompts_ok,
                   "per_tag": {t: {"images": per_tag[t][0], "correct": per_tag[t][1], "prompts": prompts_per_tag[t]}
                               for t in order}},
        "missing_tags": missing,
        "unknown_tags": [t for t in order if t not in TAGS],
        "complete": not missing,
    }


def _prompt_key(rec: dict[str, Any], where: str) -> str:
    meta = rec.get("metadata")
    if isinstance(meta, str):
        return meta
    if isinstance(meta, dict):
        return json.dumps(meta, sort_keys=True)
    filename = rec.get("filename")
    if isinstance(filename, str) and filename:
        return "folder:" + str(Path(filename).parent.parent)  # <imagedir>/<00000>/samples/<0000>.png
    raise DataError(f"{where}: neither \"metadata\" nor \"filename\" to tell which prompt the image belongs to")
