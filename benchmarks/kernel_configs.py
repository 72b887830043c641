"""Sweep the launch configurations of asg's memory-bound forward kernels at one shape (GPU only).

``python -m benchmarks kernel_configs [--tokens 16384] [--vocab 152064] [--ops token_stats token_kl]``

For ``token_stats`` and ``token_kl`` (the forwards of ``_stats_fwd_kernel`` and ``_kl_fwd_kernel``) it
times every (BLOCK_T, BLOCK_V, num_warps, num_stages) of a grid, bf16 logits, and prints one line per
configuration: milliseconds (median of ``triton.testing.do_bench``), the share of the device's nominal
HBM bandwidth, and the time as a ratio to the configuration the kernel's autotuner picks from its own
list, measured in the same run. Each configuration's outputs are checked against the autotuned ones
before it is timed, so a configuration that computes something else is reported, not ranked. This is
how the configuration lists in ``asg.kernels.triton_kernels`` are chosen; results go to
``benchmarks/results/kernel-configs-cuda.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

GRID = {"BLOCK_T": [1], "BLOCK_V": [1024, 2048, 4096, 8192], "num_warps": [2, 4, 8, 16], "num_stages": [1, 2, 3]}


def _outputs(op: str, x: Any, other: Any, **launch: Any) -> list[Any]:
    """Run the forward kernel of ``op`` once (autotuned when ``launch`` is empty) and return its outputs."""
    import torch
    import triton

    from .kernels import forward_kernel

    N, V = x.shape
    f = dict(device=x.device, dtype=torch.float32)
    grid = (lambda meta: (triton.cdiv(N, meta["BLOCK_T"]),)) if not launch else (triton.cdiv(N, launch["BLOCK_T"]),)
    kernel = forward_kernel(op) if not launch else forward_kernel(op).fn
    if op == "token_stats":
        h, lp, lse, t1, t2 = (torch.empty(N, **f) for _ in range(5))
        top1 = torch.empty(N, device=x.device, dtype=torch.int64)
        kernel[grid](x, x.stride(0), other, h, lp, lse, top1, t1, t2, N, V, V, 1.0, -100,
                     HAS_TGT=True, SCALE=False, **launch)
        return [h, lp, lse, top1, t1, t2]
    kl, lse_p, lse_q = (torch.empty(N, **f) for _ in range(3))
    kernel[grid](x, x.stride(0), other, other.stride(0), kl, lse_p, lse_q, N, V, V, 1.0, **launch)
    return [kl, lse_p, lse_q]


def sweep(op: str, tokens: int, vocab: int, grid: dict[str, list[int]], repeat: int) -> list[dict[str, Any]]:
    import torch
    from triton.testing import do_bench

    from .kernels import PEAK_BW, bytes_read, forward_kernel, make_inputs

    x, other = make_inputs(op, tokens, vocab, 0, torch.bfloat16, "cuda")
    peak = next((bw for k, bw in PEAK_BW.items() if k in torch.cuda.get_device_properties(0).name), None)
    nbytes = bytes_read(op, tokens, vocab, torch.bfloat16)
    want = _outputs(op, x, other)
    tuned_ms = do_bench(lambda: _outputs(op, x, other), rep=repeat)
    rows = [{"op": op, "config": "autotuned: " + str(forward_kernel(op).best_config), "ms": tuned_ms}]
    for values in itertools.product(*grid.values()):
        launch = dict(zip(grid, values))
        row: dict[str, Any] = {"op": op, "config": ", ".join(f"{k} {v}" for k, v in launch.items())}
        try:
            got = _outputs(op, x, other, **launch)
            torch.cuda.synchronize()
            same = all(torch.allclose(g.double(), w.double(), atol=1e-4, rtol=1e-5, equal_nan=True)
                       for g, w in zip(got, want))
            if not same:
                row["error"] = "outputs differ from the autotuned configuration's"
            else:
                row["ms"] = do_bench(lambda launch=launch: _outputs(op, x, other, **launch), rep=repeat)
        except Exception as exc:  # noqa: BLE001 - e.g. out of registers / shared memory: report and go on
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:120]
            torch.cuda.synchronize()
        rows.append(row)
        print(json.dumps(row), flush=True)
    for row in rows:
        if "ms" in row:
            row["x_of_autotuned"] = row["ms"] / tuned_ms
            row["gb_per_s"] = nbytes / (row["ms"] / 1e3) / 1e9
            row["hbm_percent"] = row["gb_per_s"] * 1e9 / peak * 100 if peak else None
    return rows


def render(report: dict[str, Any]) -> str:
    out = [f"# Launch configurations of the forward kernels, {report['gpu']}, {report['tokens']} x {report['vocab']} bf16",
           "", "`python -m benchmarks kernel_configs` — the ten fastest per op, and the autotuned one.", ""]
    for op in report["ops"]:
        rows = [r for r in report["results"] if r["op"] == op and "ms" in r]
        if not rows:
            continue
        tuned, rest = rows[0], sorted(rows[1:], key=lambda r: r["ms"])
        out += [f"## {op}", "", "| configuration | ms | % of HBM peak | x of autotuned |", "|---|---:|---:|---:|"]
        for r in [tuned, *rest[:10]]:
            hbm = f"{r['hbm_percent']:.0f}" if r.get("hbm_percent") is not None else "-"
            out.append(f"| {r['config']} | {r['ms']:.3f} | {hbm} | {r['x_of_autotuned']:.2f} |")
        errors = [r for r in report["results"] if r["op"] == op and "error" in r]
        if errors:
            out.append(f"\n{len(errors)} configurations failed, e.g. {errors[0]['config']}: {errors[0]['error']}")
        out.append("")
    return "\n".join(out)


def build_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--vocab", type=int, default=152064)
    p.add_argument("--ops", nargs="+", default=["token_stats", "token_kl"], choices=["token_stats", "token_kl"])
    p.add_argument("--repeat", type=int, default=50, help="do_bench time budget per configuration, ms")
    p.add_argument("--out", type=Path, default=None)
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("kernel_configs: needs a CUDA GPU (the configurations are GPU launch parameters)")
    from benchmarks._results import write_result

    results: list[dict[str, Any]] = []
    gpu = torch.cuda.get_device_properties(0).name
    out = args.out or RESULTS / "kernel-configs-cuda.json"
    report = {"suite": "kernel_configs", "gpu": gpu, "tokens": args.tokens, "vocab": args.vocab, "ops": args.ops,
              "grid": GRID, "results": results, "partial": True}
    for op in args.ops:
        results += sweep(op, args.tokens, args.vocab, GRID, args.repeat)
        write_result(out, report, render(report))  # a run cut off after one op keeps it
    report["partial"] = False
    report["best"] = {op: min((r for r in results if r["op"] == op and "ms" in r), key=lambda r: r["ms"])["config"]
                      for op in args.ops}
    write_result(out, report, render(report))
    print(render(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argparse.ArgumentParser(prog="python -m benchmarks.kernel_configs",
                                                description=__doc__.splitlines()[0])).parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
