"""Checkpoints: safetensors + JSON, SAVE_OK completeness, pruning, and bit-exact optimizer/RNG round trips."""

from __future__ import annotations

import builtins
import json
import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from asg.errors import ConfigError, DataError
from asg.train.checkpoint import (
    SAVE_OK, CheckpointError, find_checkpoint, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint,
)
from asg.train.flat import (
    flatten_tree, merge_flat, optimizer_from_flat, optimizer_to_flat, rng_state, set_rng_state, unflatten_tree,
)


def _save(run: Path, step: int, value: float = 0.0, keep_last: int | None = None) -> Path:
    return save_checkpoint(run, step, tensors={"w": torch.full((2,), value)}, state={"baseline": value}, keep_last=keep_last)


def _names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_round_trip_of_tensors_and_state(tmp_path: Path) -> None:
    """What is saved loads back equal: dtypes (bf16, int64, 0-d), values and JSON state, NaN included."""
    tensors = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.arange(5), "c": torch.tensor(2.5)}
    state = {"baseline": 0.25, "nan": float("nan"), "window": [1.0, 2.0], "name": "e1", "np": np.float64(0.5)}
    path = save_checkpoint(tmp_path, 7, tensors=tensors, state=state, keep_last=3)
    assert path == tmp_path / "checkpoints" / "step_000007"
    assert sorted(p.name for p in path.iterdir()) == ["SAVE_OK", "state.json", "tensors.safetensors"]
    step, loaded, got = load_checkpoint(tmp_path)
    assert step == 7 and set(loaded) == {"a", "b", "c"}
    assert all(torch.equal(loaded[k], tensors[k]) and loaded[k].dtype == tensors[k].dtype for k in tensors)
    assert math.isnan(got.pop("nan")) and got == {"baseline": 0.25, "window": [1.0, 2.0], "name": "e1", "np": 0.5}


def test_tensors_are_safetensors_not_pickle(tmp_path: Path) -> None:
    """The tensor file is safetensors: an 8-byte little-endian header length, then a JSON header."""
    path = _save(tmp_path, 1)
    raw = (path / "tensors.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["w"]["dtype"] == "F32" and header["w"]["shape"] == [2]
    assert not raw.startswith(b"\x80") and b"PK\x03\x04" not in raw[:4]  # neither pickle nor torch.save zip


def test_state_must_be_json(tmp_path: Path) -> None:
    """A tensor or an int key inside state is refused with the path of the culprit and nothing is written."""
    with pytest.raises(ConfigError, match=r"state\.opt\.m is a tensor"):
        save_checkpoint(tmp_path, 1, tensors={}, state={"opt": {"m": torch.zeros(1)}}, keep_last=1)
    with pytest.raises(ConfigError, match="key 0 is a int"):
        save_checkpoint(tmp_path, 1, tensors={}, state={"opt": {0: 1.0}}, keep_last=1)
    assert not (tmp_path / "checkpoints").exists()


def test_crash_before_save_ok_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that dies before writing SAVE_OK leaves only a .tmp dir: load ignores it, the next save cleans it."""
    _save(tmp_path, 1, 1.0)
    real_open = builtins.open

    def dying_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith(SAVE_OK):
            raise OSError("killed")
        return real_open(file, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", dying_open)
    with pytest.raises(OSError, match="killed"):
        _save(tmp_path, 2, 2.0)
    monkeypatch.undo()
    assert _names(tmp_path) == ["latest.txt", "step_000001", "step_000002.tmp"]
    step, tensors, _ = load_checkpoint(tmp_path)
    assert step == 1 and tensors["w"].tolist() == [1.0, 1.0]
    with pytest.raises(CheckpointError, match=r"step_000002\.tmp is incomplete .*step_000001"):
        load_checkpoint(tmp_path / "checkpoints" / "step_000002.tmp")
    _save(tmp_path, 3, 3.0)
    assert _names(tmp_path) == ["latest.txt", "step_000001", "step_000003"]


def test_incomplete_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    """A step_* dir without SAVE_OK is refused when asked for directly; the error names it and the complete ones."""
    _save(tmp_path, 1)
    broken = _save(tmp_path, 2)
    (broken / SAVE_OK).unlink()
    with pytest.raises(CheckpointError, match=r"step_000002 is incomplete .*complete ones: step_000001"):
        load_checkpoint(broken / "state.json")
    assert load_checkpoint(tmp_path).step == 1  # the run dir skips it


def test_no_complete_checkpoint_lists_what_exists(tmp_path: Path) -> None:
    """When no checkpoint is complete, the error lists the ones found and marks them incomplete."""
    (_save(tmp_path, 4) / SAVE_OK).unlink()
    with pytest.raises(CheckpointError, match=r"found: step_000004 \(incomplete: no SAVE_OK\)"):
        load_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "other").mkdir()
    with pytest.raises(CheckpointError, match=r"other holds no checkpoints"):
        find_checkpoint(tmp_path / "other")


def test_keep_last_prunes_oldest_complete(tmp_path: Path) -> None:
    """keep_last=2 after saving steps 1..5 leaves steps 4 and 5; latest.txt names step 5."""
    for step in range(1, 6):
        _save(tmp_path, step, keep_last=2)
    assert [c.step for c in list_checkpoints(tmp_path)] == [4, 5]
    assert (tmp_path / "checkpoints" / "latest.txt").read_text() == "step_000005\n"


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    """Resumed from an old step with newer ones on disk, keep_last=1 keeps the newest and the one just written."""
    _save(tmp_path, 10)
    _save(tmp_path, 20)
    path = _save(tmp_path, 5, keep_last=1)
    assert [c.step for c in list_checkpoints(tmp_path)] == [5, 20] and path.name == "step_000005"


def test_latest_txt_wins_over_a_higher_abandoned_step(tmp_path: Path) -> None:
    """A run dir resolves to the last written checkpoint (latest.txt), else to the highest complete step."""
    _save(tmp_path, 20, 20.0)
    _save(tmp_path, 5, 5.0)
    assert load_checkpoint(tmp_path).step == 5
    (tmp_path / "checkpoints" / "latest.txt").unlink()
    assert load_checkpoint(tmp_path / "checkpoints").step == 20


def test_same_step_is_replaced_safely(tmp_path: Path) -> None:
    """Saving a step that exists replaces it with the new contents and leaves no side directories."""
    _save(tmp_path, 3, 1.0)
    _save(tmp_path, 3, 2.0)
    assert load_checkpoint(tmp_path / "checkpoints" / "step_000003").tensors["w"].tolist() == [2.0, 2.0]
    assert _names(tmp_path) == ["latest.txt", "step_000003"]


def test_interrupted_replacement_restores_the_old_checkpoint(tmp_path: Path) -> None:
    """If a crash came after moving the old step_3 aside but before the new one was renamed in, step_3 returns."""
    old = _save(tmp_path, 3, 1.0)
    old.rename(old.with_name("step_000003.replaced"))
    _save(tmp_path, 4, 4.0)
    assert _names(tmp_path) == ["latest.txt", "step_000003", "step_000004"]
    assert load_checkpoint(tmp_path / "checkpoints" / "step_000003").step == 3


def test_tree_round_trip_keeps_types(tmp_path: Path) -> None:
    """flatten_tree/unflatten_tree restore tuples, int keys, non-finite floats, arrays and marker-like keys."""
    tree = {"opt": {0: {"step": torch.tensor(3.0)}, 1: {}}, "betas": (0.9, 0.999), "inf": float("-inf"),
            "arr": np.arange(4, dtype=np.uint32), "__tensor__": "a plain key", "none": None, "list": [1, (2, 3)]}
    tensors, encoded = flatten_tree(tree, "p.")
    assert sorted(tensors) == ["p.arr", "p.opt.0.step"]
    back = unflatten_tree(tensors, json.loads(json.dumps(encoded, allow_nan=False)))
    assert back["betas"] == (0.9, 0.999) and isinstance(back["betas"], tuple) and back["inf"] == float("-inf")
    assert list(back["opt"]) == [0, 1] and torch.equal(back["opt"][0]["step"], torch.tensor(3.0))
    assert back["arr"].dtype == np.uint32 and back["arr"].tolist() == [0, 1, 2, 3]
    assert back["__tensor__"] == "a plain key" and back["list"] == [1, (2, 3)] and back["none"] is None
    with pytest.raises(ConfigError, match="p.w"):
        merge_flat(*[{"p.w": torch.zeros(1)}] * 2)


def _model_and_opt(seed: int, lr: float = 1e-2) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return model, torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.05)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(16, 4)  # data from the global RNG, so the RNG state matters
        loss = (model(x) - x[:, :2].sin()).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_adamw_resume_is_bit_identical(tmp_path: Path) -> None:
    """3 AdamW steps, checkpoint, restore into a fresh model/optimizer (other init and lr), 3 more steps:
    parameters equal bit for bit those of 6 uninterrupted steps."""
    model, opt = _model_and_opt(0)
    _train(model, opt, 6)
    expected = [p.detach().clone() for p in model.parameters()]

    model, opt = _model_and_opt(0)
    _train(model, opt, 3)
    opt_t, opt_j = optimizer_to_flat(opt.state_dict(), "optim.solver.")
    rng_t, rng_j = rng_state()
    weights = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path, 3, tensors=merge_flat(weights, opt_t, rng_t), state={"optim": opt_j, "rng": rng_j}, keep_last=1)
    torch.rand(100), random.random(), np.random.rand()  # disturb every generator

    step, tensors, state = load_checkpoint(tmp_path)
    fresh, fresh_opt = _model_and_opt(123, lr=0.5)
    fresh.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    fresh_opt.load_state_dict(optimizer_from_flat(tensors, state["optim"], "optim.solver."))
    set_rng_state(tensors, state["rng"])
    assert step == 3 and fresh_opt.param_groups[0]["lr"] == 1e-2 and fresh_opt.param_groups[0]["betas"] == (0.8, 0.99)
    _train(fresh, fresh_opt, 3)
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), expected))


def test_optimizer_flat_form_names_and_prefix(tmp_path: Path) -> None:
    """AdamW state splits into per-parameter step/exp_avg/exp_avg_sq tensors; a wrong prefix is refused."""
    model, opt = _model_and_opt(0)
    _train(model, opt, 1)
    tensors, encoded = optimizer_to_flat(opt.state_dict(), "optim.solver.")
    assert {"optim.solver.state.0.step", "optim.solver.state.0.exp_avg", "optim.solver.state.3.exp_avg_sq"} <= set(tensors)
    assert len(tensors) == 4 * 3  # 4 parameters x (step, exp_avg, exp_avg_sq)
    with pytest.raises(DataError, match="prefix 'optim.proposer.'"):
        optimizer_from_flat(tensors, encoded, "optim.proposer.")
    with pytest.raises(ConfigError, match="state_dict"):
        optimizer_to_flat({"weights": 1}, "x.")


def test_rng_round_trip_reproduces_draws(tmp_path: Path) -> None:
    """After set_rng_state (through a checkpoint on disk), python, numpy and torch draw the same numbers again."""
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    tensors, encoded = rng_state()
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn())
    save_checkpoint(tmp_path, 1, tensors=tensors, state={"rng": encoded}, keep_last=1)
    _, loaded, state = load_checkpoint(tmp_path)
    set_rng_state(loaded, state["rng"])
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn())
    assert again == first and random.random() != first[0]
