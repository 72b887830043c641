"""What every suite does with its result: the command that reproduces it, and the JSON + markdown pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def command_line(suite: str) -> str:
    """``python -m benchmarks <suite> <the arguments this process got>``, for a result's ``_meta``."""
    args = sys.argv[2:] if sys.argv[1:2] == [suite] else sys.argv[1:]
    return " ".join([f"python -m benchmarks {suite}", *args])


def machine() -> str:
    """The processor, torch's thread count and torch's version, for a result's ``_meta``."""
    import platform

    import torch

    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def write_result(out: Path, result: Any, markdown: str) -> None:
    """``result`` as JSON at ``out`` and ``markdown`` beside it (``.md``), each written then renamed, so
    an interrupted write never leaves a half file in place of an earlier result."""
    from asg.train.run import atomic_write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), markdown.rstrip("\n") + "\n")


def publish(out: Path, result: dict[str, Any], title: str, text: str, intro: str = "") -> None:
    """Write ``result`` and its markdown page (title, the reproducing command from ``result["_meta"]``,
    ``intro``, the table ``text``, the machine and run time), then print the table and where it went."""
    meta = result["_meta"]
    parts = [f"# {title}", f"`{meta['command']}`", *([intro] if intro else []), text,
             f"{meta['machine']}, {meta['seconds']} s"]
    write_result(out, result, "\n\n".join(parts))
    print(text)
    print(f"\nwrote {out} and {Path(out).with_suffix('.md')}")
