"""`asg inspect`: a backbone's architecture on the meta device — parameter counts, memory, manifest."""

from __future__ import annotations

from typing import Any

from asg.errors import UnknownNameError

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}
_ADAM_BYTES = 4 + 4 + 4 + 4  # fp32 master weight + grad + two Adam moments, per trainable parameter


def _strip_adapter_name(name: str) -> str | None:
    """Checkpoint name of a parameter of an adapted model; None for the adapter's own tensors."""
    parts = name.split(".")
    if any(p.startswith("lora_") for p in parts):
        return None
    return ".".join(p for p in parts if p != "base_layer")


def manifest_of(module: Any) -> dict[str, dict[str, Any]]:
    """{name: {shape, dtype, kind}} of every parameter and persistent buffer, adapters excluded."""
    out: dict[str, dict[str, Any]] = {}
    seen: set[int] = set()
    for name, p in module.named_parameters(remove_duplicate=False):
        key = _strip_adapter_name(name)
        if key is None:
            continue
        entry = {"shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch."), "kind": "parameter"}
        if id(p) in seen:
            entry["tied"] = True
        seen.add(id(p))
        out[key] = entry
    non_persistent = {
        f"{prefix}.{b}" if prefix else b
        for prefix, sub in module.named_modules()
        for b in getattr(sub, "_non_persistent_buffers_set", ())
    }
    for name, b in module.named_buffers():
        key = _strip_adapter_name(name)
        if key is None or name in non_persistent:
            continue
        out[key] = {"shape": list(b.shape), "dtype": str(b.dtype).removeprefix("torch."), "kind": "buffer"}
    return out


def _count(module: Any) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if _strip_adapter_name(n) is not None)


def _human(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def inspect_backbone(name: str, *, preset: str | None = None, manifest: bool = False) -> dict[str, Any]:
    """Build ``name`` (``preset``) on the meta device and describe it without allocating weights."""
    from asg.plugins import get_backbone_class

    cls = get_backbone_class(name)
    presets = getattr(cls, "presets", {})
    preset = preset or getattr(cls, "default_preset", None)
    if presets and preset not in presets:
        raise UnknownNameError(f"unknown preset {preset!r} for backbone {name!r}; valid presets: {', '.join(presets)}")
    backbone = cls.load(preset=preset, device="meta", weights=False)
    root = backbone.root_module()
    total = _count(root)
    report: dict[str, Any] = {
        "backbone": name,
        "preset": preset,
        "presets": {k: getattr(v, "description", "") for k, v in presets.items()},
        "generation_kind": backbone.generation_kind,
        "roles": list(backbone.roles),
        "parameters": {"total": total, **{k: _count(m) for k, m in backbone.components().items()}},
    }
    trainable = {role: sum(p.numel() for p in backbone.trainable_parameters(role)) for role in backbone.roles}
    report["trainable_per_role"] = trainable
    report["memory"] = {
        "weights": {dt: {"bytes": total * b, "human": _human(total * b)} for dt, b in _BYTES.items()},
        "adapter_training_adamw": {
            "bytes": sum(trainable.values()) * _ADAM_BYTES,
            "human": _human(sum(trainable.values()) * _ADAM_BYTES),
            "note": "fp32 adapter weights, grads and two AdamW moments; activations not included",
        },
    }
    if manifest:
        # A backbone whose checkpoint spans several files (e.g. weights + autoencoder) names each
        # file's tensors as the file does; otherwise the root module's names are the checkpoint's.
        per_file = getattr(backbone, "checkpoint_manifest", None)
        if per_file is not None:
            report["manifest"] = {"checkpoint_files": {f: {"tensors": t} for f, t in per_file().items()}}
        else:
            report["manifest"] = manifest_of(root)
    return report
