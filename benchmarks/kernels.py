"""Kernel benchmark: time and peak memory of asg.kernels against the alternatives, in one run.

    python -m benchmarks kernels                 # device defaults (GPU: 1k/4k/16k x 32k/152k tokens x vocab)
    python -m benchmarks kernels --quick         # a small grid that finishes in about a minute on a laptop CPU
    python -m benchmarks kernels --tokens 1024 4096 --vocab 152064 --dtype bf16 --ops token_stats

For every (op, tokens, vocab) it measures each implementation and prints its time and extra peak
memory as ratios to asg's (``x slower`` > 1 means asg is faster; ``x memory`` > 1 means asg uses less):

- ``token_stats``: entropy, log-prob, log-sum-exp and top-2 of bf16/fp32 logits
  - ``asg``: ``asg.kernels.token_stats`` (Triton on a GPU, the chunked reference on CPU)
  - ``eager``: the naive PyTorch formulae (upcast, log_softmax, p * log p, gather, topk)
  - ``compile``: the same formulae under ``torch.compile`` (GPU by default; ``--compile`` on CPU)
  - ``liger-ce``: Liger-Kernel cross-entropy (log-prob only) where ``liger_kernel`` is installed
- ``token_kl``: full-vocabulary KL(p || q) of two logits tensors (asg / eager / compile)
- ``linear_token_stats``: the same statistics from hidden states (``--hidden``) and an LM head
  - ``asg``: ``asg.kernels.linear_token_stats`` (fused GEMM + statistics on a GPU; tiled on CPU)
  - ``gemm+asg``: cuBLAS/MKL GEMM to materialised logits, then ``asg.kernels.token_stats``
  - ``gemm+eager``: GEMM, then the naive formulae
  - ``liger-flce``: Liger fused linear cross-entropy (loss only) where installed

Time is the median of ``--repeat`` calls after one warm-up; peak memory is what the call allocates
beyond its inputs (``torch.cuda.max_memory_allocated`` on a GPU; on CPU each measurement runs in a
fresh process and reports the growth of its peak resident set). On a GPU the achieved bandwidth of
``token_stats`` / ``token_kl`` is also given as a fraction of the device's nominal HBM bandwidth.
Results go to ``benchmarks/results/kernels-<device>.json`` with a description of the machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._results import write_result
from benchmarks._runner import device_description, finish_meta, new_meta, package_versions

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
OPS = ("token_stats", "token_kl", "linear_token_stats")
# asg's autotuned forward kernel of each op, by its name in asg.kernels.triton_kernels (also what
# `python -m benchmarks kernel_configs` sweeps)
FORWARD_KERNELS = {"token_stats": "_stats_fwd_kernel", "token_kl": "_kl_fwd_kernel", "linear_token_stats": "_linear_fwd_kernel"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# nominal HBM bandwidth (bytes/s) by device-name fragment, for the bandwidth fraction
PEAK_BW = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "H20": 4.0e12,
           "A100-SXM4-80GB": 2.039e12, "A100": 1.555e12, "L40S": 0.864e12, "RTX 4090": 1.008e12}


# -- the implementations compared ------------------------------------------------------------------


def eager_stats(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What RL code usually writes (verl's entropy_from_logits + selective log-softmax + topk)."""
    x = z.float()
    lp = torch.log_softmax(x, -1)
    p = lp.exp()
    ent = -(p * lp).sum(-1)
    logp = lp.gather(-1, t[:, None]).squeeze(-1)
    lse = torch.logsumexp(x, -1)
    top = x.topk(2, -1)
    return ent, logp, lse, top.indices[:, 0], top.values[:, 0], top.values[:, 1]


def eager_kl(zp: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(zp.float(), -1)
    lq = torch.log_softmax(zq.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def _liger(kind: str) -> Callable[..., Any] | None:
    try:
        if kind == "ce":
            from liger_kernel.transformers.functional import liger_cross_entropy

            return lambda z, t: liger_cross_entropy(z, t, reduction="none")
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return lambda h, w, t: liger_fused_linear_cross_entropy(h, w, t, reduction="none")
    except Exception:  # not installed, or an API this benchmark does not know
        return None


def implementations(op: str, device: str, use_compile: bool) -> dict[str, Callable[..., Any]]:
    from asg.kernels import linear_token_stats, token_kl, token_stats

    impls: dict[str, Callable[..., Any]] = {}
    if op == "token_stats":
        impls["asg"] = lambda z, t: token_stats(z, t)
        impls["eager"] = eager_stats
        if use_compile:
            impls["compile"] = torch.compile(eager_stats, dynamic=True)
        if device == "cuda" and _liger("ce") is not None:
            impls["liger-ce"] = _liger("ce")  # type: ignore[assignment]
    elif op == "token_kl":
        impls["asg"] = lambda p, q: token_kl(p, q)
        impls["eager"] = eager_kl
        if use_compile:
            impls["compile"] = torch.compile(eager_kl, dynamic=True)
    else:
        impls["asg"] = lambda h, w, t: linear_token_stats(h, w, t)
        impls["gemm+asg"] = lambda h, w, t: token_stats(h @ w.t(), t)
        impls["gemm+eager"] = lambda h, w, t: eager_stats(h @ w.t(), t)
        if device == "cuda" and _liger("flce") is not None:
            impls["liger-flce"] = _liger("flce")  # type: ignore[assignment]
    return impls


# -- inputs -------------------------------------------------------------------------------------------


def make_inputs(op: str, T: int, V: int, D: int, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs filled chunk by chunk, so creating them never allocates more than they hold."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(rows: int, cols: int, scale: float) -> torch.Tensor:
        out = torch.empty(rows, cols, dtype=dtype, device=device)
        step = max(1, (1 << 22) // cols)
        for i in range(0, rows, step):
            out[i:i + step] = (torch.randn(min(step, rows - i), cols, generator=g, device=device) * scale).to(dtype)
        return out

    t = torch.randint(0, V, (T,), generator=g, device=device)
    if op == "token_stats":
        return randn(T, V, 4.0), t
    if op == "token_kl":
        return randn(T, V, 4.0), randn(T, V, 4.0)
    return randn(T, D, 1.0), randn(V, D, D ** -0.5), t


def bytes_read(op: str, T: int, V: int, dtype: torch.dtype) -> int:
    """Bytes of logits a memory-bound op must read once (token_stats: one tensor, token_kl: two)."""
    return (1 if op == "token_stats" else 2) * T * V * (torch.finfo(dtype).bits // 8)


# -- measurement ---------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(op: str, impl: str, T: int, V: int, D: int, dtype_name: str, device: str, repeat: int, use_compile: bool) -> dict[str, Any]:
    """Time (ms, median) and extra peak memory (MB) of one implementation on one shape, in this process."""
    dtype = DTYPES[dtype_name]
    fn = implementations(op, device, use_compile)[impl]
    with torch.no_grad():  # load code paths, thread pools and GEMM workspaces before the baseline is taken
        fn(*make_inputs(op, min(T, 4), V, D, dtype, device, seed=1))
    inputs = make_inputs(op, T, V, D, dtype, device)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    with torch.no_grad():
        out = fn(*inputs)  # first call: compiles / autotunes, and sets the peak
        _sync(device)
        del out
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() - base
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
        times = []
        for _ in range(repeat):
            _sync(device)
            t0 = time.perf_counter()
            out = fn(*inputs)
            _sync(device)
            times.append(time.perf_counter() - t0)
            del out
    ms = statistics.median(times) * 1e3
    linear = op == "linear_token_stats"
    return {"op": op, "impl": impl, "tokens": T, "vocab": V, "hidden": D if linear else None,
            "dtype": dtype_name, "time_ms": ms, "peak_mb": max(0, peak) / 2**20, "config": _tuned(op, impl, device),
            # memory-bound ops: logits bytes read per second; the fused linear: GEMM FLOP per second
            "gb_per_s": None if linear else bytes_read(op, T, V, dtype) / (ms / 1e3) / 1e9,
            "tflop_per_s": 2 * T * V * D / (ms / 1e3) / 1e12 if linear else None}


def forward_kernel(op: str) -> Any:
    """asg's autotuned forward kernel of ``op`` (a triton Autotuner; ``.fn`` is the bare kernel)."""
    from asg.kernels import triton_kernels as tk

    return getattr(tk, FORWARD_KERNELS[op])


def _tuned(op: str, impl: str, device: str) -> str | None:
    """The configuration the autotuner chose for asg's forward kernel of ``op`` on its last call (GPU only)."""
    if impl != "asg" or device != "cuda":
        return None
    return str(getattr(forward_kernel(op), "best_config", None))


def measure_in_child(args: dict[str, Any]) -> dict[str, Any]:
    """CPU: run ``measure`` in a fresh interpreter so its peak resident set belongs to this call alone."""
    # a fixed mmap threshold: every large buffer is mapped on allocation and unmapped on free, so the
    # process's peak resident set is the peak of live buffers (glibc would otherwise keep freed memory)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT.parent), os.environ.get("PYTHONPATH", "")]),
               MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "--child", json.dumps(args)],
                          capture_output=True, text=True, env=env, cwd=ROOT.parent)
    if proc.returncode != 0:
        return {**args, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- machine and report ----------------------------------------------------------------------------------


def machine(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "device": device}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        cpu = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        info["cpu"] = f"{cpu[0]} ({len(cpu)} logical cores)" if cpu else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
        info["peak_bandwidth_tb_s"] = next((bw / 1e12 for k, bw in PEAK_BW.items() if k in props.name), None)
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT.parent).stdout.strip() or None
    except OSError:
        info["git"] = None
    return info


def table(rows: list[dict[str, Any]], peak_bw: float | None) -> str:
    """Markdown table: one line per (op, shape, impl), ratios against asg's line of the same shape."""
    out = ["| op | tokens x vocab | impl | time ms | x slower than asg | peak MB | x memory of asg | GB/s or TFLOP/s |"
           + (" % of HBM peak |" if peak_bw else ""),
           "|---|---|---|---:|---:|---:|---:|---:|" + ("---:|" if peak_bw else "")]
    ref = {(r["op"], r["tokens"], r["vocab"]): r for r in rows if r["impl"] == "asg" and "error" not in r}
    for r in rows:
        shape = f"{r['tokens']} x {r['vocab']}" + (f" (D {r['hidden']})" if r.get("hidden") else "")
        if "error" in r:
            out.append(f"| {r['op']} | {shape} | {r['impl']} | error: {r['error'][:60]} | | | | |" + (" |" if peak_bw else ""))
            continue
        a = ref.get((r["op"], r["tokens"], r["vocab"]))
        slower = f"{r['time_ms'] / a['time_ms']:.2f}" if a else "-"
        mem = f"{r['peak_mb'] / a['peak_mb']:.1f}" if a and a["peak_mb"] > 0.5 else "-"
        rate = f"{r['gb_per_s']:.3g} GB/s" if r.get("gb_per_s") is not None else f"{r['tflop_per_s']:.3g} TFLOP/s"
        line = f"| {r['op']} | {shape} | {r['impl']} | {r['time_ms']:.2f} | {slower} | {r['peak_mb']:.0f} | {mem} | {rate} |"
        if peak_bw:
            line += f" {r['gb_per_s'] * 1e9 / peak_bw * 100:.0f} |" if r.get("gb_per_s") is not None else " - |"
        out.append(line)
    return "\n".join(out)


def head_shape(backbone: str, preset: str | None = None, model: Path | None = None) -> tuple[int, int]:
    """(vocabulary, hidden) of a backbone's language-model head, from its architecture on the meta device
    (no weights are read or allocated)."""
    from asg.plugins import get_backbone_class

    b = get_backbone_class(backbone).load(preset=preset, model=model, device="meta", weights=False)
    heads = [m for name, m in b.root_module().named_modules() if name.endswith("lm_head") and hasattr(m, "weight")]
    if not heads:
        raise SystemExit(f"kernels: backbone {backbone!r} has no module named *lm_head; pass --vocab and --hidden")
    vocab, hidden = heads[0].weight.shape
    return int(vocab), int(hidden)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.report:
        out = Path(args.out) if args.out else RESULTS / f"kernels-{args.device if args.device != 'auto' else 'cpu'}.json"
        if not out.is_file():
            raise SystemExit(f"kernels --report: no saved result at {out}; run the suite first")
        report = json.loads(out.read_text())
        write_result(out, report, render(report))
        print(render(report))
        return report
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device == "cuda"
    if args.quick:
        tokens, vocab, hidden, repeat = [64, 256], [32768, 152064], 256, 2
    else:
        tokens = [1024, 4096, 16384] if gpu else [256, 1024]
        vocab, hidden, repeat = [32768, 152064], (3584 if gpu else 896), (10 if gpu else 3)
    if args.backbone:
        head_vocab, head_hidden = head_shape(args.backbone, args.preset, args.model)
        vocab, hidden = [head_vocab], head_hidden
        print(f"# {args.backbone}'s LM head: vocabulary {head_vocab}, hidden {head_hidden}", flush=True)
    tokens = args.tokens or tokens
    vocab = args.vocab or vocab
    hidden = args.hidden or hidden
    repeat = args.repeat or repeat
    use_compile = args.compile if args.compile is not None else gpu
    ops = args.ops or list(OPS)
    info = machine(device)
    meta = new_meta("kernels", None, harness="asg kernels benchmark", harness_version=package_versions(["asg-core"])["asg-core"],
                    task_variant=", ".join(ops), prompt_set=None, judge=None, seeds=[], device=device_description(device),
                    backbone={"name": args.backbone, "preset": args.preset, "model": str(args.model) if args.model else None,
                              "run": None, "stage": "base"} if args.backbone else None)
    print(f"# asg kernel benchmark on {info.get('gpu') or info['cpu']} ({device}), {args.dtype}", flush=True)
    rows: list[dict[str, Any]] = []
    out = Path(args.out) if args.out else RESULTS / f"kernels-{device}.json"
    # rewritten after every measurement, so a run cut off by a time limit keeps what it measured
    report = {"suite": "kernels", "machine": info, "dtype": args.dtype, "repeat": repeat, "results": rows,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "_meta": meta, "partial": True}
    for op in ops:
        names = list(implementations(op, device, use_compile))
        for T in tokens:
            for V in vocab:
                for impl in names:
                    spec = dict(op=op, impl=impl, T=T, V=V, D=hidden, dtype_name=args.dtype, device=device,
                                repeat=repeat, use_compile=use_compile)
                    try:
                        r = measure(**spec) if gpu else measure_in_child(spec)
                    except Exception as exc:  # noqa: BLE001 - e.g. out of memory for the naive path: report it
                        r = {**spec, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
                        if gpu:
                            torch.cuda.empty_cache()
                    r.setdefault("op", op)
                    r.setdefault("impl", impl)
                    r.setdefault("tokens", T)
                    r.setdefault("vocab", V)
                    rows.append(r)
                    msg = r.get("error") or f"{r['time_ms']:.2f} ms, {r['peak_mb']:.0f} MB"
                    print(f"  {op:>18} {T:>6} x {V:<6} {impl:<11} {msg}", flush=True)
                    write_result(out, report, render(report))
    peak_bw = (info.get("peak_bandwidth_tb_s") or 0) * 1e12 or None
    report["partial"] = False
    finish_meta(meta)
    text = render(report)
    print()
    print(table(rows, peak_bw))
    write_result(out, report, text)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return report


def render(report: dict[str, Any]) -> str:
    """The markdown page of a saved result (title, command, table, provenance)."""
    from benchmarks._runner import provenance_line

    info = report["machine"]
    peak_bw = (info.get("peak_bandwidth_tb_s") or 0) * 1e12 or None
    device = "cuda" if info.get("gpu") else "cpu"
    parts = [f"# kernels on {info.get('gpu') or info['cpu']} ({device}, {report['dtype']})"]
    meta = report.get("_meta")
    if meta:
        parts.append(f"`{meta['command']}`")
    if report.get("partial"):
        parts.append("**Partial:** the run was cut off (or is still running); the rows below are what it measured.")
    parts.append(table(report["results"], peak_bw))
    if meta:
        parts.append(provenance_line(meta))
    return "\n\n".join(parts)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m benchmarks kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", nargs="+", choices=OPS, help="operations to measure (default: all)")
    p.add_argument("--tokens", nargs="+", type=int, help="token counts (default: 1k 4k 16k on GPU, 256 1024 on CPU)")
    p.add_argument("--vocab", nargs="+", type=int, help="vocabulary sizes (default: 32768 152064)")
    p.add_argument("--hidden", type=int, help="hidden size of linear_token_stats (default: 3584 GPU, 896 CPU)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--repeat", type=int, help="timed calls per measurement (median reported)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="include torch.compile of the eager formulae (default: on for GPU, off for CPU)")
    p.add_argument("--quick", action="store_true", help="small shapes: an end-to-end check in about a minute")
    p.add_argument("--backbone", help="size the vocabulary and hidden width from this backbone's LM head "
                                      "(architecture only, nothing loaded), e.g. bagel: 152064 x 3584")
    p.add_argument("--preset", help="preset of --backbone")
    p.add_argument("--model", type=Path, help="local checkpoint directory of --backbone (its config only)")
    p.add_argument("--out", help="result file (default benchmarks/results/kernels-<device>.json)")
    p.add_argument("--report", action="store_true", help="re-render the markdown page from the saved result only")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
