"""Distributed helpers for the trainer; in a single process every method hands back its input.

Each rank trains on its own image (algorithm.md §1–2), so every scalar that steers the loop
(baselines, KL coefficients, thresholds, controller statistics) is averaged over ranks (§3.1), and
when any rank updates a role, every rank takes part in the gradient exchange (§3.9). The trainer
calls these methods unconditionally: the single-process path is the same code with ``world_size == 1``.

Every method except the properties is a collective when ``world_size > 1``: all ranks must call the
same methods, in the same order, with the same ``params`` lists, or the run hangs.

Launch: ``accelerate launch -m asg train ...`` (its env vars WORLD_SIZE and RANK select the
distributed path; accelerate picks gloo on CPU and nccl on CUDA). On a machine without GPUs,
``accelerate launch --multi_gpu --num_processes 2 ...`` starts two CPU ranks over gloo.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from asg.errors import ConfigError

if TYPE_CHECKING:
    import torch

BUCKET_ELEMENTS = 1 << 24  # gradients are all-reduced in fp32 buckets of at most this many elements (64 MiB)


def launched() -> bool:
    """True when a distributed launcher (accelerate launch / torchrun) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


class Dist:
    """Rank, world size, device, and the few collectives the loop needs (§10 item 13)."""

    def __init__(self, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu") -> None:
        import torch

        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ConfigError(f"Dist.world_size must be an integer >= 1, got {world_size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ConfigError(f"Dist.rank must be an integer in [0, {world_size - 1}], got {rank!r}")
        if world_size > 1:
            import torch.distributed as tdist

            if not (tdist.is_available() and tdist.is_initialized()):
                raise ConfigError(f"Dist(world_size={world_size}) needs an initialised torch.distributed process "
                                  f"group; use Dist.create() in a process started by `accelerate launch`")
            if (tdist.get_rank(), tdist.get_world_size()) != (rank, world_size):
                raise ConfigError(f"Dist(rank={rank}, world_size={world_size}) disagrees with the process group "
                                  f"(rank {tdist.get_rank()} of {tdist.get_world_size()}); use Dist.create()")
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)

    @classmethod
    def create(cls, *, cpu: bool = False) -> Dist:
        """From ``accelerate.PartialState()`` when launched distributed, else a single-process Dist.

        ``cpu=True`` keeps everything on the CPU even where CUDA exists (collectives then use gloo).
        """
        if launched():
            from accelerate import PartialState

            state = PartialState(cpu=cpu)
            return cls(state.process_index, state.num_processes, state.device)
        import torch

        return cls(0, 1, "cuda" if torch.cuda.is_available() and not cpu else "cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, logs and plots."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Dist(rank={self.rank}, world_size={self.world_size}, device={str(self.device)!r})"

    # -- scalar reductions (float64 on the wire, so means of small numbers stay exact enough) ----------
    def _reduce(self, value: float, op: str) -> float:
        value = float(value)
        if self.world_size == 1:
            return value
        import torch
        import torch.distributed as tdist

        buf = torch.tensor([value], dtype=torch.float64, device=self.device)
        tdist.all_reduce(buf, op=getattr(tdist.ReduceOp, op))
        return float(buf.item())

    def mean(self, x: float) -> float:
        """Mean of ``x`` over ranks."""
        return self._reduce(x, "SUM") / self.world_size

    def sum(self, x: float) -> float:
        """Sum of ``x`` over ranks."""
        return self._reduce(x, "SUM")

    def min(self, x: float) -> float:
        return self._reduce(x, "MIN")

    def max(self, x: float) -> float:
        return self._reduce(x, "MAX")

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on at least one."""
        return self._reduce(1.0 if flag else 0.0, "MAX") > 0.5

    def all(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on all of them."""
        return self._reduce(1.0 if flag else 0.0, "MIN") > 0.5

    # -- objects -----------------------------------------------------------------------------------------
    def gather_objects(self, obj: Any) -> list[Any]:
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable; meant for JSON-able records)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as tdist

        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (what the other ranks pass is ignored)."""
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < self.world_size:
            raise ConfigError(f"Dist.broadcast_object src must be a rank in [0, {self.world_size - 1}], got {src!r}")
        if self.world_size == 1:
            return obj
        import torch.distributed as tdist

        box = [obj]
        tdist.broadcast_object_list(box, src=src, device=self.device)
        return box[0]

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as tdist

        if self.device.type == "cuda" and self.device.index is not None:
            tdist.barrier(device_ids=[self.device.index])
        else:
            tdist.barrier()

    # -- gradients -----------------------------------------------------------------------------------------
    def average_gradients(self, params: Iterable[torch.nn.Parameter], key: str = "") -> int:
        """All-reduce mean of ``p.grad`` over ranks; returns how many params hold a grad afterwards.

        A rank whose ``p.grad`` is None contributes zeros, exactly what a zero-loss backward would give
        (§3.9, §5.1), and receives the mean, so that all ranks can take the same optimiser step.
        A param that has no grad on any rank keeps ``grad = None`` everywhere. The return value is the
        same on every rank: step the optimiser iff it is > 0 (and the grads are finite), on all ranks.
        ``key`` (the role) must be the same on every rank too: two roles with equally shaped adapters
        would otherwise pair up silently when ranks disagree on which role updates now.
        """
        params = list(params)
        if self.world_size == 1:
            return sum(p.grad is not None for p in params)
        import torch
        import torch.distributed as tdist

        # Unequal lists would pair up wrong tensors or hang; check first, so every rank raises together.
        shape = torch.tensor([len(params), sum(p.numel() for p in params), zlib.crc32(key.encode())],
                             dtype=torch.float64, device=self.device)
        bounds = torch.cat([shape, -shape])
        tdist.all_reduce(bounds, op=tdist.ReduceOp.MAX)
        if not torch.equal(bounds[:3], -bounds[3:]):
            raise ConfigError(f"average_gradients got different parameter lists on different ranks (rank {self.rank}: "
                              f"{key or 'params'}, {len(params)} tensors, {int(shape[1])} elements); pass the same "
                              "role's params everywhere, in the same order of roles")
        with_grad = 0
        for bucket in _buckets(params, BUCKET_ELEMENTS):
            parts = [torch.zeros(p.numel(), dtype=torch.float32, device=self.device) if p.grad is None
                     else p.grad.detach().reshape(-1).to(device=self.device, dtype=torch.float32) for p in bucket]
            has = torch.tensor([float(p.grad is not None) for p in bucket], dtype=torch.float32, device=self.device)
            flat = torch.cat(parts + [has])  # (sum numel + len(bucket),)
            tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
            *chunks, holders = flat.split([p.numel() for p in bucket] + [len(bucket)])
            for p, chunk, n_holders in zip(bucket, chunks, holders.tolist()):
                if n_holders == 0:
                    continue
                mean = chunk.div_(self.world_size).view(p.shape)
                if p.grad is None:
                    p.grad = mean.to(device=p.device, dtype=p.dtype)
                else:
                    p.grad.copy_(mean)
                with_grad += 1
        return with_grad


def _buckets(params: list[torch.nn.Parameter], limit: int) -> Iterator[list[torch.nn.Parameter]]:
    """Consecutive groups of params of at most ``limit`` elements (a larger single param is its own group)."""
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and size + p.numel() > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket
