"""Typed configuration as plain data: strict loading of nested frozen attrs configs from mappings.

A field holds a nested config when its metadata says so (``{"config": Cls}``, or ``{"config_map":
Cls}`` for a name -> settings mapping) or when its default is a factory of an attrs class. Loading
rejects unknown keys with the list of valid ones and turns validator errors into ConfigError, so a
recipe file or a ``--set`` override that is wrong says which field and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from asg.errors import ConfigError


def nested_config(field: attrs.Attribute) -> type | None:
    """The attrs class a field nests, or None for a plain value."""
    if "config" in field.metadata:
        return field.metadata["config"]
    default = field.default
    if isinstance(default, attrs.Factory) and isinstance(default.factory, type) and attrs.has(default.factory):  # type: ignore[arg-type]
        return default.factory
    return None


def sections(cls: type) -> list[str]:
    """Names of the fields of ``cls`` that are nested configs or config maps."""
    return [f.name for f in attrs.fields(cls) if nested_config(f) is not None or "config_map" in f.metadata]


def from_dict(cls: type, data: Any) -> Any:
    """An instance of the attrs config class ``cls`` from a mapping; unknown keys are a ConfigError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__} must be given as a mapping, got {type(data).__name__}")
    fields = attrs.fields_dict(cls)
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(fields)}"
        )
    kwargs = {}
    for key, value in data.items():
        field = fields[key]
        sub = nested_config(field)
        if sub is not None:
            value = from_dict(sub, value)
        elif "config_map" in field.metadata:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{cls.__name__}.{key} must be a mapping of name -> settings, got {type(value).__name__}")
            value = {name: from_dict(field.metadata["config_map"], v) for name, v in value.items()}
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def to_plain(value: Any) -> Any:
    """JSON-able form of a config (tuples become lists); :func:`from_dict` reads it back."""
    if attrs.has(type(value)):
        return {f.name: to_plain(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value
