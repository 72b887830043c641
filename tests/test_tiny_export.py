"""`asg tiny export`: the weights are stored rounded to the narrower type and nothing else changes; the
copy loads as a float32 `tiny`; bad input is refused, naming the problem, and nothing is overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from asg.backbones.tiny.export import export
from asg.backbones.tiny.model import WEIGHTS_DIR, TinyBackbone
from asg.cli import main
from asg.errors import DataError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    TinyBackbone.load(preset="init", adapters=False).save_pretrained(path)
    (path / "pretrain_report.json").write_text('{"note": "copied as is"}\n')
    return path


def test_export_rounds_every_tensor_and_keeps_the_rest(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "half"
    assert main(["tiny", "export", str(model_dir), "--out", str(out)]) == 0
    src, half = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert half.keys() == src.keys()
    for key, value in src.items():
        assert half[key].dtype == torch.float16, key
        assert torch.equal(half[key], value.to(torch.float16)), key  # round to nearest, nothing else
    # float16 keeps 11 significant bits: no rounding error above 2^-11 of the value (plus subnormals)
    worst = max(float(((half[k].double() - v.double()).abs() - v.double().abs() * 2.0**-11).max()) for k, v in src.items())
    assert worst <= 2.0**-24
    assert (out / "model.safetensors").stat().st_size < 0.55 * (model_dir / "model.safetensors").stat().st_size
    for name in ("config.json", "tokenizer.json", "pretrain_report.json"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes(), name
    record = json.loads((out / "export.json").read_text())
    assert record["dtype"] == "float16" and record["from"] == str(model_dir) and record["tensors"] == len(src)
    assert record["max_abs_rounding_error"] == max(float((half[k].double() - v.double()).abs().max()) for k, v in src.items())
    # the copy loads as an ordinary float32 tiny whose weights are the rounded ones
    bb = TinyBackbone.load(model=out, adapters=False)
    params = {k: v for k, v in bb.net.state_dict().items() if k not in bb.tied_keys}
    assert all(v.dtype == torch.float32 for v in params.values())
    assert all(torch.equal(params[k], half[k].float()) for k in half)


def test_bfloat16_export(model_dir: Path, tmp_path: Path) -> None:
    record = export(model_dir, tmp_path / "bf16", "bfloat16")
    half = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert record["dtype"] == "bfloat16" and all(v.dtype == torch.bfloat16 for v in half.values())


def test_export_refuses_an_existing_directory_and_keeps_it(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="never overwrites"):
        export(model_dir, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    export(model_dir, empty)  # an empty directory is fine
    assert (empty / "model.safetensors").is_file()


def test_export_refuses_values_beyond_float16_and_broken_sources(model_dir: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (big / name).write_bytes((model_dir / name).read_bytes())
    save_file({"w": torch.tensor([1.0, -7.0e4])}, str(big / "model.safetensors"))
    with pytest.raises(DataError, match=r"tensor w reaches \|w\| = 7e\+04, beyond float16's range"):
        export(big, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    export(big, tmp_path / "out-bf16", "bfloat16")  # bfloat16 has the range
    save_file({"w": torch.tensor([1.0, float("nan")])}, str(big / "model.safetensors"))
    with pytest.raises(DataError, match="tensor w holds a NaN"):
        export(big, tmp_path / "out2", "bfloat16")
    with pytest.raises(DataError, match="lacks model.safetensors"):
        (big / "model.safetensors").unlink()
        export(big, tmp_path / "out3")


def test_shipped_weights_are_the_float16_export() -> None:
    """The shipped directory is what `asg tiny export` writes: float16 tensors and its export record."""
    record = json.loads((WEIGHTS_DIR / "export.json").read_text())
    assert record["dtype"] == "float16"
    state = load_file(str(WEIGHTS_DIR / "model.safetensors"))
    assert {v.dtype for v in state.values()} == {torch.float16} and len(state) == record["tensors"]
