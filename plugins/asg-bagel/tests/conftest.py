"""Paths of the upstream parity fixtures (data produced by running the upstream BAGEL code; see
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


@pytest.fixture(scope="session")
def upstream_folder(tmp_path_factory, fixture_dir) -> Path:
    """The upstream tiny instance laid out as a BAGEL checkpoint folder: ema.safetensors,
    ae.safetensors, llm_config.json, vit_config.json (hub convention: one layer more than built), and
    asg_bagel.json for the constants the release hard-codes (grid sizes, autoencoder)."""
    import json
    import shutil

    cfg = json.loads((fixture_dir / "tiny" / "fixture.json").read_text())["tiny_config"]
    part = lambda prefix: next(v for k, v in cfg.items() if k.startswith(prefix))  # noqa: E731
    out = tmp_path_factory.mktemp("bagel-upstream")
    shutil.copy(fixture_dir / "tiny" / "weights.safetensors", out / "ema.safetensors")
    shutil.copy(fixture_dir / "tiny" / "ae.safetensors", out / "ae.safetensors")
    (out / "llm_config.json").write_text(json.dumps(part("llm_config")))
    vit = dict(part("vit_config"))
    vit["num_hidden_layers"] += 1
    (out / "vit_config.json").write_text(json.dumps(vit))
    bagel = part("BagelConfig")
    (out / "asg_bagel.json").write_text(json.dumps({
        "ae": part("ae_params"), "vit_max_num_patch_per_side": bagel["vit_max_num_patch_per_side"],
        "max_latent_size": bagel["max_latent_size"], "latent_patch_size": bagel["latent_patch_size"],
        "sizes": {"vit_max": 112, "vit_min": 28, "vit_stride": 14, "generate": 32}}))
    return out
