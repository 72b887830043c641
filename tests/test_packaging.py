"""asg-core installs editable (this environment) and as a wheel that contains everything it needs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_points_into_the_repository() -> None:
    """The test environment imports asg from core/ and asg.kernels from kernels/ (editable install)."""
    import asg.kernels

    assert Path(asg.__file__).resolve().is_relative_to(ROOT / "core" / "asg")
    assert Path(asg.kernels.__file__).resolve().is_relative_to(ROOT / "kernels")


def _packages_in(tree: Path, prefix: str) -> set[str]:
    return {prefix + ("." + ".".join(p.parent.relative_to(tree).parts) if p.parent != tree else "")
            for p in tree.rglob("__init__.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                   check=True, timeout=600)
    (whl,) = out.glob("asg_core-*.whl")
    return whl


def test_wheel_contains_every_package_and_the_tiny_weights(wheel: Path) -> None:
    """Every package under core/asg and kernels/ is in the wheel, with tiny's weights and tokenizer."""
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = _packages_in(ROOT / "core" / "asg", "asg") | {"asg.kernels"}
    for pkg in packages:
        assert f"{pkg.replace('.', '/')}/__init__.py" in names, f"{pkg} missing from the wheel"
    for f in ("config.json", "tokenizer.json", "model.safetensors"):
        assert f"asg/backbones/tiny/weights/{f}" in names
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "asg = asg.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_installs_and_runs_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    """Installed from the wheel into a fresh target, asg imports from there and its CLI lists `tiny`."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import asg, asg.kernels, json, sys; from asg.cli import main; "
            "print(asg.__file__); print(asg.kernels.__file__); sys.exit(main(['inspect', 'tiny']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(str(target)) and lines[1].startswith(str(target))
    assert '"backbone": "tiny"' in proc.stdout
