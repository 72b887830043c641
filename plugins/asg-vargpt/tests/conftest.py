"""Paths of the upstream parity fixtures (data produced by running the upstream VARGPT-v1.1 code; see
fixtures/tiny/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def io_tensors() -> dict:
    """Inputs and outputs of the upstream calls (fixtures/tiny/fixture.json lists each one)."""
    return load_file(FIXTURES / "tiny" / "io.safetensors")
