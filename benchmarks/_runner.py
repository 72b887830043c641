"""What every suite shares: which model it measures, the metadata a number needs to be comparable, where
the result goes and how it is re-rendered without re-running.

A suite module has ``build_parser(parser)``, ``run(args)`` and, when its result can be re-reported,
``render(result) -> str`` (the markdown page body). Suites that measure a backbone call
:func:`add_backbone_args` and :func:`load_backbone`, and record :func:`new_meta` in ``result["_meta"]``:

- ``suite``, ``command``: the suite and the command line that reproduces the result;
- ``harness``, ``harness_version``, ``task_variant``, ``prompt_set``, ``judge``, ``seeds``: what a number
  depends on besides the model (two harnesses disagree by several points on the same model);
- ``backbone``: name, preset, model path, run (adapters), ``stage`` (``base`` without ``--run``,
  ``evolved`` with it);
- ``packages``, ``git_revision``, ``device``, ``machine``, ``started``, ``seconds``.

Understanding and generation suites put their headline numbers in ``result["metrics"]`` keyed by the
paper's metric names (``MMMU`` ... ``MME-C``; GenEval's ``single_object`` ... ``overall``), in the
paper's units, which is what ``python -m benchmarks report`` compares with the published baselines.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks._results import command_line, write_result

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
PACKAGES = ("asg-core", "torch", "transformers", "diffusers", "peft", "accelerate", "triton", "lm-eval",
            "lmms-eval", "datasets")


def add_backbone_args(p: argparse.ArgumentParser, *, default_backbone: str = "tiny", run: bool = True) -> None:
    """``--backbone NAME [--preset P | --model PATH] [--run RUN_DIR/checkpoint]`` plus device and dtype
    (``run=False``: no ``--run``, for a suite that names its runs otherwise)."""
    p.add_argument("--backbone", default=default_backbone, help=f"registered backbone name (default {default_backbone}; see `asg plugins`)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", help="configuration preset of the backbone")
    g.add_argument("--model", type=Path, help="local checkpoint directory (nothing is downloaded)")
    if run:
        p.add_argument("--run", type=Path,
                       help="measure a self-evolved model: a run directory, one of its checkpoints, or a .safetensors "
                            "file of trained adapters (without it: the base model)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="weight dtype (default: the backbone's)")


def default_device(args: argparse.Namespace) -> str:
    if getattr(args, "device", None):
        return str(args.device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_backbone(args: argparse.Namespace) -> Any:
    """The backbone of ``--backbone/--preset/--model`` on ``--device``, with ``--run``'s adapters loaded.

    Clear errors: an unknown backbone lists the registered ones (``asg.plugins``); a ``--run`` that does
    not exist is named before anything is loaded."""
    from asg.errors import ConfigError
    from asg.harness.common import load_named_backbone

    run = getattr(args, "run", None)
    if run is not None and not Path(run).exists():
        raise ConfigError(f"--run {run}: no such run directory, checkpoint or adapter file")
    model = getattr(args, "model", None)
    if model is not None and not Path(model).exists():
        raise ConfigError(f"--model {model}: no such directory (checkpoints are only read from a local path)")
    return load_named_backbone(args.backbone, preset=getattr(args, "preset", None), model=model, run=run,
                               device=default_device(args), dtype=getattr(args, "dtype", None))


def backbone_spec(args: argparse.Namespace) -> dict[str, Any]:
    run = getattr(args, "run", None)
    model = getattr(args, "model", None)
    return {"name": args.backbone, "preset": getattr(args, "preset", None),
            "model": str(model) if model is not None else None, "run": str(run) if run is not None else None,
            "stage": "evolved" if run is not None else "base"}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it; None outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_description(device: str | None = None) -> str:
    import torch

    if device and str(device).startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        p = torch.cuda.get_device_properties(idx)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def machine() -> str:
    import torch

    return f"{platform.system()} {platform.machine()}, python {platform.python_version()}, torch {torch.__version__}"


def new_meta(suite: str, args: argparse.Namespace | None = None, *, harness: str, harness_version: str | None = None,
             task_variant: str | None = None, prompt_set: str | None = None, judge: str | None = None,
             seeds: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    """The ``_meta`` of a result (see the module docstring); call :func:`finish_meta` when done."""
    meta: dict[str, Any] = {
        "suite": suite, "command": command_line(suite), "harness": harness, "harness_version": harness_version,
        "task_variant": task_variant, "prompt_set": prompt_set, "judge": judge, "seeds": list(seeds or []),
        "backbone": backbone_spec(args) if args is not None and hasattr(args, "backbone") else None,
        "packages": package_versions(), "git_revision": git_revision(),
        "device": device_description(default_device(args) if args is not None and hasattr(args, "backbone") else "cpu"),
        "machine": machine(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "_t0": time.time(),
    }
    meta.update(extra)
    return meta


def finish_meta(meta: dict[str, Any]) -> dict[str, Any]:
    meta["seconds"] = round(time.time() - meta.pop("_t0", time.time()), 1)
    return meta


def default_out(suite: str, args: argparse.Namespace, label: str | None = None) -> Path:
    """``benchmarks/results/<suite>-<backbone>-<base|evolved>[-<label>].json`` unless ``--out`` is given."""
    if getattr(args, "out", None):
        return Path(args.out)
    spec = backbone_spec(args)
    parts = [suite, spec["name"], spec["stage"], *([label] if label else [])]
    return RESULTS / ("-".join(p.replace("/", "_") for p in parts) + ".json")


def save(out: Path, result: dict[str, Any], title: str, body: str) -> None:
    """Write ``result`` (JSON) and its markdown page (title, command, body, machine, device, time) beside it."""
    meta = result["_meta"]
    if "_t0" in meta:
        finish_meta(meta)
    page = "\n\n".join([f"# {title}", f"`{meta['command']}`", body, provenance_line(meta)])
    write_result(Path(out), result, page)
    print(body)
    print(f"\nwrote {out} and {Path(out).with_suffix('.md')}")


def provenance_line(meta: dict[str, Any]) -> str:
    bits = [f"harness {meta.get('harness')} {meta.get('harness_version') or ''}".rstrip()]
    for key in ("task_variant", "prompt_set", "judge"):
        if meta.get(key):
            bits.append(f"{key.replace('_', ' ')}: {meta[key]}")
    if meta.get("seeds"):
        bits.append(f"seeds {meta['seeds']}")
    bits += [f"git {meta.get('git_revision')}", meta.get("device") or "", f"{meta.get('seconds')} s"]
    return "; ".join(b for b in bits if b)


def load_result(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no saved result; run the suite first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not a JSON result ({e})") from None
    if not isinstance(data, dict) or "_meta" not in data:
        raise SystemExit(f"{path}: not a benchmark result (no _meta)")
    return data


def add_report_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="result file (default benchmarks/results/<suite>-<backbone>-<stage>.json)")
    p.add_argument("--report", action="store_true", help="re-render the markdown page from the saved result only")
