"""The ``asg`` command line. Sub-commands import their heavy dependencies only when they run, so
``asg --help`` and ``asg plugins`` never import torch."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from asg import __version__
from asg.errors import AsgError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asg",
        description="Ask, Solve, Generate: self-evolving unified multimodal models from unlabeled images.",
    )
    parser.add_argument("--version", action="version", version=f"asg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from asg.cli import commands

    for register in commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except AsgError as exc:
        # an error: 2; a run stopped by SIGINT/SIGTERM (asg.train.trainer.TrainingStopped): 128 + the signal
        code = getattr(exc, "exit_code", 2)
        code = code if isinstance(code, int) and not isinstance(code, bool) else 2
        print(f"asg {args.command}: {'error: ' if code == 2 else ''}{exc}", file=sys.stderr)
        if os.environ.get("ASG_DEBUG"):  # the traceback, for bug reports
            import traceback

            traceback.print_exc()
        return code
    except KeyboardInterrupt:
        print(f"asg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
