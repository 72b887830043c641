"""asg — Ask, Solve, Generate: self-evolving unified multimodal models from unlabeled images.

Importing ``asg`` is cheap: torch, transformers and diffusers load only when a backbone is built.
Plugin authors need only ``asg.hookimpl``.
"""

from __future__ import annotations

from asg.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["__version__", "hookimpl"]
