"""asg.backbones.checkpoint_io on a toy module whose checkpoint names carry an ``old.`` prefix.

The plugins' own tests check their name rules against the public checkpoints' manifests; these check the
generic file handling: shards and index, strict loading, what each error names, saving.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from asg.backbones import checkpoint_io as io
from asg.backbones.checkpoint_io import INDEX_FILE, CheckpointError
from asg.errors import DataError


class Toy(nn.Module):
    """Two layers and a persistent buffer (listed as kind ``buffer``) and a non-persistent one (not saved)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 2)
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("table", torch.arange(3.0), persistent=False)


def to_ckpt(name: str) -> str:
    if name.startswith(("a.", "b.", "scale")):
        return "old." + name
    raise CheckpointError(f"module name {name} matches no toy rule")


def from_ckpt(key: str) -> str:
    if key.startswith("old."):
        return key.removeprefix("old.")
    raise CheckpointError(f"checkpoint key {key} matches no toy rule")


def load(folder: Path, model: nn.Module, **kw) -> io.LoadReport:
    return io.load_checkpoint(folder, model, to_checkpoint_name=to_ckpt, from_checkpoint_name=from_ckpt,
                              family="toy", **kw)


def seeded(seed: int) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def test_checkpoint_error_is_a_data_error() -> None:
    """A bad checkpoint is bad input data: CheckpointError is a DataError, so the CLI reports it as such."""
    assert issubclass(CheckpointError, DataError)


def test_sharded_round_trip_loads_strictly(tmp_path: Path) -> None:
    """Three shards + index under checkpoint names load into a fresh model with identical tensors."""
    src = seeded(0)
    paths = io.save_checkpoint(src, tmp_path, to_checkpoint_name=to_ckpt, shards=3, family="toy")
    assert [p.name for p in paths] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert sorted(index["weight_map"]) == ["old.a.bias", "old.a.weight", "old.b.bias", "old.b.weight", "old.scale"]
    assert index["metadata"]["total_size"] == 4 * (32 + 8 + 16 + 2 + 2)
    assert io.checkpoint_files(tmp_path) == tuple(paths)
    header = io.read_checkpoint_header(tmp_path)
    assert header["old.a.weight"] == io.TensorEntry(index["weight_map"]["old.a.weight"], (8, 4), "F32")
    dst = seeded(1)
    report = load(tmp_path, dst)
    assert (report.loaded, report.ignored, report.files) == (5, (), tuple(p.name for p in paths))
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in dst.state_dict().items())


def test_single_file_with_ignored_keys_reports_them(tmp_path: Path) -> None:
    """One model.safetensors loads; keys the model lacks but is_ignored accepts come back as ignored."""
    paths = io.save_checkpoint(seeded(0), tmp_path, to_checkpoint_name=to_ckpt)
    assert [p.name for p in paths] == ["model.safetensors"]
    tensors = load_file(paths[0]) | {"tower.x": torch.zeros(1), "old.scale": torch.full((2,), 3.0)}
    save_file(tensors, str(paths[0]))
    model = seeded(1)
    report = load(tmp_path, model, is_ignored=lambda key: key.startswith(("tower.", "old.scale")))
    assert report.ignored == ("tower.x",)  # old.scale is expected by the model, so it loads
    assert report.loaded == 5 and torch.equal(model.scale, torch.full((2,), 3.0))


def test_strict_errors_name_file_key_and_shapes_and_copy_nothing(tmp_path: Path) -> None:
    """Unknown, unexpected, missing and mis-shaped keys each fail before any copy, naming file and key."""
    full = {to_ckpt(k): v for k, v in seeded(0).state_dict().items()}
    target = seeded(1)
    snapshot = {k: v.clone() for k, v in target.state_dict().items()}

    def folder(name: str, tensors: dict) -> Path:
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"))
        return tmp_path / name

    with pytest.raises(CheckpointError, match=r"1 checkpoint key\(s\) match no toy name rule: model.safetensors:c.w"):
        load(folder("unknown", {**full, "c.w": torch.zeros(1)}), target)

    def hint(keys: Sequence[str]) -> str:
        return f" (hint: {len(keys)} under old.c)"

    with pytest.raises(CheckpointError, match=r"2 checkpoint key\(s\) have no place in the model \(hint: 2 under old.c\): "
                                              r"model.safetensors:old.c.w, model.safetensors:old.c.x"):
        load(folder("stray", {**full, "old.c.w": torch.zeros(1), "old.c.x": torch.zeros(1)}), target,
             unexpected_hint=hint)
    with pytest.raises(CheckpointError, match=r"1 model tensor\(s\) missing from model.safetensors: old.b.bias"):
        load(folder("missing", {k: v for k, v in full.items() if k != "old.b.bias"}), target)
    with pytest.raises(CheckpointError, match=r"model.safetensors:old.a.weight expected \[8, 4\] found \[4, 8\]"):
        load(folder("shape", {**full, "old.a.weight": torch.zeros(4, 8)}), target)
    assert all(torch.equal(v, snapshot[k]) for k, v in target.state_dict().items())


def test_without_from_checkpoint_name_unknown_keys_are_unexpected(tmp_path: Path) -> None:
    """With no inverse rule, a key no rule covers is reported as having no place in the model."""
    io.save_checkpoint(seeded(0), tmp_path, to_checkpoint_name=to_ckpt)
    path = tmp_path / "model.safetensors"
    save_file(load_file(path) | {"c.w": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match=r"1 checkpoint key\(s\) have no place in the model: model.safetensors:c.w"):
        io.load_checkpoint(tmp_path, seeded(1), to_checkpoint_name=to_ckpt)


def test_folder_and_index_errors_name_the_files(tmp_path: Path) -> None:
    """No folder, no weights, a broken index, a shard the index misdescribes and a key in two shards are named."""
    with pytest.raises(CheckpointError, match="checkpoint folder .*nowhere does not exist"):
        io.checkpoint_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "other.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="neither model.safetensors.index.json nor model.safetensors "
                                              r"\(safetensors files present: other.safetensors\)"):
        io.checkpoint_files(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / INDEX_FILE).write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(CheckpointError, match="empty or malformed weight_map"):
        io.checkpoint_files(tmp_path / "broken")

    shards = tmp_path / "shards"
    io.save_checkpoint(seeded(0), shards, to_checkpoint_name=to_ckpt, shards=2)
    index = json.loads((shards / INDEX_FILE).read_text())
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    moved = next(k for k, f in index["weight_map"].items() if f == second)
    (shards / INDEX_FILE).write_text(json.dumps({"weight_map": {**index["weight_map"], moved: first}}))
    with pytest.raises(CheckpointError, match=f"assigns key\\(s\\) to {first} that it lacks: {moved}"):
        io.read_checkpoint_header(shards)
    (shards / INDEX_FILE).write_text(json.dumps(index))
    kept = load_file(shards / first)
    save_file(kept | {"old.extra": torch.zeros(1)}, str(shards / first))
    with pytest.raises(CheckpointError, match=f"{first} holds key\\(s\\) model.safetensors.index.json does not list "
                                              "for it: old.extra"):
        io.read_checkpoint_header(shards)
    save_file(kept, str(shards / first))
    twice = next(iter(kept))
    save_file(load_file(shards / second) | {twice: kept[twice]}, str(shards / second))
    with pytest.raises(CheckpointError, match=f"checkpoint key {twice} is in both {first} and {second}"):
        io.read_checkpoint_header(shards)
    (shards / first).unlink()
    with pytest.raises(CheckpointError, match=f"names shard file\\(s\\) missing from .*: {first}"):
        io.checkpoint_files(shards)


def test_meta_models_are_refused(tmp_path: Path) -> None:
    """A model on the meta device is refused, naming a tensor: its non-persistent buffers would stay empty."""
    io.save_checkpoint(seeded(0), tmp_path, to_checkpoint_name=to_ckpt)
    with torch.device("meta"):
        model = Toy()
    with pytest.raises(CheckpointError, match=r"6 tensor\(s\) on the meta device \(e.g. scale\); build it on a real device"):
        load(tmp_path, model)


def test_names_manifest_and_save_errors(tmp_path: Path) -> None:
    """rename_keys lists every refused name and a collision; the manifest lists parameters and persistent buffers."""
    with pytest.raises(CheckpointError, match=r"2 module name\(s\) match no toy name rule: c.w, d.w"):
        io.rename_keys({"a.w": 0, "d.w": 1, "c.w": 2}, to_ckpt, what="module name(s)", family="toy")
    with pytest.raises(CheckpointError, match="two checkpoint key.s. map to x .one is old.x."):
        io.rename_keys({"x": 0, "old.x": 1}, lambda k: k.removeprefix("old."), what="checkpoint key(s)")
    manifest = io.checkpoint_manifest(seeded(0), to_ckpt)
    assert manifest["old.a.weight"] == {"shape": [8, 4], "dtype": "float32", "kind": "parameter"}
    assert manifest["old.scale"] == {"shape": [2], "dtype": "float32", "kind": "buffer"}
    assert "old.table" not in manifest and len(manifest) == 5

    class Extra(Toy):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Linear(1, 1)

    with pytest.raises(CheckpointError, match=r"2 module name\(s\) match no toy name rule: c.bias, c.weight"):
        io.save_checkpoint(Extra(), tmp_path, to_checkpoint_name=to_ckpt, family="toy")
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        io.save_checkpoint(seeded(0), tmp_path, to_checkpoint_name=to_ckpt, shards=0)
    with pytest.raises(ValueError, match="cannot split 5 tensors into 9 non-empty shards"):
        io.save_checkpoint(seeded(0), tmp_path, to_checkpoint_name=to_ckpt, shards=9)
    assert not list(tmp_path.iterdir())  # every refusal came before a file was written


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_saved_weights_follow_the_umask_not_safetensors_owner_only_mode(tmp_path: Path, mask: int) -> None:
    """safetensors 0.8 writes ``0o600`` whatever the umask; asg's writers give ``0o666 & ~umask``
    (0o644 under the usual 022), so weights on a shared disk are readable as any other file written there."""
    raw = tmp_path / "raw.safetensors"
    save_file({"x": torch.zeros(2)}, str(raw))
    if os.stat(raw).st_mode & 0o777 != 0o600:
        pytest.skip("this safetensors version no longer writes owner-only files")
    with _umask(mask):
        path = io.save_safetensors({"x": torch.arange(3.0)}, tmp_path / "w.safetensors", {"format": "pt"})
        io.save_checkpoint(Toy(), tmp_path / "sharded", to_checkpoint_name=to_ckpt, shards=2)
        (tmp_path / "lib" / "sub").mkdir(parents=True)
        save_file({"y": torch.ones(1)}, str(tmp_path / "lib" / "sub" / "m.safetensors"))
        io.share_safetensors(tmp_path / "lib")
    expected = 0o666 & ~mask
    assert os.stat(path).st_mode & 0o777 == expected
    assert torch.equal(load_file(str(path))["x"], torch.arange(3.0))
    shards = sorted((tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) == 2 and all(os.stat(p).st_mode & 0o777 == expected for p in shards)
    assert os.stat(tmp_path / "lib" / "sub" / "m.safetensors").st_mode & 0o777 == expected


def test_tiny_weights_and_run_checkpoints_are_readable_by_others(tmp_path: Path) -> None:
    """The two writers users meet first: ``asg tiny pretrain``'s model.safetensors (``save_pretrained``)
    and the adapter file of ``save_trainable`` (what checkpoints and ``asg train --out`` hold)."""
    from asg.backbones.tiny.model import TinyBackbone

    with _umask(0o022):
        TinyBackbone.load(preset="init", adapters=False).save_pretrained(tmp_path / "base")
        TinyBackbone.load(preset="init").save_trainable(tmp_path / "adapters.safetensors")
    assert os.stat(tmp_path / "base" / "model.safetensors").st_mode & 0o777 == 0o644
    assert os.stat(tmp_path / "adapters.safetensors").st_mode & 0o777 == 0o644


def test_atomic_save_replaces_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``atomic=True`` writes ``<name>.tmp`` and renames it: a write that fails half-way leaves the earlier
    file readable and unchanged, and a successful one leaves no temp file behind."""
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    io.save_safetensors({"x": torch.arange(3.0)}, path, atomic=True)
    assert torch.equal(load_file(str(path))["x"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]

    def half_write(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"\x00" * 5)  # a torn file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        io.save_safetensors({"x": torch.zeros(7)}, path, atomic=True)
    monkeypatch.undo()
    assert torch.equal(load_file(str(path))["x"], torch.arange(3.0))  # the earlier weights survive
    io.save_safetensors({"x": torch.ones(2)}, path, atomic=True)  # the next save overwrites the stale .tmp
    assert torch.equal(load_file(str(path))["x"], torch.ones(2))
    assert not (tmp_path / "w.safetensors.tmp").exists()
