"""Shared fixtures: real distributions with real ``asg`` entry points, written to a temp dir on sys.path."""

from __future__ import annotations

import os

# The Triton kernels are tested on CPU through the interpreter; triton.jit reads this when
# asg.kernels.triton_kernels is first imported. Set TRITON_INTERPRET=0 to test them on a GPU instead.
os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asg import plugins


@pytest.fixture(autouse=True)
def _fresh_plugin_host() -> Iterator[None]:
    """Every test starts and ends with no cached plugin host."""
    plugins.reset_host()
    yield
    plugins.reset_host()


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Install a distribution into a temp site dir: ``make_dist(name, version, entry_points, modules)``."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(name: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = ["[asg]"] + [f"{k} = {v}" for k, v in entry_points.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for mod, src in modules.items():
            (site / f"{mod}.py").write_text(textwrap.dedent(src))
            created.append(mod)
        importlib.invalidate_caches()
        return site

    yield make
    for mod in created:
        sys.modules.pop(mod, None)
