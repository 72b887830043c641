"""Dist: no-ops in one process; real collectives over gloo in two processes started by `accelerate launch`.

Run as a script (``accelerate launch ... tests/test_train_dist.py OUT IMAGES``) this file is the worker
of the two-process test: each rank writes what it saw to OUT/rank<r>.json and the test checks it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asg.errors import ConfigError
from asg.train import dist as dist_module
from asg.train.data import ImagePool
from asg.train.dist import Dist, _buckets, launched

LAUNCH_ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_create_outside_a_launcher_is_a_single_process_stub(monkeypatch):
    """Without WORLD_SIZE/RANK, Dist.create() is rank 0 of 1, main, on the CPU when asked."""
    for var in LAUNCH_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not launched()
    d = Dist.create(cpu=True)
    assert (d.rank, d.world_size, d.is_main, d.device) == (0, 1, True, torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not launched()  # both variables are needed
    monkeypatch.setenv("RANK", "1")
    assert launched()


def test_single_process_collectives_return_their_input():
    """With world_size 1, mean/sum/min/max are the value, any/all the flag, gather a 1-list, broadcast the object."""
    d = Dist()
    assert d.mean(0.25) == d.sum(0.25) == d.min(0.25) == d.max(0.25) == 0.25
    assert d.mean(3) == 3.0 and isinstance(d.mean(3), float)
    assert d.any(True) and not d.any(False) and d.all(True) and not d.all(False)
    assert d.gather_objects({"h_sc": 0.5}) == [{"h_sc": 0.5}]
    assert d.broadcast_object([1, 2]) == [1, 2]
    d.barrier()


def test_single_process_average_gradients_leaves_grads_alone():
    """In one process grads are untouched, a param without grad keeps None, and the count of grads is returned."""
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([1.0, -2.0])
    assert Dist().average_gradients([a, b]) == 1
    assert a.grad.tolist() == [1.0, -2.0] and b.grad is None


def test_rank_and_world_are_validated():
    """A rank outside [0, world) is refused, and world_size > 1 without a process group says how to launch."""
    with pytest.raises(ConfigError, match=r"rank must be an integer in \[0, 0\], got 1"):
        Dist(rank=1, world_size=1)
    with pytest.raises(ConfigError, match="needs an initialised torch.distributed process group.*accelerate launch"):
        Dist(rank=0, world_size=2)
    with pytest.raises(ConfigError, match=r"src must be a rank in \[0, 0\], got 1"):
        Dist().broadcast_object("x", src=1)


def test_buckets_split_before_the_element_limit():
    """Params of 2, 2, 5, 1 elements with limit 4 go in buckets [2, 2], [5], [1]: a too-big param stands alone."""
    params = [torch.nn.Parameter(torch.zeros(n)) for n in (2, 2, 5, 1)]
    sizes = [[p.numel() for p in b] for b in _buckets(params, 4)]
    assert sizes == [[2, 2], [5], [1]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built into this torch")
def test_two_ranks_over_gloo(tmp_path):
    """Two CPU ranks started by `accelerate launch` agree on reductions, gathers, broadcasts and averaged grads,
    and read different images of the pool in the §2 order."""
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(5):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(images / f"{i}.png")
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV_VARS}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf"))  # no user accelerate config can leak in
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), __file__, str(out), str(images)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))

    assert (r0["rank"], r0["world"], r0["is_main"]) == (0, 2, True)
    assert (r1["rank"], r1["world"], r1["is_main"]) == (1, 2, False)
    assert r0["backend"] == r1["backend"] == "gloo"
    for rec in (r0, r1):
        assert rec["mean"] == 1.5  # ranks hold 1 and 2: (1 + 2) / 2
        assert rec["sum"] == 3.0
        assert (rec["min"], rec["max"]) == (9.0, 10.0)  # ranks hold 10 - rank
        assert (rec["any_one"], rec["any_none"], rec["all_one"], rec["all_both"]) == (True, False, False, True)
        assert rec["gathered"] == [{"rank": 0, "h_sc": 0.0}, {"rank": 1, "h_sc": 0.25}]
        assert rec["broadcast"] == {"seed": 123}  # rank 1 passed None
        assert rec["broadcast_from_1"] == "from rank 1"
        # p_both: ([1, 2] + [3, 4]) / 2 = [2, 3]; p_one: rank 0 has no grad (a skipping rank),
        # rank 1 has [4, -2] -> ([0, 0] + [4, -2]) / 2 = [2, -1]; p_none: no grad anywhere -> None.
        assert rec["grads"] == [[2.0, 3.0], [2.0, -1.0], None]
        assert rec["grad_dtypes"] == ["torch.float32", "torch.bfloat16", None]
        assert rec["n_with_grad"] == 2
        assert rec["grads_small_buckets"] == rec["grads"]  # one param per all-reduce gives the same means
        assert "different parameter lists on different ranks" in rec["mismatch"]
        assert "different parameter lists on different ranks" in rec["key_mismatch"]
        assert ("solver" if rec["rank"] == 0 else "proposer") in rec["key_mismatch"]
    # §2: step s, rank r reads indices[((s - 1) * 2 + r) % 5] -> rank 0: 0, 2, 4; rank 1: 1, 3, 0
    pool = ImagePool(images, seed=5)
    want = {0: [0, 2, 4], 1: [1, 3, 0]}
    for rec in (r0, r1):
        assert rec["pool"] == [str(pool.paths[pool.indices[p]]) for p in want[rec["rank"]]]
    assert all(a != b for a, b in zip(r0["pool"], r1["pool"]))  # the two ranks never share a step's image


def _worker(out: Path, images: Path) -> None:
    import torch.distributed as tdist

    d = Dist.create(cpu=True)
    r = d.rank
    rec = {"rank": r, "world": d.world_size, "is_main": d.is_main, "backend": tdist.get_backend()}
    rec["mean"], rec["sum"] = d.mean(r + 1.0), d.sum(r + 1.0)
    rec["min"], rec["max"] = d.min(10.0 - r), d.max(10.0 - r)
    rec["any_one"], rec["any_none"] = d.any(r == 1), d.any(False)
    rec["all_one"], rec["all_both"] = d.all(r == 1), d.all(True)
    rec["gathered"] = d.gather_objects({"rank": r, "h_sc": 0.25 * r})
    rec["broadcast"] = d.broadcast_object({"seed": 123} if r == 0 else None)
    rec["broadcast_from_1"] = d.broadcast_object(f"from rank {r}", src=1)

    def params() -> list[torch.nn.Parameter]:
        p_both = torch.nn.Parameter(torch.zeros(2))
        p_one = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
        p_none = torch.nn.Parameter(torch.zeros(1))
        p_both.grad = torch.tensor([1.0, 2.0]) if r == 0 else torch.tensor([3.0, 4.0])
        if r == 1:
            p_one.grad = torch.tensor([4.0, -2.0], dtype=torch.bfloat16)
        return [p_both, p_one, p_none]

    def grads(ps: list[torch.nn.Parameter]) -> list:
        return [None if p.grad is None else p.grad.float().tolist() for p in ps]

    ps = params()
    rec["n_with_grad"] = d.average_gradients(ps)
    rec["grads"] = grads(ps)
    rec["grad_dtypes"] = [None if p.grad is None else str(p.grad.dtype) for p in ps]
    dist_module.BUCKET_ELEMENTS = 1
    ps = params()
    d.average_gradients(ps)
    rec["grads_small_buckets"] = grads(ps)
    try:
        d.average_gradients(ps[:1] if r == 0 else ps)
        rec["mismatch"] = None
    except ConfigError as exc:
        rec["mismatch"] = str(exc)
    try:  # equally shaped lists of two roles: the key tells them apart
        d.average_gradients(params(), key="solver" if r == 0 else "proposer")
        rec["key_mismatch"] = None
    except ConfigError as exc:
        rec["key_mismatch"] = str(exc)
    d.average_gradients(params(), key="solver")  # the same key everywhere still works after the refusal

    pool = ImagePool(images, seed=5)
    rec["pool"] = [str(pool.image_for(step, r, d.world_size).path) for step in (1, 2, 3)]
    d.barrier()
    (out / f"rank{r}.json").write_text(json.dumps(rec))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
