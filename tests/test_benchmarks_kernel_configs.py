"""``python -m benchmarks kernel_configs``: refused without a GPU, and its page ranks what it measured."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks import kernel_configs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refused_by_name_without_a_gpu() -> None:
    args = kernel_configs.build_parser(argparse.ArgumentParser()).parse_args([])
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        kernel_configs.run(args)


def test_page_ranks_measured_configurations_and_names_failures() -> None:
    report = {"gpu": "G", "tokens": 8, "vocab": 16, "ops": ["token_stats", "token_kl"], "results": [
        {"op": "token_stats", "config": "autotuned: A", "ms": 2.0, "x_of_autotuned": 1.0, "hbm_percent": 40.0},
        {"op": "token_stats", "config": "slow", "ms": 3.0, "x_of_autotuned": 1.5, "hbm_percent": 26.7},
        {"op": "token_stats", "config": "fast", "ms": 1.0, "x_of_autotuned": 0.5, "hbm_percent": 80.0},
        {"op": "token_stats", "config": "broken", "error": "OutOfResources: shared memory"},
    ]}  # token_kl not measured yet (a run cut off after the first op): no section, no error
    page = kernel_configs.render(report)
    lines = [ln for ln in page.splitlines() if ln.startswith("| ") and "configuration" not in ln]
    assert [ln.split(" | ")[0] for ln in lines] == ["| autotuned: A", "| fast", "| slow"]  # autotuned first, then fastest
    assert "| fast | 1.000 | 80 | 0.50 |" in page
    assert "1 configurations failed, e.g. broken: OutOfResources" in page
    assert "## token_kl" not in page


def test_every_op_names_an_autotuned_forward_kernel() -> None:
    """The one op -> kernel table of benchmarks/kernels.py (also used by kernel_configs) names, for every op the
    kernel suite measures, an autotuned kernel of asg.kernels.triton_kernels whose bare kernel the sweep launches."""
    pytest.importorskip("triton")
    from benchmarks.kernels import FORWARD_KERNELS, OPS, forward_kernel

    assert set(FORWARD_KERNELS) == set(OPS)
    for op in OPS:
        kernel = forward_kernel(op)
        assert kernel.configs and "BLOCK_T" in kernel.configs[0].kwargs, op
        assert kernel.fn is not kernel, op
    for op in kernel_configs.build_parser(argparse.ArgumentParser()).parse_args([]).ops:
        assert op in FORWARD_KERNELS
