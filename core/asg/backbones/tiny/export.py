"""`asg tiny export`: a copy of a `tiny` model directory with its weights stored in a narrower float type.

The shipped weights are the float32 result of `asg tiny pretrain` stored as float16, which halves the
package (docs/tiny.md). The model still runs in float32: loading casts every tensor back. The copy keeps
the directory's config, tokenizer and pretraining report, and adds ``export.json``: where the weights came
from, the type, and the largest rounding error of any tensor. Nothing is written unless the whole copy
succeeds, and an existing directory is never overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

DTYPES = ("float16", "bfloat16", "float32")
COPIED = ("config.json", "tokenizer.json", "pretrain_report.json", "pretrain_curves.png")


def export(src: str | Path, out: str | Path, dtype: str = "float16") -> dict[str, Any]:
    """Write ``out`` = ``src`` with model.safetensors in ``dtype``; returns the ``export.json`` record."""
    import torch
    from safetensors.torch import load_file

    from asg.backbones.checkpoint_io import save_safetensors
    from asg.backbones.tiny.model import _check_model_dir
    from asg.errors import ConfigError, DataError

    src, out = Path(src), Path(out)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    _check_model_dir(src, shipped=False)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty directory; choose a new --out "
                              "(export never overwrites)")
    target = getattr(torch, dtype)
    limit = torch.finfo(target).max
    state = load_file(str(src / "model.safetensors"))
    converted: dict[str, Any] = {}
    worst, worst_key = 0.0, None
    for key, value in state.items():
        if not value.is_floating_point():
            converted[key] = value
            continue
        wide = value.double()
        if not torch.isfinite(wide).all():
            raise DataError(f"{src / 'model.safetensors'}: tensor {key} holds a NaN or infinite value")
        peak = float(wide.abs().max()) if value.numel() else 0.0
        if peak > limit:
            raise DataError(f"tensor {key} reaches |w| = {peak:.4g}, beyond {dtype}'s range ({limit:.4g}); "
                            "export as bfloat16 or float32 instead")
        narrow = value.to(target).contiguous()
        error = float((narrow.double() - wide).abs().max()) if value.numel() else 0.0
        if error > worst:
            worst, worst_key = error, key
        converted[key] = narrow
    record = {"from": str(src), "dtype": dtype, "tensors": len(converted),
              "parameters": sum(v.numel() for v in converted.values()),
              "max_abs_rounding_error": worst, "worst_tensor": worst_key}
    tmp = out.parent / f".{out.name}.export-tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name in COPIED:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        save_safetensors(converted, tmp / "model.safetensors", {"format": "pt", "backbone": "tiny"}, atomic=True)
        (tmp / "export.json").write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
