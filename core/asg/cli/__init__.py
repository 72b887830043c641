"""The ``asg`` command line. Sub-commands import their heavy dependencies only when they run, so
``asg --help`` and ``asg plugins`` never import torch."""

from __future__ import annotations

import argparse
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
        print(f"asg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"asg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
